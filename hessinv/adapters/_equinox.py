"""Equinox models as hessinv pipelines: ``eqx.nn.Sequential``, ``eqx.nn.MLP``, a list of modules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from . import _converted

SUPPORTED = "an equinox.nn.Sequential, an equinox.nn.MLP, or a list or tuple of Equinox modules (or functions)"


def _member(obj, where: str, call: Callable = lambda m, x: m(x)) -> _converted._Member:
    """``obj`` (a module, or any pytree ``call`` knows how to apply to one example) split into its
    floating arrays and the rest, applied to the batch by ``vmap``: Equinox layers act on one
    example at a time."""
    import equinox as eqx

    if isinstance(obj, eqx.nn.StatefulLayer) and obj.is_stateful():
        raise TypeError(
            f"{where} is a {type(obj).__name__}, which carries state (eqx.nn.State); from_equinox supports "
            "stateless layers only"
        )
    params, static = eqx.partition(obj, eqx.is_inexact_array)
    # Two members are the same layer when their non-array parts are: the same structure (Equinox
    # keeps static fields such as sizes in it) and the very same leaves (functions, say).
    key = ("equinox", jax.tree.structure(static), tuple(id(x) for x in jax.tree.leaves(static)))
    name = getattr(obj, "__name__", type(obj).__name__)
    if not jax.tree.leaves(params):

        def apply_fixed(p, h):
            return jax.vmap(lambda x: call(obj, x))(h)

        return _converted._Member(key, None, apply_fixed, name, where)

    def apply(p, h):
        module = eqx.combine(p, static)
        return jax.vmap(lambda x: call(module, x))(h)

    return _converted._Member(key, params, apply, name, where)


def _combine(params, obj):
    """``obj`` with its floating arrays replaced by ``params`` (``obj`` itself for ``None``)."""
    import equinox as eqx

    return obj if params is None else eqx.combine(params, eqx.partition(obj, eqx.is_inexact_array)[1])


def _updates(to_model):
    import equinox as eqx

    return lambda tree: eqx.filter(to_model(tree), eqx.is_inexact_array)


def _sequence(layers, rebuild, loss, x, y) -> _converted.Converted:
    members = [_member(m, f"layers[{i}]") for i, m in enumerate(layers)]
    layers_, params, z0, unpack = _converted.assemble(_converted.units(members), loss, x, y)

    def to_model(tree):
        per_member = [p for unit in unpack(tree) for p in unit]
        return rebuild([_combine(p, m) for p, m in zip(per_member, layers)])

    return _converted.Converted(layers_, params, z0, to_model, _updates(to_model))


def _index(tree, i):
    """Copy ``i`` of every array of ``tree``: ``eqx.nn.MLP`` keeps one copy of its activation a
    layer (and one a feature), so that a learnt activation has parameters of its own."""
    import equinox as eqx

    return jax.tree.map(lambda a: a[i] if eqx.is_array(a) else a, tree)


def _per_feature(a, x):
    """How ``eqx.nn.MLP`` applies an activation to one example: each feature by its own copy."""
    import equinox as eqx

    return eqx.filter_vmap(lambda f, v: f(v))(a, x)


def _mlp(model, loss, x, y) -> _converted.Converted:
    import equinox as eqx

    from .. import _pipeline

    depth = model.depth
    if model.scan:  # (input layer, the hidden layers stacked, output layer)
        first, hidden, last = model.layers
        linears = [first, *(_index(hidden, i) for i in range(depth - 1)), last]
    else:
        linears = list(model.layers)
    # One unit a Linear, with the activation after it (as MLP.__call__ applies them).
    units = []
    for i, lin in enumerate(linears):
        members = [_member(lin, f"layers[{i}]")]
        if i < depth:
            members.append(_member(_index(model.activation, i), f"activation[{i}]", _per_feature))
        elif depth > 0:  # an MLP of depth 0 is its Linear alone
            call = (lambda a, v: a(v)) if model.out_size == "scalar" else _per_feature
            members.append(_member(model.final_activation, "final_activation", call))
        units.append(_converted._Unit(tuple(members)))
    layers, params, z0, unpack = _converted.assemble(units, loss, x, y)

    def to_model(tree):
        parts = unpack(tree)  # per unit: [Linear's params, activation's (None unless learnt)]
        new = [_combine(p[0], lin) for p, lin in zip(parts, linears)]
        if model.scan:
            hidden = _pipeline.stack_trees([eqx.filter(h, eqx.is_inexact_array) for h in new[1:-1]])
            new = [new[0], _combine(hidden, model.layers[1]), new[-1]]
        out = eqx.tree_at(lambda m: m.layers, model, tuple(new))
        if depth and parts[0][1] is not None:  # a learnt activation: its copies stacked back
            act = _pipeline.stack_trees([p[1] for p in parts[:depth]])
            out = eqx.tree_at(lambda m: m.activation, out, _combine(act, model.activation))
        if depth and parts[-1][1] is not None:
            out = eqx.tree_at(lambda m: m.final_activation, out, _combine(parts[-1][1], model.final_activation))
        return out

    return _converted.Converted(layers, params, z0, to_model, _updates(to_model))


def from_equinox(model: Any, loss: Callable, x, y=None) -> _converted.Converted:
    """An Equinox model and a loss as a hessinv pipeline, and the way back to the model.

    Equinox layers act on one example, so every layer is ``vmap``-ed over the leading (batch)
    axis of ``x``; the loss sees the whole batch. Each module is split by
    ``eqx.partition(module, eqx.is_inexact_array)``: its floating arrays are the layer's
    parameters, everything else (sizes, activation functions, integer arrays) is fixed. A
    parameter-free module (``eqx.nn.Lambda(jax.nn.tanh)``, an activation) joins the layer before
    it, and consecutive identical layers (the same structure and fixed parts, the same parameter
    shapes, the same activation shapes) become one :class:`hessinv.Stack`, so compile time does
    not grow with depth: an ``MLP`` of depth ``d`` is three pipeline entries and the loss.

    Args:
      model: an ``eqx.nn.Sequential``, an ``eqx.nn.MLP``, or a list or tuple of Equinox modules
        or functions applied in turn. Layers that carry state (``eqx.nn.BatchNorm``) are not
        supported; parameters shared between layers would be counted once per layer.
      loss: ``loss(outputs, y) -> scalar``, ``outputs`` the model's outputs for the whole batch.
      x: the inputs, batch first (``(batch, in_size)`` for an ``MLP``).
      y: the targets (any pytree, or ``None``), passed to ``loss`` unchanged. Integer labels and
        floating targets alike are constants of the pipeline, never parameters.

    Returns:
      A :class:`Converted` ``(layers, params, z0, to_model, to_updates)``: hand ``layers``,
      ``params`` and ``z0`` to any hessinv function; ``to_model`` puts a params-shaped answer back
      into the model, ``to_updates`` lays it out for ``eqx.apply_updates``.

    Raises:
      TypeError: ``model`` is none of the above, or holds a stateful layer.

    Examples:
      A Newton step for a small regression MLP, checked against the dense Hessian:

      >>> import jax, jax.numpy as jnp, equinox as eqx, hessinv
      >>> from jax.flatten_util import ravel_pytree
      >>> jax.config.update("jax_enable_x64", True)
      >>> model = eqx.nn.MLP(3, 1, 4, 3, activation=jnp.tanh, key=jax.random.key(0))
      >>> x, y = jax.random.normal(jax.random.key(1), (16, 3)), jnp.zeros((16, 1))
      >>> def mse(out, y):
      ...     return jnp.mean((out - y) ** 2)
      >>> net = hessinv.adapters.from_equinox(model, mse, x, y)
      >>> [type(f).__name__ for f in net.layers]  # input layer, the 2 hidden ones, output, loss
      ['function', 'Stack', 'function', 'function']
      >>> g = jax.grad(lambda p: hessinv.loss(net.layers, p, net.z0))(net.params)
      >>> step = hessinv.ihvp(net.layers, net.params, net.z0, g, damping=1e-3)
      >>> new_model = eqx.apply_updates(model, jax.tree.map(jnp.negative, net.to_updates(step)))
      >>> theta, unravel = ravel_pytree(eqx.filter(model, eqx.is_inexact_array))
      >>> static = eqx.filter(model, eqx.is_inexact_array, inverse=True)
      >>> def model_loss(t):
      ...     return mse(jax.vmap(eqx.combine(unravel(t), static))(x), y)
      >>> H = jax.hessian(model_loss)(theta)
      >>> ref = jnp.linalg.solve(H + 1e-3 * jnp.eye(len(theta)), jax.grad(model_loss)(theta))
      >>> bool(jnp.allclose(ravel_pytree(eqx.filter(new_model, eqx.is_inexact_array))[0], theta - ref))
      True
    """
    import equinox as eqx

    if isinstance(model, eqx.nn.MLP):
        return _mlp(model, loss, x, y)
    if isinstance(model, eqx.nn.Sequential):
        return _sequence(list(model.layers), lambda ms: eqx.tree_at(lambda m: m.layers, model, tuple(ms)), loss, x, y)
    if isinstance(model, (list, tuple)) and model and all(callable(m) for m in model):
        return _sequence(list(model), type(model), loss, x, y)
    raise TypeError(f"from_equinox expects {SUPPORTED}; got {_describe(model)}")


def _describe(obj) -> str:
    if isinstance(obj, (list, tuple)):
        bad = [type(m).__name__ for m in obj if not callable(m)]
        return f"an empty {type(obj).__name__}" if not obj else f"a {type(obj).__name__} holding {', '.join(bad)}"
    return f"{type(obj).__module__}.{type(obj).__qualname__}"
