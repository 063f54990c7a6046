"""Flat views of pytrees: activations and parameters as vectors.

The stage recursion works on vectors: `z_l` of length `a_l` and `x_l` of length `p_l`
(MATH.md section 1). Users hand us pytrees. A :class:`Spec` records how to go from one to the
other and back. Unlike `jax.flatten_util.ravel_pytree`, a :class:`Spec` is hashable data, not
a closure, so it can live in the static part of a pytree (a factorisation crosses `jit`
boundaries without recompiling) and it separates the *floating* leaves, which are the
activations we differentiate, from integer/bool leaves (class labels, masks), which are carried
constants.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Spec(NamedTuple):
    """Static description of a pytree: its structure, leaf shapes and dtypes."""

    treedef: Any
    shapes: tuple
    dtypes: tuple

    @property
    def is_float(self) -> tuple:
        return tuple(jnp.issubdtype(d, jnp.inexact) for d in self.dtypes)

    @property
    def size(self) -> int:
        """Number of floating entries: the dimension of the flat vector."""
        return int(sum(int(np.prod(s)) for s, f in zip(self.shapes, self.is_float) if f))

    def describe(self) -> str:
        """A short human-readable description, e.g. ``{'h': float32[4,8], 'y': int32[4]}``."""
        leaves = [f"{jnp.dtype(d).name}[{','.join(map(str, s))}]" for s, d in zip(self.shapes, self.dtypes)]
        return str(jax.tree.unflatten(self.treedef, leaves)).replace("'", "")


def spec_of(tree) -> Spec:
    leaves, treedef = jax.tree.flatten(tree)
    shapes = tuple(tuple(jnp.shape(x)) for x in leaves)
    dtypes = tuple(jnp.result_type(x) for x in leaves)
    return Spec(treedef, shapes, dtypes)


def float_dtype(*specs: Spec):
    """The dtype the recursion runs in: the promotion of every floating leaf."""
    dts = [d for s in specs for d, f in zip(s.dtypes, s.is_float) if f]
    return jnp.result_type(*dts) if dts else jnp.result_type(float)


def ravel(spec: Spec, tree, dtype) -> jax.Array:
    """The floating leaves of `tree`, raveled and concatenated into one vector of `dtype`."""
    leaves = jax.tree.leaves(tree)
    parts = [jnp.ravel(x).astype(dtype) for x, f in zip(leaves, spec.is_float) if f]
    return jnp.concatenate(parts) if parts else jnp.zeros((0,), dtype)


def constants(spec: Spec, tree) -> tuple:
    """The non-floating leaves of `tree`: carried along, never differentiated."""
    return tuple(x for x, f in zip(jax.tree.leaves(tree), spec.is_float) if not f)


def unravel(spec: Spec, vec: jax.Array, consts: tuple = ()) -> Any:
    """Inverse of :func:`ravel` (with :func:`constants`): rebuild the pytree, casting each
    floating leaf back to its own dtype."""
    leaves, pos, it = [], 0, iter(consts)
    for shape, dtype, is_f in zip(spec.shapes, spec.dtypes, spec.is_float):
        if is_f:
            n = int(np.prod(shape))
            leaves.append(jnp.reshape(vec[pos : pos + n], shape).astype(dtype))
            pos += n
        else:
            leaves.append(next(it))
    return jax.tree.unflatten(spec.treedef, leaves)


def parts(spec: Spec, tree, dtype) -> tuple:
    """The floating leaves of `tree`, each raveled to a vector of `dtype`: :func:`ravel` before
    the concatenation. Differentiating with respect to these separately, and concatenating the
    derivative blocks afterwards, keeps the slicing of one long vector out of the derivative
    code (measured ~25% faster for second derivatives of small layers)."""
    return tuple(jnp.ravel(x).astype(dtype) for x, f in zip(jax.tree.leaves(tree), spec.is_float) if f)


def unravel_parts(spec: Spec, vecs, consts: tuple = ()) -> Any:
    """Inverse of :func:`parts` (with :func:`constants`)."""
    leaves, it, iv = [], iter(consts), iter(vecs)
    for shape, dtype, is_f in zip(spec.shapes, spec.dtypes, spec.is_float):
        leaves.append(jnp.reshape(next(iv), shape).astype(dtype) if is_f else next(it))
    return jax.tree.unflatten(spec.treedef, leaves)
