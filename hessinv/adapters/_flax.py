"""Flax models as hessinv pipelines: NNX ``nnx.Sequential`` or a list of NNX modules, and linen
``nn.Sequential`` with its variables. Flax layers act on the whole batch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from . import _converted

SUPPORTED = (
    "a flax.nnx.Sequential, a list or tuple of flax.nnx.Module (or functions), "
    "or a flax.linen.Sequential together with variables=model.init(...)"
)


def _function(f, where: str) -> _converted._Member:
    name = getattr(f, "__name__", type(f).__name__)
    return _converted._Member(("function", id(f)), None, lambda p, h: f(h), name, where)


# -- NNX --------------------------------------------------------------------------------------


def _nnx_member(m, where: str) -> _converted._Member:
    from flax import nnx

    if not isinstance(m, nnx.Module):
        return _function(m, where)
    graphdef, params, rest = nnx.split(m, nnx.Param, ...)
    # The rest (batch statistics, RNG state) is read as a constant; a layer holding any is never
    # stacked with another.
    key = ("nnx", graphdef, id(m) if jax.tree.leaves(rest) else None)

    def apply(p, h):
        return nnx.merge(graphdef, p if p is not None else params, rest)(h)

    own = params if jax.tree.leaves(params) else None
    return _converted._Member(key, own, apply, type(m).__name__, where)


def _nnx(model, layers, loss, x, y) -> _converted.Converted:
    from flax import nnx

    members = [_nnx_member(m, f"layers[{i}]") for i, m in enumerate(layers)]
    own = sum(len(jax.tree.leaves(m.params)) for m in members if m.params is not None)
    if own != len(jax.tree.leaves(nnx.state(layers, nnx.Param))):
        raise TypeError("from_flax: the layers share parameters, which hessinv would count once per layer")
    layers_, params, z0, unpack = _converted.assemble(_converted.units(members), loss, x, y)
    is_sequential = isinstance(model, nnx.Sequential)

    def to_model(tree):
        per_member = [p for unit in unpack(tree) for p in unit]
        if is_sequential:
            new = nnx.clone(model)
            for i, p in enumerate(per_member):
                if p is not None:
                    nnx.update(new.layers[i], p)
            return new
        new = [nnx.clone(m) if isinstance(m, nnx.Module) else m for m in layers]
        for m, p in zip(new, per_member):
            if p is not None:
                nnx.update(m, p)
        return type(model)(new)

    def to_updates(tree):
        return nnx.state(to_model(tree), nnx.Param)

    return _converted.Converted(layers_, params, z0, to_model, to_updates)


# -- linen ------------------------------------------------------------------------------------


def _linen(model, variables, loss, x, y) -> _converted.Converted:
    import flax.linen as nn

    variables = dict(variables)
    all_params = dict(variables.get("params", {}))
    members, names = [], []
    for i, layer in enumerate(model.layers):
        name = f"layers_{i}"  # how nn.Sequential names its submodules
        names.append(name if name in all_params else None)
        if not isinstance(layer, nn.Module):
            members.append(_function(layer, f"layers[{i}]"))
            continue
        others = {c: v[name] for c, v in variables.items() if c != "params" and name in v}

        def apply(p, h, layer=layer, others=others):
            return layer.apply({**others, **({"params": p} if p is not None else {})}, h)

        key = ("linen", layer, id(layer) if others else None)
        members.append(_converted._Member(key, all_params.get(name), apply, type(layer).__name__, f"layers[{i}]"))
    layers_, params, z0, unpack = _converted.assemble(_converted.units(members), loss, x, y)

    def to_updates(tree):
        per_member = [p for unit in unpack(tree) for p in unit]
        new = {n: p for n, p in zip(names, per_member) if n is not None}
        return {k: new.get(k, v) for k, v in all_params.items()}

    def to_model(tree):
        return {**variables, "params": to_updates(tree)}

    return _converted.Converted(layers_, params, z0, to_model, to_updates)


def from_flax(model: Any, loss: Callable, x, y=None, *, variables=None) -> _converted.Converted:
    """A Flax model and a loss as a hessinv pipeline, and the way back to the model.

    Flax layers act on the whole batch, so each layer is called on it as it is. An NNX module
    is split by ``nnx.split(module, nnx.Param, ...)``: its ``nnx.Param`` variables are the
    layer's parameters (an ``nnx.State``), the rest (batch statistics, RNG state) is read as a
    constant, so put a model with such layers in ``model.eval()`` mode. A linen layer's
    parameters are its entry of ``variables["params"]``. A parameter-free layer (an activation
    function) joins the layer before it, and consecutive identical layers (the same module
    definition, the same parameter shapes, the same activation shapes) become one
    :class:`hessinv.Stack`, so compile time does not grow with depth.

    Args:
      model: an ``nnx.Sequential``; a list or tuple of NNX modules or functions applied in turn;
        or a linen ``nn.Sequential`` (then ``variables`` is required). Activations between
        layers must be single arrays.
      loss: ``loss(outputs, y) -> scalar``, ``outputs`` the model's outputs for the whole batch.
      x: the inputs, batch first.
      y: the targets (any pytree, or ``None``), passed to ``loss`` unchanged. Integer labels and
        floating targets alike are constants of the pipeline, never parameters.
      variables: linen only: ``model.init(key, x)``. Collections other than ``"params"`` are read
        as constants.

    Returns:
      A :class:`Converted` ``(layers, params, z0, to_model, to_updates)``. For NNX, ``to_model``
      returns a new module (or list) holding the given arrays and ``to_updates`` an ``nnx.State``
      like ``nnx.state(model, nnx.Param)``; for linen, ``to_model`` returns the variables and
      ``to_updates`` a dict like ``variables["params"]``.

    Raises:
      TypeError: ``model`` is none of the above, ``variables`` is missing for (or given with
        something other than) a linen model, or NNX layers share parameters.

    Examples:
      A Newton step for an NNX classifier, added to the model's parameters:

      >>> import jax, jax.numpy as jnp, optax, hessinv
      >>> from flax import nnx
      >>> jax.config.update("jax_enable_x64", True)
      >>> rngs = nnx.Rngs(0)
      >>> dense = lambda i, o: nnx.Linear(i, o, param_dtype=jnp.float64, rngs=rngs)
      >>> hidden = [m for _ in range(8) for m in (dense(4, 4), jnp.tanh)]
      >>> model = nnx.Sequential(dense(3, 4), jnp.tanh, *hidden, dense(4, 2))
      >>> x, y = jax.random.normal(jax.random.key(1), (16, 3)), jnp.arange(16) % 2
      >>> def xent(logits, y):
      ...     return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      >>> net = hessinv.adapters.from_flax(model, xent, x, y)
      >>> [type(f).__name__ for f in net.layers]  # first layer, 8 identical ones, output, loss
      ['function', 'Stack', 'function', 'function']
      >>> g = jax.grad(lambda p: hessinv.loss(net.layers, p, net.z0))(net.params)
      >>> step = hessinv.ihvp(net.layers, net.params, net.z0, g, damping=1e-2)
      >>> params = nnx.state(model, nnx.Param)
      >>> nnx.update(model, jax.tree.map(lambda p, d: p - d, params, net.to_updates(step)))
      >>> bool(xent(model(x), y) < hessinv.loss(net.layers, net.params, net.z0))
      True
    """
    import flax.linen as nn
    from flax import nnx

    if isinstance(model, nn.Module):
        if not isinstance(model, nn.Sequential):
            raise TypeError(f"from_flax expects {SUPPORTED}; got {_describe(model)}")
        if variables is None:
            raise TypeError("from_flax: a linen model holds no parameters; pass variables=model.init(key, x)")
        return _linen(model, variables, loss, x, y)
    if variables is not None:
        raise TypeError(
            f"from_flax: variables= is for linen models; an NNX model holds its own, got {_describe(model)}"
        )
    if isinstance(model, nnx.Sequential):
        return _nnx(model, list(model.layers), loss, x, y)
    if (
        isinstance(model, (list, tuple))
        and model
        and all(callable(m) and not isinstance(m, nn.Module) for m in model)
        and any(isinstance(m, nnx.Module) for m in model)
    ):
        return _nnx(model, list(model), loss, x, y)
    raise TypeError(f"from_flax expects {SUPPORTED}; got {_describe(model)}")


def _describe(obj) -> str:
    if isinstance(obj, (list, tuple)):
        kinds = sorted({f"{type(m).__module__}.{type(m).__qualname__}" for m in obj})
        return f"an empty {type(obj).__name__}" if not obj else f"a {type(obj).__name__} of {', '.join(kinds)}"
    return f"{type(obj).__module__}.{type(obj).__qualname__}"
