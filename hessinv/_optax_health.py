"""The health of ``C + λI`` at the damping of an optimiser step, cheaply.

Every step of :mod:`hessinv._optax` reports whether ``C + λI`` is positive definite, how many
negative eigenvalues it has and how well conditioned it is (:class:`Health`). On the stage
recursion these are read off the stage pivots: ``C + λI = Tᵀ blockdiag(Q_uu,l) T`` with ``T``
unit block-triangular, so by Sylvester's law of inertia ``C + λI ≻ 0`` iff every pivot has a
Cholesky factor (MATH.md section 3). By default one Cholesky per pivot decides it and estimates
the condition; with ``inertia=True`` the pivots' eigenvalues give the exact counts, at about
twice the cost of the factorisation on a CPU. The other routes answer from their own factors.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from . import _diagnostics


class Health(NamedTuple):
    """What a step knows about ``C + λI`` at its damping. Scalar arrays.

    Attributes:
      positive_definite: ``C + λI ≻ 0``.
      n_neg: the number of negative eigenvalues (exact with ``inertia=True``); otherwise 0 when
        positive definite and -1 (not counted) when not.
      min_rcond: the smallest reciprocal condition of any pivot: exact with ``inertia=True``,
        else an estimate that bounds it from above (0 when not positive definite).
      ok: finite, with ``min_rcond`` above the route's singularity threshold.
    """

    positive_definite: jax.Array
    n_neg: jax.Array
    min_rcond: jax.Array
    ok: jax.Array


def pivots(F) -> list:
    """The stage pivots ``Q_uu,l`` of a stage-recursion factorisation, one ``(n, p, p)`` stack per
    segment with ``p > 0``."""
    return [st.Q_uu for _, st in F._pivot_stages()]


def cholesky_rcond(L):
    """``(factorised, (min L_ii / max L_ii)²)`` of Cholesky factors ``L`` ``(..., p, p)``: the
    factor exists (finite), and the estimate of the reciprocal condition (0 where it does not)."""
    ok = jnp.all(jnp.isfinite(L), axis=(-2, -1))
    dg = jnp.abs(jnp.diagonal(L, axis1=-2, axis2=-1))
    top = jnp.max(dg, axis=-1)
    return ok, jnp.where(ok & (top > 0), (jnp.min(dg, axis=-1) / jnp.where(top > 0, top, 1)) ** 2, 0)


def cholesky_health(pivots):
    """``(positive_definite, rcond_estimate)`` from one Cholesky per stage pivot.

    ``(min L_ii / max L_ii)²`` bounds a pivot's reciprocal condition from above; 0 for a pivot
    that is not positive definite. On CPU this is far cheaper, and on a shared machine far
    steadier, than the pivots' eigenvalues.
    """
    pd = jnp.array(True)
    est = None
    for Q in pivots:
        ok, rc = cholesky_rcond(jnp.linalg.cholesky(Q))
        pd &= jnp.all(ok)
        est = jnp.min(rc) if est is None else jnp.minimum(est, jnp.min(rc))
    return pd, (jnp.asarray(jnp.inf) if est is None else est)


def _pivot_eigen_health(pivots, tol):
    """``(n_neg, min_rcond, ok)`` of ``C + λI`` from one ``eigvalsh`` per stage pivot: the same
    quantities and thresholds as ``Factorization.inertia()`` and ``.info()``, which would each
    recompute the eigenvalues."""
    neg = jnp.zeros((), jnp.int32)
    min_rc = jnp.asarray(jnp.inf, tol.dtype)
    finite = jnp.array(True)
    for w in [jnp.linalg.eigvalsh(Q) for Q in pivots]:
        neg = neg + _diagnostics.sign_counts(w, tol)[1]
        rc = _diagnostics.rcond(w)
        min_rc = jnp.minimum(min_rc, jnp.min(jnp.where(jnp.isnan(rc), jnp.inf, rc)))
        finite &= jnp.all(jnp.isfinite(w))
    return neg, min_rc, finite & (min_rc > tol)


def pivots_health(pivots, tol, inertia: bool) -> Health:
    """:class:`Health` from the stage pivots: their Cholesky factors, and their eigenvalues with
    ``inertia``. ``tol`` is the singularity threshold ``max(p_l)·eps``."""
    pd, min_rcond = cholesky_health(pivots)
    if inertia:
        n_neg, min_rcond, ok = _pivot_eigen_health(pivots, tol)
    else:  # positive definite: no negative eigenvalue; otherwise the count was not computed
        n_neg = jnp.where(pd, 0, -1).astype(jnp.int32)
        ok = pd & jnp.isfinite(min_rcond) & (min_rcond > tol)
    return Health(pd, n_neg, min_rcond, ok)


def _dense_health(F, inertia: bool) -> Health:
    """The dense route: its Cholesky succeeded, with the condition estimated from the factor's
    diagonal as for the pivots (the eigenvalues only with ``inertia``)."""
    factorised, min_rcond = cholesky_rcond(F.chol)
    pd = F.is_pd & factorised
    if inertia:
        info = F._info()
        return Health(pd, F._inertia()[1], info.min_rcond, info.ok)
    return Health(pd, jnp.where(pd, 0, -1).astype(jnp.int32), min_rcond, pd & (min_rcond > F.rcond_tol()))


def _output_space_health(F, inertia: bool) -> Health:
    """The output-space route (``G + λI = λI + Zᵀ diag(D) Z``): a bound from the negative part of
    ``Hℓ`` and a power-iteration estimate (the ``m × m`` inertia and exact condition with
    ``inertia``).

    ``Zᵀ diag(D) Z ⪰ −ν I`` with ``ν = Σ_{D_i < 0} ‖Z_i‖²``, so ``G + λI ≻ 0`` when ``λ > ν``
    (for a convex loss ``ν = 0``: every ``λ > 0``), with eigenvalues at least ``λ − ν`` and at
    most ``λ + λ_max(Z Zᵀ)``: ``rcond ≈ (λ − ν) / (λ + λ_max(Z Zᵀ))``, ``λ_max`` by a few
    steps of power iteration. A larger ``ν`` is reported as not positive definite (not counted)."""
    if inertia:
        info, n_neg = F._info(), F._inertia()[1]
        return Health(info.ok & (n_neg == 0), n_neg, info.min_rcond, info.ok)
    lam, P = F.damping, F.P
    finite = jnp.all(jnp.isfinite(P)) & jnp.all(jnp.isfinite(F.lu))
    # G = Zᵀ diag(D) Z ⪰ −Σ_{D_i < 0} ‖Z_i‖² I, so G + λI ≻ 0 whenever λ exceeds that mass. Near a
    # minimum of a softmax cross-entropy the loss Hessian's exact zeros come out as ±1e-16 (the
    # rounding of p − p² at p ≈ 1), far above the share of its tiny largest eigenvalue that
    # _gauss_newton._root_times calls zero: counting any D_i < 0 as "not positive definite"
    # would stop LM from ever lowering λ there.
    neg = jnp.sum(jnp.where(F.D < 0, jnp.sum(F.Z * F.Z, axis=1), 0))
    pd = (lam > neg) & (lam > 0) & finite
    # Power iteration from P's diagonal (its largest entries mark the heaviest rows, so the start
    # already leans to the top eigenvector): 4 products. The whole check measured 1.2 ms at
    # m = 640 (XLA:CPU, 2 cores), 3.0 ms with 20 products from a constant start. The Rayleigh
    # quotient bounds λ_max from below, so min_rcond bounds the reciprocal condition from above,
    # as on the other routes.
    v = jnp.diagonal(P)
    for _ in range(4):
        v = v / jnp.maximum(jnp.linalg.norm(v), jnp.finfo(P.dtype).tiny)
        v = P @ v
    v = v / jnp.maximum(jnp.linalg.norm(v), jnp.finfo(P.dtype).tiny)
    top = jnp.maximum(v @ (P @ v), jnp.max(jnp.diagonal(P)))
    min_rcond = jnp.where(pd, (lam - neg) / (lam + top), 0)
    return Health(pd, jnp.where(pd, 0, -1).astype(jnp.int32), min_rcond, pd & (min_rcond > F.rcond_tol()))


def health(F, inertia: bool) -> Health:
    """:class:`Health` of the factorisation ``F`` of ``C + λI``, whatever its route."""
    if F.route == "riccati":
        return pivots_health(pivots(F), _diagnostics.rcond_tol(F.pipe), inertia)
    if F.route == "dense":
        return _dense_health(F, inertia)
    return _output_space_health(F, inertia)
