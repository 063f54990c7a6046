"""The dense reference: ``jax.hessian`` of the loss in the flattened parameters.

Cubic in the number of parameters: for tests, checks and small nets only.
"""

from __future__ import annotations

import functools

import jax
from jax.flatten_util import ravel_pytree

from . import _pipeline


def hessian(layers, params, z0):
    """The dense Hessian ``∇²_x z_L``, an ``(n, n)`` matrix.

    Rows and columns follow ``jax.flatten_util.ravel_pytree(params)``: entry by entry, leaf by
    leaf (for a :class:`~hessinv.Stack`, each stacked leaf is one leaf).
    """
    _pipeline.build(layers, params, z0)
    return _hessian(tuple(layers), list(params), z0)


@functools.partial(jax.jit, static_argnames=("layers",))
def _hessian(layers, params, z0):
    flat, unravel = ravel_pytree(params)
    return jax.hessian(lambda t: _pipeline.loss(layers, unravel(t), z0))(flat)
