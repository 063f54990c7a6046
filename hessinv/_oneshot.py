"""``ihvp`` in one pass: the blocks are computed chunk by chunk inside the stage recursion.

:func:`hessinv.factorize` keeps every block and every stage factor, because a reusable
factorisation needs them (``matvec``, ``logdet``, many solves). A single solve does not: it needs
``K_l`` and ``Q_uu,l`` only for the one step of the backward recursion that uses them. Here

* the backward pass walks each segment in chunks of ``chunk`` layers: it computes the chunk's
  ``A, B, K`` (vmapped), then runs the factorisation step *and* the backward solve step of
  MATH.md section 3 layer by layer, and keeps only what the forward pass needs
  (``A_l − B_l G_l``, ``B_l k_l``, ``G_l``, ``k_l``; for a large layer only ``G_l``, ``k_l``,
  see :func:`hessinv._stage.is_large`); through a segment of per-example layers the chunk's
  ``A_l`` and ``K_l``'s z-z part stay their diagonal blocks throughout (:func:`_per_example_chunk`);
* the forward pass is the same closed-loop scan as :meth:`Factorization.solve_rows` (for a large
  layer, ``dz_l = A_l dz_{l-1} + B_l dx_l`` is a jvp of the layer instead).

The arithmetic is the same as ``factorize`` then ``solve``, so are the answers (to rounding).
What changes is the working set: one chunk's blocks (a few hundred kB) instead of every layer's
(about 48 kB a layer for the benchmark MLP), so the time stays linear in depth when the whole
pipeline no longer fits in the cache, and no large temporaries are allocated afresh each call.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _blocks, _pipeline, _stage
from ._diagnostics import Info, make_info
from ._riccati import pivot_step, stage_step

#: Bytes of blocks per chunk, and the most layers in one: small enough for a chunk's blocks to
#: stay in the cache, large enough for the vmapped block computations to be efficient (the
#: benchmark MLP: 64-256 layers a chunk all within 2% at depth 1024, 16-32 slower).
CHUNK_BYTES = 2 << 20
MAX_CHUNK = 128


def chunk_size(seg, dtype) -> int:
    """Layers per chunk for segment ``seg``: ``M_l`` and ``K_l`` of a chunk within CHUNK_BYTES."""
    m = seg.a_in + seg.p
    per_layer = (seg.a_out * m + m * m) * jnp.dtype(dtype).itemsize
    return max(1, min(MAX_CHUNK, CHUNK_BYTES // max(per_layer, 1)))


class _Out(NamedTuple):
    """Per layer (stacked over a segment): what the forward pass needs, and health flags."""

    A_cl: jax.Array  # (a_out, a_in)  A_l − B_l G_l ((0, 0) for a large layer: _stage.is_large)
    Bk: jax.Array  # (a_out,)  B_l k_l ((0,) for a large layer)
    G: jax.Array  # (p, a_in)
    k: jax.Array  # (p,)
    Q_uu: jax.Array  # (p, p) the pivot, kept only for diagnostics (else (0, 0))
    finite_AB: jax.Array  # () bool: A_l and B_l finite


def _layer_jvp(seg, zin, row, dz, dx, dt):
    """``A_l dz + B_l dx`` (flat) by one jvp of the layer at ``(z_{l-1}, x_l)``."""
    F, ps = _blocks._layer_of_parts(seg, zin, row, dt)
    sizes = [v.shape[0] for v in ps]
    tangents = jnp.split(jnp.concatenate([dz, dx]), np.cumsum(sizes)[:-1])
    return jax.jvp(F, ps, tuple(tangents))[1]


def _step(seg, lam, with_K, keep_pivot):
    """One layer, top down: the factorisation step (:func:`hessinv._riccati.stage_step`) and the
    backward solve step ``s_{l-1} = A_lᵀ s_l − G_lᵀ q_u`` together.

    Only what depends on ``S`` is here; everything batched over a chunk is done outside."""
    a_in = seg.a_in

    def step(carry, xs):
        S, s = carry
        M, K, g, diag, is_block = xs
        Ms = M.T @ s  # (A_lᵀ s, B_lᵀ s)
        q_u = Ms[a_in:] - g
        S_prev, Q_uu, _, _, G, k = stage_step(seg, S, M, K if with_K else None, diag, is_block, lam, q_u)
        s_prev = Ms[:a_in] - G.T @ q_u
        return (S_prev, s_prev), (G, k, Q_uu if keep_pivot else jnp.zeros((0, 0), Q_uu.dtype))

    return step


def _chunk(pipe, j, curvature, lam, keep_pivot):
    """A run of layers of segment ``j``, top down: their blocks (batched), then the recursion.
    A segment whose layers may act per example (:func:`hessinv._stage.batch_blocks`) runs
    :func:`_per_example_chunk`, with this dense run only where its probes fail."""
    seg, dt = pipe.segments[j], pipe.dtype
    with_K = _blocks.has_K(pipe, j, curvature)
    step = _step(seg, lam, with_K, keep_pivot)

    def run(carry, xs, jacobian=_blocks.jacobian, second_derivatives=_blocks.second_derivatives):
        S, s, b = carry
        zin, rows, g = xs
        n = rows.shape[0]
        M = jacobian(seg, zin, rows, dt)
        A, B = M[:, :, : seg.a_in], M[:, :, seg.a_in :]
        # b_l for this run of layers from the b above it: b_{l-1} = A_lᵀ b_l.
        b, bs = _pipeline.scan(lambda b, A: (A.T @ b, b), b, A, n, reverse=True)
        K = second_derivatives(seg, zin, rows, bs, dt) if with_K else jnp.zeros((n, 0, 0), dt)
        diag, is_block = _stage.diagonal_blocks(seg, A)
        (S, s), (G, k, Q_uu) = _pipeline.scan(step, (S, s), (M, K, g, diag, is_block), n, reverse=True)
        finite_AB = jnp.all(jnp.isfinite(M), axis=(1, 2))
        if _stage.is_large(seg):
            out = _Out(jnp.zeros((n, 0, 0), dt), jnp.zeros((n, 0), dt), G, k, Q_uu, finite_AB)
        else:
            out = _Out(A - B @ G, jnp.einsum("nap,np->na", B, k), G, k, Q_uu, finite_AB)
        return (S, s, b), out

    if _stage.batch_blocks(seg) is None:
        return run

    def dense(carry, xs):  # the probes failed: A_l or K_zz couples examples
        return run(carry, xs, _blocks.dense_jacobian, _blocks.dense_second_derivatives)

    return _per_example_chunk(seg, dt, with_K, lam, keep_pivot, dense)


def _per_example_chunk(seg, dt, with_K, lam, keep_pivot, dense):
    """:func:`_chunk` for a segment whose layers may act per example, with ``A_l`` and ``K_l``'s
    z-z part kept as their diagonal blocks from end to end (:func:`hessinv._blocks.per_example_jacobian`,
    :func:`hessinv._stage.Q_parts_per_example`): no ``a × a`` matrix but ``S_l`` and ``Q_zz`` is
    formed, where the dense run writes and reads ``A_l``, ``M_l`` and ``K_l`` several times a
    layer. Taken only where the probes prove every layer of the run per-example; ``dense``
    (``lax.cond``: one branch runs) otherwise."""

    def step(carry, xs):
        S, s = carry
        Ab, B, K, g = xs
        q_u = B.T @ s - g
        parts = _stage.Q_parts_per_example(S, Ab, B, K if with_K else None)
        S_prev, Q_uu, _, _, G, k = pivot_step(seg, parts, lam, q_u[:, None])
        k = k[:, 0]
        s_prev = _stage.block_matvec(Ab, s, transpose=True) - G.T @ q_u
        return (S_prev, s_prev), (G, k, Q_uu if keep_pivot else jnp.zeros((0, 0), dt))

    def run(carry, xs):
        S, s, b = carry
        zin, rows, g = xs
        n = rows.shape[0]
        Ab, B, ok = _blocks.per_example_jacobian(seg, zin, rows, dt)
        b_prev, bs = _pipeline.scan(
            lambda b, Ab: (_stage.block_matvec(Ab, b, transpose=True), b), b, Ab, n, reverse=True
        )
        if with_K:
            K, ok_K = _blocks.per_example_second_derivatives(seg, zin, rows, bs, dt)
            ok = ok & ok_K
        else:
            K = jnp.zeros((n, 0), dt)

        def structured():
            (S_prev, s_prev), (G, k, Q_uu) = _pipeline.scan(step, (S, s), (Ab, B, K, g), n, reverse=True)
            finite_AB = jnp.all(jnp.isfinite(Ab), axis=(1, 2, 3)) & jnp.all(jnp.isfinite(B), axis=(1, 2))
            out = _Out(jnp.zeros((n, 0, 0), dt), jnp.zeros((n, 0), dt), G, k, Q_uu, finite_AB)
            return (S_prev, s_prev, b_prev), out

        return jax.lax.cond(ok, structured, lambda: dense(carry, xs))

    return run


def _segment(pipe, j, carry, xs, curvature, lam, keep_pivot, chunk):
    """The backward pass through segment ``j``: whole chunks by a reverse ``lax.scan`` (top
    down), then the ``n mod chunk`` bottom layers. Returns the outputs as a list of pieces,
    bottom up (not concatenated: that would copy the largest arrays ``ihvp`` keeps)."""
    seg = pipe.segments[j]
    run = _chunk(pipe, j, curvature, lam, keep_pivot)
    c = chunk or chunk_size(seg, pipe.dtype)
    q, r = divmod(seg.n, c)
    if q <= 1:
        carry, out = run(carry, xs)
        return carry, [out]
    body = jax.tree.map(lambda a: a[r:].reshape((q, c) + a.shape[1:]), xs)
    carry, out_body = jax.lax.scan(run, carry, body, reverse=True)
    out_body = jax.tree.map(lambda a: a.reshape((q * c,) + a.shape[2:]), out_body)
    if r == 0:
        return carry, [out_body]
    carry, out_head = run(carry, jax.tree.map(lambda a: a[:r], xs))
    return carry, [out_head, out_body]


def solve(pipe, params, z0, g_rows, damping, curvature: str, *, keep_pivot: bool = False, chunk: int | None = None):
    """``(H + λI)^{-1} g`` on per-segment rows. Returns ``(x_rows, outs)``: per segment, a list of
    :class:`_Out` pieces (bottom up); with ``keep_pivot`` they hold every ``Q_uu,l`` (for
    :func:`info`). ``chunk``: layers per chunk (default :func:`chunk_size`)."""
    _blocks.check_curvature(pipe, curvature)
    dt = pipe.dtype
    lam = jnp.asarray(damping, dt)
    seg_rows = _pipeline.to_rows(pipe, params)
    _, inputs = _pipeline.forward(pipe, seg_rows, z0)

    outs = [None] * len(pipe.segments)
    # S_L = 0, s_L = 0, b_L = 1 (z_L is the scalar loss).
    carry = (jnp.zeros((1, 1), dt), jnp.zeros((1,), dt), jnp.ones((1,), dt))
    for j in range(len(pipe.segments) - 1, -1, -1):
        xs = (inputs[j], seg_rows[j], g_rows[j].astype(dt))
        carry, outs[j] = _segment(pipe, j, carry, xs, curvature, lam, keep_pivot, chunk)

    # Forward: dx_l = −(G_l dz_{l-1} + k_l), dz_l = A_l dz_{l-1} + B_l dx_l, from dz_0 = 0.
    x_rows = []
    dz = jnp.zeros((0,), dt)
    for seg, zin, rows, pieces in zip(pipe.segments, inputs, seg_rows, outs):
        dx, lo = [], 0
        for o in pieces:
            n = o.k.shape[0]
            if _stage.is_large(seg):

                def fwd(dz, xs, seg=seg):
                    zin, row, G, k = xs
                    dx = -(G @ dz + k)
                    return _layer_jvp(seg, zin, row, dz, dx, dt), dx

                xs = (jax.tree.map(lambda a, lo=lo, n=n: a[lo : lo + n], zin), rows[lo : lo + n], o.G, o.k)
                dz, dx_o = _pipeline.scan(fwd, dz, xs, n)
            else:
                dz, dz_in = _pipeline.scan(lambda dz, xs: (xs[0] @ dz - xs[1], dz), dz, (o.A_cl, o.Bk), n)
                dx_o = -(jnp.einsum("npa,na->np", o.G, dz_in) + o.k)
            dx.append(dx_o)
            lo += n
        x_rows.append(dx[0] if len(dx) == 1 else jnp.concatenate(dx))
    return x_rows, outs


def pivots(pipe, outs) -> list:
    """The stage pivots ``Q_uu,l`` kept by a :func:`solve` with ``keep_pivot=True``: one
    ``(n, p, p)`` stack per piece of every segment with ``p > 0`` (not concatenated)."""
    return [o.Q_uu for seg, pieces in zip(pipe.segments, outs) if seg.p > 0 for o in pieces]


def info(pipe, outs) -> Info:
    """Pivot health of a :func:`solve` run with ``keep_pivot=True``: the same :class:`Info` as
    :meth:`Factorization.info` (``K_l`` is not kept; a non-finite ``K_l`` shows in the pivot and
    the gains it produces)."""

    def cat(pieces, field):
        parts = [getattr(o, field) for o in pieces]
        return parts[0] if len(parts) == 1 else jnp.concatenate(parts)

    finite = jnp.all(
        jnp.array([jnp.all(jnp.isfinite(o.Q_uu)) & jnp.all(jnp.isfinite(o.G)) for pieces in outs for o in pieces])
    )
    return make_info(pipe, [cat(p, "finite_AB") for p in outs], finite, [cat(p, "Q_uu") for p in outs])
