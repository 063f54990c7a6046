"""The stage recursion split over devices (``method="parallel"`` with ``mesh=``): partitioned
elimination, each device eliminating its own chunk of layers, then a small boundary system.

The stage (Riccati) recursion of MATH.md section 3 is sequential in depth because a layer's pivot
``Q_uu,l`` needs ``S_l`` from every later layer. This route cuts each long segment of identical
layers into ``P`` equal chunks, one per device of a one-dimensional :class:`jax.sharding.Mesh`,
and removes that dependency with a low-rank modification (Nielsen & Axehill, "A parallel
structure exploiting factorization algorithm with applications to model predictive control",
CDC 2015):

**Per chunk, on its own device, all chunks at once.** Chunk ``c`` (layers ``s..e``) runs the
stage recursion as if nothing came after it, from ``S_e = 0``: its *free-end* pivots
``Q⁰_uu,l``, gains ``G⁰_l`` and closed-loop maps ``A⁰_l = A_l − B_l G⁰_l``, and ``J_c = S⁰_{s-1}``.
One more backward pass gives the maps ``N_e = I``, ``N_{l-1} = A⁰_lᵀ N_l`` (how a terminal
costate reaches layer ``l``), and then, batched,

    Z_l = Q⁰_uu,l^{-1} B_lᵀ N_l,   C_c = Σ_l N_lᵀ B_l Z_l,   F_c = N_{s-1}ᵀ.

``C_c = Γ H_c^{-1} Γᵀ``, with ``H_c`` the chunk's own (free-end, damped) Hessian and ``Γ`` the map
from its parameters to ``dz_e``. The chunk's true cost-to-go is then the linear-fractional map
``S_{s-1} = Φ_c(S_e) = J_c + F_cᵀ S_e (I + C_c S_e)^{-1} F_c`` of :mod:`hessinv._parallel`, the
same element the associative scans compose, here built by one sequential pass per chunk.

**The boundary system** is that map applied chunk after chunk, ``P`` small steps from the
segment's end value: the true ``S_e`` at every chunk end, and ``W_c = (I + C_c S_e)^{-1}``.

**Solves.** Each chunk's backward pass runs from ``s_e = 0`` (all chunks at once) and returns
its ``s⁰_{s-1}`` and ``w_c = −Σ_l Z_lᵀ q⁰_u,l`` (the chunk's end state under that pass). The true
boundary values follow from two ``P``-step affine recursions,

    s_{s-1} = s⁰_{s-1} + F_cᵀ W_cᵀ (s_e + S_e w_c)                 (backward over chunks)
    dz_e   = W_c (F_c dz_{s-1} + w_c − C_c s_e),   μ_c = S_e dz_e + s_e   (forward)

and each chunk finishes alone: its controls are the free-end solution with the terminal costate
``μ_c``, ``k_l = k⁰_l + Z_l μ_c``, run forward from ``dz_{s-1}``. Sequential steps: ``L/P`` per pass
and device, plus ``P`` for the boundary, against ``L`` for the stage recursion.

**What is exact.** ``H + λI`` is eliminated chunk by chunk from the end (Schur complements), and
chunk ``c``'s block is ``H_c + Γᵀ S_e Γ``. So ``log|det(H + λI)|`` is the sum of the free-end
pivots' and of ``log|det(I + C_c S_e)|``, and the inertia (Haynsworth, with
``S_e = V Λ Vᵀ``, ``sgn = sign(Λ)`` taking ``+1`` at zero, ``R = |Λ|^{1/2}``) is

    In(H_c + Γᵀ S_e Γ) = In(H_c) + In(−M_c) − In(−sgn),   M_c = sgn + R Vᵀ C_c V R,

``In(H_c)`` the free-end pivots' inertias; ``det(I + C_c S_e) = det(sgn) det(M_c)``. Nothing is
approximated. The price is other pivots than the sequential order's: every free-end pivot
``Q⁰_uu,l`` and every ``I + C_c S_e`` must be nonsingular. The last layer of a chunk has
``Q⁰_uu = K_xx + λI``, singular at ``λ = 0`` for a dense layer (more parameters than the rank of
its ``K_xx``) and for every layer of a Gauss-Newton matrix, as in the associative-scan route.
:meth:`ShardedFactorization.info` reports a failure (``ok = False``) and an eager call raises
:class:`~hessinv.SingularPivotError`; the answer is never silently wrong.

**What is split.** A segment of at least ``2P`` identical layers (a :class:`~hessinv.Stack`, or a
run of identical entries) that does not read the data ``z_0``; its first ``n mod P`` layers run the
stage recursion after the boundary system. Shorter segments (a first layer, a head, a layer of
another width) run the stage recursion, replicated: a pipeline without a long run of identical
layers gets no speed-up, only the right answer. Selected inversion falls back on one solve per
parameter; ``sample`` is not offered (use ``method="riccati"``).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from . import _hvp, _pipeline, _stage
from ._diagnostics import Info, _argmin_rcond, route_code, sign_counts, summed_sign_counts
from ._diagnostics import rcond as _rcond
from ._diagnostics import raise_for as _raise_for_stages
from ._diagnostics import rcond_tol as _rcond_tol
from ._errors import SingularPivotError
from ._factorization import Factorization
from ._linalg import sym
from ._parallel import apply_one
from ._riccati import StageFactors, _factor_segment, backward_pass, forward_pass, pivot_step


def check_mesh(mesh) -> Mesh:
    """A one-dimensional :class:`jax.sharding.Mesh`, or a clear error."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__} {mesh!r}")
    if len(mesh.axis_names) != 1:
        raise ValueError(
            "mesh must be one-dimensional (one axis to split the layers over), got axes "
            f"{tuple(mesh.axis_names)} of shape {tuple(mesh.devices.shape)}; e.g. "
            "jax.sharding.Mesh(np.array(jax.devices()), ('layers',))"
        )
    return mesh


def is_split(seg: _pipeline.Segment, n_chunks: int) -> bool:
    """Is segment ``seg`` split into ``n_chunks`` chunks (at least two layers each)? Not the first
    layer: ``dz_0 = 0`` gives it no state to hand over."""
    return not seg.frozen_input and seg.n >= 2 * n_chunks


class Chunks(NamedTuple):
    """A segment split into ``P`` chunks of ``m`` layers after a head of ``r = n mod P`` layers."""

    head: StageFactors | None  # the first r layers, by the stage recursion (None when r = 0)
    stages: StageFactors  # every chunk's free-end factors, stacked over its P·m layers (sharded)
    Z: jax.Array  # (P·m, p, a) Q⁰_uu,l^{-1} B_lᵀ N_l (sharded)
    F: jax.Array  # (P, a, a) per chunk: N_{s-1}ᵀ, its free-end state transfer
    C: jax.Array  # (P, a, a) Γ H_c^{-1} Γᵀ, symmetric
    J: jax.Array  # (P, a, a) S⁰_{s-1}, its free-end cost-to-go, symmetric
    S_end: jax.Array  # (P, a, a) the true S at the chunk's last layer
    W: jax.Array  # (P, a, a) (I + C S_end)^{-1}
    rc: jax.Array  # (P,) reciprocal condition of I + C S_end


def _layout(seg, n_chunks: int):
    """``(r, m, chunk segment)``: ``r`` leading layers, then ``n_chunks`` chunks of ``m``."""
    r, m = seg.n % n_chunks, seg.n // n_chunks
    return r, m, seg._replace(n=m, start=seg.start + r)


def _per_layer(f, *xs):
    """``f`` on every layer's matrices, one at a time (a loop, not a batched call). XLA:CPU runs a
    batched LAPACK call (LU, triangular solve, eigenvalues) as tasks on the process's thread pool
    and blocks until they finish; with several devices on few cores, a device waiting in a
    collective holds a pool thread, and such a call on another device can then wait forever
    (jaxlib 0.10.2; seen on 2 cores with 2 devices). One matrix per call runs inline."""
    return jax.lax.map(lambda args: f(*args), xs)


def _lu_solve_layers(lu, perm, q):
    """``Q_l^{-1} q_l`` for every layer (vectors ``q`` ``(n, p)``) from the LU factors
    ``Q_l[perm_l] = L_l U_l``: substitution vectorised over the layers, ``2p`` batched steps and
    no LAPACK call (see :func:`_per_layer`)."""
    p = lu.shape[-1]
    y = jnp.take_along_axis(q, perm, axis=1)
    for j in range(p - 1):  # L y = P q (unit diagonal), column by column
        y = y.at[:, j + 1 :].add(-lu[:, j + 1 :, j] * y[:, j : j + 1])
    for j in range(p - 1, -1, -1):  # U x = y
        y = y.at[:, j].divide(lu[:, j, j])
        if j:
            y = y.at[:, :j].add(-lu[:, :j, j] * y[:, j : j + 1])
    return y


def _split_rows(tree, r: int):
    """The first ``r`` rows of every leaf, and the rest."""
    return jax.tree.map(lambda a: a[:r], tree), jax.tree.map(lambda a: a[r:], tree)


def _solve_blocks(blk):
    """What the passes of a solve read of a segment's blocks (not ``K`` nor ``b``, the bulk)."""
    return blk._replace(b=None, K=None)


def _on_chunks(mesh: Mesh, local, n_replicated: int = 0):
    """``local`` run on every device's chunk: the first arguments sharded on their leading
    (depth) axis, the last ``n_replicated`` replicated; every output sharded on its leading axis.
    (The linear-algebra primitives inside have no replication rules, hence ``check_vma=False``.)"""

    def run(*args):
        spec = PartitionSpec(mesh.axis_names[0])
        specs = (spec,) * (len(args) - n_replicated) + (PartitionSpec(),) * n_replicated
        return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=spec, check_vma=False)(*args)

    return run


# -- the factorisation ----------------------------------------------------------------------------


def _free_end_step(seg, lam):
    """One stage of a chunk's free-end recursion: the stage recursion's step (``Q = K + Mᵀ S M``,
    the damped pivot, its LU, ``G_l``, ``S_{l-1}``; :func:`hessinv._riccati.pivot_step`) carrying also
    ``N_l``, with ``Z_l = Q_uu^{-1} B_lᵀ N_l`` from the same LU as ``G_l`` and
    ``N_{l-1} = A_lᵀ N_l − G_lᵀ B_lᵀ N_l = A⁰_lᵀ N_l``."""
    a_in, large = seg.a_in, _stage.is_large(seg)

    def step(carry, xs):
        S, N = carry
        M, K, diag, is_block = xs
        A, B = M[:, :a_in], M[:, a_in:]
        BtN = B.T @ N
        parts = _stage.Q_parts(S, M, K, a_in, diag, is_block)
        S_prev, Q_uu, lu, piv, G, Z = pivot_step(seg, parts, lam, BtN)  # one LU for G and Z
        return (S_prev, A.T @ N - G.T @ BtN), (Q_uu, lu, piv, G, Z, jnp.zeros((0, 0), S.dtype) if large else S)

    return step


def _chunk_elements(seg, unroll):
    """One chunk's free-end factors, ``Z`` and its element ``(F, C, J)`` (leading axis 1)."""

    def local(blk, lam):
        a, p, dt = seg.a_out, seg.p, blk.A.dtype
        M = jnp.concatenate([blk.A, blk.B], axis=2)
        diag, is_block = _stage.diagonal_blocks(seg, blk.A)
        carry = (jnp.zeros((a, a), dt), jnp.eye(a, dtype=dt))  # S_e = 0, N_e = I
        xs = (M, blk.K, diag, is_block)
        (J, N_start), (Q_uu, lu, piv, G, Z, S_l) = _pipeline.scan(
            _free_end_step(seg, lam), carry, xs, seg.n, reverse=True, unroll=unroll
        )
        perm = jax.lax.linalg.lu_pivots_to_permutation(piv, p) if p else jnp.zeros(piv.shape, jnp.int32)
        large = _stage.is_large(seg)
        A_cl = jnp.zeros((seg.n, 0, 0), dt) if large else blk.A - blk.B @ G
        A_blocks, A_is_block = (diag, is_block) if large else (None, None)
        st = StageFactors(Q_uu, lu, piv, perm, G, S_l, A_cl, A_blocks, A_is_block)
        C = sym(jnp.einsum("lpa,lpq,lqb->ab", Z, Q_uu, Z))  # Σ N_lᵀ B_l Z_l, as B_lᵀ N_l = Q_uu,l Z_l
        return st, Z, (N_start.T[None], C[None], J[None])

    return local


@functools.partial(jax.jit, static_argnames=("mesh", "unroll"))
def factorize_blocks(blocks, damping=0.0, *, mesh: Mesh, unroll: int = 1) -> ShardedFactorization:
    """The factorisation of ``C + λI`` from the λ-independent blocks, long segments split over ``mesh``."""
    pipe, dt = blocks.pipe, blocks.pipe.dtype
    P, lam = mesh.size, jnp.asarray(damping, dt)
    S = jnp.zeros((1, 1), dt)  # S_L = 0 (z_L is the scalar loss)
    parts = [None] * len(pipe.segments)
    for j in range(len(pipe.segments) - 1, -1, -1):
        seg, blk = pipe.segments[j], blocks.segments[j]
        if not is_split(seg, P):
            S, parts[j] = _factor_segment(seg, blk, S, lam, unroll)
            continue
        r, _, seg_c = _layout(seg, P)
        blk_head, blk_c = _split_rows(blk._replace(b=None), r)
        # independent of S: the chunks' own eliminations, all devices at once
        stages, Z, (F, C, J) = _on_chunks(mesh, _chunk_elements(seg_c, unroll), 1)(blk_c, lam)
        S_end, W, rc = [None] * P, [None] * P, [None] * P
        for c in range(P - 1, -1, -1):  # the boundary system: P small steps
            S_end[c] = S
            S, W[c], rc[c] = apply_one(F[c], C[c], J[c], S)
        head = None
        if r:
            S, head = _factor_segment(seg._replace(n=r), blk_head, S, lam, unroll)
        parts[j] = Chunks(head, stages, Z, F, C, J, jnp.stack(S_end), jnp.stack(W), jnp.stack(rc))
    return ShardedFactorization(blocks, lam, parts, mesh)


# -- the passes of a solve over one run of layers -------------------------------------------------


def _backward(seg, blk, st: StageFactors, g, s, Z=None):
    """:func:`hessinv._riccati.backward_pass` with the pivots solved without LAPACK."""
    return backward_pass(seg, blk, st, g, s, Z, solve_pivots=_lu_solve_layers)


def _chunk_backward(seg):
    """One chunk's backward pass from ``s_e = 0``: ``k⁰``, ``s⁰_{s-1}`` and ``w_c``."""

    def local(blk, st, Z, g):
        s, k, w = _backward(seg, blk, st, g, jnp.zeros((seg.a_out,), blk.A.dtype), Z)
        return k, s[None], w[None]

    return local


def _chunk_forward(seg):
    """One chunk's controls with its terminal costate ``μ_c``, forward from its ``dz_{s-1}``."""

    def local(blk, st, Z, k0, dz_start, mu):
        return forward_pass(seg, blk, st, k0 + jnp.einsum("lpa,a->lp", Z, mu[0]), dz_start[0])[1]

    return local


@jax.tree_util.register_pytree_node_class
class ShardedFactorization(Factorization):
    """A factorisation of ``C + λI`` with the layers split over the devices of a one-dimensional
    mesh (``method="parallel"``, ``mesh=``): partitioned elimination, ``L/P + P`` sequential steps.

    Build it with :func:`hessinv.factorize`. ``solve`` (and ``jax.vmap(F.solve)``, whose
    right-hand sides may be sharded too), ``matvec``, ``logdet``, ``inertia`` and ``info`` work as on
    every route; ``logdet`` and ``inertia`` are exact (read off the chunks' pivots and the boundary
    system, see :mod:`hessinv._sharded`).

    Attributes:
      blocks: the λ-independent :class:`~hessinv.Blocks`.
      damping: ``λ``.
      parts: per segment, the stage recursion's ``StageFactors`` (a segment that is not split) or
        :class:`Chunks` (one that is).
      mesh: the :class:`jax.sharding.Mesh`.
    """

    route = "parallel"

    def __init__(self, blocks, damping, parts, mesh):
        self.blocks, self.damping, self.parts, self.mesh = blocks, damping, tuple(parts), mesh

    @property
    def pipe(self):
        return self.blocks.pipe

    def tree_flatten(self):
        return (self.blocks, self.damping, self.parts), self.mesh

    @classmethod
    def tree_unflatten(cls, mesh, children):
        return cls(*children, mesh)

    def _segments(self):
        return zip(self.pipe.segments, self.blocks.segments, self.parts)

    # -- solves ---------------------------------------------------------------------------------

    def solve_rows(self, g_rows):
        """:meth:`solve` on per-segment rows: backward over the segments (the chunks of a split one
        all at once, then its boundary), then forward."""
        return self._forward(self._backward(g_rows))

    def _backward(self, g_rows):
        pipe, dt, P = self.pipe, self.pipe.dtype, self.mesh.size
        out = [None] * len(pipe.segments)
        s = jnp.zeros((1,), dt)  # s_L = 0
        for j in range(len(pipe.segments) - 1, -1, -1):
            seg, blk, part, g = pipe.segments[j], self.blocks.segments[j], self.parts[j], g_rows[j].astype(dt)
            if not isinstance(part, Chunks):
                s, k, _ = _backward(seg, blk, part, g, s)
                out[j] = k
                continue
            r, _, seg_c = _layout(seg, P)
            (blk_h, blk_c), (g_h, g_c) = _split_rows(_solve_blocks(blk), r), _split_rows(g, r)
            k0, s0, w = _on_chunks(self.mesh, _chunk_backward(seg_c))(blk_c, part.stages, part.Z, g_c)
            s_end = [None] * P
            for c in range(P - 1, -1, -1):
                s_end[c] = s
                s = s0[c] + part.F[c].T @ (part.W[c].T @ (s + part.S_end[c] @ w[c]))
            k_h = None
            if r:
                s, k_h, _ = _backward(seg._replace(n=r), blk_h, part.head, g_h, s)
            out[j] = (k_h, k0, s_end, w)
        return out

    def _forward(self, ks):
        pipe, dt, P = self.pipe, self.pipe.dtype, self.mesh.size
        out, dz = [], jnp.zeros((0,), dt)  # dz_0 = 0
        for seg, blk, part, k in zip(pipe.segments, self.blocks.segments, self.parts, ks):
            if not isinstance(part, Chunks):
                dz, dx = forward_pass(seg, blk, part, k, dz)
                out.append(dx)
                continue
            r, _, seg_c = _layout(seg, P)
            blk_h, blk_c = _split_rows(_solve_blocks(blk), r)
            k_h, k0, s_end, w = k
            dxs = []
            if r:
                dz, dx = forward_pass(seg._replace(n=r), blk_h, part.head, k_h, dz)
                dxs.append(dx)
            dz_start, mu = [], []
            for c in range(P):
                dz_start.append(dz)
                dz = part.W[c] @ (part.F[c] @ dz + w[c] - part.C[c] @ s_end[c])
                mu.append(part.S_end[c] @ dz + s_end[c])
            run = _on_chunks(self.mesh, _chunk_forward(seg_c))
            dxs.append(run(blk_c, part.stages, part.Z, k0, jnp.stack(dz_start), jnp.stack(mu)))
            out.append(dxs[0] if len(dxs) == 1 else jnp.concatenate(dxs))
        return out

    def matvec_rows(self, v_rows):
        """``(C + λI) v`` from the blocks (the paper's appendix A), on per-segment rows."""
        return _hvp.structured_hvp_rows(self.blocks, v_rows, self.damping)

    # -- what the pivots tell -------------------------------------------------------------------

    def _pivots(self) -> list:
        """Per segment ``(n, p, p)``: the pivots of the elimination (a split segment's head's own,
        then its chunks' free-end pivots)."""
        out = []
        for _, _, part in self._segments():
            if isinstance(part, Chunks):
                heads = [] if part.head is None else [part.head.Q_uu]
                out.append(jnp.concatenate(heads + [part.stages.Q_uu]))
            else:
                out.append(part.Q_uu)
        return out

    def _boundary_eigs(self) -> list:
        """Per split segment: ``(eigenvalues of M_c, sgn)``, each ``(P, a)`` (module docstring)."""
        out = []
        for part in self.parts:
            if isinstance(part, Chunks):
                lam_S, V = _per_layer(jnp.linalg.eigh, part.S_end)
                sgn = jnp.where(lam_S >= 0, 1.0, -1.0).astype(lam_S.dtype)
                R = jnp.sqrt(jnp.abs(lam_S))
                M = jax.vmap(jnp.diag)(sgn) + R[:, :, None] * (jnp.swapaxes(V, 1, 2) @ part.C @ V) * R[:, None, :]
                out.append((_per_layer(lambda M: jnp.linalg.eigvalsh(sym(M)), M), sgn))
        return out

    def _pivot_eigs(self) -> list:
        return [_per_layer(jnp.linalg.eigvalsh, Q) for seg, Q in zip(self.pipe.segments, self._pivots()) if seg.p > 0]

    def _logdet(self):
        dt = self.pipe.dtype
        sign, logabs = jnp.ones((), dt), jnp.zeros((), dt)
        for w in self._pivot_eigs():
            sign, logabs = sign * jnp.prod(jnp.sign(w)), logabs + jnp.sum(jnp.log(jnp.abs(w)))
        for w, sgn in self._boundary_eigs():  # det(I + C S_e) = det(sgn) det(M_c)
            sign = sign * jnp.prod(sgn) * jnp.prod(jnp.sign(w))
            logabs = logabs + jnp.sum(jnp.log(jnp.abs(w)))
        return sign, logabs

    def _inertia(self):
        tol = self.rcond_tol()
        pos, neg, zero = summed_sign_counts(self._pivot_eigs(), tol)
        for w, sgn in self._boundary_eigs():  # + In(−M_c) − In(−sgn)
            p, n, z = sign_counts(w, tol)
            n_sgn_neg = jnp.sum(sgn < 0, dtype=jnp.int32)
            pos, neg, zero = pos + n - n_sgn_neg, neg + p - (sgn.size - n_sgn_neg), zero + z
        return pos, neg, zero

    def rcond_tol(self):
        return _rcond_tol(self.pipe)

    def _boundary_health(self):
        """The smallest reciprocal condition of the ``I + C_c S_e`` and the last layer of its chunk."""
        rc, at = jnp.asarray(jnp.inf, self.pipe.dtype), jnp.array(-1, jnp.int32)
        for seg, _, part in self._segments():
            if isinstance(part, Chunks):
                r, m, _ = _layout(seg, self.mesh.size)
                safe = jnp.where(jnp.isnan(part.rc), 0, part.rc)  # NaN: not solvable
                c = jnp.argmin(safe)
                worse = safe[c] < rc
                rc = jnp.where(worse, safe[c], rc)
                at = jnp.where(worse, (seg.start + r + (c + 1) * m - 1).astype(jnp.int32), at)
        return rc, at

    def _finite(self):
        finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(b.K)) for b in self.blocks.segments]))
        for part in self.parts:
            arrays = [part] if not isinstance(part, Chunks) else [part.head, part.stages]
            for st in (a for a in arrays if a is not None):
                finite &= jnp.all(jnp.isfinite(st.Q_uu)) & jnp.all(jnp.isfinite(st.G))
            if isinstance(part, Chunks):
                for a in (part.Z, part.F, part.C, part.J, part.S_end, part.W):
                    finite &= jnp.all(jnp.isfinite(a))
        return finite

    def _info(self) -> Info:
        """As the stage recursion's :class:`Info` over the elimination's pivots (the chunks'
        free-end ones included), and ``ok``/``factor_ok`` False when a boundary matrix
        ``I + C_c S_e`` is singular (``min_rcond`` is then its and ``worst_layer`` its chunk's end)."""
        pipe, tol = self.pipe, self.rcond_tol()
        first_bad, finite = jnp.array(pipe.n_layers, jnp.int32), self._finite()
        for seg, blk in zip(pipe.segments, self.blocks.segments):
            ok_l = jnp.all(jnp.isfinite(blk.A), axis=(1, 2)) & jnp.all(jnp.isfinite(blk.B), axis=(1, 2))
            idx = (seg.start + jnp.argmin(ok_l)).astype(jnp.int32)
            first_bad = jnp.where(jnp.all(ok_l), first_bad, jnp.minimum(first_bad, idx))
            finite &= jnp.all(ok_l)
        first_bad = jnp.where(first_bad == pipe.n_layers, -1, first_bad).astype(jnp.int32)
        starts = [seg.start for seg in pipe.segments if seg.p > 0]
        rc = [_rcond(w) for w in self._pivot_eigs()]
        min_rc, worst = _argmin_rcond(rc, starts, pipe.dtype, tol)
        # the first layer's pivot is eliminated last and never inverted (as make_info)
        inner = [(r, s0) for r, s0 in zip(rc, starts) if s0 > 0]
        min_inner, worst_inner = _argmin_rcond([r for r, _ in inner], [s0 for _, s0 in inner], pipe.dtype, tol)
        worst = jnp.where(min_inner > tol, worst, worst_inner)
        b_rc, b_at = self._boundary_health()
        b_ok = b_rc > tol
        worst = jnp.where(~b_ok | ((min_rc > tol) & (b_rc < min_rc)), b_at, worst)
        ok, factor_ok = finite & (min_rc > tol) & b_ok, finite & (min_inner > tol) & b_ok
        return Info(ok, factor_ok, finite, jnp.minimum(min_rc, b_rc), worst, first_bad, tol, route_code("parallel"))

    def _in_chunks(self, k: int) -> bool:
        """Is layer ``k`` in a chunk of a split segment (where the pivots are free-end ones)?"""
        for seg, _, part in self._segments():
            if isinstance(part, Chunks):
                r, _, _ = _layout(seg, self.mesh.size)
                if seg.start + r <= k < seg.start + seg.n:
                    return True
        return False

    def _raise_for(self, info: Info, need: str) -> None:
        """Non-finite blocks: :class:`~hessinv.NonFiniteError`. A singular free-end pivot or
        boundary matrix, or a non-finite intermediate of the chunks: :class:`~hessinv.SingularPivotError`
        pointing to ``method="riccati"``. A singular pivot of an unsplit layer: the stage
        recursion's own message (it would fail there too)."""
        if not _pipeline.is_concrete(info):
            return
        info = jax.tree.map(np.asarray, info)
        if bool(info.ok if need == "solve" else info.factor_ok):
            return
        what, k = "H + λI (method='parallel' with a mesh)", int(info.worst_layer)
        if int(info.first_nonfinite_layer) >= 0 or (bool(info.finite) and not self._in_chunks(k)):
            _raise_for_stages(self.pipe, info, what=what, need=need)
        if not bool(info.finite) and not bool(_blocks_finite(self)):
            _raise_for_stages(self.pipe, info._replace(min_rcond=np.nan), what=what)
        where = f" at {self.pipe.layer_name(k)}" if k >= 0 else ""
        raise SingularPivotError(
            "method='parallel' with a mesh cannot solve: its partitioned elimination (each device's chunk of "
            f"layers eliminated as if nothing came after it, then a boundary system) met a singular or numerically "
            f"singular matrix{where} (reciprocal condition {float(info.min_rcond):.3g}, threshold "
            f"{float(info.rcond_tol):.3g}), or a non-finite intermediate. It needs K_xx,l + λI invertible at every "
            "chunk's last layer (λ ≠ 0 for a dense layer or a Gauss-Newton matrix) and the boundary matrices "
            "I + C S nonsingular, which an indefinite H + λI need not give even when the sequential order "
            "works: use method='riccati' (or more damping)."
        )


@jax.jit
def _blocks_finite(F: ShardedFactorization):
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(b.K)) for b in F.blocks.segments]))
