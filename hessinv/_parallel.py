"""The stage recursion in ``O(log L)`` sequential steps: associative scans over layers
(``method="parallel"``).

The stage (Riccati) recursion of MATH.md section 3 is sequential in depth: ``S_{l-1}`` needs
``S_l``. Each step is tiny (matrices of size ``a + p``), so on an accelerator a deep narrow network
is bound by the number of steps, not by flops. This route computes the same ``S_l`` and the same
stage pivots ``Q_uu,l`` with ``jax.lax.associative_scan``, whose depth is ``O(log L)``, following
Särkkä & García-Fernández, "Temporal parallelization of dynamic programming and linear quadratic
control" (IEEE TAC 2023), adapted to this problem (state ``dz``, control ``dx_l``, cross terms,
indefinite ``K``, ``dz_0 = 0``).

**The elements.** With ``U_l = K_xx,l + λI`` invertible, substituting
``dx_l = v − U_l^{-1} K_xz,l dz_{l-1}`` removes the cross term, and one stage of the recursion
``S ↦ S_{l-1}`` becomes the linear-fractional map

    Φ_l(S) = J_l + F_lᵀ S (I + C_l S)^{-1} F_l,
    F_l = A_l − B_l U_l^{-1} K_xz,l,   C_l = B_l U_l^{-1} B_lᵀ,   J_l = K_zz,l − K_zx,l U_l^{-1} K_xz,l

(``S − S B (U + Bᵀ S B)^{-1} Bᵀ S = S (I + C S)^{-1}``, and
``det Q_uu,l = det U_l · det(I + C_l S_l)``). Maps of this form are closed under composition,
which is associative: ``Φ_i ∘ Φ_j`` (``i`` the earlier layers, ``j`` the later) is the element

    W    = (I + C_i J_j)^{-1}
    F_ij = F_j W F_i,   C_ij = F_j W C_i F_jᵀ + C_j,   J_ij = F_iᵀ Wᵀ J_j F_i + J_i

(``(I + J_j C_i)^{-1} = Wᵀ`` since ``C`` and ``J`` are symmetric). A reverse associative scan over
a segment of identical layers gives every suffix ``Φ_l ∘ … ∘ Φ_e``; applied to the segment's end
value ``S_e`` (from the segments after it, combined one after the other: there are few), it
gives every ``S_{l-1}`` at once. The pivots ``Q_uu,l = K_xx + B_lᵀ S_l B_l + λI`` and gains
``G_l = Q_uu,l^{-1} Q_uz,l`` are then per-layer, batched.

**Solves.** The two passes of the stage recursion are affine recursions,
``s_{l-1} = (A_l − B_l G_l)ᵀ s_l + G_lᵀ g_l`` backward and ``dz_l = (A_l − B_l G_l) dz_{l-1} − B_l k_l``
forward; affine maps compose associatively, so each pass is one more associative scan per
segment. Selected inversion (``Σ_l``, MATH.md section 3) is one too.

**What it costs, and when it fails.** About ``O(Σ_l (a + p)^3)`` work like the sequential
recursion, times a small constant (each combination is a few ``a × a`` products and one
inverse, and there are about ``2L`` of them); ``O(log L)`` sequential steps per segment. On a CPU,
which runs the steps as fast as the flops, it is slower than ``method="riccati"``; it is meant for
accelerators, where the sequential recursion is launch-bound. Because the pivots are the stage
recursion's own, ``logdet`` and ``inertia`` are exact (``H + λI = Tᵀ blockdiag(Q_uu) T``). The
price of the other elimination order is that more matrices must be invertible: every
``U_l = K_xx,l + λI`` (so ``λ ≠ 0`` whenever a layer has more parameters than the rank of its
``K_xx``: a dense layer, or any layer of a Gauss-Newton matrix), every ``I + C_i J_j`` met in the
scan and every ``I + C S_e`` at a segment end. On an indefinite ``H + λI`` one of them can be
singular where the sequential order is fine; :meth:`ParallelFactorization.info` then reports
``ok = False`` and an eager call raises :class:`~hessinv.SingularPivotError` (use
``method="riccati"``). The answer is never silently wrong, but it is less accurate at small
damping: ``U_l^{-1} ~ 1/λ`` enters ``C_l``, and its rounding is amplified where the sequential
order's is not. Measured on a 9-layer tanh ``Stack`` (relative error of the solve against the
dense one, float64): ``2e-12`` against the stage recursion's ``3e-14`` at ``λ = 0.05``, ``7e-9``
against ``8e-13`` at ``λ = 1e-3``, ``3e-7`` against ``2e-12`` at ``λ = 0``. Check the residual
``F.matvec(x) − g`` when ``λ`` is small.

On a CPU with jaxlib 0.10.2, XLA's concurrency-optimised scheduler can make a program with
several independent batched linear-algebra calls hang (never return); this route's programs
have them (at 4096 layers of the core network, every time). Run with
``XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=false`` on a CPU (set before JAX
starts; without it the entry points warn, a ``RuntimeWarning``); accelerators do not use that
scheduler.

Partitioned elimination (each segment or chunk eliminated independently, then a reduced system on
the boundaries) was the alternative. It has the same kind of extra pivots, but its depth is the
chunk length plus the reduced system's, so it needs a second level to reach ``O(log L)``; the
associative scan gets there in one idea, and a segment of identical layers is exactly an array of
equally shaped elements.
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _hvp, _pipeline
from ._diagnostics import Info, make_info
from ._diagnostics import raise_for as _raise_for_stages
from ._diagnostics import rcond as _rcond
from ._diagnostics import rcond_tol as _rcond_tol
from ._errors import SingularPivotError
from ._factorization import Factorization
from ._linalg import lu_solve, sym
from ._riccati import RiccatiFactorization, StageFactors, whitened

if TYPE_CHECKING:
    from ._blocks import Blocks, SegmentBlocks


class Element(NamedTuple):
    """One linear-fractional map ``S ↦ J + Fᵀ S (I + C S)^{-1} F`` (a layer, or a run of layers
    after composition), with the health of the inverses taken to form it."""

    F: jax.Array  # (a_out, a_in)
    C: jax.Array  # (a_out, a_out), symmetric
    J: jax.Array  # (a_in, a_in), symmetric
    rc: jax.Array  # () smallest reciprocal condition of a matrix inverted so far (NaN ignored)
    at: jax.Array  # () int32: the layer where that matrix was met
    lo: jax.Array  # () int32: the first layer of the run


def _rcond_general(M, Minv):
    """``1 / (‖M‖₁ ‖M^{-1}‖₁)``, the exact 1-norm reciprocal condition, from the inverse the
    combination needs anyway (0 for a non-finite inverse; NaN where ``M`` itself is NaN)."""
    n1 = lambda X: jnp.max(jnp.sum(jnp.abs(X), axis=-2), axis=-1)  # noqa: E731
    prod = n1(M) * n1(Minv)
    ok = jnp.isfinite(prod) & (prod > 0)
    return jnp.where(ok, 1 / jnp.where(ok, prod, 1), jnp.where(jnp.isnan(prod), jnp.nan, 0))


def _worse(r1, at1, r2, at2):
    """The smaller reciprocal condition and its layer; NaN counts as healthy (a consequence of an
    earlier failure, which is recorded where it happened, or caught by the finiteness check)."""
    s1, s2 = jnp.where(jnp.isnan(r1), jnp.inf, r1), jnp.where(jnp.isnan(r2), jnp.inf, r2)
    take2 = s2 < s1
    return jnp.where(take2, s2, s1), jnp.where(take2, at2, at1)


def _compose(i: Element, j: Element) -> Element:
    """``Φ_i ∘ Φ_j`` for ``i`` the earlier run of layers and ``j`` the one right after it."""
    a = i.C.shape[0]
    M = jnp.eye(a, dtype=i.C.dtype) + i.C @ j.J
    W = jnp.linalg.inv(M)
    FjW = j.F @ W
    F = FjW @ i.F
    C = sym(FjW @ i.C @ j.F.T) + j.C
    J = sym(i.F.T @ W.T @ j.J @ i.F) + i.J
    rc, at = _worse(i.rc, i.at, j.rc, j.at)
    rc, at = _worse(rc, at, _rcond_general(M, W), j.lo)
    return Element(F, C, J, rc, at, i.lo)


#: for ``associative_scan(reverse=True)``, whose first argument is the later run of layers
_compose_later_first = jax.vmap(lambda later, earlier: _compose(earlier, later))


def _elements(seg, blk: SegmentBlocks, lam) -> Element:
    """Each layer's element ``(F_l, C_l, J_l)`` from ``U_l = K_xx,l + λI`` (batched over the segment)."""
    n, a_in, a_out, p, dt = seg.n, seg.a_in, seg.a_out, seg.p, blk.A.dtype
    K_zz = blk.K[:, :a_in, :a_in]
    layer = seg.start + jnp.arange(n, dtype=jnp.int32)
    if p == 0:  # a parameter-free layer: the state just propagates
        inf = jnp.full((n,), jnp.inf, dt)
        return Element(blk.A, jnp.zeros((n, a_out, a_out), dt), jax.vmap(sym)(K_zz), inf, layer, layer)
    K_xz, K_xx = blk.K[:, a_in:, :a_in], blk.K[:, a_in:, a_in:]
    U = jax.vmap(sym)(K_xx) + lam * jnp.eye(p, dtype=dt)
    Y = jnp.linalg.solve(U, jnp.concatenate([K_xz, jnp.swapaxes(blk.B, 1, 2)], axis=2))  # one LU for both
    Yz, Yb = Y[:, :, :a_in], Y[:, :, a_in:]
    F = blk.A - blk.B @ Yz
    C = jax.vmap(sym)(blk.B @ Yb)
    J = jax.vmap(sym)(K_zz - jnp.swapaxes(K_xz, 1, 2) @ Yz)
    return Element(F, C, J, _rcond(jnp.linalg.eigvalsh(U)), layer, layer)


def apply_one(F, C, J, S):
    """``Φ(S) = J + Fᵀ S (I + C S)^{-1} F`` of one element, with ``W = (I + C S)^{-1}`` (a solve
    with the same matrix may follow) and the health of ``I + C S``."""
    M = jnp.eye(C.shape[0], dtype=C.dtype) + C @ S
    W = jnp.linalg.inv(M)
    return sym(J + F.T @ (S @ W) @ F), W, _rcond_general(M, W)


def _apply(E: Element, S):
    """Every ``Φ(S)`` of the batched elements ``E`` at one ``S``, and the health of each ``I + C S``."""
    Phi, _, rc = jax.vmap(apply_one, in_axes=(0, 0, 0, None))(E.F, E.C, E.J, S)
    return Phi, rc


def _stages(seg, blk: SegmentBlocks, S_l, lam) -> StageFactors:
    """The stage pivots and gains from every ``S_l`` at once (batched; MATH.md section 3)."""
    n, a_in, p, dt = seg.n, seg.a_in, seg.p, blk.A.dtype
    K_xz, K_xx = blk.K[:, a_in:, :a_in], blk.K[:, a_in:, a_in:]
    SB = S_l @ blk.B
    Bt = jnp.swapaxes(blk.B, 1, 2)
    Q_uu = jax.vmap(sym)(K_xx + Bt @ SB) + lam * jnp.eye(p, dtype=dt)
    Q_uz = K_xz + jnp.swapaxes(SB, 1, 2) @ blk.A
    if p == 0:
        piv = perm = jnp.zeros((n, 0), jnp.int32)
        lu, G = Q_uu, jnp.zeros((n, 0, a_in), dt)
    else:
        lu, piv, perm = jax.lax.linalg.lu(Q_uu)
        G = jax.vmap(lu_solve)(lu, perm, Q_uz)
    return StageFactors(Q_uu, lu, piv, perm, G, S_l, blk.A - blk.B @ G, None, None)


#: The XLA flag that keeps XLA:CPU (jaxlib 0.10.2) from hanging on this route's programs.
CPU_SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def warn_about_cpu_scheduler() -> None:
    """On a CPU without :data:`CPU_SCHEDULER_FLAG`, say that the route's programs may hang (a
    warning, not an error: the hang depends on XLA's schedule). Called by the entry points when
    ``method="parallel"``, so the warning points at the caller's line."""
    if jax.default_backend() == "cpu" and CPU_SCHEDULER_FLAG not in os.environ.get("XLA_FLAGS", ""):
        warnings.warn(
            "method='parallel' on a CPU: XLA:CPU's concurrency-optimised scheduler can hang programs with "
            "several independent batched linear-algebra calls, as this route's are (seen at 4096 layers). "
            f"Set XLA_FLAGS={CPU_SCHEDULER_FLAG} before JAX starts, or use method='riccati', which is faster "
            "on a CPU.",
            RuntimeWarning,
            stacklevel=4,
        )


@jax.jit
def factorize_blocks(blocks: Blocks, damping=0.0) -> ParallelFactorization:
    """The factorisation of ``C + λI`` from the λ-independent blocks, by associative scans."""
    pipe, dt = blocks.pipe, blocks.pipe.dtype
    lam = jnp.asarray(damping, dt)
    S = jnp.zeros((1, 1), dt)  # S_L = 0 (z_L is the scalar loss)
    stages = [None] * len(pipe.segments)
    rc, at = jnp.asarray(jnp.inf, dt), jnp.array(-1, jnp.int32)
    for j in range(len(pipe.segments) - 1, -1, -1):  # few segments: combined one after the other
        seg, blk = pipe.segments[j], blocks.segments[j]
        if seg.a_in == 0:  # the first layer: S_0 is never needed, nor its element
            S_l = S[None]
        else:
            E = jax.lax.associative_scan(_compose_later_first, _elements(seg, blk, lam), reverse=True)
            S_prev, rc_apply = _apply(E, S)  # S_prev[i] = S_{l-1} for layer l = start + i
            S_l = _shift_in(S_prev, S, later=True)
            safe = jnp.where(jnp.isnan(E.rc), jnp.inf, E.rc)  # the suffixes' own inverses
            rc, at = _worse(rc, at, jnp.min(safe), E.at[jnp.argmin(safe)])
            safe = jnp.where(jnp.isnan(rc_apply), jnp.inf, rc_apply)
            rc, at = _worse(rc, at, jnp.min(safe), (seg.start + jnp.argmin(safe)).astype(jnp.int32))
            S = S_prev[0]
        stages[j] = _stages(seg, blk, S_l, lam)
    return ParallelFactorization(blocks, lam, stages, rc, at)


def _shift_in(xs, x, later: bool):
    """Each step's input from its outputs ``xs`` (stacked) and the boundary value ``x``: a backward
    recursion's step ``l`` reads ``x_l``, the output of step ``l + 1`` (``later``), a forward one
    reads the output of step ``l - 1``. A single step's input and output may differ in shape."""
    if xs.shape[0] == 1:
        return x[None]
    return jnp.concatenate([xs[1:], x[None]]) if later else jnp.concatenate([x[None], xs[:-1]])


# -- affine recursions as associative scans --------------------------------------------------------


def _affine_compose(first, second):
    """``x ↦ M₂ (M₁ x + m₁) + m₂``: ``first`` applied, then ``second`` (batched)."""
    (M1, m1), (M2, m2) = first, second
    return M2 @ M1, jnp.einsum("...ij,...j->...i", M2, m1) + m2


def _affine_forward(M, m, x0):
    """``x_i = M_i x_{i-1} + m_i`` for ``i = 0..n-1`` from ``x_{-1} = x0``: returns ``(x_{i-1})_i``
    (each step's input) and the last ``x``."""
    P, q = jax.lax.associative_scan(_affine_compose, (M, m))
    x = jnp.einsum("nij,j->ni", P, x0) + q
    return _shift_in(x, x0, later=False), x[-1]


def _affine_backward(N, m, x_end):
    """``x_{i-1} = N_i x_i + m_i`` for ``i = n-1..0`` from ``x_{n-1} = x_end``: returns ``(x_i)_i``
    (each step's input) and ``x_{-1}``."""
    # reverse=True hands the later map first, and the later one acts first.
    P, q = jax.lax.associative_scan(_affine_compose, (N, m), reverse=True)
    x = jnp.einsum("nij,j->ni", P, x_end) + q
    return _shift_in(x, x_end, later=True), x[0]


@jax.tree_util.register_pytree_node_class
class ParallelFactorization(Factorization):
    """A factorisation of ``C + λI`` by associative scans over the layers (``method="parallel"``).

    The same stage pivots ``Q_uu,l`` and gains ``G_l`` as the sequential stage recursion
    (``method="riccati"``), computed in ``O(log L)`` sequential steps per segment of identical
    layers; solves, ``inverse_diagonal`` and ``sample`` are associative scans too. ``logdet``
    and ``inertia`` are read off the pivots. Build it with :func:`hessinv.factorize`.

    Attributes:
      blocks: the λ-independent :class:`~hessinv.Blocks` (``A_l, B_l, b_l, K_l``).
      damping: ``λ``.
      stages: per segment, the stage recursion's ``StageFactors`` (pivots, LU, gains ``G_l``,
        ``S_l``, closed-loop maps ``A_l − B_l G_l``).
      element_rcond: the smallest reciprocal condition of the matrices the scans inverted
        (``K_xx,l + λI``, ``I + C_i J_j``, ``I + C S`` at segment ends), and
        element_layer: the layer where it was met (for a combination, the first layer of its
        later half).
    """

    route = "parallel"

    def __init__(self, blocks, damping, stages, element_rcond, element_layer):
        self.blocks, self.damping, self.stages = blocks, damping, tuple(stages)
        self.element_rcond, self.element_layer = element_rcond, element_layer

    @property
    def pipe(self):
        return self.blocks.pipe

    def tree_flatten(self):
        return (self.blocks, self.damping, self.stages, self.element_rcond, self.element_layer), None

    @classmethod
    def tree_unflatten(cls, _, children):
        return cls(*children)

    def _as_stages(self) -> RiccatiFactorization:
        """The same pivots seen as the sequential recursion's (for what is read off the pivots)."""
        return RiccatiFactorization(self.blocks, self.damping, self.stages)

    # -- solves ---------------------------------------------------------------------------------

    def solve_rows(self, g_rows):
        """:meth:`solve` on per-segment rows: the stage recursion's two passes, each an affine
        recursion per segment run as an associative scan."""
        return self._forward(self._backward(g_rows))

    def _backward(self, g_rows):
        """``k_l = Q_uu^{-1}(B_lᵀ s_l − g_l)``, ``s_{l-1} = (A_l − B_l G_l)ᵀ s_l + G_lᵀ g_l``, ``s_L = 0``."""
        pipe, dt = self.pipe, self.pipe.dtype
        ks = [None] * len(pipe.segments)
        s = jnp.zeros((1,), dt)
        for j in range(len(pipe.segments) - 1, -1, -1):
            seg, blk, st, g = pipe.segments[j], self.blocks.segments[j], self.stages[j], g_rows[j].astype(dt)
            Gtg = jnp.einsum("npa,np->na", st.G, g)
            s_l, s = _affine_backward(jnp.swapaxes(st.A_cl, 1, 2), Gtg, s)
            if seg.p == 0:
                ks[j] = jnp.zeros((seg.n, 0), dt)
            else:
                q_u = jnp.einsum("nap,na->np", blk.B, s_l) - g
                ks[j] = jax.vmap(lu_solve)(st.lu, st.perm, q_u)
        return ks

    def _forward(self, ks):
        """``dx_l = −(G_l dz_{l-1} + k_l)`` with ``dz_l = (A_l − B_l G_l) dz_{l-1} − B_l k_l``, ``dz_0 = 0``."""
        dt = self.pipe.dtype
        out, dz = [], jnp.zeros((0,), dt)
        for seg, blk, st, k in zip(self.pipe.segments, self.blocks.segments, self.stages, ks):
            dz_in, dz = _affine_forward(st.A_cl, -jnp.einsum("nap,np->na", blk.B, k), dz)
            out.append(-(jnp.einsum("npa,na->np", st.G, dz_in) + k))
        return out

    def matvec_rows(self, v_rows):
        """``(C + λI) v`` from the blocks (the paper's appendix A), on per-segment rows."""
        return _hvp.structured_hvp_rows(self.blocks, v_rows, self.damping)

    # -- selected inversion and sampling --------------------------------------------------------

    def _inverse_blocks_rows(self, diagonal: bool):
        """``[(C+λI)^{-1}]_ll = Q_uu,l^{-1} + G_l Σ_{l-1} G_lᵀ`` with
        ``Σ_l = A_cl Σ_{l-1} A_clᵀ + B_l Q_uu,l^{-1} B_lᵀ`` (MATH.md section 3): maps
        ``Σ ↦ M Σ Mᵀ + W`` compose associatively, ``(M₂ M₁, M₂ W₁ M₂ᵀ + W₂)``."""
        dt = self.pipe.dtype
        Sigma, out = jnp.zeros((0, 0), dt), []

        def compose(first, second):
            (M1, W1), (M2, W2) = first, second
            return M2 @ M1, M2 @ W1 @ jnp.swapaxes(M2, -1, -2) + W2

        for seg, blk, st in zip(self.pipe.segments, self.blocks.segments, self.stages):
            eye = jnp.broadcast_to(jnp.eye(seg.p, dtype=dt), (seg.n, seg.p, seg.p))
            Qinv = jax.vmap(sym)(jax.vmap(lu_solve)(st.lu, st.perm, eye)) if seg.p else eye
            P, W = jax.lax.associative_scan(compose, (st.A_cl, blk.B @ Qinv @ jnp.swapaxes(blk.B, 1, 2)))
            Sig_out = jax.vmap(sym)(P @ Sigma @ jnp.swapaxes(P, 1, 2) + W)
            Sig_in = _shift_in(Sig_out, Sigma, later=False)
            GS = st.G @ Sig_in
            if diagonal:
                out.append(jnp.diagonal(Qinv, axis1=1, axis2=2) + jnp.sum(GS * st.G, axis=2))
            else:
                out.append(jax.vmap(sym)(Qinv + GS @ jnp.swapaxes(st.G, 1, 2)))
            Sigma = Sig_out[-1]
        return out

    def _sample_rows(self, eps_rows):
        """``x = T^{-1} y`` with ``y_l = L_l^{-T} ε_l`` (``Q_uu,l = L_l L_lᵀ``): ``Cov(x) = (C + λI)^{-1}``."""
        return self._forward([-y for y in whitened(self.pipe, self.stages, eps_rows)])

    # -- what the pivots tell -------------------------------------------------------------------

    def _logdet(self):
        return self._as_stages()._logdet()

    def _inertia(self):
        return self._as_stages()._inertia()

    def pivot_rcond(self):
        """Reciprocal condition of every stage pivot, one ``(n,)`` array per segment with ``p > 0``."""
        return self._as_stages().pivot_rcond()

    def rcond_tol(self):
        return _rcond_tol(self.pipe)

    def _elimination_ok(self):
        """The scans' own inverses are all healthy and every ``S_l`` came out finite."""
        S_finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(st.S)) for st in self.stages]))
        return S_finite & (self.element_rcond > self.rcond_tol())

    def _blocks_finite(self):
        return jnp.all(jnp.array([jnp.all(jnp.isfinite(b.K)) for b in self.blocks.segments]))

    def _info(self) -> Info:
        """As the stage recursion's :class:`Info` (its pivots are the same), and also ``ok`` and
        ``factor_ok`` False when one of the scans' own inverses is singular (then ``min_rcond`` is
        that matrix's and ``worst_layer`` where it was met)."""
        ok_AB = [
            jnp.all(jnp.isfinite(blk.A), axis=(1, 2)) & jnp.all(jnp.isfinite(blk.B), axis=(1, 2))
            for blk in self.blocks.segments
        ]
        finite = self._blocks_finite()
        for st in self.stages:
            finite &= jnp.all(jnp.isfinite(st.Q_uu)) & jnp.all(jnp.isfinite(st.G))
        info = make_info(self.pipe, ok_AB, finite, [st.Q_uu for st in self.stages], route="parallel")
        elim = self._elimination_ok()
        worse = self.element_rcond < info.min_rcond
        return info._replace(
            ok=info.ok & elim,
            factor_ok=info.factor_ok & elim,
            min_rcond=jnp.minimum(info.min_rcond, self.element_rcond),
            worst_layer=jnp.where(~elim | worse, self.element_layer, info.worst_layer),
        )

    def _raise_for(self, info: Info, need: str) -> None:
        """Non-finite blocks: :class:`~hessinv.NonFiniteError`. A singular matrix of the scans'
        own: :class:`~hessinv.SingularPivotError` pointing to ``method="riccati"``. A singular
        stage pivot: the stage recursion's own message (it would fail there too)."""
        if not _pipeline.is_concrete(info):
            return
        info = jax.tree.map(np.asarray, info)
        if bool(info.ok if need == "solve" else info.factor_ok):
            return
        if int(info.first_nonfinite_layer) >= 0:
            _raise_for_stages(self.pipe, info)
        if not _pipeline.is_concrete(self):
            return
        blocks_finite, elim = (bool(b) for b in _diagnose(self))
        if not blocks_finite:
            _raise_for_stages(self.pipe, info._replace(ok=False, min_rcond=np.nan), what="H + λI (method='parallel')")
        if not elim:
            rc, k = float(self.element_rcond), int(self.element_layer)
            where = f" at {self.pipe.layer_name(k)}" if k >= 0 else ""
            raise SingularPivotError(
                "method='parallel' cannot solve: the order in which its associative scan eliminates the layers "
                f"met a singular or numerically singular matrix{where} (reciprocal condition {rc:.3g} <= "
                f"{float(self.rcond_tol()):.3g}, or a non-finite intermediate). It needs every K_xx,l + λI "
                "invertible (λ ≠ 0 when a layer has more parameters than the rank of its K_xx, e.g. a dense "
                "layer or a Gauss-Newton matrix) and the scan's combinations nonsingular, which an indefinite "
                "H + λI need not give even when the sequential order works: use method='riccati'."
            )
        _raise_for_stages(self.pipe, info, what="H + λI (method='parallel')", need=need)


@jax.jit
def _diagnose(F: ParallelFactorization):
    return F._blocks_finite(), F._elimination_ok()
