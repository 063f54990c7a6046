"""The damping rules of the optimiser steps: how ``λ`` (or the trust radius) follows the verdict.

Each rule is a pure function of the judged step (:class:`hessinv._optax_step.Trial`) and the
hyperparameters, jit-able, with no host round trip:

* :func:`lm_damping`: Levenberg-Marquardt's update of ``λ`` from the ratio ``ρ``, by the
  threshold rule (Moré 1978; the default) or Nielsen's smooth rule (1999);
* :func:`lm_probe`: where LM would raise ``λ`` after a step from a convex model, try
  ``λ · probe_factor`` in the same update and keep the better step (docs/optax.md, "The probe");
* :func:`lm_retry`: after a rejection, try the larger ``λ`` LM would move to in the same
  update, reusing the λ-independent part;
* :func:`trust_region_damping`: the ``λ`` whose step reaches the trust radius (Moré & Sorensen
  1983), a safeguarded Newton iteration in a ``lax.while_loop``;
* :func:`trust_region_radius`: the radius update.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import _optax_health
from ._optax_step import all_finite, dot


def verdict(t):
    """``(good, bad)`` for the damping rules: ``good`` is an accepted step with ``ρ > 0.75`` from a
    convex model, ``bad`` a rejected one or ``ρ < 0.25``.

    A step of a nonconvex model (``C + λI`` indefinite) may still be taken if it decreases the
    loss as predicted, but it is never ``good``: the model is not trusted until it is convex, so
    ``λ`` does not fall (and the radius does not grow) on its account."""
    good = t.accepted & (t.ratio > 0.75) & t.health.positive_definite
    return good, ~t.accepted | (t.ratio < 0.25)


def nielsen_factor(ratio, decrease_factor):
    """Nielsen's multiplier of ``λ`` after an accepted step with ratio ``ρ ≥ 0.25``:
    ``max(decrease_factor, 1 − (2ρ − 1)³)``.

    It is 1 at ``ρ = ½``, falls smoothly to ``decrease_factor`` as ``ρ → 1`` (``1/3`` by default,
    reached at ``ρ ≈ 0.94``), and rises slightly below ``ρ = ½`` (``1.125`` at ``ρ = 0.25``).
    A ratio above 1 (the loss fell more than the model predicted) counts as 1. Nielsen,
    "Damping parameter in Marquardt's method", IMM-REP-1999-05, DTU (1999), eq. (2.9)."""
    r = jnp.minimum(ratio, 1.0)
    return jnp.maximum(decrease_factor, 1 - (2 * r - 1) ** 3)


def lm_damping(t, lam, *, increase_factor, decrease_factor, min_damping, max_damping, update="threshold"):
    """Levenberg-Marquardt's next ``λ``, in ``[min_damping, max_damping]``.

    Rejected (after the probe, if one was made): ``λ`` rises from ``lam``, the damping the update
    started from. Accepted with ``ρ < 0.25``: it rises by ``increase_factor`` from the damping of
    the step taken, ``t.damping``. Accepted with ``ρ ≥ 0.25``, from ``t.damping``:

    * ``update="threshold"`` (Moré 1978): multiplied by ``decrease_factor`` when :func:`verdict`
      says good (``ρ > 0.75``, convex model), else unchanged;
    * ``update="nielsen"``: multiplied by :func:`nielsen_factor` (never below 1 while the model
      is nonconvex, see :func:`verdict`).

    The threshold rule keeps ``λ`` where it is for every ``ρ`` in ``[0.25, 0.75]``, and after a
    good step takes the full ``decrease_factor`` even at ``ρ = 0.76``; Nielsen's falls by less
    the worse the fit, so fewer steps land in the band and fewer fall out of it."""
    good, bad = verdict(t)
    if update == "nielsen":
        factor = nielsen_factor(t.ratio, decrease_factor)
        factor = jnp.where(t.health.positive_definite, factor, jnp.maximum(factor, 1.0))
        fit = t.damping * factor
    else:
        fit = jnp.where(good, t.damping * decrease_factor, t.damping)
    kept = jnp.where(bad, t.damping * increase_factor, fit)
    return jnp.clip(jnp.where(t.accepted, kept, lam * increase_factor), min_damping, max_damping)


def lm_probe(attempt, first, lam, rejections, *, probe_factor, min_damping):
    """The probe: ``(trial, factorisations)`` after the first trial ``first`` at ``lam``.

    Wherever classic LM would raise ``λ`` (a rejection, or ``ρ < 0.25``) from a convex model, and
    the previous update was not rejected (``rejections == 0``), the same update also tries
    ``attempt(λ · probe_factor)`` and keeps the better accepted step (lower trial loss), or the
    second if neither is accepted. LM assumes a larger ``λ`` gives a more trustworthy step; a
    Gauss-Newton model that misses strong positive curvature along the gradient (which a
    large-``λ`` step follows) makes the ratio worst at intermediate ``λ``, and ``λ`` gets stuck
    there. Only from a convex model: a Newton model indefinite at ``λ`` is more so below it. A
    ``lax.cond``: the second factorisation is paid only where the probe fires."""
    probe = (~first.accepted | (first.ratio < 0.25)) & first.health.positive_definite & (rejections == 0)

    def probed(first):
        second = attempt(jnp.maximum(lam * probe_factor, min_damping))
        take = ~first.accepted | (second.accepted & (second.trial_loss < first.trial_loss))
        return jax.tree.map(lambda b, a: jnp.where(take, b, a), second, first)

    t = jax.lax.cond(probe, probed, lambda first: first, first)
    return t, 1 + probe.astype(jnp.int32)


def lm_retry(attempt, t, lam, *, increase_factor, max_damping, retries):
    """``(trial, last_lam, tries)``: while the step ``t`` is rejected, try again in the same
    update at ``λ · increase_factor``, ``λ · increase_factor²``, … up to ``retries`` times (or
    ``max_damping``); ``last_lam`` is the largest damping tried, ``tries`` how many were added.

    A rejected update leaves the params where they were, so the next update would recompute the
    same gradient, loss and λ-independent part (the output-space ``Z``, the dense ``C``) only to
    try the larger ``λ`` classic LM moves to. Trying it here costs, on the dense and output-space
    routes, the λ-dependent part alone (a refactorisation, a solve and the trial loss); on the
    stage recursion, which keeps no λ-independent part, a one-pass solve and the trial loss. A
    ``lax.while_loop``, which the caller enters through a ``lax.cond`` only where the first step
    was rejected (a while loop copies the λ-independent part it reads even when it makes no
    iteration)."""

    def cond(c):
        t, lam_k, k = c
        return ~t.accepted & (k < retries) & (lam_k < max_damping)

    def body(c):
        _, lam_k, k = c
        lam_k = jnp.minimum(lam_k * increase_factor, max_damping)
        return attempt(lam_k), lam_k, k + 1

    return jax.lax.while_loop(cond, body, (t, jnp.asarray(lam, t.damping.dtype), jnp.zeros((), jnp.int32)))


def trust_region_radius(t, radius, found, *, rtol, max_radius):
    """The next trust radius: ``0.25·min(‖d‖, Δ)`` when :func:`verdict` says bad, ``min(2Δ,
    max_radius)`` when good and the step reached the boundary (``‖d‖ ≥ (1 − rtol)Δ``), else ``Δ``."""
    good, bad = verdict(t)
    shrunk = 0.25 * jnp.where(found & jnp.isfinite(t.step_norm), jnp.minimum(t.step_norm, radius), radius)
    grown = jnp.where(t.step_norm >= (1 - rtol) * radius, jnp.minimum(2 * radius, max_radius), radius)
    return jnp.where(bad, shrunk, jnp.where(good, grown, radius))


def _tr_evaluate(solve, lam, radius, keep):
    """The step at ``lam`` and what the search needs of it: ``(d, ‖d‖, C + λI ≻ 0, keep(F),
    Newton iterate)``, the iterate ``λ + (‖d‖² / dᵀ(C + λI)^{-1} d) (‖d‖ − Δ)/Δ`` (NaN where
    ``C + λI`` is not positive definite)."""
    F, d = solve(lam)
    nrm = jnp.sqrt(dot(d, d))
    pd = _optax_health.health(F, False).positive_definite & all_finite(d) & jnp.isfinite(nrm) & (nrm > 0)
    dwd = dot(d, F.solve_rows(d))  # dᵀ(C + λI)^{-1} d = φ'(λ) ‖d‖³
    newton = lam + (nrm**2 / jnp.where(dwd > 0, dwd, 1)) * (nrm - radius) / radius
    return d, nrm, pd, keep(F), jnp.where(pd & (dwd > 0), newton, jnp.nan)


def _tr_next(newton, lo, hi, lam_min, lam_guess, tried_min):
    """The next iterate: the Newton one inside the bracket ``(lo, hi)``, else bisection on
    ``log λ`` (or growth by 10 while no feasible ``λ`` is known). The Newton iterate falling
    below ``λ_min`` means ``‖d(λ)‖ = Δ`` has no root above it: the plain step at ``λ_min`` is the
    answer if it is feasible, so it is tried (once)."""
    bisect = jnp.where(lo > 0, jnp.sqrt(lo * hi), 0.1 * hi)
    bisect = jnp.where(jnp.isfinite(hi), bisect, jnp.maximum(10 * lo, lam_guess))
    inside = jnp.isfinite(newton) & (newton > lo) & (newton < hi)
    below = jnp.isfinite(newton) & (newton <= lam_min) & ~tried_min
    return jnp.where(below, lam_min, jnp.where(inside, newton, bisect))


def trust_region_damping(solve, g, radius, lam_ref, *, min_damping, rtol, max_iters, lam_scale, keep, kept0):
    """Find ``λ ≥ min_damping`` with ``C + λI ≻ 0`` and ``(1 − rtol) Δ ≤ ‖d(λ)‖ ≤ Δ``
    (or ``‖d(min_damping)‖ ≤ Δ``), by a safeguarded Newton iteration on ``φ(λ) = 1/Δ − 1/‖d(λ)‖``
    (Moré & Sorensen 1983), kept inside the bracket of infeasible / feasible dampings.

    ``solve(λ)`` returns ``(F, d)``: a factorisation of ``C + λI`` on any route and the step
    ``d = F.solve_rows(g)``; a ``λ`` is only accepted where ``F`` says ``C + λI ≻ 0`` (the stage
    pivots' Cholesky factors, the dense Cholesky, the signs of ``Hℓ``). ``keep(F)`` is what the
    caller needs of the chosen factorisation (``kept0``: zeros of its shapes). The search
    warm-starts at the previous step's ``λ`` (``lam_ref``), from where it usually takes 2-3
    factorisations, else at ``lam_scale``.

    Returns ``(λ, d, keep(F), iterations, found)``; ``found`` is False when no feasible ``λ`` was
    met within ``max_iters`` factorisations (the step is then rejected).
    """
    dt = radius.dtype
    lam_min = jnp.asarray(min_damping, dt)
    lam_ref = jnp.maximum(lam_ref, lam_min)
    lam_guess = jnp.where(lam_ref > lam_min, lam_ref, lam_scale)

    def body(c):
        it, lam, lo, hi, best, _, tried_min = c
        d, nrm, pd, kept, newton = _tr_evaluate(solve, lam, radius, keep)
        feasible = pd & (nrm <= radius)
        done = feasible & ((nrm >= (1 - rtol) * radius) | (lam <= lam_min))
        tried_min = tried_min | (lam <= lam_min)
        lo = jnp.where(feasible, lo, jnp.maximum(lo, lam))
        hi = jnp.where(feasible, jnp.minimum(hi, lam), hi)
        # Keep the feasible iterate with the longest step (the one nearest the boundary).
        take = feasible & (nrm > best[2])
        best = jax.tree.map(lambda new, old: jnp.where(take, new, old), (lam, d, nrm, kept), best)
        nxt = _tr_next(newton, lo, hi, lam_min, lam_guess, tried_min)
        return it + 1, nxt, lo, hi, best, done, tried_min

    inf = jnp.asarray(jnp.inf, dt)
    best0 = (lam_min, [jnp.zeros_like(r) for r in g], -inf, kept0)
    c0 = (jnp.zeros((), jnp.int32), lam_ref, lam_min, inf, best0, jnp.array(False), jnp.array(False))
    iters, _, _, _, (lam, d, nrm, kept), _, _ = jax.lax.while_loop(lambda c: (c[0] < max_iters) & ~c[5], body, c0)
    return lam, d, kept, iters, nrm >= 0
