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

from . import _flat, _hvp, _pipeline, _riccati
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


def jacobian(seg: _pipeline.Segment, zin, rows, dt):
    """``M_l = [A_l B_l]`` ``(n, a_out, a_in + p)`` of every layer of a segment (or of a chunk
    of it), vmapped over the rows."""

    def jac(zin, row):
        F, ps = _layer_of_parts(seg, zin, row, dt)
        if not ps:
            return jnp.zeros((seg.a_out, 0), dt)
        # Reverse mode when the output is the narrower side.
        mode = jax.jacrev if seg.a_out < seg.a_in + seg.p else jax.jacfwd
        return jnp.concatenate(mode(F, argnums=tuple(range(len(ps))))(*ps), axis=1)

    return jax.vmap(jac)(zin, rows)


def jacobians(seg: _pipeline.Segment, zin, rows, dt):
    """``(A, B)`` of every layer of a segment, vmapped over the rows."""
    M = jacobian(seg, zin, rows, dt)
    return M[:, :, : seg.a_in], M[:, :, seg.a_in :]


def second_derivatives(seg: _pipeline.Segment, zin, rows, b, dt):
    """``K_l = ∇²_u (b_l · f_l)(u)`` at ``u = (z_{l-1}, x_l)`` for every row, vmapped."""

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
