"""Exact Newton and Gauss-Newton steps as optax gradient transformations.

:func:`scale_by_newton` turns the gradient ``g`` into the step ``d = (C + λI)^{-1} g``, where
``C`` is the exact Hessian ``H`` or the generalised Gauss-Newton matrix ``G = Jᵀ ∇²ℓ J``
(MATH.md sections 3 and 5), solved exactly by the stage (Riccati) recursion of the core engine
(Rahimi 2026, arXiv:2601.06096) or the cheapest exact route for the shapes. :func:`newton` and
:func:`gauss_newton` chain it with ``scale_by_learning_rate``, so
``optax.apply_updates(params, updates)`` moves to ``params - d``.
:func:`scale_by_stochastic_newton` (and :func:`stochastic_gauss_newton`) is the mini-batch
variant: it factorises ``C + λI`` on the batch of one update and reuses the factorisation for
the next ``refresh_every - 1`` updates, on their own batches.

Every step is safeguarded. The trial point ``params - d`` is evaluated on the batch and compared
with the quadratic model

    m(s) = gᵀs + ½ sᵀ C s,   s = -d,   predicted decrease  pred = -m(s) = gᵀd − ½ dᵀ C d,

through the ratio ``ρ = (loss − trial_loss) / pred``. A step is applied only if it is finite,
the model predicts a decrease, the loss does decrease and ``ρ ≥ accept_ratio``; otherwise the
update is exactly zero. The damping ``λ`` then adapts:

* ``damping="lm"`` (Levenberg-Marquardt): ``λ`` grows by ``increase_factor`` when the step is
  rejected or ``ρ < 0.25``; otherwise, by default (``lm_update="threshold"``, Moré 1978), it
  shrinks by ``decrease_factor`` when ``ρ > 0.75`` and is kept for ``ρ`` in ``[0.25, 0.75]``,
  or, with ``lm_update="nielsen"`` (Nielsen 1999), it is multiplied by
  ``max(decrease_factor, 1 − (2ρ − 1)³)``; it never falls while the model is nonconvex, and
  stays within ``[min_damping, max_damping]``. With the probe (``probe_factor``,
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
  ``C + λI ≻ 0`` (every pivot, or the dense matrix, has a Cholesky factor) and ``‖d‖ ≤ radius``,
  with ``‖d‖ ≈ radius`` unless the plain step is already inside. The search is a safeguarded
  Newton iteration on ``1/Δ − 1/‖d(λ)‖`` in a ``lax.while_loop``, warm-started at the previous
  step's ``λ``, on the step's route: each iterate refactorises only the λ-dependent part (the
  stage recursion on the same blocks, or a Cholesky of the same dense ``C + λI``). The radius
  shrinks on ``ρ < 0.25`` or rejection and grows on ``ρ > 0.75`` at the boundary.
* a float: a fixed ``λ`` (``0.0`` is the plain Newton step), still safeguarded.

The pieces live in small modules, each a set of pure, jit-able functions: the solve and the
verdict on a trial step in :mod:`hessinv._optax_step`, the damping rules in
:mod:`hessinv._optax_damping`, the health of ``C + λI`` in :mod:`hessinv._optax_health`. The
transformations here compose them.

Diagnostics live in the state (:class:`NewtonInfo`); read them with
``optax.tree_utils.tree_get(state, "info")``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax  # the optax library (absolute import; hessinv's public wrapper is hessinv.optax)

from . import _blocks, _diagnostics, _optax_damping, _optax_health, _optax_step, _pipeline
from ._optax_health import Health

CURVATURES = ("hessian", "ggn")
DAMPINGS = ("lm", "trust_region")
LM_UPDATES = ("threshold", "nielsen")
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
      iterations: factorisations done this step: 2 when LM probed a smaller damping, one more
        for each retry at a larger damping (``lm_retries``), up to ``tr_max_iters`` for the
        trust region, else 1; in the stochastic mode 1 on a refresh and 0 when the stored
        factorisation was reused.
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


class ScaleByStochasticNewtonState(NamedTuple):
    """State of :func:`scale_by_stochastic_newton`.

    Attributes:
      count: number of updates so far (accepted or not), int32.
      damping: the ``λ`` the next refactorisation uses.
      rejections: consecutive rejected updates up to now (0 after an accepted one), int32.
      age: updates computed with the stored factorisation so far, int32 (``refresh_every`` at
        ``init``, so that the first update factorises).
      factorization: the :class:`~hessinv.Factorization` of ``C + λI`` on the params and batch
        of the last refresh (a pytree; zeros of the same shapes until the first update).
      info: :class:`NewtonInfo` of the last step.
    """

    count: jax.Array
    damping: jax.Array
    rejections: jax.Array
    age: jax.Array
    factorization: Any
    info: NewtonInfo


# -- hyperparameters --------------------------------------------------------------------------


def _check_positive(name, value, *, allow_zero=False):
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def _check_layers(layers) -> tuple:
    if isinstance(layers, _pipeline.Stack) or callable(layers):
        raise TypeError("layers must be a sequence of layer functions (or hessinv.Stack), not a single layer")
    return tuple(layers)


def _damping_mode(damping, modes) -> str:
    """``"lm"``, ``"trust_region"`` (those in ``modes``) or ``"fixed"`` for a float ``λ ≥ 0``."""
    if isinstance(damping, str):
        if damping not in modes:
            raise ValueError(f"damping must be one of {modes} or a float >= 0, got {damping!r}")
        return damping
    _check_positive("damping", float(damping), allow_zero=True)
    return "fixed"


def _check_common(curvature, method, mode, init_damping, min_damping, max_damping, lm, accept_ratio, inertia):
    """Validate what every transformation shares. ``lm``: ``(increase_factor, decrease_factor,
    lm_update)``.

    Returns ``(min_damping, lm_kw)``: ``min_damping`` with its default (``1e-9`` for ``"lm"``,
    else ``0``), and the keyword arguments of :func:`~hessinv._optax_damping.lm_damping`."""
    if curvature not in CURVATURES:
        raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if min_damping is None:
        min_damping = 1e-9 if mode == "lm" else 0.0
    _check_positive("init_damping", init_damping)
    _check_positive("min_damping", min_damping, allow_zero=True)
    if not max_damping >= max(min_damping, init_damping if mode == "lm" else 0.0):
        raise ValueError(
            f"need min_damping <= init_damping <= max_damping, got {min_damping}, {init_damping}, {max_damping}"
        )
    increase_factor, decrease_factor, lm_update = lm
    if lm_update not in LM_UPDATES:
        raise ValueError(f"lm_update must be one of {LM_UPDATES}, got {lm_update!r}")
    if not increase_factor > 1:
        raise ValueError(f"increase_factor must be > 1, got {increase_factor}")
    if not 0 < decrease_factor < 1:
        raise ValueError(f"decrease_factor must be in (0, 1), got {decrease_factor}")
    if not 0 <= accept_ratio < 0.25:
        raise ValueError(f"accept_ratio must be in [0, 0.25), got {accept_ratio}")
    if not isinstance(inertia, bool):
        raise TypeError(f"inertia must be a bool, got {inertia!r}")
    rule = dict(increase_factor=increase_factor, decrease_factor=decrease_factor, update=lm_update)
    return min_damping, dict(rule, min_damping=min_damping, max_damping=max_damping)


def _check_trust_region(probe_factor, init_radius, max_radius, tr_rtol, tr_max_iters):
    if probe_factor is not None and not 0 < probe_factor < 1:
        raise ValueError(f"probe_factor must be in (0, 1) or None, got {probe_factor}")
    _check_positive("init_radius", init_radius)
    if not max_radius >= init_radius:
        raise ValueError(f"max_radius must be >= init_radius, got {max_radius} < {init_radius}")
    if not 0 < tr_rtol < 1:
        raise ValueError(f"tr_rtol must be in (0, 1), got {tr_rtol}")
    if not (isinstance(tr_max_iters, int) and tr_max_iters >= 1):
        raise ValueError(f"tr_max_iters must be a positive int, got {tr_max_iters!r}")


# -- state pieces -----------------------------------------------------------------------------


def _params_dtype(params):
    dts = [jnp.result_type(x) for x in jax.tree.leaves(params) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return jnp.result_type(*dts) if dts else jnp.result_type(float)


def _initial_info(dt, lam0) -> NewtonInfo:
    zero, zero_i, no = jnp.zeros((), dt), jnp.zeros((), jnp.int32), jnp.array(False)
    return NewtonInfo(zero, zero, zero, zero, no, jnp.asarray(lam0, dt), zero, no, zero_i, zero, no, zero_i)


def _newton_info(loss, t: _optax_step.Trial, iterations, dt) -> NewtonInfo:
    """:class:`NewtonInfo` of the judged step ``t`` (in the state's dtype ``dt``)."""
    h = t.health
    return NewtonInfo(
        loss=loss.astype(dt),
        trial_loss=t.trial_loss.astype(dt),
        predicted_decrease=t.predicted_decrease.astype(dt),
        ratio=t.ratio.astype(dt),
        accepted=t.accepted,
        damping=t.damping.astype(dt),
        step_norm=t.step_norm.astype(dt),
        positive_definite=jnp.asarray(h.positive_definite, bool),
        n_neg=jnp.asarray(h.n_neg, jnp.int32),
        min_rcond=jnp.asarray(h.min_rcond).astype(dt),
        ok=jnp.asarray(h.ok, bool),
        iterations=jnp.asarray(iterations, jnp.int32),
    )


def _rejections(t, rejections):
    return jnp.where(t.accepted, 0, rejections + 1).astype(jnp.int32)


def _damped_trial(m, lam, rejections, route, probe, retry, *, accept_ratio, inertia):
    """``(trial, factorisations, last_lam)`` at the damping ``lam``: one exact solve on
    ``route``, judged; with ``probe`` (the keyword arguments of
    :func:`~hessinv._optax_damping.lm_probe`) the LM probe where it fires; with ``retry`` (those
    of :func:`~hessinv._optax_damping.lm_retry`) larger dampings while the step is rejected.
    ``last_lam`` is the largest damping tried."""
    solve = _optax_step.solver(m, route, inertia)

    def attempt(lam):
        d, health, Cd = solve(lam)
        return _optax_step.judge(m, lam, d, health, jnp.array(True), accept_ratio, Cd)

    lam = jnp.asarray(lam, m.loss.dtype)
    one = jnp.ones((), jnp.int32)

    def more(t):
        iters, last_lam, tries = one, lam, jnp.zeros((), jnp.int32)
        if probe is not None:
            t, iters = _optax_damping.lm_probe(attempt, t, lam, rejections, **probe)
        if retry is not None:
            t, last_lam, tries = _optax_damping.lm_retry(attempt, t, lam, **retry)
        return t, iters + tries, last_lam.astype(lam.dtype)

    t = attempt(lam)
    if probe is None and retry is None:
        return t, one, lam
    # One cond around the probe and the retries, entered only where one of them may act: a
    # while loop or cond copies what it reads (the λ-independent part, megabytes on the
    # output-space route) even where it does nothing (measured on the digits MLP, a 35 ms step
    # whose first trial is accepted: 3-4 ms for the retries' while loop alone).
    need = ~t.accepted | ((t.ratio < 0.25) if probe is not None else False)
    return jax.lax.cond(need, more, lambda t: (t, one, lam), t)


def _trust_region_trial(m, radius, lam_ref, tr, route, *, accept_ratio, inertia):
    """``(trial, factorisations, found)``: the trust-region search for ``λ`` (``tr``: the keyword
    arguments of :func:`~hessinv._optax_damping.trust_region_damping`) on ``route``, every
    damping from one λ-independent part (the model's kept blocks on the stage recursion, ``C``
    or the output-space ``Z`` otherwise), then the verdict on its step. The search keeps what the
    step's health needs: the stage pivots (their eigenvalues only once, with ``inertia``), or
    the route's own :class:`~hessinv._optax_health.Health`."""
    if route == "riccati":

        def factor_at(lam):
            return _blocks.Blocks.factorize(m.blocks, lam)

        dt = m.pipe.dtype
        keep, kept0 = _optax_health.pivots, [jnp.zeros((s.n, s.p, s.p), dt) for s in m.pipe.segments if s.p > 0]

        def finish(pivots):
            return _optax_health.pivots_health(pivots, _diagnostics.rcond_tol(m.pipe), inertia)

    else:
        factor_at = _optax_step.factorizer(m.pipe, m.params, m.z0, m.curvature, route)

        def keep(F):
            return _optax_health.health(F, inertia)

        no = jnp.array(False)
        kept0 = _optax_health.Health(no, jnp.zeros((), jnp.int32), jnp.zeros((), m.pipe.dtype), no)

        def finish(health):
            return health

    def solve(lam):
        F = factor_at(lam)
        return F, F.solve_rows(m.g)

    lam, d, kept, iters, found = _optax_damping.trust_region_damping(
        solve, m.g, radius, lam_ref, keep=keep, kept0=kept0, **tr
    )
    return _optax_step.judge(m, lam, d, finish(kept), found, accept_ratio), iters, found


# -- scale_by_newton --------------------------------------------------------------------------


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
    lm_update: str = "threshold",
    probe_factor: float | None = 1e-3,
    lm_retries: int = 8,
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
    with params ``{}``). Every damping tried costs one exact solve: on the stage recursion a
    one-pass solve (MATH.md section 3), on the dense and output-space routes a refactorisation
    of the λ-independent part formed once per step; the trust region keeps the blocks and
    factorises them once per iterate of its search. The step is applied only if the loss at
    ``params - d`` decreases as the quadratic model predicts (see the module docstring);
    otherwise the returned update is zero.

    The transformation's ``update(updates, state, params, *, z0, value=None, **extra_args)``
    takes the gradient of the pipeline loss at ``(params, z0)`` as ``updates`` and the batch
    ``z0`` as a keyword; ``value``, the loss at ``(params, z0)`` where the caller has it (from
    ``jax.value_and_grad``, the keyword ``optax.lbfgs`` uses), saves the step a forward pass
    (other keyword arguments are ignored, as optax requires). The returned update is
    ``+d``: chain with ``optax.scale_by_learning_rate(1.0)`` (as :func:`newton` does) to step
    downhill. The accept/reject test is made for the full step (learning rate 1).

    Args:
      layers: the pipeline's layer functions (or :class:`hessinv.Stack`), as in :func:`hessinv.ihvp`.
      curvature: ``"hessian"`` or ``"ggn"``.
      method: the exact route of each solve, as in :func:`hessinv.ihvp`: ``"auto"`` (the
        cheapest for the shapes), ``"riccati"``, ``"dense"`` or ``"gauss_newton"``. With
        ``damping="trust_region"`` every damping of a step's search reuses the route's
        λ-independent part (the blocks, ``C``, or the output-space ``Z``). The output space
        needs ``λ > 0``: ``"auto"`` takes it only with ``min_damping > 0`` (the default there
        is 0), and forced, it never accepts ``λ = 0``.
      damping: ``"lm"`` (Levenberg-Marquardt), ``"trust_region"``, or a fixed float ``λ ≥ 0``.
      init_damping: the first ``λ`` (``"lm"``), or the first guess of the search (``"trust_region"``).
      min_damping: the lower bound on ``λ``; defaults to ``1e-9`` for ``"lm"`` and ``0`` for
        ``"trust_region"``.
      max_damping: the upper bound on ``λ``.
      increase_factor: LM's multiplier of ``λ`` on failure (a rejection or ``ρ < 0.25``).
      decrease_factor: LM's smallest multiplier of ``λ`` on success.
      lm_update: LM's rule after an accepted step with ``ρ ≥ 0.25``: ``"threshold"`` (the
        default; Moré 1978) multiplies ``λ`` by ``decrease_factor`` when ``ρ > 0.75``, else by 1;
        ``"nielsen"`` by ``max(decrease_factor, 1 − (2ρ − 1)³)`` (Nielsen 1999: 1 at ``ρ = ½``,
        smaller the better the fit). Neither lowers ``λ`` while the model is nonconvex.
        docs/optax.md ("The damping rule") compares them.
      probe_factor: LM only. When a step at ``λ`` is rejected or has ``ρ < 0.25``, its model was
        convex, and the previous update was not rejected, the same update also tries
        ``λ · probe_factor`` (a second factorisation) and keeps the better accepted step; ``λ``
        rises only if both fail. ``None`` gives the classic rule. See the module docstring.
      lm_retries: LM only. While the step is rejected, try again in the same update at
        ``λ · increase_factor``, ``λ · increase_factor²``, … up to this many times: the steps
        plain LM would take over that many rejected updates, without recomputing the gradient,
        the loss and the λ-independent part (``Z``, ``C``) at params that have not moved.
        ``0`` gives one damping per update (a rejected update is zero).
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
    layers = _check_layers(layers)
    mode = _damping_mode(damping, DAMPINGS)
    lm = (increase_factor, decrease_factor, lm_update)
    checked = _check_common(curvature, method, mode, init_damping, min_damping, max_damping, lm, accept_ratio, inertia)
    min_damping, lm_kw = checked
    _check_trust_region(probe_factor, init_radius, max_radius, tr_rtol, tr_max_iters)
    if not (isinstance(lm_retries, int) and not isinstance(lm_retries, bool) and lm_retries >= 0):
        raise ValueError(f"lm_retries must be an int >= 0, got {lm_retries!r}")
    lam_floor = float(damping) if mode == "fixed" else min_damping  # λ > 0 allows the output space
    judging = dict(accept_ratio=accept_ratio, inertia=inertia)
    probe = (
        dict(probe_factor=probe_factor, min_damping=min_damping) if mode == "lm" and probe_factor is not None else None
    )
    tr = dict(min_damping=min_damping, rtol=tr_rtol, max_iters=tr_max_iters, lam_scale=init_damping)
    retry = (
        dict(increase_factor=increase_factor, max_damping=max_damping, retries=lm_retries)
        if mode == "lm" and lm_retries > 0
        else None
    )

    def init_fn(params):
        dt = _params_dtype(params)
        lam0 = float(damping) if mode == "fixed" else init_damping
        radius = init_radius if mode == "trust_region" else jnp.inf
        zero_i = jnp.zeros((), jnp.int32)
        return ScaleByNewtonState(
            zero_i, jnp.asarray(lam0, dt), jnp.asarray(radius, dt), zero_i, _initial_info(dt, lam0)
        )

    def update_fn(updates, state, params=None, *, z0=None, value=None, **extra_args):
        del extra_args  # optax convention: unknown extra arguments are ignored
        pipe, g = _optax_step.prepare(layers, updates, params, z0, "scale_by_newton")
        dt, sdt = pipe.dtype, state.damping.dtype
        route = _optax_step.route(pipe, method, curvature, lam_floor)
        if mode == "trust_region":  # many dampings per step from one λ-independent part
            blk = None
            if route == "riccati":  # the blocks, kept: they also give a structured C d
                blk = _blocks.compute(pipe, _pipeline.to_rows(pipe, list(params)), z0, curvature)
            m = _optax_step.model(layers, pipe, params, z0, g, curvature, blk, value)
            radius = state.radius.astype(dt)
            t, iters, found = _trust_region_trial(m, radius, state.damping.astype(dt), tr, route, **judging)
            radius_next = _optax_damping.trust_region_radius(t, radius, found, rtol=tr_rtol, max_radius=max_radius)
            lam_next = jnp.clip(t.damping, min_damping, max_damping)
        else:
            m = _optax_step.model(layers, pipe, params, z0, g, curvature, value=value)
            lam = jnp.asarray(damping, dt) if mode == "fixed" else state.damping.astype(dt)
            t, iters, lam_last = _damped_trial(m, lam, state.rejections, route, probe, retry, **judging)
            lam_next = _optax_damping.lm_damping(t, lam_last, **lm_kw) if mode == "lm" else lam
            radius_next = state.radius
        new_state = ScaleByNewtonState(
            count=optax.safe_int32_increment(state.count),
            damping=jnp.asarray(lam_next).astype(sdt),
            radius=jnp.asarray(radius_next).astype(sdt),
            rejections=_rejections(t, state.rejections),
            info=_newton_info(m.loss, t, iters, sdt),
        )
        return _optax_step.masked_update(t, updates), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


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


# -- the stochastic mode ----------------------------------------------------------------------


def _health_as(h: Health, dt) -> Health:
    """``h`` with fixed dtypes (the two branches of a ``lax.cond`` must agree)."""
    return Health(
        jnp.asarray(h.positive_definite, bool),
        jnp.asarray(h.n_neg, jnp.int32),
        jnp.asarray(h.min_rcond).astype(dt),
        jnp.asarray(h.ok, bool),
    )


def _fresh_or_stored(m, route, lam, refresh, state, inertia):
    """``(F, health)``: where ``refresh``, a new factorisation of ``C + λI`` on the model's params
    and batch and its health; else the stored factorisation and the health the last step
    reported for it. A ``lax.cond``: a reuse pays for no factorisation (``refresh`` a Python
    ``True``: no cond)."""
    dt = m.pipe.dtype

    def fresh():
        F = _optax_step.factorizer(m.pipe, m.params, m.z0, m.curvature, route)(lam)
        return F, _health_as(_optax_health.health(F, inertia), dt)

    def stored():
        i = state.info
        return state.factorization, _health_as(Health(i.positive_definite, i.n_neg, i.min_rcond, i.ok), dt)

    return fresh() if refresh is True else jax.lax.cond(refresh, fresh, stored)


def _placeholder_factorization(layers, params, batch_like, curvature, method, lam_floor, lam0):
    """Zeros shaped like the factorisation an update will store (for ``init``, which has no
    batch): its shapes, from ``jax.eval_shape``, depend on the batch's shapes only."""

    def factorization(params, z0):
        pipe = _pipeline.build(layers, params, z0)
        route = _optax_step.route(pipe, method, curvature, lam_floor)
        return _optax_step.factorizer(pipe, params, z0, curvature, route)(jnp.asarray(lam0, pipe.dtype))

    shapes = jax.eval_shape(factorization, list(params), batch_like)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def scale_by_stochastic_newton(
    layers: Sequence,
    batch_like: Any,
    *,
    curvature: str = "ggn",
    method: str = "auto",
    damping: str | float = "lm",
    refresh_every: int = 10,
    init_damping: float = 1e-3,
    min_damping: float | None = None,
    max_damping: float = 1e10,
    increase_factor: float = 4.0,
    decrease_factor: float = 1.0 / 3.0,
    lm_update: str = "threshold",
    accept_ratio: float = 1e-4,
    inertia: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Mini-batch exact Newton: ``(C_b + λI)^{-1} g``, the factorisation of ``C_b + λI`` on one
    batch ``b`` reused for the next ``refresh_every - 1`` updates.

    An update refactorises (on its own params and batch, at the state's ``λ``) when the stored
    factorisation has served ``refresh_every`` updates, or when the previous update was
    rejected; otherwise it solves its own gradient with the stored factorisation,
    ``d = (C_old + λ_old I)^{-1} g_new``, which costs one solve instead of the curvature and its
    factorisation. Every step is judged as in :func:`scale_by_newton`, on the update's own batch:
    the trial loss and the model ``gᵀd − ½ dᵀ C d`` with the current batch's ``C`` (one
    curvature-vector product). A rejected step is not applied. With ``damping="lm"`` the ratio
    measured on the current batch moves ``λ`` by the Levenberg-Marquardt rule (no probe), and
    the next refactorisation uses it; a rejection raises ``λ`` and refactorises at once. A
    float keeps ``λ`` fixed.

    It pays where a factorisation costs many solves (the stage recursion: blocks and
    factorisation against about one hvp per solve; the dense route ``O(n³)`` against
    ``O(n²)``; the output space ``m`` Jacobian rows against two ``m × n`` products) and where the
    curvature changes little over ``refresh_every`` updates compared with ``λ``. A batch's
    Gauss-Newton matrix has rank at most batch × outputs: with more parameters than that and a
    small ``λ``, the stale inverse sends the new gradient's part outside the old batch's range
    to a step of size ``‖g‖/λ``, the step is rejected, and every update refactorises (see
    docs/optax.md).

    ``update(updates, state, params, *, z0, **extra_args)`` as for :func:`scale_by_newton`; every
    batch ``z0`` must have the shapes and dtypes of ``batch_like`` (the state holds the
    factorisation, so its shapes are fixed at ``init``).

    Args:
      layers: the pipeline's layer functions (or :class:`hessinv.Stack`), as in :func:`hessinv.ihvp`.
      batch_like: a batch, or a pytree of ``jax.ShapeDtypeStruct`` shaped like one: only its
        shapes and dtypes are used, to size the stored factorisation at ``init``.
      curvature: ``"ggn"`` (default) or ``"hessian"``.
      method: the exact route, as in :func:`scale_by_newton` (the stage recursion keeps its
        blocks and factors here, since they are reused).
      damping: ``"lm"`` or a fixed float ``λ ≥ 0``.
      refresh_every: refactorise at least every this many updates (1: every update, the exact
        per-step solve of :func:`scale_by_newton`).
      init_damping: the first ``λ`` (``"lm"``).
      min_damping: the lower bound on ``λ``; defaults to ``1e-9`` for ``"lm"``.
      max_damping: the upper bound on ``λ``.
      increase_factor: LM's multiplier of ``λ`` on failure (a rejection or ``ρ < 0.25``).
      decrease_factor: LM's smallest multiplier of ``λ`` on success.
      lm_update: LM's rule after an accepted step with ``ρ ≥ 0.25``: ``"threshold"`` (the
        default; Moré 1978) multiplies ``λ`` by ``decrease_factor`` when ``ρ > 0.75``, else by 1;
        ``"nielsen"`` by ``max(decrease_factor, 1 − (2ρ − 1)³)`` (Nielsen 1999: 1 at ``ρ = ½``,
        smaller the better the fit). Neither lowers ``λ`` while the model is nonconvex.
        docs/optax.md ("The damping rule") compares them.
      accept_ratio: the smallest actual/predicted decrease ratio accepted.
      inertia: as in :func:`scale_by_newton` (checked when the factorisation is made).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state :class:`ScaleByStochasticNewtonState`.
    """
    layers = _check_layers(layers)
    mode = _damping_mode(damping, ("lm",))
    lm = (increase_factor, decrease_factor, lm_update)
    checked = _check_common(curvature, method, mode, init_damping, min_damping, max_damping, lm, accept_ratio, inertia)
    min_damping, lm_kw = checked
    if not (isinstance(refresh_every, int) and refresh_every >= 1):
        raise ValueError(f"refresh_every must be a positive int, got {refresh_every!r}")
    lam0 = float(damping) if mode == "fixed" else init_damping
    lam_floor = lam0 if mode == "fixed" else min_damping  # λ > 0 allows the output space

    def init_fn(params):
        dt, zero_i = _params_dtype(params), jnp.zeros((), jnp.int32)
        F0 = _placeholder_factorization(layers, params, batch_like, curvature, method, lam_floor, lam0)
        age = jnp.asarray(refresh_every, jnp.int32)  # the first update factorises
        return ScaleByStochasticNewtonState(zero_i, jnp.asarray(lam0, dt), zero_i, age, F0, _initial_info(dt, lam0))

    def update_fn(updates, state, params=None, *, z0=None, value=None, **extra_args):
        del extra_args  # optax convention: unknown extra arguments are ignored
        pipe, g = _optax_step.prepare(layers, updates, params, z0, "scale_by_stochastic_newton")
        dt, sdt = pipe.dtype, state.damping.dtype
        m = _optax_step.model(layers, pipe, params, z0, g, curvature, value=value)
        route = _optax_step.route(pipe, method, curvature, lam_floor)
        lam = jnp.asarray(lam0, dt) if mode == "fixed" else state.damping.astype(dt)
        refresh = True if refresh_every == 1 else (state.age >= refresh_every) | (state.rejections > 0)
        F, health = _fresh_or_stored(m, route, lam, refresh, state, inertia)
        lam = F.damping  # the step's λ: the one the (possibly stored) factorisation was made at
        t = _optax_step.judge(m, lam, F.solve_rows(g), health, jnp.array(True), accept_ratio)
        lam_next = _optax_damping.lm_damping(t, lam, **lm_kw) if mode == "lm" else lam
        refreshed = jnp.asarray(refresh, bool)
        new_state = ScaleByStochasticNewtonState(
            count=optax.safe_int32_increment(state.count),
            damping=jnp.asarray(lam_next).astype(sdt),
            rejections=_rejections(t, state.rejections),
            age=jnp.where(refreshed, 1, jnp.minimum(state.age + 1, refresh_every)).astype(jnp.int32),
            factorization=F,
            info=_newton_info(m.loss, t, refreshed.astype(jnp.int32), sdt),
        )
        return _optax_step.masked_update(t, updates), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def stochastic_gauss_newton(
    layers: Sequence,
    batch_like: Any,
    learning_rate: optax.ScalarOrSchedule = 1.0,
    *,
    damping: str | float = "lm",
    refresh_every: int = 10,
    **kwargs: Any,
) -> optax.GradientTransformationExtraArgs:
    """Mini-batch Gauss-Newton with a reused factorisation: ``params ← params − lr · (G_b + λI)^{-1} ∇L_{b'}``.

    ``chain(scale_by_stochastic_newton(layers, batch_like, curvature="ggn", ...),
    scale_by_learning_rate(learning_rate))``: ``G_b + λI`` is factorised on the batch ``b`` of
    one update and reused, for the gradients of the next ``refresh_every - 1`` batches ``b'``;
    see :func:`scale_by_stochastic_newton` for when it refactorises and when that pays.

    Examples:
      A regression trained on fresh batches of 16, refactorising every fourth update:

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
      >>> X = jax.random.normal(k3, (128, 3))
      >>> data = {"h": X, "y": 0.5 * jnp.sin(X[:, 0])}
      >>> batch = lambda i: jax.tree.map(lambda a: a[16 * (i % 8) : 16 * (i % 8 + 1)], data)
      >>> opt = hessinv.optax.stochastic_gauss_newton(layers, batch(0), refresh_every=4, damping=1.0)
      >>> state = opt.init(params)
      >>> @jax.jit
      ... def step(params, state, z0):
      ...     grads = jax.grad(lambda p: hessinv.loss(layers, p, z0))(params)
      ...     updates, state = opt.update(grads, state, params, z0=z0)
      ...     return optax.apply_updates(params, updates), state
      >>> loss0 = hessinv.loss(layers, params, data)
      >>> factorised = []
      >>> for i in range(16):
      ...     params, state = step(params, state, batch(i))
      ...     factorised.append(int(optax.tree_utils.tree_get(state, "info").iterations))
      >>> factorised[:8]  # a factorisation on updates 0 and 4, reused in between
      [1, 0, 0, 0, 1, 0, 0, 0]
      >>> bool(hessinv.loss(layers, params, data) < 0.1 * loss0)
      True
    """
    return optax.chain(
        scale_by_stochastic_newton(
            layers, batch_like, curvature="ggn", damping=damping, refresh_every=refresh_every, **kwargs
        ),
        optax.scale_by_learning_rate(learning_rate),
    )
