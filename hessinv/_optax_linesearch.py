"""An expanding line search chained after an exact step: lengthen it while the loss keeps falling.

An exact (Gauss-)Newton step is the minimiser of the quadratic model, so where the model holds
the loss along the step is lowest near length 1 and one more loss evaluation (at length 2)
confirms it. Where the model is pessimistic, it is not: the cross-entropy of a batch the network
already classifies correctly falls towards 0 only as the logits grow, a margin the quadratic
model gains about one unit of per step, so a full step divides the loss by about ``e`` and
twice the step by about ``e²``. Gauss-Newton then converges linearly however small ``λ`` gets,
and a search that doubles the step while the loss falls takes several of those steps' worth of
progress for a few forward passes, no new factorisation.

The search is greedy and monotone: it evaluates the loss at ``params + t·u`` for
``t = 1, f, f², …`` (``u`` the update it is given, already pointing downhill) and stops at the
first ``t`` whose loss is not lower than the previous one (or not finite), keeping the previous
one; at most ``max_expansions`` lengthenings. A zero update (a step the damping rule rejected)
is returned unchanged with one evaluation. The decision uses the loss only, on the same batch
``z0`` as the step, so it composes with any damping rule: LM and the trust region judge the
unit step as before and set the next ``λ`` from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from . import _api


class LinesearchInfo(NamedTuple):
    """Diagnostics of the last search. All fields are scalar arrays.

    Attributes:
      step_length: the factor ``t`` the update was multiplied by (1 when not lengthened).
      value: the loss at ``params + t·u``.
      evaluations: loss evaluations made (1 + the lengthenings tried).
    """

    step_length: jax.Array
    value: jax.Array
    evaluations: jax.Array


class ScaleByExpandingLinesearchState(NamedTuple):
    """State of :func:`scale_by_expanding_linesearch`: ``count`` (updates so far, int32) and
    ``search`` (:class:`LinesearchInfo` of the last update; not ``info``, so that
    ``optax.tree_utils.tree_get(state, "info")`` still finds the step's :class:`NewtonInfo`)."""

    count: jax.Array
    search: LinesearchInfo


def _check(layers, max_expansions, factor):
    if isinstance(layers, (str, bytes)) or not (hasattr(layers, "__len__") and len(layers) > 0):
        raise ValueError("scale_by_expanding_linesearch: layers must be a non-empty sequence of layer functions")
    if not (isinstance(max_expansions, int) and not isinstance(max_expansions, bool) and max_expansions >= 0):
        raise ValueError(f"scale_by_expanding_linesearch: max_expansions must be an int >= 0, got {max_expansions!r}")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 1 or factor == float("inf"):
        raise ValueError(f"scale_by_expanding_linesearch: factor must be a finite number > 1, got {factor!r}")


def _dtype(updates):
    leaves = [x for x in jax.tree.leaves(updates) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return jnp.result_type(*leaves) if leaves else jnp.float32


def scale_by_expanding_linesearch(
    layers: Sequence, *, max_expansions: int = 4, factor: float = 2.0
) -> optax.GradientTransformationExtraArgs:
    """Multiply a descent update ``u`` by the ``t ∈ {1, factor, factor², …}`` with the lowest loss
    found by lengthening while the loss falls (see the module docstring).

    Chain it after the step and its sign, as ``optax.lbfgs`` chains its line search::

        opt = optax.chain(hessinv.optax.scale_by_newton(layers, curvature="ggn"),
                          optax.scale_by_learning_rate(1.0),
                          hessinv.optax.scale_by_expanding_linesearch(layers))

    ``update(updates, state, params, *, z0, **extra_args)`` takes the batch as the keyword ``z0``
    (the same one the step's transform takes) and evaluates ``hessinv.loss(layers, params + t·u,
    z0)``; other keyword arguments are ignored. It costs one forward pass per ``t`` tried: two
    where the unit step is already best.

    Args:
      layers: the pipeline's layer functions (or :class:`hessinv.Stack`), the same the step uses.
      max_expansions: at most this many lengthenings per update (``0``: the update unchanged,
        one evaluation).
      factor: the ratio between successive step lengths, ``> 1``.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state :class:`ScaleByExpandingLinesearchState`.
    """
    _check(layers, max_expansions, factor)

    def init_fn(params):
        dt = _dtype(params)
        one, zero_i = jnp.ones((), dt), jnp.zeros((), jnp.int32)
        return ScaleByExpandingLinesearchState(zero_i, LinesearchInfo(one, jnp.full((), jnp.nan, dt), zero_i))

    def update_fn(updates, state, params=None, *, z0=None, **extra_args):
        del extra_args  # optax convention: unknown extra arguments are ignored
        if params is None or z0 is None:
            raise ValueError("scale_by_expanding_linesearch: update needs params and the batch z0 (update(..., params, z0=batch))")
        dt = _dtype(updates)

        def value_at(t):
            trial = jax.tree.map(lambda p, u: p + (t * u).astype(jnp.result_type(p)), params, updates)
            return _api.loss(layers, trial, z0).astype(dt)

        moved = jnp.any(jnp.array([jnp.any(u != 0) for u in jax.tree.leaves(updates)]))
        one = jnp.ones((), dt)

        def cond(c):
            k, _, _, stopped = c
            return ~stopped & (k < max_expansions)

        def body(c):
            k, t, value, _ = c
            longer = t * factor
            v = value_at(longer)
            better = jnp.isfinite(v) & (v < value)
            return k + 1, jnp.where(better, longer, t), jnp.where(better, v, value), ~better

        k, t, value, _ = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), one, value_at(one), ~moved))
        new_state = ScaleByExpandingLinesearchState(
            optax.safe_int32_increment(state.count), LinesearchInfo(t, value, 1 + k)
        )
        return jax.tree.map(lambda u: (t * u).astype(jnp.result_type(u)), updates), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
