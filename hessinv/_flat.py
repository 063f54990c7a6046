"""Flat views of pytrees: activations and parameters as vectors.

The stage recursion works on vectors: `z_l` of length `a_l` and `x_l` of length `p_l`
(MATH.md section 1). Users hand us pytrees. A :class:`Spec` records how to go from one to the
other and back. Unlike `jax.flatten_util.ravel_pytree`, a :class:`Spec` is hashable data, not
a closure, so it can live in the static part of a pytree (a factorisation crosses `jit`
boundaries without recompiling) and it separates the *active* leaves, the floating activations
we differentiate, from the carried constants: integer/bool leaves (class labels, masks) and
floating leaves that every layer so far has passed through unchanged (regression targets, fixed
inputs riding in ``z0``). A carried floating leaf depends on the batch alone, never on the
parameters, so treating it as a constant is exact, and it keeps it out of ``a_l``: the stage
state is ``a_l × a_l``.

The order of the flat vector is ours to choose, since no answer is ever given in activation
coordinates (the solves return parameter-shaped vectors). Leaves are concatenated one after the
other, except in an activation whose several active leaves share a leading batch axis (a jet
``(u, u_x, u_xx)`` per point, features next to a per-example scale): that one is laid out
*example-major*, every leaf's part of example 0, then of example 1, ... . Then a layer that acts
on each example separately has a block-diagonal ``A_l``, as with one leaf, and the stage
exploits it (:mod:`hessinv._stage`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Spec(NamedTuple):
    """Static description of a pytree: its structure, leaf shapes and dtypes, and which
    floating leaves are carried constants (see the module docstring)."""

    treedef: Any
    shapes: tuple
    dtypes: tuple
    carried: tuple  # per leaf: a floating leaf passed through unchanged from z0
    activation: bool = False  # an activation (may be laid out example-major), not parameters

    @property
    def is_active(self) -> tuple:
        """Per leaf: an activation (floating and not carried), the leaves we differentiate."""
        return tuple(jnp.issubdtype(d, jnp.inexact) and not c for d, c in zip(self.dtypes, self.carried))

    @property
    def example_major(self) -> int:
        """The number of examples ``e`` if the flat vector is laid out example-major (an
        activation with at least two active leaves, all with the same leading length ``e ≥ 2``,
        one of them at least 2-D), else 0: leaf after leaf."""
        act = [s for s, f in zip(self.shapes, self.is_active) if f]
        if not self.activation or len(act) < 2 or any(len(s) == 0 for s in act):
            return 0
        e = act[0][0]
        if e < 2 or any(s[0] != e for s in act) or all(len(s) < 2 for s in act):
            return 0
        return e

    @property
    def examples(self) -> int:
        """The number of examples ``e`` the flat vector is ordered by, example after example:
        :attr:`example_major`, or one active leaf of 2 or more axes (whose leaf order is
        example-major already); else 0."""
        act = [s for s, f in zip(self.shapes, self.is_active) if f]
        if len(act) == 1:
            return act[0][0] if len(act[0]) >= 2 else 0
        return self.example_major

    @property
    def size(self) -> int:
        """Number of active entries: the dimension of the flat vector."""
        return int(sum(int(np.prod(s)) for s, f in zip(self.shapes, self.is_active) if f))

    def describe(self) -> str:
        """A short human-readable description, e.g. ``{'h': float32[4,8], 'y': int32[4]}``."""
        leaves = [f"{jnp.dtype(d).name}[{','.join(map(str, s))}]" for s, d in zip(self.shapes, self.dtypes)]
        return str(jax.tree.unflatten(self.treedef, leaves)).replace("'", "")


def spec_of(tree, carried=None, activation: bool = False) -> Spec:
    """The :class:`Spec` of ``tree``; ``carried`` (per leaf) marks carried floating leaves;
    ``activation`` marks a layer's input or output (see :attr:`Spec.example_major`)."""
    leaves, treedef = jax.tree.flatten(tree)
    shapes = tuple(tuple(jnp.shape(x)) for x in leaves)
    dtypes = tuple(jnp.result_type(x) for x in leaves)
    carried = (False,) * len(leaves) if carried is None else tuple(bool(c) for c in carried)
    return Spec(treedef, shapes, dtypes, carried, activation)


def float_dtype(*specs: Spec):
    """The dtype the recursion runs in: the promotion of every active leaf."""
    dts = [d for s in specs for d, f in zip(s.dtypes, s.is_active) if f]
    # The widest, chosen explicitly: jnp.result_type refuses float32 with float64 under strict
    # promotion, and mixed precision is a warning (the dtype policy), not an error.
    return max(dts, key=lambda d: jnp.finfo(d).bits) if dts else jnp.result_type(float)


def ravel(spec: Spec, tree, dtype) -> jax.Array:
    """The active leaves of `tree`, raveled and concatenated into one vector of `dtype`."""
    leaves = jax.tree.leaves(tree)
    if e := spec.example_major:
        cols = [jnp.reshape(x, (e, -1)).astype(dtype) for x, f in zip(leaves, spec.is_active) if f]
        return jnp.concatenate(cols, axis=1).reshape(-1)
    parts = [jnp.ravel(x).astype(dtype) for x, f in zip(leaves, spec.is_active) if f]
    return jnp.concatenate(parts) if parts else jnp.zeros((0,), dtype)


def constants(spec: Spec, tree) -> tuple:
    """The carried leaves of `tree` (integer/bool, and carried floating): never differentiated."""
    return tuple(x for x, f in zip(jax.tree.leaves(tree), spec.is_active) if not f)


def unravel(spec: Spec, vec: jax.Array, consts: tuple = ()) -> Any:
    """Inverse of :func:`ravel` (with :func:`constants`): rebuild the pytree, casting each
    active leaf back to its own dtype."""
    leaves, pos, it = [], 0, iter(consts)
    e = spec.example_major
    rows = jnp.reshape(vec, (e, -1)) if e else None
    for shape, dtype, is_f in zip(spec.shapes, spec.dtypes, spec.is_active):
        if is_f:
            n = int(np.prod(shape))
            if e:  # this leaf's columns of the (e, Σ w) example-major matrix
                part, pos = rows[:, pos : pos + n // e], pos + n // e
            else:
                part, pos = vec[pos : pos + n], pos + n
            leaves.append(jnp.reshape(part, shape).astype(dtype))
        else:
            leaves.append(next(it))
    return jax.tree.unflatten(spec.treedef, leaves)


def parts(spec: Spec, tree, dtype) -> tuple:
    """The active leaves of `tree`, each raveled to a vector of `dtype`: :func:`ravel` before
    the concatenation. Differentiating with respect to these separately, and concatenating the
    derivative blocks afterwards, keeps the slicing of one long vector out of the derivative
    code (measured ~25% faster for second derivatives of small layers). An example-major
    activation is one part: its leaves' entries interleave."""
    if spec.example_major:
        return (ravel(spec, tree, dtype),)
    return tuple(jnp.ravel(x).astype(dtype) for x, f in zip(jax.tree.leaves(tree), spec.is_active) if f)


def unravel_parts(spec: Spec, vecs, consts: tuple = ()) -> Any:
    """Inverse of :func:`parts` (with :func:`constants`)."""
    if spec.example_major:
        return unravel(spec, vecs[0], consts)
    leaves, it, iv = [], iter(consts), iter(vecs)
    for shape, dtype, is_f in zip(spec.shapes, spec.dtypes, spec.is_active):
        leaves.append(jnp.reshape(next(iv), shape).astype(dtype) if is_f else next(it))
    return jax.tree.unflatten(spec.treedef, leaves)
