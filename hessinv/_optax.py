"""Exact Newton and Gauss-Newton steps as optax gradient transformations.

:func:`scale_by_newton` turns the gradient ``g`` into the step ``d = (C + λI)^{-1} g``, where
``C`` is the exact Hessian ``H`` or the generalised Gauss-Newton matrix ``G = Jᵀ ∇²ℓ J``
(MATH.md sections 3 and 5), solved exactly by the stage (Riccati) recursion of the core engine
(Rahimi 2026, arXiv:2601.06096). :func:`newton` and :func:`gauss_newton` chain it with
``scale_by_learning_rate``, so ``optax.apply_updates(params, updates)`` moves to ``params - d``.

Every step is safeguarded. The per-layer blocks are computed once per step (they do not depend
on ``λ``); the trial point ``params - d`` is evaluated and compared with the quadratic model

    m(s) = gᵀs + ½ sᵀ C s,   s = -d,   predicted decrease  pred = -m(s) = gᵀd − ½ dᵀ C d,

through the ratio ``ρ = (loss − trial_loss) / pred``. A step is applied only if it is finite,
the model predicts a decrease, the loss does decrease and ``ρ ≥ accept_ratio``; otherwise the
update is exactly zero. The damping ``λ`` then adapts:

* ``damping="lm"`` (Levenberg-Marquardt; Moré 1978): ``λ`` grows by ``increase_factor`` when
  the step is rejected or ``ρ < 0.25``, and shrinks by ``decrease_factor`` when ``ρ > 0.75`` and
  the model is convex, within ``[min_damping, max_damping]``. With the probe (``probe_factor``,
  on by default), where classic LM would raise ``λ`` after a step from a convex model (a
  rejection or ``ρ < 0.25``) and the previous update was not rejected, the same update also
  tries ``λ · probe_factor`` and keeps the better accepted step (lower trial loss); the rule
  above then applies to the step kept, and a rejection raises ``λ`` from where it was. Classic LM
  assumes the model fits better as ``λ`` grows; a Gauss-Newton model can miss strong positive
  curvature along the gradient, which a large-``λ`` step follows, and then the ratio is worst at
  intermediate ``λ`` and classic LM stalls there. Convexity, ``C + λI ≻ 0``, is read
  off the stage pivots: ``C + λI = Tᵀ blockdiag(Q_uu,l) T`` with ``T`` unit block-triangular,
  so by Sylvester's law of inertia it holds iff every pivot has a Cholesky factor.
* ``damping="trust_region"`` (Moré & Sorensen 1983): ``λ ≥ min_damping`` is chosen so that
  ``C + λI ≻ 0`` (every pivot has a Cholesky factor) and ``‖d‖ ≤ radius``, with
  ``‖d‖ ≈ radius`` unless the plain step is already inside. The search is a safeguarded Newton
  iteration on ``1/Δ − 1/‖d(λ)‖`` in a ``lax.while_loop``, warm-started at the previous step's
  ``λ`` (one factorisation of the same blocks per iterate). The radius shrinks on ``ρ < 0.25`` or rejection and grows on ``ρ > 0.75`` at
  the boundary.
* a float: a fixed ``λ`` (``0.0`` is the plain Newton step), still safeguarded.

Diagnostics live in the state (:class:`NewtonInfo`); read them with
``optax.tree_utils.tree_get(state, "info")``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax  # the optax library (absolute import; hessinv's public wrapper is hessinv.optax)

from . import _api, _blocks, _diagnostics, _hvp, _oneshot, _pipeline

CURVATURES = ("hessian", "ggn")
DAMPINGS = ("lm", "trust_region")
METHODS = ("auto", "riccati", "dense", "gauss_newton")


class NewtonInfo(NamedTuple):
    """Diagnostics of the last step. All fields are scalar arrays.

    Attributes:
      loss: the loss at the params the step started from.
      trial_loss: the loss at the trial point ``params - d``.
      predicted_decrease: ``gᵀd − ½ dᵀ C d``, the decrease the quadratic model predicts.
      ratio: actual over predicted decrease (``-inf`` when the model predicts no decrease).
      accepted: whether the step was applied (otherwise the update was zero).
      damping: the ``λ`` the step was computed with.
      step_norm: ``‖d‖`` of the trial step.
      positive_definite: ``C + λI ≻ 0`` at the ``λ`` used (Cholesky of every stage pivot).
      n_neg: negative eigenvalues of ``C + λI`` (the stage pivots' inertia) with ``inertia=True``;
        otherwise 0 when positive definite and -1 (not counted) when not.
      min_rcond: smallest reciprocal condition number of any stage pivot: exact (eigenvalues)
        with ``inertia=True``, else the Cholesky estimate ``(min L_ii / max L_ii)²`` (0 when
        not positive definite).
      ok: finite, with every pivot's ``min_rcond`` above ``max(p_l)·eps``.
      iterations: factorisations done this step: 2 when LM probed a smaller damping, up to
        ``tr_max_iters`` for the trust region, else 1.
    """

    loss: jax.Array
    trial_loss: jax.Array
    predicted_decrease: jax.Array
    ratio: jax.Array
    accepted: jax.Array
    damping: jax.Array
    step_norm: jax.Array
    positive_definite: jax.Array
    n_neg: jax.Array
    min_rcond: jax.Array
    ok: jax.Array
    iterations: jax.Array


class _Trial(NamedTuple):
    """One trial step ``d`` at damping ``λ`` (kept as ``step``, shaped like the params), judged
    against the quadratic model."""

    damping: jax.Array
    step: list
    trial_loss: jax.Array
    predicted_decrease: jax.Array
    ratio: jax.Array
    accepted: jax.Array
    step_norm: jax.Array
    positive_definite: jax.Array
    n_neg: jax.Array
    min_rcond: jax.Array
    ok: jax.Array


class ScaleByNewtonState(NamedTuple):
    """State of :func:`scale_by_newton`.

    Attributes:
      count: number of updates so far (accepted or not), int32.
      damping: the ``λ`` the next step starts from.
      radius: the trust radius (``inf`` unless ``damping="trust_region"``).
      rejections: consecutive rejected updates up to now (0 after an accepted one), int32.
      info: :class:`NewtonInfo` of the last step.
    """

    count: jax.Array
    damping: jax.Array
    radius: jax.Array
    rejections: jax.Array
    info: NewtonInfo


def _params_dtype(params):
    dts = [jnp.result_type(x) for x in jax.tree.leaves(params) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return jnp.result_type(*dts) if dts else jnp.result_type(float)


def _dot(a_rows, b_rows):
    return sum(jnp.vdot(a, b) for a, b in zip(a_rows, b_rows))


def _all_finite(rows):
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(r)) for r in rows]))


def _pivots(F):
    """The stage pivots ``Q_uu,l`` of a factorisation, one ``(n, p, p)`` stack per segment with ``p > 0``."""
    return [st.Q_uu for _, st in F._pivot_stages()]


def _cholesky_health(pivots):
    """``(positive_definite, rcond_estimate)`` from one Cholesky per stage pivot.

    ``C + λI ≻ 0`` iff every stage pivot is (MATH.md section 3), i.e. iff every pivot has a
    Cholesky factor ``L``. ``(min L_ii / max L_ii)²`` estimates the pivot's reciprocal condition
    (it bounds it from above); 0 for a pivot that is not positive definite. On CPU this is far
    cheaper, and on a shared machine far steadier, than the pivots' eigenvalues.
    """
    pd = jnp.array(True)
    est = None
    for Q in pivots:
        ok, rc = _cholesky_rcond(jnp.linalg.cholesky(Q))
        pd &= jnp.all(ok)
        est = jnp.min(rc) if est is None else jnp.minimum(est, jnp.min(rc))
    return pd, (jnp.asarray(jnp.inf) if est is None else est)


def _cholesky_rcond(L):
    """``(factorised, (min L_ii / max L_ii)²)`` of Cholesky factors ``L`` ``(..., p, p)``: the
    factor exists (finite), and the estimate of the reciprocal condition (0 where it does not)."""
    ok = jnp.all(jnp.isfinite(L), axis=(-2, -1))
    dg = jnp.abs(jnp.diagonal(L, axis1=-2, axis2=-1))
    top = jnp.max(dg, axis=-1)
    return ok, jnp.where(ok & (top > 0), (jnp.min(dg, axis=-1) / jnp.where(top > 0, top, 1)) ** 2, 0)


def _pivot_health(pivots, tol):
    """``(n_neg, n_zero, min_rcond, ok)`` of ``C + λI`` from one ``eigvalsh`` per stage pivot.

    The same quantities and thresholds as ``Factorization.inertia()`` and ``.info()``, but those
    two each recompute the pivots' eigenvalues, which on CPU costs as much as the factorisation.
    """
    neg = zero = jnp.zeros((), jnp.int32)
    min_rc = jnp.asarray(jnp.inf, tol.dtype)
    finite = jnp.array(True)
    for w in [jnp.linalg.eigvalsh(Q) for Q in pivots]:
        _, n, z = _diagnostics.sign_counts(w, tol)
        neg, zero = neg + n, zero + z
        rc = _diagnostics.rcond(w)
        min_rc = jnp.minimum(min_rc, jnp.min(jnp.where(jnp.isnan(rc), jnp.inf, rc)))
        finite &= jnp.all(jnp.isfinite(w))
    return neg, zero, min_rc, finite & (min_rc > tol)


def _pivots_health(pivots, tol, inertia):
    """``(positive_definite, n_neg, min_rcond, ok)`` of ``C + λI`` from the stage pivots: Cholesky
    factors by default, their eigenvalues with ``inertia`` (``n_neg = -1``: not counted)."""
    pd, min_rcond = _cholesky_health(pivots)
    if inertia:
        n_neg, _, min_rcond, ok = _pivot_health(pivots, tol)
    else:  # positive definite: no negative eigenvalue; otherwise the count was not computed
        n_neg = jnp.where(pd, 0, -1).astype(jnp.int32)
        ok = pd & jnp.isfinite(min_rcond) & (min_rcond > tol)
    return pd, n_neg, min_rcond, ok


def _factorization_health(F, inertia):
    """The same four facts from another route's factorisation. Dense: its Cholesky succeeded
    (the condition estimated from the factor's diagonal, as for the pivots; the eigenvalues only
    with ``inertia``). Output space: the signs of ``Hℓ``'s eigenvalues and a power-iteration
    estimate (the ``m × m`` inertia and exact condition with ``inertia``)."""
    tol = F.rcond_tol()
    if F.route == "dense":
        factorised, min_rcond = _cholesky_rcond(F.chol)
        pd = F.is_pd & factorised
        if inertia:
            n_neg, info = F._inertia()[1], F._info()
            return pd, n_neg, info.min_rcond, info.ok
        return pd, jnp.where(pd, 0, -1).astype(jnp.int32), min_rcond, pd & (min_rcond > tol)
    if inertia:
        info, n_neg = F._info(), F._inertia()[1]
        return info.ok & (n_neg == 0), n_neg, info.min_rcond, info.ok
    # Without inertia, as for the pivots: cheap facts and an estimate. A convex loss (every
    # eigenvalue of Hℓ ≥ 0) makes G + λI = λI + Zᵀ diag(D) Z positive definite for λ > 0, with
    # eigenvalues λ and λ + eig(Z Zᵀ): rcond = λ / (λ + λ_max(Z Zᵀ)), λ_max by power iteration
    # (from below, so the estimate bounds rcond from above, like the Cholesky one).
    lam, P = F.damping, F.P
    finite = jnp.all(jnp.isfinite(P)) & jnp.all(jnp.isfinite(F.lu))
    pd = jnp.all(F.D >= 0) & (lam > 0) & finite
    v = jnp.ones(P.shape[0], P.dtype)
    for _ in range(20):
        v = P @ v
        v = v / jnp.maximum(jnp.linalg.norm(v), jnp.finfo(P.dtype).tiny)
    top = jnp.maximum(v @ (P @ v), 0)
    min_rcond = jnp.where(pd, lam / (lam + top), 0)
    n_neg = jnp.where(pd, 0, -1).astype(jnp.int32)
    return pd, n_neg, min_rcond, pd & (min_rcond > tol)


def _check_positive(name, value, *, allow_zero=False):
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def scale_by_newton(
    layers: Sequence,
    *,
    curvature: str = "hessian",
    method: str = "auto",
    damping: str | float = "lm",
    init_damping: float = 1e-3,
    min_damping: float | None = None,
    max_damping: float = 1e10,
    increase_factor: float = 4.0,
    decrease_factor: float = 1.0 / 3.0,
    probe_factor: float | None = 1e-3,
    accept_ratio: float = 1e-4,
    init_radius: float = 1.0,
    max_radius: float = 1e6,
    tr_rtol: float = 0.1,
    tr_max_iters: int = 10,
    inertia: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Scale the gradient ``g`` by an exact, damped, safeguarded inverse curvature: ``(C + λI)^{-1} g``.

    ``C`` is the Hessian (``curvature="hessian"``) or the generalised Gauss-Newton matrix
    (``curvature="ggn"``, MATH.md section 5; the last layer must be a parameter-free loss, e.g.
    with params ``{}``). The per-layer blocks are computed once per step; every damping tried
    costs one stage-recursion factorisation of them (MATH.md section 3). The step is applied only
    if the loss at ``params - d`` decreases as the quadratic model predicts (see the module
    docstring); otherwise the returned update is zero.

    The transformation's ``update(updates, state, params, *, z0, **extra_args)`` takes the
    gradient of the pipeline loss at ``(params, z0)`` as ``updates`` and the batch ``z0`` as a
    keyword (other keyword arguments are ignored, as optax requires). The returned update is
    ``+d``: chain with ``optax.scale_by_learning_rate(1.0)`` (as :func:`newton` does) to step
    downhill. The accept/reject test is made for the full step (learning rate 1).

    Args:
      layers: the pipeline's layer functions (or :class:`hessinv.Stack`), as in :func:`hessinv.ihvp`.
      curvature: ``"hessian"`` or ``"ggn"``.
      method: the exact route of each solve, as in :func:`hessinv.ihvp`: ``"auto"`` (the
        cheapest for the shapes), ``"riccati"``, ``"dense"`` or ``"gauss_newton"``. With
        ``damping="trust_region"`` (many dampings per step from one set of blocks) the stage
        recursion is always used.
      damping: ``"lm"`` (Levenberg-Marquardt), ``"trust_region"``, or a fixed float ``λ ≥ 0``.
      init_damping: the first ``λ`` (``"lm"``), or the first guess of the search (``"trust_region"``).
      min_damping: the lower bound on ``λ``; defaults to ``1e-9`` for ``"lm"`` and ``0`` for
        ``"trust_region"``.
      max_damping: the upper bound on ``λ``.
      increase_factor: LM's multiplier of ``λ`` on failure.
      decrease_factor: LM's multiplier of ``λ`` on success.
      probe_factor: LM only. When a step at ``λ`` is rejected or has ``ρ < 0.25``, its model was
        convex, and the previous update was not rejected, the same update also tries
        ``λ · probe_factor`` (a second factorisation) and keeps the better accepted step; ``λ``
        rises only if both fail. ``None`` gives the classic rule. See the module docstring.
      accept_ratio: the smallest actual/predicted decrease ratio accepted.
      init_radius: the first trust radius (``"trust_region"`` only).
      max_radius: the largest trust radius (``"trust_region"`` only).
      tr_rtol: accept ``‖d‖ ∈ [(1 − tr_rtol) Δ, Δ]`` as "on the boundary".
      tr_max_iters: at most this many factorisations per trust-region step.
      inertia: also count the negative eigenvalues of ``C + λI`` and compute the pivots' exact
        reciprocal condition, from their eigenvalues (once per step). On CPU that costs about as
        much as the factorisation, so by default positive definiteness and a condition estimate
        come from Cholesky factors of the pivots instead.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state :class:`ScaleByNewtonState`.

    Example::

        opt = optax.chain(hessinv.optax.scale_by_newton(layers, damping="lm"),
                          optax.scale_by_learning_rate(1.0))
        state = opt.init(params)
        grads = jax.grad(lambda p: hessinv.loss(layers, p, batch))(params)
        updates, state = opt.update(grads, state, params, z0=batch)
        params = optax.apply_updates(params, updates)
    """
    if isinstance(layers, _pipeline.Stack) or callable(layers):
        raise TypeError("layers must be a sequence of layer functions (or hessinv.Stack), not a single layer")
    layers = tuple(layers)
    if curvature not in CURVATURES:
        raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(damping, str):
        if damping not in DAMPINGS:
            raise ValueError(f"damping must be one of {DAMPINGS} or a float >= 0, got {damping!r}")
        mode = damping
    else:
        _check_positive("damping", float(damping), allow_zero=True)
        mode = "fixed"
    if min_damping is None:
        min_damping = 1e-9 if mode == "lm" else 0.0
    _check_positive("init_damping", init_damping)
    _check_positive("min_damping", min_damping, allow_zero=True)
    if not max_damping >= max(min_damping, init_damping if mode == "lm" else 0.0):
        raise ValueError(
            f"need min_damping <= init_damping <= max_damping, got {min_damping}, {init_damping}, {max_damping}"
        )
    if not increase_factor > 1:
        raise ValueError(f"increase_factor must be > 1, got {increase_factor}")
    if not 0 < decrease_factor < 1:
        raise ValueError(f"decrease_factor must be in (0, 1), got {decrease_factor}")
    if probe_factor is not None and not 0 < probe_factor < 1:
        raise ValueError(f"probe_factor must be in (0, 1) or None, got {probe_factor}")
    if not 0 <= accept_ratio < 0.25:
        raise ValueError(f"accept_ratio must be in [0, 0.25), got {accept_ratio}")
    _check_positive("init_radius", init_radius)
    if not max_radius >= init_radius:
        raise ValueError(f"max_radius must be >= init_radius, got {max_radius} < {init_radius}")
    if not 0 < tr_rtol < 1:
        raise ValueError(f"tr_rtol must be in (0, 1), got {tr_rtol}")
    if not isinstance(inertia, bool):
        raise TypeError(f"inertia must be a bool, got {inertia!r}")
    if not (isinstance(tr_max_iters, int) and tr_max_iters >= 1):
        raise ValueError(f"tr_max_iters must be a positive int, got {tr_max_iters!r}")

    def init_fn(params):
        dt = _params_dtype(params)
        zero = jnp.zeros((), dt)
        lam0 = float(damping) if mode == "fixed" else init_damping
        radius = init_radius if mode == "trust_region" else jnp.inf
        info = NewtonInfo(
            loss=zero,
            trial_loss=zero,
            predicted_decrease=zero,
            ratio=zero,
            accepted=jnp.array(False),
            damping=jnp.asarray(lam0, dt),
            step_norm=zero,
            positive_definite=jnp.array(False),
            n_neg=jnp.zeros((), jnp.int32),
            min_rcond=zero,
            ok=jnp.array(False),
            iterations=jnp.zeros((), jnp.int32),
        )
        zero_i = jnp.zeros((), jnp.int32)
        return ScaleByNewtonState(zero_i, jnp.asarray(lam0, dt), jnp.asarray(radius, dt), zero_i, info)

    def update_fn(updates, state, params=None, *, z0=None, **extra_args):
        del extra_args  # optax convention: unknown extra arguments are ignored
        if params is None:
            raise ValueError("scale_by_newton needs params: call update(grads, state, params, z0=batch)")
        if z0 is None:
            raise ValueError("scale_by_newton needs the batch: call update(grads, state, params, z0=batch)")
        pipe = _pipeline.build(layers, params, z0)
        if _pipeline.is_concrete(params, z0):  # called eagerly: NaN/inf inputs raise, naming the leaf
            _api._check_inputs(params, z0)
        dt = pipe.dtype
        sdt = state.damping.dtype
        g = _pipeline.to_rows(pipe, list(updates))

        tol = jnp.asarray(max([seg.p for seg in pipe.segments] + [1]) * jnp.finfo(dt).eps, dt)  # as Factorization
        if mode == "trust_region":
            # Many dampings per step: the λ-independent blocks are computed once and kept.
            blk = _api.blocks(layers, params, z0, curvature=curvature)

            def solve(lam):
                F = _blocks.Blocks.factorize(blk, lam)
                return F, F.solve_rows(g)

            lam, d, pivots, iters, found = _trust_region_damping(
                solve,
                g,
                state.radius.astype(dt),
                state.damping.astype(dt),
                min_damping,
                tr_rtol,
                tr_max_iters,
                init_damping,
                [(seg.n, seg.p, seg.p) for seg in pipe.segments if seg.p > 0],
            )
        else:
            blk = None

        loss0 = _pipeline.loss(layers, params, z0).astype(dt)

        def judge(lam, d, health, found):
            """The model's predicted decrease and the trial loss of step ``d``, with the health
            ``(positive_definite, n_neg, min_rcond, ok)`` of ``C + λI``."""
            pd, n_neg, min_rcond, ok = health
            # The quadratic model at s = -d, with the undamped curvature C.
            if blk is not None:
                Cd = _hvp.structured_hvp_rows(blk, d, 0.0)
            else:  # Pearlmutter's hvp, or the GGN's Jᵀ ∇²ℓ J d: a few gradients' worth
                vp = _hvp.ggn_vp if curvature == "ggn" else _hvp.pearlmutter_hvp
                Cd = _pipeline.to_rows(pipe, vp(layers, list(params), z0, _pipeline.from_rows(pipe, d)))
            pred = _dot(g, d) - 0.5 * _dot(d, Cd)
            step = _pipeline.from_rows(pipe, d)
            trial = [jax.tree.map(lambda x, s: x - s.astype(x.dtype), x, s) for x, s in zip(params, step)]
            loss1 = _pipeline.loss(layers, trial, z0).astype(dt)
            actual = loss0 - loss1
            ratio = jnp.where(pred > 0, actual / jnp.where(pred > 0, pred, 1), -jnp.inf)
            finite = _all_finite(d) & jnp.isfinite(loss1) & jnp.isfinite(pred)
            accepted = found & finite & (pred > 0) & (actual > 0) & (ratio >= accept_ratio)
            return _Trial(lam, step, loss1, pred, ratio, accepted, jnp.sqrt(_dot(d, d)), pd, n_neg, min_rcond, ok)

        if mode == "trust_region":
            t = judge(lam, d, _pivots_health(pivots, tol, inertia), found)
        else:
            # The route of each solve: λ ≥ min_damping (LM) or the fixed λ decides whether the
            # output-space route (λ > 0 only) is allowed.
            lam_floor = float(damping) if mode == "fixed" else min_damping
            route = _api._route(pipe, method, curvature, jnp.asarray(lam_floor, dt))

            if route != "riccati":  # C (or Z, D, Z Zᵀ) once per step; each damping tried refactors it
                factor_at = _api.damped(pipe, _pipeline.to_rows(pipe, list(params)), z0, curvature, route)

            def attempt(lam):
                if route == "riccati":
                    # The one-pass solve (blocks computed chunk by chunk inside the recursion,
                    # never all kept), about half the time of blocks + factorize + solve.
                    d, outs = _oneshot.solve(pipe, list(params), z0, g, lam, curvature, keep_pivot=True)
                    return judge(lam, d, _pivots_health(_oneshot.pivots(pipe, outs), tol, inertia), jnp.array(True))
                F = factor_at(lam)
                return judge(lam, F.solve_rows(g), _factorization_health(F, inertia), jnp.array(True))

            lam = jnp.asarray(damping, dt) if mode == "fixed" else state.damping.astype(dt)
            t = attempt(lam)
            iters = jnp.ones((), jnp.int32)
            if mode == "lm" and probe_factor is not None:
                # The probe: wherever classic LM would raise λ (a rejection, or ρ < 0.25) from a
                # convex model, and the previous update was not rejected, the same update also
                # tries λ·probe_factor and keeps the better accepted step. LM assumes a larger λ
                # gives a more trustworthy step; a Gauss-Newton model that misses strong positive
                # curvature along the gradient (which a large-λ step follows) makes the ratio
                # worst at intermediate λ, and λ gets stuck there (docs/optax.md, "The probe").
                # Only from a convex model: a Newton model indefinite at λ is more so below it.
                probe = (~t.accepted | (t.ratio < 0.25)) & t.positive_definite & (state.rejections == 0)

                def probed(first):
                    second = attempt(jnp.maximum(lam * probe_factor, min_damping))
                    # the second step if it is accepted and better, or if neither is accepted
                    take = ~first.accepted | (second.accepted & (second.trial_loss < first.trial_loss))
                    return jax.tree.map(lambda b, a: jnp.where(take, b, a), second, first)

                t = jax.lax.cond(probe, probed, lambda first: first, t)
                iters = iters + probe.astype(jnp.int32)

        accepted, ratio, pd = t.accepted, t.ratio, t.positive_definite

        # A step of a nonconvex model (C + λI indefinite) may still be taken if it decreases the
        # loss as predicted, but it never lets λ fall: the model is not trusted until convex.
        good, bad = accepted & (ratio > 0.75) & pd, ~accepted | (ratio < 0.25)
        if mode == "lm":
            # Rejected (after the probe, if one was made): λ rises from the λ the step started
            # from. Accepted: the ratio rule, from the λ of the step that was taken.
            lam_next = jnp.where(
                ~accepted,
                lam * increase_factor,
                jnp.where(good, t.damping * decrease_factor, jnp.where(bad, t.damping * increase_factor, t.damping)),
            )
            lam_next = jnp.clip(lam_next, min_damping, max_damping)
            radius_next = state.radius
        elif mode == "trust_region":
            radius = state.radius.astype(dt)
            shrunk = 0.25 * jnp.where(found & jnp.isfinite(t.step_norm), jnp.minimum(t.step_norm, radius), radius)
            grown = jnp.where(t.step_norm >= (1 - tr_rtol) * radius, jnp.minimum(2 * radius, max_radius), radius)
            radius_next = jnp.where(bad, shrunk, jnp.where(good, grown, radius))
            lam_next = jnp.clip(lam, min_damping, max_damping)
        else:
            lam_next, radius_next = lam, state.radius

        out = jax.tree.map(
            lambda s, u: jnp.where(accepted, s, jnp.zeros_like(s)).astype(u.dtype), t.step, list(updates)
        )
        out = jax.tree.unflatten(jax.tree.structure(updates), jax.tree.leaves(out))
        new_info = NewtonInfo(
            loss=loss0.astype(sdt),
            trial_loss=t.trial_loss.astype(sdt),
            predicted_decrease=t.predicted_decrease.astype(sdt),
            ratio=ratio.astype(sdt),
            accepted=accepted,
            damping=t.damping.astype(sdt),
            step_norm=t.step_norm.astype(sdt),
            positive_definite=jnp.asarray(pd, bool),
            n_neg=jnp.asarray(t.n_neg, jnp.int32),
            min_rcond=jnp.asarray(t.min_rcond).astype(sdt),
            ok=jnp.asarray(t.ok, bool),
            iterations=jnp.asarray(iters, jnp.int32),
        )
        new_state = ScaleByNewtonState(
            count=optax.safe_int32_increment(state.count),
            damping=jnp.asarray(lam_next).astype(sdt),
            radius=jnp.asarray(radius_next).astype(sdt),
            rejections=jnp.where(accepted, 0, state.rejections + 1).astype(jnp.int32),
            info=new_info,
        )
        return out, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _trust_region_damping(solve, g, radius, lam_ref, min_damping, rtol, max_iters, lam_scale, pivot_shapes):
    """Find ``λ ≥ min_damping`` with ``C + λI ≻ 0`` and ``(1 − rtol) Δ ≤ ‖d(λ)‖ ≤ Δ``
    (or ``‖d(min_damping)‖ ≤ Δ``), by a safeguarded Newton iteration on ``φ(λ) = 1/Δ − 1/‖d(λ)‖``
    (Moré & Sorensen 1983): ``λ⁺ = λ + (‖d‖² / dᵀ(C + λI)^{-1} d) (‖d‖ − Δ)/Δ``, kept inside the
    bracket ``(lo, hi)`` of infeasible / feasible dampings, else bisected on ``log λ``.

    Positive definiteness is read off the stage pivots: ``C + λI = Tᵀ blockdiag(Q_uu,l) T`` with
    ``T`` unit block-triangular, so (Sylvester) ``C + λI ≻ 0`` iff every pivot has a Cholesky
    factor. A ``λ`` is only accepted then.

    Returns ``(λ, d, pivots, iterations, found)``; ``found`` is False when no feasible ``λ`` was
    met within ``max_iters`` factorisations (the step is then rejected).
    """
    dt = radius.dtype
    lam_min = jnp.asarray(min_damping, dt)
    lam_ref = jnp.maximum(lam_ref, lam_min)
    inf = jnp.asarray(jnp.inf, dt)

    def evaluate(lam):
        F, d = solve(lam)
        pivots = _pivots(F)
        nrm = jnp.sqrt(_dot(d, d))
        pd = _cholesky_health(pivots)[0] & _all_finite(d) & jnp.isfinite(nrm) & (nrm > 0)
        dwd = _dot(d, F.solve_rows(d))  # dᵀ(C + λI)^{-1} d = φ'(λ) ‖d‖³
        newton = lam + (nrm**2 / jnp.where(dwd > 0, dwd, 1)) * (nrm - radius) / radius
        newton = jnp.where(pd & (dwd > 0), newton, jnp.nan)
        return d, nrm, pd, pivots, newton

    def body(c):
        it, lam, lo, hi, best, _, tried_min = c
        d, nrm, pd, pivots, newton = evaluate(lam)
        feasible = pd & (nrm <= radius)
        at_min = lam <= lam_min
        done = feasible & ((nrm >= (1 - rtol) * radius) | at_min)
        tried_min = tried_min | at_min
        lo = jnp.where(feasible, lo, jnp.maximum(lo, lam))
        hi = jnp.where(feasible, jnp.minimum(hi, lam), hi)
        # Keep the feasible iterate with the longest step (the one nearest the boundary).
        take = feasible & (nrm > best[2])
        best = jax.tree.map(lambda new, old: jnp.where(take, new, old), (lam, d, nrm, pivots), best)
        if_no_hi = jnp.maximum(10 * lo, jnp.where(lam_ref > lam_min, lam_ref, lam_scale))
        bisect = jnp.where(lo > 0, jnp.sqrt(lo * hi), 0.1 * hi)
        bisect = jnp.where(jnp.isfinite(hi), bisect, if_no_hi)
        inside = jnp.isfinite(newton) & (newton > lo) & (newton < hi)
        # The Newton iterate falling below λ_min means ‖d(λ)‖ = Δ has no root above it: the
        # plain step at λ_min is the answer if it is feasible, so try it (once).
        below = jnp.isfinite(newton) & (newton <= lam_min) & ~tried_min
        nxt = jnp.where(below, lam_min, jnp.where(inside, newton, bisect))
        return it + 1, nxt, lo, hi, best, done, tried_min

    best0 = (lam_min, [jnp.zeros_like(r) for r in g], -inf, [jnp.zeros(s, dt) for s in pivot_shapes])
    # Warm start at the previous step's λ: from there the iteration usually takes 2-3 factorisations.
    c0 = (jnp.zeros((), jnp.int32), lam_ref, lam_min, inf, best0, jnp.array(False), jnp.array(False))
    iters, _, _, _, (lam, d, nrm, pivots), _, _ = jax.lax.while_loop(lambda c: (c[0] < max_iters) & ~c[5], body, c0)
    return lam, d, pivots, iters, nrm >= 0


def newton(
    layers: Sequence,
    learning_rate: optax.ScalarOrSchedule = 1.0,
    *,
    curvature: str = "hessian",
    damping: str | float = "lm",
    **kwargs: Any,
) -> optax.GradientTransformationExtraArgs:
    """Exact (damped, safeguarded) Newton's method: ``params ← params − lr · (H + λI)^{-1} ∇L``.

    ``chain(scale_by_newton(layers, ...), scale_by_learning_rate(learning_rate))``; see
    :func:`scale_by_newton` for the damping rules and the keyword arguments.

    Example::

        opt = hessinv.optax.newton(layers)
        state = opt.init(params)
        grads = jax.grad(lambda p: hessinv.loss(layers, p, batch))(params)
        updates, state = opt.update(grads, state, params, z0=batch)
        params = optax.apply_updates(params, updates)
    """
    return optax.chain(
        scale_by_newton(layers, curvature=curvature, damping=damping, **kwargs),
        optax.scale_by_learning_rate(learning_rate),
    )


def gauss_newton(
    layers: Sequence,
    learning_rate: optax.ScalarOrSchedule = 1.0,
    *,
    damping: str | float = "lm",
    **kwargs: Any,
) -> optax.GradientTransformationExtraArgs:
    """Exact generalised Gauss-Newton: ``params ← params − lr · (Jᵀ ∇²ℓ J + λI)^{-1} ∇L``.

    The last layer must be a parameter-free loss ``ℓ`` (params ``{}`` or ``()``). Same as
    :func:`newton` with ``curvature="ggn"``.

    Examples:
      Twenty steps of a small regression, each one jitted call (targets ride in the batch):

      >>> import jax, jax.numpy as jnp, optax, hessinv
      >>> jax.config.update("jax_enable_x64", True)
      >>> def dense(z, x):
      ...     return {"h": jnp.tanh(z["h"] @ x["W"] + x["c"]), "y": z["y"]}
      >>> def mse(z, x):  # the parameter-free loss ℓ, params {}
      ...     return 0.5 * jnp.mean((z["h"][:, 0] - z["y"]) ** 2)
      >>> layers = [dense, dense, mse]
      >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
      >>> params = [{"W": jax.random.normal(k1, (3, 4)), "c": jnp.zeros(4)},
      ...           {"W": jax.random.normal(k2, (4, 4)) / 2, "c": jnp.zeros(4)}, {}]
      >>> batch = {"h": jax.random.normal(k3, (8, 3)), "y": jnp.linspace(-0.5, 0.5, 8)}
      >>> loss = lambda p: hessinv.loss(layers, p, batch)
      >>> opt = hessinv.optax.gauss_newton(layers)
      >>> state = opt.init(params)
      >>> @jax.jit
      ... def step(params, state):
      ...     updates, state = opt.update(jax.grad(loss)(params), state, params, z0=batch)
      ...     return optax.apply_updates(params, updates), state
      >>> for _ in range(20):
      ...     params, state = step(params, state)
      >>> bool(loss(params) < 1e-12)
      True
    """
    return newton(layers, learning_rate, curvature="ggn", damping=damping, **kwargs)
