"""One trial step of the optimisers: the solve ``d = (C + λI)^{-1} g`` and its verdict.

A step is judged against the quadratic model of the loss on the current batch,

    m(s) = gᵀs + ½ sᵀ C s,   s = -d,   predicted decrease  pred = -m(s) = gᵀd − ½ dᵀ C d,

through ``ρ = (loss − trial_loss) / pred``, the trial loss taken at ``params - d`` on the same
batch. The step is accepted only if it is finite, ``pred > 0``, the loss decreases and
``ρ ≥ accept_ratio`` (:func:`judge`). :func:`solver` picks how ``d`` is computed: the stage
recursion in one pass (no factorisation kept), or a route's factorisation of ``C + λI`` with
the λ-independent part formed once for all dampings tried.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from . import _api, _diagnostics, _hvp, _oneshot, _optax_health, _pipeline
from ._optax_health import Health


class Trial(NamedTuple):
    """One trial step ``d`` at damping ``λ``, judged (:func:`judge`).

    Attributes:
      damping: the ``λ`` of the step.
      step: ``d``, shaped like the params (a list, one entry per layer).
      trial_loss: the loss at ``params - d`` on the batch.
      predicted_decrease: ``gᵀd − ½ dᵀ C d``.
      ratio: actual over predicted decrease (``-inf`` when the model predicts no decrease).
      accepted: whether the step passes the test.
      step_norm: ``‖d‖``.
      health: :class:`~hessinv._optax_health.Health` of ``C + λI``.
    """

    damping: jax.Array
    step: list
    trial_loss: jax.Array
    predicted_decrease: jax.Array
    ratio: jax.Array
    accepted: jax.Array
    step_norm: jax.Array
    health: Health


class Model(NamedTuple):
    """The quadratic model of the loss around ``params`` on the batch ``z0``.

    Attributes:
      layers, pipe, params, z0: the pipeline, its static description, the params (a list) and
        the batch.
      g: the gradient as per-segment rows (:func:`hessinv._pipeline.to_rows`).
      loss: the loss at ``params``.
      curvature: ``"hessian"`` or ``"ggn"``.
      blocks: the λ-independent stage blocks when they are kept anyway (the trust region), for a
        structured ``C d``; ``None`` for an autodiff ``C d``.
    """

    layers: Any
    pipe: Any
    params: list
    z0: Any
    g: list
    loss: jax.Array
    curvature: str
    blocks: Any = None


def dot(a_rows, b_rows):
    """``aᵀb`` of two row lists."""
    return sum(jnp.vdot(a, b) for a, b in zip(a_rows, b_rows))


def all_finite(rows):
    """Whether every entry of a row list is finite, a boolean array."""
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(r)) for r in rows]))


def prepare(layers, updates, params, z0, name):
    """``(pipe, g_rows)`` for an ``update(updates, state, params, z0=batch)`` call of transform
    ``name``: the pipeline validated at trace time, inputs checked for NaN/inf when concrete."""
    if params is None:
        raise ValueError(f"{name} needs params: call update(grads, state, params, z0=batch)")
    if z0 is None:
        raise ValueError(f"{name} needs the batch: call update(grads, state, params, z0=batch)")
    pipe = _pipeline.build(layers, params, z0)
    if _pipeline.is_concrete(params, z0):  # called eagerly: NaN/inf inputs raise, naming the leaf
        _api._check_inputs(params, z0)
    return pipe, _pipeline.to_rows(pipe, list(updates))


def model(layers, pipe, params, z0, g_rows, curvature, blocks=None, value=None) -> Model:
    """The :class:`Model` at ``params`` on ``z0``: one forward pass for the loss, or none where
    the caller passes it as ``value`` (from ``jax.value_and_grad``, as for ``optax.lbfgs``)."""
    if value is None:
        loss = _pipeline.loss(layers, params, z0)
    elif jnp.shape(value) != ():
        raise ValueError(f"value must be the scalar loss at (params, z0), got shape {jnp.shape(value)}")
    else:
        loss = value
    loss = jnp.asarray(loss).astype(pipe.dtype)
    return Model(layers, pipe, list(params), z0, g_rows, loss, curvature, blocks)


def curvature_product(m: Model, d_rows):
    """``C d`` with the undamped curvature of the model's batch: structured from the kept blocks,
    else Pearlmutter's hvp or the GGN's ``Jᵀ ∇²ℓ J d`` (a few gradients' worth)."""
    if m.blocks is not None:
        return _hvp.structured_hvp_rows(m.blocks, d_rows, 0.0)
    vp = _hvp.ggn_vp if m.curvature == "ggn" else _hvp.pearlmutter_hvp
    return _pipeline.to_rows(m.pipe, vp(m.layers, m.params, m.z0, _pipeline.from_rows(m.pipe, d_rows)))


def judge(m: Model, lam, d_rows, health: Health, found, accept_ratio, Cd_rows=None) -> Trial:
    """The verdict on the step ``d``: the model's predicted decrease, the trial loss at
    ``params - d`` and the acceptance test (with ``found`` False the step is rejected).
    ``Cd_rows``, ``C d`` where the caller has it (from the step's factorisation), else
    :func:`curvature_product`."""
    dt = m.pipe.dtype
    Cd_rows = curvature_product(m, d_rows) if Cd_rows is None else Cd_rows
    pred = dot(m.g, d_rows) - 0.5 * dot(d_rows, Cd_rows)
    step = _pipeline.from_rows(m.pipe, d_rows)
    trial = [jax.tree.map(lambda x, s: x - s.astype(x.dtype), x, s) for x, s in zip(m.params, step)]
    loss1 = _pipeline.loss(m.layers, trial, m.z0).astype(dt)
    actual = m.loss - loss1
    ratio = jnp.where(pred > 0, actual / jnp.where(pred > 0, pred, 1), -jnp.inf)
    finite = all_finite(d_rows) & jnp.isfinite(loss1) & jnp.isfinite(pred)
    accepted = found & finite & (pred > 0) & (actual > 0) & (ratio >= accept_ratio)
    return Trial(lam, step, loss1, pred, ratio, accepted, jnp.sqrt(dot(d_rows, d_rows)), health)


def route(pipe, method, curvature, lam_floor) -> str:
    """The exact route of the solves (static): ``method``, or auto's choice for these shapes,
    where a damping floor ``lam_floor`` of 0 rules out the output space (which needs ``λ > 0``).
    Where auto would take the depth-parallel route (an accelerator), the steps take the stage
    recursion instead: the step's health check reads the stage pivots and the routes' own
    diagnostics, which the parallel route's other elimination order does not provide."""
    r = _api._route(pipe, method, curvature, jnp.asarray(lam_floor, pipe.dtype))
    return "riccati" if r == "parallel" else r


def factorizer(pipe, params, z0, curvature, route_name):
    """``λ ↦`` the route's factorisation of ``C + λI`` at ``params`` on the batch ``z0``, the
    λ-independent part (the blocks, ``C``, or ``Z`` and ``Z Zᵀ``) formed once here."""
    return _api.damped(pipe, _pipeline.to_rows(pipe, list(params)), z0, curvature, route_name)


def solver(m: Model, route_name, inertia: bool):
    """``λ ↦ (d, health, Cd)``: the step ``(C + λI)^{-1} g``, the health of ``C + λI`` and
    ``C d`` where the factorisation gives it cheaply (else ``None``: :func:`judge` takes it by
    autodiff).

    On the stage recursion it is the one-pass solve (blocks computed chunk by chunk inside the
    recursion, never all kept, with the pivots kept for the health check), about half the time
    of blocks + factorise + solve; on the other routes the factorisation from
    :func:`factorizer`, so each further damping refactorises only the λ-dependent part, and
    ``C d = (C + λI) d − λ d`` is a product with the ``C`` or ``Z`` it holds (an ``n²`` or
    ``2mn`` product instead of a forward and a reverse pass; its rounding, ``eps·λ‖d‖²``, is
    at most ``eps·gᵀd`` where ``C + λI ≻ 0``, so the predicted decrease keeps its digits)."""
    if route_name == "riccati":
        tol = _diagnostics.rcond_tol(m.pipe)

        def one_pass(lam):
            d, outs = _oneshot.solve(m.pipe, m.params, m.z0, m.g, lam, m.curvature, keep_pivot=True)
            return d, _optax_health.pivots_health(_oneshot.pivots(m.pipe, outs), tol, inertia), None

        return one_pass
    factor_at = factorizer(m.pipe, m.params, m.z0, m.curvature, route_name)

    def factored(lam):
        F = factor_at(lam)
        d = F.solve_rows(m.g)
        Cd = [Ad - lam * x for Ad, x in zip(F.matvec_rows(d), d)]
        return d, _optax_health.health(F, inertia), Cd

    return factored


def masked_update(t: Trial, updates):
    """The update ``+d`` if ``t`` was accepted, else exactly zero; shaped and typed like
    ``updates`` (any pytree structure with the layers' entries as leaves' parents)."""
    out = jax.tree.map(lambda s, u: jnp.where(t.accepted, s, jnp.zeros_like(s)).astype(u.dtype), t.step, list(updates))
    return jax.tree.unflatten(jax.tree.structure(updates), jax.tree.leaves(out))
