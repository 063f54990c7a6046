"""What every adapter shares: a model cut into layers, identical layers stacked, and the way back.

An adapter turns each layer of a model into a :class:`_Member` (how to apply it to the batch, its
parameter arrays, and a key saying which members are the same layer), folds every
parameter-free member (an activation) into the layer before it, and hands the resulting list of
:class:`_Unit` to :func:`assemble`. Consecutive units with equal keys and equal parameter shapes
that map the activations to the same shapes become one :class:`hessinv.Stack`, so compile time
does not grow with depth.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax

from .. import _pipeline
from .._errors import PipelineError


class Converted(NamedTuple):
    """A model as a hessinv pipeline ``(layers, params, z0)``, and the way back to the model.

    Attributes:
      layers: one function ``f(z, x)`` per layer of the model (a layer together with the
        parameter-free functions after it, such as its activation), each run of identical
        consecutive layers as one :class:`hessinv.Stack`, and last the loss.
      params: one entry per element of ``layers``: the layer's parameter arrays in the
        framework's own containers, stacked on a leading axis for a Stack; ``{}`` for the loss.
      z0: the batch, ``{"h": x, "y": y}``: the inputs (the first activations) and the targets,
        which every layer passes along to the loss.
      to_model: ``to_model(tree)`` for any ``tree`` shaped like ``params`` (``params`` itself, a
        gradient, ``hessinv.ihvp``'s answer): the model with those arrays as its parameters.
      to_updates: ``to_updates(tree)``: those arrays laid out like the framework's parameter
        tree and nothing else (Equinox: the model with ``None`` at every non-parameter leaf, for
        ``eqx.apply_updates``; NNX: an ``nnx.State`` like ``nnx.state(model, nnx.Param)``;
        linen: a dict like ``variables["params"]``).
    """

    layers: list
    params: list
    z0: dict
    to_model: Callable[[Sequence], Any]
    to_updates: Callable[[Sequence], Any]


class _Member(NamedTuple):
    """One layer of a model as the framework sees it."""

    key: tuple  # equal keys (and equal parameter shapes): the same layer function
    params: Any  # a pytree of floating arrays, or None for a parameter-free member
    apply: Callable  # (params, h) -> h on the whole batch
    name: str
    where: str  # where it sits in the model, for messages: "layers[3]"


class _Unit(NamedTuple):
    """Consecutive members that make one hessinv layer (a dense layer and its activation)."""

    members: tuple

    @property
    def _owners(self) -> list:
        return [i for i, m in enumerate(self.members) if m.params is not None]

    @property
    def key(self) -> tuple:
        return tuple(m.key for m in self.members)

    @property
    def params(self) -> Any:
        """The members' parameters: ``{}`` for none, one member's own tree, or a tuple of them."""
        own = [self.members[i].params for i in self._owners]
        return {} if not own else own[0] if len(own) == 1 else tuple(own)

    @property
    def name(self) -> str:
        return "+".join(m.name for m in self.members)

    def split(self, params) -> list:
        """Inverse of :attr:`params`: one tree per member, ``None`` for the parameter-free ones."""
        own = self._owners
        parts = [params] if len(own) == 1 else list(params) if own else []
        out = [None] * len(self.members)
        for i, p in zip(own, parts):
            out[i] = p
        return out

    def apply(self, params, h):
        for m, p in zip(self.members, self.split(params)):
            h = m.apply(p, h)
        return h


def units(members: Sequence[_Member]) -> list:
    """Each member with parameters, together with the parameter-free members after it, is one
    unit (a dense layer and its activation); parameter-free members before the first one with
    parameters make a unit of their own."""
    out = []
    for m in members:
        if m.params is None and out:
            out[-1].append(m)
        else:
            out.append([m])
    return [_Unit(tuple(u)) for u in out]


def _equal(a, b) -> bool:
    try:
        return bool(a == b)
    except (TypeError, ValueError):  # a key holding arrays cannot be compared: not the same layer
        return False


def _shapes(tree) -> tuple:
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((jax.numpy.shape(x), jax.numpy.result_type(x)) for x in leaves)


def _same_layer(a: _Unit, b: _Unit) -> bool:
    return _equal(a.key, b.key) and _shapes(a.params) == _shapes(b.params)


def _layer(unit: _Unit) -> Callable:
    def layer(z, x):
        return {"h": unit.apply(x, z["h"]), "y": z["y"]}

    layer.__name__ = layer.__qualname__ = unit.name
    return layer


def assemble(units: Sequence[_Unit], loss: Callable, x, y) -> tuple:
    """``(layers, params, z0, unpack)``: the pipeline of ``units`` followed by ``loss``, with each
    run of identical units as one Stack; ``unpack(tree)`` splits a params-shaped tree back into
    one list per unit of one tree per member (``None`` for a parameter-free member)."""
    if not callable(loss):
        raise TypeError(f"loss must be a function loss(outputs, y) -> scalar, got {type(loss).__name__}")
    z0 = {"h": x, "y": y}
    z = jax.eval_shape(lambda t: t, z0)
    runs, i = [], 0  # (layer function, first unit, end)
    while i < len(units):
        fn, j = _layer(units[i]), i + 1
        try:
            out = jax.eval_shape(fn, z, units[i].params)
        except Exception as e:
            shapes = jax.tree.map(lambda s: f"{s.dtype}{list(s.shape)}", z["h"])
            raise PipelineError(
                f"{units[i].members[0].where} ({units[i].name}) failed on activations {shapes}: {type(e).__name__}: {e}"
            ) from e
        if _shapes(out) == _shapes(z):
            while j < len(units) and _same_layer(units[j], units[i]):
                j += 1
        z = out
        runs.append((fn, i, j))
        i = j

    layers, params = [], []
    for fn, i, j in runs:
        layers.append(fn if j - i == 1 else _pipeline.Stack(fn, j - i))
        params.append(units[i].params if j - i == 1 else _pipeline.stack_trees([u.params for u in units[i:j]]))

    def head(z, x):
        return loss(z["h"], z["y"])

    head.__name__ = head.__qualname__ = getattr(loss, "__name__", "loss")
    layers.append(head)
    params.append({})

    def unpack(tree) -> list:
        if not isinstance(tree, (list, tuple)) or len(tree) != len(layers):
            n = len(tree) if isinstance(tree, (list, tuple)) else type(tree).__name__
            raise ValueError(f"expected a list shaped like params, with {len(layers)} entries; got {n}")
        out = []
        for (_, i, j), t in zip(runs, tree):
            per = [t] if j - i == 1 else _pipeline.unstack_tree(t, j - i)
            out.extend(units[k].split(p) for k, p in zip(range(i, j), per))
        return out

    return layers, params, z0, unpack
