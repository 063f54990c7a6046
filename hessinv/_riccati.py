"""The exact stage (Riccati) recursion for ``(H + λI)^{-1} g`` (MATH.md section 3).

``(H + λI) dx = g`` is the stationarity condition of a time-varying LQR problem with state
``dz`` and control ``dx``. Backward over the layers, from ``S_L = 0``:

    Q_uu = K_xx + B_lᵀ S_l B_l + λI        (the stage pivot, p_l × p_l)
    Q_uz = K_xz + B_lᵀ S_l A_l
    Q_zz = K_zz + A_lᵀ S_l A_l
    G_l  = Q_uu^{-1} Q_uz
    S_{l-1} = Q_zz − Q_uzᵀ G_l              (symmetrised)

That is the *factorisation*: it does not involve ``g``. A *solve* is then two cheap passes,
backward ``q_u = B_lᵀ s_l − g_l``, ``k_l = Q_uu^{-1} q_u``, ``s_{l-1} = A_lᵀ s_l − G_lᵀ q_u``
and forward ``dx_l = −(G_l dz_{l-1} + k_l)``, ``dz_l = A_l dz_{l-1} + B_l dx_l``.

Each pivot is factorised by LU with partial pivoting, not Cholesky, so an indefinite
``H + λI`` (the normal case away from a minimum) is solved exactly as long as every pivot is
nonsingular. Since ``H + λI = Tᵀ blockdiag(Q_uu,l) T`` with ``T`` unit block-triangular, the
pivots also give ``log|det|``, its sign and (Sylvester) the inertia.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp

from . import _hvp, _pipeline, _stage
from ._diagnostics import Info, make_info, rcond_tol, summed_sign_counts
from ._diagnostics import rcond as _rcond
from ._factorization import Factorization
from ._linalg import lu_solve, pivot_solve, sym

if TYPE_CHECKING:  # for annotations only: _blocks imports this module
    from ._blocks import Blocks, SegmentBlocks


class StageFactors(NamedTuple):
    """Per-stage data of one segment, stacked on a leading axis of length ``n``."""

    Q_uu: jax.Array  # (n, p, p) the stage pivots
    lu: jax.Array  # (n, p, p) their LU factors (partial pivoting)
    piv: jax.Array  # (n, p) LAPACK-style row pivots (for the determinant's sign)
    perm: jax.Array  # (n, p) the same row permutation as an index vector (for solves)
    G: jax.Array  # (n, p, a_in) the gains
    S: jax.Array  # (n, a_out, a_out) the S_l each stage was built from ((n, 0, 0) if large)
    A_cl: jax.Array  # (n, a_out, a_in) closed-loop maps A_l − B_l G_l ((n, 0, 0) if large)
    A_blocks: jax.Array | None  # (n, examples, w_out, w_in) A_l's diagonal blocks (large, batched layers)
    A_is_block: jax.Array | None  # (n,) bool: A_l is exactly block-diagonal (see _stage.diagonal_blocks)


def schur_update(Q_zz, Q_uz, G, large: bool):
    """``S_{l-1} = Q_zz − Q_uzᵀ G`` (``G = Q_uu^{-1} Q_uz``), symmetrised.

    ``Q_uzᵀ Q_uu^{-1} Q_uz`` is symmetric, but its computed value is not: the solve amplifies
    rounding by up to ``cond(Q_uu)``, and an unsymmetric ``S`` feeds that error into every stage
    below (MATH.md section 6). A small layer symmetrises the whole update. A large one
    (:func:`hessinv._stage.is_large`) symmetrises only that term, with a second product,
    ``½ (Q_uzᵀ G + Gᵀ Q_uz)``: XLA's CPU backend fuses the transpose of an ``a × a`` matrix without
    tiling it, and on the benchmark MLP (``a = 512``) that pass cost 1-2 ms a layer, more than the
    extra ``a² p`` product (for small layers it is the other way round). ``Q_zz = A_lᵀ S_l A_l + K_zz``
    is then left as computed: its asymmetry is rounding of products with a symmetric ``S_l``, not
    amplified by a solve."""
    if large:
        return Q_zz - 0.5 * (Q_uz.T @ G + G.T @ Q_uz)
    return sym(Q_zz - Q_uz.T @ G)


def stage_step(seg, S, M, K, diag, is_block, lam, q=None):
    """One stage of the recursion (the module docstring), the one kernel that both
    :func:`factorize_blocks` and the one-pass ``ihvp`` (:mod:`hessinv._oneshot`) run.

    From ``S_l`` and the layer's ``M_l = [A_l B_l]``, ``K_l`` (``None``: zero) and ``A_l``'s
    diagonal blocks (:mod:`hessinv._stage`): the blocks of ``Q = K + Mᵀ S M``, the damped pivot
    ``Q_uu``, its LU, the gain ``G = Q_uu^{-1} Q_uz`` and ``S_{l-1}``. With ``q`` (the one-pass
    solve's ``B_lᵀ s_l − g_l``) the same LU also gives ``k = Q_uu^{-1} q``. A parameter-free
    layer (a loss head) has no pivot: the state just propagates.

    Returns ``(S_{l-1}, Q_uu, lu, pivots, G, k)`` (``k = 0`` without ``q``)."""
    parts = _stage.Q_parts(S, M, K, seg.a_in, diag, is_block)
    S_prev, Q_uu, lu, piv, G, k = pivot_step(seg, parts, lam, None if q is None else q[:, None])
    return S_prev, Q_uu, lu, piv, G, jnp.zeros((seg.p,), G.dtype) if q is None else k[:, 0]


def pivot_step(seg, parts, lam, X=None):
    """:func:`stage_step` from the blocks ``(Q_zz, Q_uz, Q_uu)`` of ``Q`` (however they were
    formed: :func:`hessinv._stage.Q_parts`, :func:`hessinv._stage.Q_parts_per_example`). With
    ``X`` (``(p, k)`` further columns: the one-pass solve's ``q``, the sharded route's
    ``B_lᵀ N_l``) the LU that gives ``G`` also gives ``Y = Q_uu^{-1} X``.

    Returns ``(S_{l-1}, Q_uu, lu, pivots, G, Y)`` (``Y`` is ``(p, 0)`` without ``X``)."""
    p, a_in = seg.p, seg.a_in
    Q_zz, Q_uz, Q_uu = parts
    dt = Q_zz.dtype
    k = 0 if X is None else X.shape[1]
    if p == 0:  # a parameter-free layer (a loss head) has no pivot: the state just propagates
        empty = jnp.zeros((0, 0), dt)
        return sym(Q_zz), empty, empty, jnp.zeros((0,), jnp.int32), jnp.zeros((0, a_in), dt), jnp.zeros((0, k), dt)
    Q_uu = sym(Q_uu) + lam * jnp.eye(p, dtype=dt)
    lu, piv, GY = pivot_solve(Q_uu, Q_uz if X is None else jnp.concatenate([Q_uz, X], axis=1))  # one LU
    G, Y = GY[:, :a_in], GY[:, a_in:]
    return schur_update(Q_zz, Q_uz, G, _stage.is_large(seg)), Q_uu, lu, piv, G, Y


def _factor_segment(seg, blk: SegmentBlocks, S, lam, unroll):
    """Backward recursion through one segment; returns S before it and its StageFactors.

    Only the ``S`` recursion is sequential. Each step forms the blocks ``Q_zz``, ``Q_uz``,
    ``Q_uu`` of ``Q = K + Mᵀ S M`` with ``M = [A_l B_l]`` (see :mod:`hessinv._stage`
    for batch-block-diagonal ``A_l``), factorises the pivot and updates ``S``; everything else is
    batched over the segment outside the loop."""
    p, dt = seg.p, blk.A.dtype
    # A large layer keeps neither S_l nor A_l − B_l G_l (a_out² and a_out·a_in per layer): its
    # solves use A_l and B_l from the blocks instead (see _stage.is_large).
    large = _stage.is_large(seg)

    def kept(S):
        return jnp.zeros((0, 0), dt) if large else S

    M = jnp.concatenate([blk.A, blk.B], axis=2)  # (n, a_out, a_in + p)
    diag, is_block = _stage.diagonal_blocks(seg, blk.A)

    def step(S, xs):
        M, K, diag, is_block = xs
        S_prev, Q_uu, lu, piv, G, _ = stage_step(seg, S, M, K, diag, is_block, lam)
        return S_prev, (Q_uu, lu, piv, G, kept(S))

    xs = (M, blk.K, diag, is_block)
    S, (Q_uu, lu, piv, G, S_l) = _pipeline.scan(step, S, xs, seg.n, reverse=True, unroll=unroll)
    perm = jax.lax.linalg.lu_pivots_to_permutation(piv, p) if p else jnp.zeros(piv.shape, jnp.int32)
    # the closed-loop maps dz_l = (A_l − B_l G_l) dz_{l-1} + ...
    A_cl = jnp.zeros((seg.n, 0, 0), dt) if large else blk.A - blk.B @ G
    # A large layer's solves apply A_l block by block where that is exact (None: dense, or small).
    A_blocks, A_is_block = (diag, is_block) if large else (None, None)
    return S, StageFactors(Q_uu, lu, piv, perm, G, S_l, A_cl, A_blocks, A_is_block)


@functools.partial(jax.jit, static_argnames=("unroll",))
def factorize_blocks(blocks: Blocks, damping=0.0, *, unroll: int = 1) -> RiccatiFactorization:
    dt = blocks.pipe.dtype
    lam = jnp.asarray(damping, dt)
    S = jnp.zeros((1, 1), dt)  # S_L = 0 (z_L is the scalar loss)
    stages = [None] * len(blocks.segments)
    for j in range(len(blocks.segments) - 1, -1, -1):
        S, stages[j] = _factor_segment(blocks.pipe.segments[j], blocks.segments[j], S, lam, unroll)
    return RiccatiFactorization(blocks, lam, stages)


def whitened(pipe, stages, eps_rows) -> list:
    """``y_l = L_l^{-T} ε_l`` per segment, ``Q_uu,l = L_l L_lᵀ`` the stage pivots' Cholesky
    factors (NaN where a pivot is not positive definite): what a sample is made of."""
    tri = functools.partial(jax.lax.linalg.triangular_solve, left_side=True, lower=True, transpose_a=True)
    ys = []
    for seg, st, eps in zip(pipe.segments, stages, eps_rows):
        if seg.p == 0:
            ys.append(eps)
            continue
        L = jnp.linalg.cholesky(st.Q_uu)
        ys.append(jax.vmap(lambda L, e: tri(L, e[:, None])[:, 0])(L, eps.astype(L.dtype)))
    return ys


@jax.tree_util.register_pytree_node_class
class RiccatiFactorization(Factorization):
    """A reusable factorisation of ``C + λI`` by the stage recursion (``method="riccati"``). A pytree.

    Build it with :func:`hessinv.factorize`. Then ``solve`` costs about one hvp per right-hand
    side (``jax.vmap(F.solve)`` over a leading axis for many), and ``logdet`` / ``inertia`` are
    read off the pivots.

    Attributes:
      blocks: the λ-independent :class:`~hessinv.Blocks` (``A_l, B_l, b_l, K_l``).
      damping: ``λ``.
      stages: per segment, :class:`StageFactors` (pivots ``Q_uu``, their LU, gains ``G_l``, ``S_l``;
        a large layer keeps ``A_l``'s diagonal blocks instead of ``S_l``: see ``_stage.is_large``).
    """

    route = "riccati"

    def __init__(self, blocks, damping, stages):
        self.blocks, self.damping, self.stages = blocks, damping, tuple(stages)

    @property
    def pipe(self):
        return self.blocks.pipe

    def tree_flatten(self):
        return (self.blocks, self.damping, self.stages), None

    @classmethod
    def tree_unflatten(cls, _, children):
        return cls(*children)

    # -- solves ---------------------------------------------------------------------------------

    def solve_rows(self, g_rows):
        """:meth:`solve` on per-segment row matrices (the flat form).

        In closed-loop form the two sequential passes are one matrix-vector product per layer:
        backward ``s_{l-1} = (A_l − B_l G_l)ᵀ s_l + G_lᵀ g_l``, forward
        ``dz_l = (A_l − B_l G_l) dz_{l-1} − B_l k_l``; the pivot solves
        ``k_l = Q_uu^{-1}(B_lᵀ s_l − g_l)`` and ``dx_l = −(G_l dz_{l-1} + k_l)`` are batched.
        A large layer (no closed-loop map kept) takes ``A_l`` and ``B_l`` separately instead."""
        return self._forward(self._backward(g_rows))

    def _backward(self, g_rows):
        """The backward pass: ``k_l = Q_uu^{-1}(B_lᵀ s_l − g_l)`` per segment (``T^{-T} g``, scaled)."""
        segs, dt = self.pipe.segments, self.pipe.dtype
        ks = [None] * len(segs)
        s = jnp.zeros((1,), dt)  # s_L = 0
        for j in range(len(segs) - 1, -1, -1):
            s, ks[j], _ = backward_pass(segs[j], self.blocks.segments[j], self.stages[j], g_rows[j].astype(dt), s)
        return ks

    def _forward(self, ks):
        """The forward pass ``dx_l = −(G_l dz_{l-1} + k_l)``, ``dz_l = A_l dz_{l-1} + B_l dx_l``
        from ``dz_0 = 0``: ``x = T^{-1}(−k)`` for the unit block-triangular ``T``."""
        out = []
        dz = jnp.zeros((0,), self.pipe.dtype)  # dz_0 = 0
        for seg, blk, st, k in zip(self.pipe.segments, self.blocks.segments, self.stages, ks):
            dz, dx = forward_pass(seg, blk, st, k, dz)
            out.append(dx)
        return out

    # -- selected inversion and sampling (MATH.md section 3) ------------------------------------

    def _inverse_blocks_rows(self, diagonal: bool):
        """``[(C+λI)^{-1}]_ll = Q_uu,l^{-1} + G_l Σ_{l-1} G_lᵀ`` by one forward pass over
        ``Σ_l = (A_l − B_l G_l) Σ_{l-1} (A_l − B_l G_l)ᵀ + B_l Q_uu,l^{-1} B_lᵀ`` from ``Σ_0 = 0``.

        With ``C + λI = Tᵀ D T`` the inverse is ``T^{-1} D^{-1} T^{-T}``, and the forward pass
        (:meth:`_forward`) applies ``T^{-1}``: ``Σ_l`` is the "covariance" of ``dz_l`` when the
        stages' inputs have covariance ``Q_uu^{-1}`` (the Rauch-Tung-Striebel smoother; the
        algebra holds for indefinite pivots too). ``O(a² (a + p) + p³)`` per layer."""
        dt = self.pipe.dtype
        Sigma = jnp.zeros((0, 0), dt)  # Σ_0 = 0: z_0 does not depend on the parameters
        out = []
        for seg, blk, st in zip(self.pipe.segments, self.blocks.segments, self.stages):
            eye = jnp.eye(seg.p, dtype=dt)

            def step(Sig, xs, p=seg.p, eye=eye):
                A, B, G, lu, perm = xs
                Qinv = sym(lu_solve(lu, perm, eye)) if p else eye
                GS = G @ Sig
                block = jnp.diagonal(Qinv) + jnp.sum(GS * G, axis=1) if diagonal else sym(Qinv + GS @ G.T)
                A_cl = A - B @ G
                return sym(A_cl @ Sig @ A_cl.T + B @ Qinv @ B.T), block

            Sigma, blocks = _pipeline.scan(step, Sigma, (blk.A, blk.B, st.G, st.lu, st.perm), seg.n)
            out.append(blocks)
        return out

    def _sample_rows(self, eps_rows):
        """``x = T^{-1} y`` with ``y_l = L_l^{-T} ε_l`` (``Q_uu,l = L_l L_lᵀ``), so that
        ``Cov(x) = T^{-1} D^{-1} T^{-T} = (C + λI)^{-1}``; the Cholesky factors are NaN (and so
        the samples) where a pivot is not positive definite."""
        return self._forward([-y for y in whitened(self.pipe, self.stages, eps_rows)])

    def matvec_rows(self, v_rows):
        """``(C + λI) v`` from the blocks (the paper's appendix A), on per-segment rows."""
        return _hvp.structured_hvp_rows(self.blocks, v_rows, self.damping)

    # -- what the pivots tell -------------------------------------------------------------------

    def _pivot_stages(self):
        return [(seg, st) for seg, st in zip(self.pipe.segments, self.stages) if seg.p > 0]

    def _logdet(self):
        dt = self.pipe.dtype
        sign, logabs = jnp.ones((), dt), jnp.zeros((), dt)
        for seg, st in self._pivot_stages():
            d = jnp.diagonal(st.lu, axis1=-2, axis2=-1)
            swaps = jnp.sum(st.piv != jnp.arange(seg.p, dtype=st.piv.dtype), axis=-1)
            sign = sign * jnp.prod(jnp.sign(d)) * jnp.prod(jnp.where(swaps % 2 == 1, -1.0, 1.0).astype(dt))
            logabs = logabs + jnp.sum(jnp.log(jnp.abs(d)))
        return sign, logabs

    def pivot_eigvalsh(self):
        """Eigenvalues of every pivot ``Q_uu,l``: one ``(n, p)`` array per segment with ``p > 0``."""
        return [jnp.linalg.eigvalsh(st.Q_uu) for _, st in self._pivot_stages()]

    def pivot_rcond(self):
        """Reciprocal condition ``min|eig| / max|eig|`` of every pivot, one ``(n,)`` array per
        segment with ``p > 0`` (0 for an all-zero pivot, NaN when the pivot is not finite)."""
        return [_rcond(w) for w in self.pivot_eigvalsh()]

    def rcond_tol(self):
        return rcond_tol(self.pipe)

    def _inertia(self):
        return summed_sign_counts(self.pivot_eigvalsh(), self.rcond_tol())

    def _info(self) -> Info:
        ok_AB = [
            jnp.all(jnp.isfinite(blk.A), axis=(1, 2)) & jnp.all(jnp.isfinite(blk.B), axis=(1, 2))
            for blk in self.blocks.segments
        ]
        finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(blk.K)) for blk in self.blocks.segments]))
        for st in self.stages:
            finite &= jnp.all(jnp.isfinite(st.Q_uu)) & jnp.all(jnp.isfinite(st.G))
        return make_info(self.pipe, ok_AB, finite, [st.Q_uu for st in self.stages])


# -- the passes of a solve over one segment, or one run of its layers ------------------------------


def backward_pass(seg, blk, st: StageFactors, g, s, Z=None, solve_pivots=None):
    """``q_u = B_lᵀ s_l − g_l``, ``k_l = Q_uu^{-1} q_u`` and ``s_{l-1} = A_lᵀ s_l − G_lᵀ q_u``
    backward from ``s`` after the run's last layer, and with ``Z`` (``(n, p, a)``, the sharded
    route's boundary couplings) also ``w = −Σ_l Z_lᵀ q_u``: returns ``(s before it, k, w)``. Only
    ``s`` is in the loop. ``solve_pivots(lu, perm, q)`` solves every layer's pivot system
    (default: LAPACK's, vmapped)."""
    dt = blk.A.dtype
    if _stage.is_large(seg):  # A_l and B_l separately (no closed-loop map kept)

        def back(s, xs):
            A, blocks, is_block, B, G, g = xs
            return _stage.matvec(A, blocks, is_block, s, transpose=True) - G.T @ (B.T @ s - g), s

        xs = (blk.A, st.A_blocks, st.A_is_block, blk.B, st.G, g)
        s, s_l = _pipeline.scan(back, s, xs, seg.n, reverse=True)
    else:  # with the closed-loop map: s_{l-1} = (A_l − B_l G_l)ᵀ s_l + G_lᵀ g_l
        Gtg = jnp.einsum("npa,np->na", st.G, g)
        s, s_l = _pipeline.scan(lambda s, xs: (xs[0].T @ s + xs[1], s), s, (st.A_cl, Gtg), seg.n, reverse=True)
    if seg.p == 0:
        return s, jnp.zeros((seg.n, 0), dt), None if Z is None else jnp.zeros(Z.shape[2:], dt)
    q_u = jnp.einsum("nap,na->np", blk.B, s_l) - g
    k = (solve_pivots or jax.vmap(lu_solve))(st.lu, st.perm, q_u)
    w = None if Z is None else -jnp.einsum("lpa,lp->a", Z, q_u)
    return s, k, w


def forward_pass(seg, blk, st: StageFactors, k, dz):
    """``dx_l = −(G_l dz_{l-1} + k_l)``, ``dz_l = A_l dz_{l-1} + B_l dx_l`` forward from ``dz``
    before the run's first layer: returns ``(dz after it, dx)``."""
    if _stage.is_large(seg):

        def fwd(dz, xs):
            A, blocks, is_block, B, G, k = xs
            dx = -(G @ dz + k)
            return _stage.matvec(A, blocks, is_block, dz) + B @ dx, dx

        return _pipeline.scan(fwd, dz, (blk.A, st.A_blocks, st.A_is_block, blk.B, st.G, k), seg.n)
    Bk = jnp.einsum("nap,np->na", blk.B, k)
    dz, dz_in = _pipeline.scan(lambda dz, xs: (xs[0] @ dz - xs[1], dz), dz, (st.A_cl, Bk), seg.n)
    return dz, -(jnp.einsum("npa,na->np", st.G, dz_in) + k)
