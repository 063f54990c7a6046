"""Per-layer blocks of the Hessian (MATH.md section 1), computed at the forward pass.

For layer ``l`` with input ``z_{l-1}`` (length ``a_in``), parameters ``x_l`` (length ``p``) and
output ``z_l`` (length ``a_out``):

* ``A_l = ∂f_l/∂z``  ``(a_out, a_in)``  the paper's ``∇_z f_l``;
* ``B_l = ∂f_l/∂x``  ``(a_out, p)``     the paper's ``∇_x f_l`` (blocks of ``D_x``);
* ``b_l = ∂z_L/∂z_l``  ``(a_out,)``     the backprop vector, ``b_L = 1``, ``b_{l-1} = A_lᵀ b_l``;
* ``K_l = ∇²_{(z,x)} (b_l · f_l)``  ``(a_in + p, a_in + p)``  with ``b_l`` held fixed.

Everything is a ``vmap`` over each segment of identical layers; only ``b`` needs a (cheap,
matrix-vector) backward ``lax.scan``. The blocks do not depend on the damping, so one
:class:`Blocks` serves many ``λ`` (see :meth:`Blocks.factorize`).

With ``curvature="ggn"`` the blocks describe the generalised Gauss-Newton matrix instead
(MATH.md section 5): ``K_l = 0`` for every layer but the last, a parameter-free loss, whose
``K_L = ∇²ℓ``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _flat, _hvp, _pipeline, _riccati, _stage
from ._errors import PipelineError


class SegmentBlocks(NamedTuple):
    """Blocks of one segment, stacked on a leading axis of length ``n`` (one row per layer)."""

    A: jax.Array  # (n, a_out, a_in)
    B: jax.Array  # (n, a_out, p)
    b: jax.Array  # (n, a_out)
    K: jax.Array  # (n, a_in + p, a_in + p)


@jax.tree_util.register_pytree_node_class
class Blocks:
    """The λ-independent description of ``H``: per-segment :class:`SegmentBlocks`.

    Attributes:
      pipe: the static :class:`~hessinv._pipeline.Pipeline`.
      segments: one :class:`SegmentBlocks` per segment.
      loss: the pipeline's loss at the point of expansion.
    """

    def __init__(self, pipe, segments, loss):
        self.pipe, self.segments, self.loss = pipe, tuple(segments), loss

    def tree_flatten(self):
        return (self.segments, self.loss), self.pipe

    @classmethod
    def tree_unflatten(cls, pipe, children):
        return cls(pipe, *children)

    def factorize(self, damping=0.0):
        """Run the stage recursion on these blocks: a :class:`~hessinv.Factorization` of ``H + λI``."""
        return _riccati.factorize_blocks(self, damping)

    def matvec(self, v, damping=0.0):
        """``(H + λI) v`` from the blocks (the paper's appendix A); ``v`` shaped like params."""
        return _hvp.structured_hvp(self, v, damping)


def _layer_of_parts(seg: _pipeline.Segment, zin, row, dt):
    """The layer as a function of the per-leaf vectors of ``u = (z_{l-1}, x_l)`` (see
    :func:`hessinv._flat.parts`) to the flat ``z_l``, and those vectors at the current point.
    A frozen input (the first layer) is held constant and has no parts."""
    if seg.frozen_input:
        z_parts, consts = (), None
    else:
        z_parts, consts = _flat.parts(seg.in_spec, zin, dt), _flat.constants(seg.in_spec, zin)
    nz = len(z_parts)
    x_parts = _flat.parts(seg.param_spec, _flat.unravel(seg.param_spec, row), dt)

    def F(*ps):
        z = zin if seg.frozen_input else _flat.unravel_parts(seg.in_spec, ps[:nz], consts)
        return _flat.ravel(seg.out_spec, seg.fn(z, _flat.unravel_parts(seg.param_spec, ps[nz:])), dt)

    return F, z_parts + x_parts


def dense_jacobian(seg: _pipeline.Segment, zin, rows, dt):
    """``M_l = [A_l B_l]`` of every row by ``min(a_out, a_in + p)`` passes: any layer."""

    def jac(zin, row):
        F, ps = _layer_of_parts(seg, zin, row, dt)
        if not ps:
            return jnp.zeros((seg.a_out, 0), dt)
        # Reverse mode when the output is the narrower side.
        mode = jax.jacrev if seg.a_out < seg.a_in + seg.p else jax.jacfwd
        return jnp.concatenate(mode(F, argnums=tuple(range(len(ps))))(*ps), axis=1)

    return jax.vmap(jac)(zin, rows)


def dense_second_derivatives(seg: _pipeline.Segment, zin, rows, b, dt):
    """``K_l`` of every row by ``a_in + p`` reverse-over-reverse passes: any layer."""

    def hess(zin, row, b):
        F, ps = _layer_of_parts(seg, zin, row, dt)
        if not ps:
            return jnp.zeros((0, 0), dt)
        idx = tuple(range(len(ps)))
        # Reverse-over-reverse: measured faster than jax.hessian's forward-over-reverse for
        # these small, vmapped layer functions on CPU.
        H = jax.jacrev(jax.grad(lambda *ps: b @ F(*ps), argnums=idx), argnums=idx)(*ps)
        return jnp.block([[H[i][j] for j in idx] for i in idx])

    return jax.vmap(hess)(zin, rows, b)


# -- per-example layers: the blocks from w tangents instead of a -----------------------------------
#
# A layer that acts on each example separately has A_l = ∂f/∂z, and K_l's z-z part, block-diagonal
# over the batch (see _stage). Then one tangent per input coordinate *of an example*, repeated
# in every example (w "coloured" tangents instead of a = batch × w), yields every diagonal block
# at once. Whether the layer is per-example is decided by the numbers, never by a guess: for each
# bit k of the example index and each value v of it, a random tangent on the examples whose bit
# k is v must give exactly zero on all the others. Any two examples differ in some bit, so a
# coupling between them would show (a random tangent cannot cancel it but by an exact floating
# coincidence). Where any probe fails, the segment's blocks are formed densely (lax.cond: one
# branch runs).


def _tangents(seg: _pipeline.Segment, dt):
    """The z tangents ``(w_in + 2k, a_in)``: ``w_in`` coloured ones, then ``2k`` support probes
    (``k = ⌈log₂ e⌉``), and the probes' example masks ``(2k, e)``."""
    e, _, wi = _stage.batch_blocks(seg)
    k = max(1, (e - 1).bit_length())
    bits = (np.arange(e)[None, :] >> np.arange(k)[:, None]) & 1
    masks = np.concatenate([bits, 1 - bits]).astype(bool)
    r = np.random.default_rng(0).standard_normal((e, wi))
    probes = np.where(masks[:, :, None], r, 0.0).reshape(2 * k, e * wi)
    coloured = np.tile(np.eye(wi), (1, e))
    return jnp.asarray(np.concatenate([coloured, probes]), dt), masks


def _split_coloured(seg, out, masks):
    """From the z-outputs ``(w_in + 2k, e · w_out)`` of :func:`_tangents`: the diagonal blocks
    ``(e, w_out, w_in)`` and whether every probe vanished exactly outside its examples."""
    e, _, wi = _stage.batch_blocks(seg)
    wo = out.shape[1] // e
    blocks = out[:wi].reshape(wi, e, wo).transpose(1, 2, 0)
    probes = out[wi:].reshape(-1, e, wo)
    ok = jnp.all(jnp.where(masks[:, :, None], 0, probes) == 0)
    return blocks, ok


def per_example_jacobian(seg: _pipeline.Segment, zin, rows, dt):
    """``(A_blocks, B, ok)`` of every layer of a per-example segment: ``A_l``'s diagonal blocks
    ``(n, e, w_out, w_in)`` from the coloured tangents, ``B_l`` ``(n, a_out, p)``, and whether
    the probes proved every ``A_l`` of the rows block-diagonal (else the blocks are not ``A_l``)."""
    T, masks = _tangents(seg, dt)

    def jac(zin, row):
        F, (z, *xs) = _layer_of_parts(seg, zin, row, dt)
        out = jax.vmap(lambda t: jax.jvp(lambda z: F(z, *xs), (z,), (t,))[1])(T)
        blocks, ok = _split_coloured(seg, out, masks)
        B = jnp.zeros((seg.a_out, 0), dt)
        if xs:
            mode = jax.jacrev if seg.a_out < seg.p else jax.jacfwd
            B = jnp.concatenate(mode(lambda *xs: F(z, *xs), argnums=tuple(range(len(xs))))(*xs), axis=1)
        return blocks, B, ok

    blocks, B, ok = jax.vmap(jac)(zin, rows)
    return blocks, B, jnp.all(ok)


def _per_example_jacobian(seg: _pipeline.Segment, zin, rows, dt):
    """``(M, ok)``: ``M_l`` as in :func:`jacobian`, its ``A_l`` assembled from
    :func:`per_example_jacobian`'s blocks."""
    blocks, B, ok = per_example_jacobian(seg, zin, rows, dt)
    return jnp.concatenate([jax.vmap(_stage.block_diagonal)(blocks), B], axis=2), ok


class PerExampleK(NamedTuple):
    """``K_l`` of per-example layers, stacked over ``n`` layers: its z-z part by diagonal blocks."""

    zz: jax.Array  # (n, e, w_in, w_in) the diagonal blocks of K_zz
    xz: jax.Array  # (n, p, a_in)
    xx: jax.Array  # (n, p, p)


def per_example_second_derivatives(seg: _pipeline.Segment, zin, rows, b, dt):
    """``(K, ok)``: ``K_l`` as in :func:`second_derivatives` as a :class:`PerExampleK`, its z-z
    blocks from the coloured tangents (forward over reverse), its x columns from one tangent per
    parameter; ``ok``: the probes proved every ``K_zz`` block-diagonal."""
    T, masks = _tangents(seg, dt)
    a_in, p = seg.a_in, seg.p

    def hess(zin, row, b):
        F, ps = _layer_of_parts(seg, zin, row, dt)
        idx = tuple(range(len(ps)))
        g = jax.grad(lambda *ps: b @ F(*ps), argnums=idx)
        zeros = tuple(jnp.zeros_like(x) for x in ps)

        def hvp_z(t):
            return jax.jvp(g, ps, (t,) + zeros[1:])[1][0]

        blocks, ok = _split_coloured(seg, jax.vmap(hvp_z)(T), masks)
        if p == 0:
            return PerExampleK(blocks, jnp.zeros((0, a_in), dt), jnp.zeros((0, 0), dt)), ok
        sizes = np.cumsum([x.size for x in ps[1:]])[:-1]

        def hvp_x(t):
            return jnp.concatenate(jax.jvp(g, ps, (zeros[0],) + tuple(jnp.split(t, sizes)))[1])

        cols = jax.vmap(hvp_x)(jnp.eye(p, dtype=dt))  # (p, a_in + p): rows [K_xz K_xx]
        return PerExampleK(blocks, cols[:, :a_in], cols[:, a_in:]), ok

    K, ok = jax.vmap(hess)(zin, rows, b)
    return K, jnp.all(ok)


def _per_example_second_derivatives(seg: _pipeline.Segment, zin, rows, b, dt):
    """``(K, ok)``: ``K_l`` as in :func:`second_derivatives`, assembled from
    :func:`per_example_second_derivatives`' parts."""
    K, ok = per_example_second_derivatives(seg, zin, rows, b, dt)

    def dense(K):
        return jnp.block([[_stage.block_diagonal(K.zz), K.xz.T], [K.xz, K.xx]])

    return jax.vmap(dense)(K), ok


def jacobian(seg: _pipeline.Segment, zin, rows, dt):
    """``M_l = [A_l B_l]`` ``(n, a_out, a_in + p)`` of every layer of a segment (or of a chunk
    of it), vmapped over the rows; for a per-example layer from ``w_in`` tangents, not ``a_in``."""
    if _stage.batch_blocks(seg) is None:
        return dense_jacobian(seg, zin, rows, dt)
    M, ok = _per_example_jacobian(seg, zin, rows, dt)
    return jax.lax.cond(ok, lambda: M, lambda: dense_jacobian(seg, zin, rows, dt))


def jacobians(seg: _pipeline.Segment, zin, rows, dt):
    """``(A, B)`` of every layer of a segment, vmapped over the rows."""
    M = jacobian(seg, zin, rows, dt)
    return M[:, :, : seg.a_in], M[:, :, seg.a_in :]


def second_derivatives(seg: _pipeline.Segment, zin, rows, b, dt):
    """``K_l = ∇²_u (b_l · f_l)(u)`` at ``u = (z_{l-1}, x_l)`` for every row, vmapped; for a
    per-example layer from ``w_in + p`` tangents, not ``a_in + p``."""
    if _stage.batch_blocks(seg) is None:
        return dense_second_derivatives(seg, zin, rows, b, dt)
    K, ok = _per_example_second_derivatives(seg, zin, rows, b, dt)
    return jax.lax.cond(ok, lambda: K, lambda: dense_second_derivatives(seg, zin, rows, b, dt))


def check_curvature(pipe: _pipeline.Pipeline, curvature: str) -> None:
    if curvature not in ("hessian", "ggn"):
        raise ValueError(f"curvature must be 'hessian' or 'ggn', got {curvature!r}")
    last = pipe.segments[-1]
    if curvature == "ggn" and last.p > 0:
        raise PipelineError(
            f"curvature='ggn' needs a parameter-free loss as the last layer, but {pipe.layer_name(pipe.n_layers - 1)} "
            f"has {last.p} parameters; append a separate loss layer with params {{}} (or ())"
        )


def has_K(pipe: _pipeline.Pipeline, j: int, curvature: str) -> bool:
    """Does segment ``j`` carry second-derivative blocks? (GGN keeps only the loss's.)"""
    return curvature == "hessian" or j == len(pipe.segments) - 1


@functools.partial(jax.jit, static_argnames=("pipe", "curvature"))
def compute(pipe: _pipeline.Pipeline, seg_rows, z0, curvature: str = "hessian") -> Blocks:
    """All blocks of the pipeline at ``(params, z0)``, the params as per-segment rows
    (:func:`hessinv._pipeline.rows`). Jitted: ``pipe`` is static."""
    check_curvature(pipe, curvature)
    dt = pipe.dtype
    loss, inputs = _pipeline.forward(pipe, seg_rows, z0)
    jacs = [jacobians(seg, zin, rows, dt) for seg, zin, rows in zip(pipe.segments, inputs, seg_rows)]

    # b_L = 1, b_{l-1} = A_lᵀ b_l: a backward scan of matrix-vector products.
    bs = [None] * len(pipe.segments)
    b = jnp.ones((1,), dt)
    for j in range(len(pipe.segments) - 1, -1, -1):
        b, bs[j] = _pipeline.scan(lambda b, A: (A.T @ b, b), b, jacs[j][0], pipe.segments[j].n, reverse=True)

    segs = []
    for j, (seg, zin, rows) in enumerate(zip(pipe.segments, inputs, seg_rows)):
        A, B = jacs[j]
        if has_K(pipe, j, curvature):
            K = second_derivatives(seg, zin, rows, bs[j], dt)
        else:
            m = seg.a_in + seg.p
            K = jnp.zeros((seg.n, m, m), dt)
        segs.append(SegmentBlocks(A, B, bs[j], K))
    return Blocks(pipe, segs, loss)
