"""The paper's own route (Rahimi 2026, arXiv:2601.06096, section 6): Woodbury on a lifted system.

A second exact solver for ``(H + λI)^{-1} g``, next to the stage recursion of
:mod:`hessinv._riccati`. Notation as in MATH.md section 1 and the paper: ``A_l = ∇_z f_l``,
``B_l = ∇_x f_l`` (the blocks of ``D_x``), ``K_l = [[K_zz, K_zx], [K_xz, K_xx]]`` (the
paper's ``D_M D_zz``, ``D_M D_xz``, ``D_D D_zx``, ``D_D D_xx`` of layer ``l``), ``M`` the unit
lower block-bidiagonal matrix with ``−A_l`` below its diagonal, ``P`` the down-shift.

The lift (eq. 25-27): with ``U = [M^{-1} D_x; I]``,

    H + λI = A + Uᵀ Q U,   A = D_xᵀ M^{-T} M^{-1} D_x,
    Q = [[Pᵀ D_M D_zz P − I, Pᵀ D_M D_xz], [D_D D_zx P, D_D D_xx + λI]],

and by Woodbury (eq. 28) ``(H + λI)^{-1} = A^{-1} − A^{-1} Uᵀ S_H^{-1} U A^{-1}`` with
``S_H = Q^{-1} + U A^{-1} Uᵀ`` (eq. 35). The six steps of the paper's summary, as coded:

1. ``A^{-1} = D_x^{-1} M Mᵀ D_x^{-T}``: per-layer solves with ``B_l`` and two bidiagonal
   passes (:func:`_apply_A_inv`).
2. ``(g'_1, g'_2) = U A^{-1} g``: one forward substitution with ``M`` (:func:`_apply_U`).
3. ``Q`` from eq. 30-33: ``Q_11`` and ``Q_22`` are block-diagonal, ``Q_12`` (``Q_21``) upper
   (lower) block-bidiagonal; damping ``λ`` enters through ``Q_22``.
4. ``Q^{-1}`` by the partitioned inverse (eq. 29) with block-diagonal ``S_q`` (eq. 34):
   one small solve per layer with ``Q_22,l`` and ``S_q,l``.
5. ``S_H`` (eq. 35-39): ``S_H11 = Q̃_11 + I`` block-diagonal, ``S_H12 = Q̃_12 + Mᵀ D_x^{-T}``
   upper block-bidiagonal, ``S_H22 = Q̃_22 + D_x^{-1} M Mᵀ D_x^{-T}`` block-tridiagonal. Its
   partitioned inverse (eq. 40-43) eliminates ``S_H11`` and factorises the block-tridiagonal
   Schur complement ``S_H22 − S_H21 S_H11^{-1} S_H12`` once, by a block LDLᵀ with LU pivots
   (not Cholesky: it is indefinite in general). See "``S_H11`` is singular" below for how the
   elimination is ordered.
6. ``(g''_1, g''_2) = S_H^{-1} (g'_1, g'_2)`` by one forward and one backward block pass with
   that factorisation, then the Woodbury combination (eq. 28):
   ``x = A^{-1} g − A^{-1} Uᵀ (g''_1, g''_2)``.

Everything is per layer (``vmap``) or a ``lax.scan`` over a segment of identical layers; no
``Lp × Lp`` matrix is formed. Cost ``O(L a^3)`` for width ``a``, like the stage recursion,
but with a larger constant (about 2.2-2.5x slower in the benchmark; see ``docs/woodbury.md``).

Preconditions (MATH.md section 4; the paper leaves them unstated), checked here:

* every ``B_l = ∇_x f_l`` square, ``p_l = a_l`` (so the scalar last layer has exactly one
  parameter): a :class:`~hessinv.PipelineError` at trace time otherwise;
* every ``B_l`` invertible, every ``Q_22,l = K_xx,l + λI`` and ``S_q,l`` invertible (so ``Q``
  is), and every pivot of the ``S_H`` factorisation nonsingular: reported by :meth:`info`, and
  raised eagerly as :class:`~hessinv.SingularPivotError` naming the layer and the pivot.

The stage recursion (``method="riccati"``, and ``"auto"``'s other routes) has none of these preconditions.

Corrections to the paper's text (each checked with dense matrices in ``tests/test_woodbury.py``):

* eq. 36-38: ``S_H = Q^{-1} + U A^{-1} Uᵀ``; the minus signs in front of ``Q^{-1}`` and of the
  block matrix are a slip (they flip the sign of the whole matrix). Eq. 37's block matrix is
  ``U A^{-1} Uᵀ`` exactly.
* summary step 6(a): ``G^{-T}``, ``G^{-1}`` are applied to ``g'_2``, not ``g'_1``.
* summary step 5: the Schur complement ``S_H22 − S_H21 S_H11^{-1} S_H12`` is block-tridiagonal
  but not positive definite in general, so its "``GGᵀ``" is a block LDLᵀ/LU, not Cholesky.
* eq. 40-43 (not in MATH.md's list): ``S_H11`` is *always* singular. Its block for the scalar
  ``dz_L`` is ``Q̃_11,L + 1 = −1 + 1 = 0`` (no layer reads ``z_L``, so ``Q_11,L = −1``), and its
  block for ``dz_l`` is ``S_q,l^{-1} R_{l+1}`` with ``R = K_zz − K_zx (K_xx + λI)^{-1} K_xz``,
  which vanishes for every bias-type layer ``f(z + c)`` at ``λ = 0``. ``S_H`` itself is
  invertible whenever ``H + λI``, ``A`` and ``Q`` are (``det(H+λI) = det A det Q det S_H``).
  So the code applies eq. 40-43 one layer at a time: unknowns ordered
  ``(dz_1, dx_1, dz_2, dx_2, …)``, ``S_H`` is block-tridiagonal with ``2a × 2a`` blocks, and
  its block LDLᵀ eliminates each ``S_H11,l`` together with the matching pivot of the Schur
  complement, by one LU with partial pivoting of the ``2a × 2a`` block. Where ``S_H11`` is
  invertible this is exactly eq. 40-43 with the paper's ``GGᵀ`` (same Schur-complement
  pivots); where it is not, it still is an exact factorisation of ``S_H``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _hvp, _pipeline
from ._blocks import Blocks
from ._diagnostics import Info, route_code
from ._diagnostics import raise_for as _raise_for_riccati
from ._errors import PipelineError, SingularPivotError
from ._factorization import Factorization
from ._linalg import lu_solve, sym

PIVOTS = {
    "B": "∇_x f_l = B_l (the layer's block of D_x)",
    "Q22": "Q_22 block K_xx + λI (eq. 33)",
    "S_q": "S_q block (eq. 34) of Q's partitioned inverse",
    "S_H": "pivot of the S_H factorisation (eq. 40-43)",
}


class LayerFactors(NamedTuple):
    """Per-layer data of one segment, stacked on a leading axis of length ``n``.

    ``a = a_out = p``; ``a_in`` is the input width (0 for the first layer).
    """

    B_lu: jax.Array  # (n, a, a) LU of B_l
    B_piv: jax.Array  # (n, a) row permutation of the LU (B[perm] = L U)
    B_inv: jax.Array  # (n, a, a) B_l^{-1}: an entry of S_H (eq. 37)
    Q22: jax.Array  # (n, a, a) K_xx + λI (eq. 33)
    S_q: jax.Array  # (n, a_in, a_in) eq. 34, the block of dz_{l-1}
    Qt11: jax.Array  # (n, a_in, a_in) eq. 29, block (dz_{l-1}, dz_{l-1})
    Qt12: jax.Array  # (n, a_in, a) eq. 29, block (dz_{l-1}, dx_l)
    Qt22: jax.Array  # (n, a, a) eq. 29, block (dx_l, dx_l)
    F: jax.Array  # (n, a, 2 a_in) [S_H12ᵀ block (dx_l, dz_{l-1}), −B_l^{-1} A_l]
    Delta: jax.Array  # (n, 2a, 2a) pivots of the S_H factorisation, unknowns (dz_l, dx_l)
    D_lu: jax.Array  # (n, 2a, 2a) their LU
    D_piv: jax.Array  # (n, 2a) row permutation of the LU


def check_shapes(pipe) -> None:
    """Trace-time precondition: every ``∇_x f_l`` square (``p_l = a_l``)."""
    for seg in pipe.segments:
        if seg.p != seg.a_out:
            k = seg.start
            last = k + seg.n == pipe.n_layers
            why = " (the last layer returns the scalar loss, so it needs exactly one parameter)" if last else ""
            raise PipelineError(
                f"method='woodbury' (the paper's section 6 route) needs every ∂f_l/∂x_l square and "
                f"invertible, p_l = a_l, but {pipe.layer_name(k)} has p = {seg.p} parameters and "
                f"a = {seg.a_out} outputs{why}. Use method='riccati' (or the default 'auto'), which handles every "
                "layer shape (MATH.md section 4)."
            )


def _layer_blocks(A, B, K, lam, a_in):
    """Steps 3-4 and the per-layer entries of S_H (step 5) for one layer: eq. 29-34, 37."""
    dt, a = B.dtype, B.shape[0]
    K_zz, K_zx, K_xx = K[:a_in, :a_in], K[:a_in, a_in:], K[a_in:, a_in:]
    Q22 = sym(K_xx) + lam * jnp.eye(a, dtype=dt)  # eq. 33, damped
    q_fac = _lu(Q22)
    Y = lu_solve(*q_fac, K_zx.T)  # Q_22^{-1} Q_21 (a, a_in)
    S_q = sym(K_zz - jnp.eye(a_in, dtype=dt) - K_zx @ Y)  # eq. 34 with eq. 30-32
    s_fac = _lu(S_q)
    Qt11 = sym(lu_solve(*s_fac, jnp.eye(a_in, dtype=dt)))  # S_q^{-1}
    Qt12 = -lu_solve(*s_fac, Y.T)  # −S_q^{-1} Q_12 Q_22^{-1}
    Qt22 = sym(lu_solve(*q_fac, jnp.eye(a, dtype=dt)) - Y @ Qt12)  # Q_22^{-1} + Q_22^{-1}Q_21 S_q^{-1}Q_12 Q_22^{-1}
    b_lu, b_piv = _lu(B)
    X = lu_solve(b_lu, b_piv, jnp.concatenate([jnp.eye(a, dtype=dt), A], axis=1))
    B_inv, BiA = X[:, :a], X[:, a:]
    # S_H12 = Q̃_12 + Mᵀ D_x^{-T}: block (dz_{l-1}, dx_l) is Q̃_12 − A_lᵀ B_l^{-T}.
    E = Qt12 - A.T @ B_inv.T
    # S_H22 = Q̃_22 + D_x^{-1} M Mᵀ D_x^{-T}: diagonal block B^{-1}(I + A Aᵀ)B^{-T}.
    SH22 = sym(Qt22 + B_inv @ B_inv.T + BiA @ BiA.T)
    F = jnp.concatenate([E.T, -BiA], axis=1)
    return (b_lu, b_piv, B_inv, Q22, S_q, Qt11, Qt12, Qt22, F), SH22


def factorize_blocks(blocks: Blocks, damping=0.0) -> "WoodburyFactorization":
    """Steps 1 and 3-5 of the paper's summary on the per-layer blocks: everything but ``g``.

    Raises :class:`~hessinv.PipelineError` at trace time if a layer is not square; called on
    concrete arrays (outside ``jit``) it also raises :class:`~hessinv.SingularPivotError` naming
    the layer and the pivot where the route cannot solve.
    """
    check_shapes(blocks.pipe)
    lam = jnp.asarray(damping, blocks.pipe.dtype)
    # Eagerly, one cached compilation; under a trace, inline (no nested jit: a nested call
    # was seen to stall XLA's CPU runtime at depth >= 1024).
    impl = _factorize_jit if _pipeline.is_concrete(blocks, lam) else _factorize_impl
    F = WoodburyFactorization(blocks, lam, impl(blocks, lam))
    if _pipeline.is_concrete(F):
        F.check()
    return F


def _factorize_impl(blocks: Blocks, lam) -> list:
    pipe = blocks.pipe
    dt = pipe.dtype
    segs = pipe.segments
    per = []
    for seg, blk in zip(segs, blocks.segments):
        # lax.map in chunks rather than one vmap: a single vmap of this many small LAPACK
        # calls over >= 1024 layers deadlocked XLA's CPU runtime (jax 0.10.2); chunks don't.
        f = lambda x, a_in=seg.a_in: _layer_blocks(*x, lam, a_in)  # noqa: E731
        per.append(jax.lax.map(f, (blk.A, blk.B, blk.K), batch_size=256))

    out = []
    for j, seg in enumerate(segs):
        (b_lu, b_piv, B_inv, Q22, S_q, Qt11, Qt12, Qt22, F), SH22 = per[j]
        # S_H11 block of dz_l is Q̃_11 + I of the layer that reads z_l (layer l+1); for the
        # scalar z_L nothing does: Q_11,L = −1, so S_H11,L = 0.
        nxt = per[j + 1][0][5][:1] if j + 1 < len(segs) else -jnp.ones((1, 1, 1), dt)
        SH11 = (nxt if seg.n == 1 else jnp.concatenate([Qt11[1:], nxt])) + jnp.eye(seg.a_out, dtype=dt)

        def step(Om, xs, a=seg.a_out):
            B_inv, SH11, SH22, F = xs
            # Group (dz_l, dx_l) of S_H, minus what eliminating group l-1 left (block LDLᵀ).
            T = jnp.block([[SH11, B_inv.T], [B_inv, SH22 - F @ Om @ F.T]])
            D = sym(T)
            d_lu, d_piv = _lu(D)
            R = jax.scipy.linalg.block_diag(jnp.eye(a, dtype=dt), B_inv)
            Om = sym(R.T @ lu_solve(d_lu, d_piv, R))
            return Om, (D, d_lu, d_piv)

        if j == 0:
            Om = jnp.zeros((0, 0), dt)  # dz_0 = 0: nothing before the first group
        Om, (D, d_lu, d_piv) = _pipeline.scan(step, Om, (B_inv, SH11, SH22, F), seg.n)
        out.append(LayerFactors(b_lu, b_piv, B_inv, Q22, S_q, Qt11, Qt12, Qt22, F, D, d_lu, d_piv))
    return out


# -- the structured operators of steps 1, 2, 6 ------------------------------------------------------


def _lu(M):
    """LU with partial pivoting, keeping the row permutation (``M[perm] = L U``)."""
    lu, _, perm = jax.lax.linalg.lu(M)
    return lu, perm


def _apply_A_inv(F, g_rows):
    """Step 1: ``A^{-1} g = D_x^{-1} M Mᵀ D_x^{-T} g`` (two bidiagonal passes)."""
    pipe, dt = F.pipe, F.pipe.dtype
    segs = pipe.segments
    h = [jax.vmap(lambda l, p, g: lu_solve(l, p, g, trans=True))(f.B_lu, f.B_piv, g) for f, g in zip(F.layers, g_rows)]
    # m = Mᵀ h: m_l = h_l − A_{l+1}ᵀ h_{l+1}, backward.
    m = [None] * len(segs)
    c = jnp.zeros((1,), dt)
    for j in range(len(segs) - 1, -1, -1):
        c, m[j] = _pipeline.scan(
            lambda c, xs: (xs[0].T @ xs[1], xs[1] - c), c, (F.blocks.segments[j].A, h[j]), segs[j].n, reverse=True
        )
    # n = M m: n_l = m_l − A_l m_{l-1}, forward; then D_x^{-1}.
    out, c = [], jnp.zeros((0,), dt)
    for j, seg in enumerate(segs):
        c, nn = _pipeline.scan(lambda c, xs: (xs[1], xs[1] - xs[0] @ c), c, (F.blocks.segments[j].A, m[j]), seg.n)
        f = F.layers[j]
        out.append(jax.vmap(lu_solve)(f.B_lu, f.B_piv, nn))
    return out


def _apply_U(F, v_rows):
    """Step 2: ``U v = (M^{-1} D_x v, v)``; ``M^{-1}`` by forward substitution."""
    dt = F.pipe.dtype
    ys, y = [], jnp.zeros((0,), dt)
    for seg, blk, v in zip(F.pipe.segments, F.blocks.segments, v_rows):
        y, yy = _pipeline.scan(lambda y, xs: (lambda n: (n, n))(xs[0] @ y + xs[1] @ xs[2]), y, (blk.A, blk.B, v), seg.n)
        ys.append(yy)
    return ys, list(v_rows)


def _apply_UT(F, y_rows, w_rows):
    """``Uᵀ (y, w) = D_xᵀ M^{-T} y + w``; ``M^{-T}`` by backward substitution."""
    segs, dt = F.pipe.segments, F.pipe.dtype
    out = [None] * len(segs)
    c = jnp.zeros((1,), dt)
    for j in range(len(segs) - 1, -1, -1):
        blk = F.blocks.segments[j]

        def back(c, xs):
            A, B, y, w = xs
            s = y + c
            return A.T @ s, B.T @ s + w

        c, out[j] = _pipeline.scan(back, c, (blk.A, blk.B, y_rows[j], w_rows[j]), segs[j].n, reverse=True)
    return out


def _apply_SH_inv(F, y_rows, w_rows):
    """Step 6: ``S_H^{-1} (g'_1, g'_2)`` by the block LDLᵀ of step 5 (one pass each way)."""
    segs, dt = F.pipe.segments, F.pipe.dtype
    yhat = []
    t = jnp.zeros((0,), dt)
    for j, seg in enumerate(segs):
        f = F.layers[j]

        def fwd(t, xs, a=seg.a_out):
            Fm, B_inv, lu, piv, ry, rw = xs
            yh = jnp.concatenate([ry, rw - Fm @ t])
            z = lu_solve(lu, piv, yh)
            return jnp.concatenate([z[:a], B_inv.T @ z[a:]]), yh

        t, yh = _pipeline.scan(fwd, t, (f.F, f.B_inv, f.D_lu, f.D_piv, y_rows[j], w_rows[j]), seg.n)
        yhat.append(yh)
    uy, uw = [None] * len(segs), [None] * len(segs)
    c = jnp.zeros((2,), dt)  # nothing after the last group (dz_L, dx_L)
    for j in range(len(segs) - 1, -1, -1):
        seg, f = segs[j], F.layers[j]

        def bwd(c, xs, a=seg.a_out):
            Fm, B_inv, lu, piv, yh = xs
            u = lu_solve(lu, piv, yh - jnp.concatenate([c[:a], B_inv @ c[a:]]))
            return Fm.T @ u[a:], u

        c, u = _pipeline.scan(bwd, c, (f.F, f.B_inv, f.D_lu, f.D_piv, yhat[j]), seg.n, reverse=True)
        uy[j], uw[j] = u[:, : seg.a_out], u[:, seg.a_out :]
    return uy, uw


@jax.tree_util.register_pytree_node_class
class WoodburyFactorization(Factorization):
    """A reusable factorisation of ``H + λI`` by the paper's Woodbury route. A pytree.

    Build it with ``hessinv.factorize(..., method="woodbury")``. ``solve`` applies eq. 28
    (steps 1, 2 and 6 of the paper's summary) in ``O(L a^2)`` per right-hand side.

    Attributes:
      blocks: the λ-independent :class:`~hessinv.Blocks`.
      damping: ``λ``.
      layers: per segment, :class:`LayerFactors` (``B_l`` LU, ``Q^{-1}`` blocks, ``S_H`` pivots).
    """

    route = "woodbury"

    def __init__(self, blocks, damping, layers):
        self.blocks, self.damping, self.layers = blocks, damping, tuple(layers)

    @property
    def pipe(self):
        return self.blocks.pipe

    def tree_flatten(self):
        return (self.blocks, self.damping, self.layers), None

    @classmethod
    def tree_unflatten(cls, _, children):
        return cls(*children)

    def solve_rows(self, g_rows):
        """:meth:`solve` on per-segment row matrices (the flat form)."""
        g_rows = [g.astype(self.pipe.dtype) for g in g_rows]
        v = _apply_A_inv(self, g_rows)  # step 1
        g1, g2 = _apply_U(self, v)  # step 2
        u1, u2 = _apply_SH_inv(self, g1, g2)  # step 6
        corr = _apply_A_inv(self, _apply_UT(self, u1, u2))  # eq. 28
        return [a - b for a, b in zip(v, corr)]

    def matvec_rows(self, v_rows):
        """``(C + λI) v`` from the blocks (the paper's appendix A), on per-segment rows."""
        return _hvp.structured_hvp_rows(self.blocks, v_rows, self.damping)

    # -- health -----------------------------------------------------------------------------------

    def pivot_rcond(self):
        """Reciprocal condition of every pivot the route inverts, by kind (see ``PIVOTS``):
        a dict kind -> one ``(n,)`` array per segment (``inf`` for an empty pivot)."""

        def rc_sym(M):
            if M.shape[-1] == 0:
                return jnp.full(M.shape[:1], jnp.inf, M.dtype)
            aw = jnp.abs(jnp.linalg.eigvalsh(M))
            top = jnp.max(aw, axis=-1)
            return jnp.where(top > 0, jnp.min(aw, axis=-1) / jnp.where(top > 0, top, 1), 0)

        def rc_gen(M):
            s = jnp.linalg.svd(M, compute_uv=False)
            top = s[..., 0]
            return jnp.where(top > 0, s[..., -1] / jnp.where(top > 0, top, 1), 0)

        B = [blk.B for blk in self.blocks.segments]
        return {
            "B": [rc_gen(b) for b in B],
            "Q22": [rc_sym(f.Q22) for f in self.layers],
            "S_q": [rc_sym(f.S_q) for f in self.layers],
            "S_H": [rc_sym(f.Delta) for f in self.layers],
        }

    def rcond_tol(self):
        m = max(2 * seg.a_out for seg in self.pipe.segments)
        return jnp.asarray(m * jnp.finfo(self.pipe.dtype).eps, self.pipe.dtype)

    def _worst(self):
        """Per kind: (min finite rcond, layer). NaN rconds are consequences of an earlier
        singular pivot (NaN propagates along the passes), so they are skipped."""
        starts = [seg.start for seg in self.pipe.segments]
        res = {}
        for kind, rcs in self.pivot_rcond().items():
            allr = jnp.concatenate(rcs)
            idx = jnp.concatenate([s + jnp.arange(r.shape[0], dtype=jnp.int32) for s, r in zip(starts, rcs)])
            safe = jnp.where(jnp.isnan(allr), jnp.inf, allr)
            i = jnp.argmin(safe)
            res[kind] = (safe[i], idx[i].astype(jnp.int32))
        return res

    def _info(self) -> Info:
        """Pivot health and finiteness, as arrays (usable under ``jit``). ``min_rcond`` and
        ``worst_layer`` cover all the pivots the route inverts: ``B_l``, ``Q_22,l``, ``S_q,l``
        and the ``S_H`` factorisation's."""
        pipe = self.pipe
        tol = self.rcond_tol()
        finite = jnp.array(True)
        first_bad = jnp.array(pipe.n_layers, jnp.int32)
        for seg, blk in zip(pipe.segments, self.blocks.segments):
            ok_l = jnp.all(jnp.isfinite(blk.A), axis=(1, 2)) & jnp.all(jnp.isfinite(blk.B), axis=(1, 2))
            idx = (seg.start + jnp.argmin(ok_l)).astype(jnp.int32)
            first_bad = jnp.where(jnp.all(ok_l), first_bad, jnp.minimum(first_bad, idx))
            finite &= jnp.all(ok_l) & jnp.all(jnp.isfinite(blk.K))
        for f in self.layers:
            finite &= jnp.all(jnp.isfinite(f.Delta)) & jnp.all(jnp.isfinite(f.Qt22))
        first_bad = jnp.where(first_bad == pipe.n_layers, -1, first_bad).astype(jnp.int32)
        worst = self._worst()
        rcs = jnp.stack([w[0] for w in worst.values()])
        layers = jnp.stack([w[1] for w in worst.values()])
        i = jnp.argmin(rcs)
        min_rc, worst_layer = rcs[i], layers[i]
        ok = finite & (min_rc > tol)
        # factor_ok: this route offers no logdet/inertia, so it is the same as ok.
        return Info(ok, ok, finite, min_rc, worst_layer, first_bad, tol, route_code("woodbury"))

    def _raise_for(self, info, need) -> None:
        """Raise :class:`SingularPivotError` naming the layer and the pivot (or
        :class:`NonFiniteError`) if the route cannot solve. ``info`` cannot say which of the
        route's pivots failed, so this rediagnoses (a concrete factorisation is needed)."""
        if not _pipeline.is_concrete(self):
            return
        pipe, tol = self.pipe, float(self.rcond_tol())
        info, worst = jax.tree.map(np.asarray, _diagnose(self))
        if int(info.first_nonfinite_layer) >= 0:
            _raise_for_riccati(pipe, info)
        for kind in PIVOTS:  # in the order the route needs them
            rc, k = float(worst[kind][0]), worst[kind][1]
            if not rc > tol:
                raise SingularPivotError(
                    f"method='woodbury' cannot solve: the {PIVOTS[kind]} of {pipe.layer_name(int(k))} is singular "
                    f"or numerically singular (reciprocal condition {rc:.3g} <= {tol:.3g}). The paper's route needs "
                    "every ∇_x f_l, Q_22 block and Q invertible (MATH.md section 4); the default "
                    "method='riccati' needs only the stage pivots of H + λI nonsingular."
                )
        if not bool(info.finite):
            _raise_for_riccati(pipe, info, what="H + λI (method='woodbury')")


# jit (keyed on the static pipeline) so that an eager factorize() compiles once instead of
# dispatching op by op.
_factorize_jit = jax.jit(_factorize_impl)


@jax.jit
def _diagnose(F):
    return F._info(), F._worst()
