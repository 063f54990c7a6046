"""Health of a factorisation or a solve, for every route: :class:`Info`, the pivot
conditioning it is built from, and the exceptions it is turned into outside ``jit``.

One place for the rules: a pivot counts as singular when its reciprocal condition
``min|eig| / max|eig|`` is at most ``rcond_tol``; NaN in a pivot is a consequence of an earlier
failure, never the culprit; and an eager call raises instead of returning a wrong number.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _pipeline
from ._errors import NonFiniteError, SingularPivotError

#: The exact routes, in the order of :attr:`Info.route`'s codes.
ROUTES = ("riccati", "woodbury", "dense", "gauss_newton", "parallel")


def check_finite(tree, name: str) -> None:
    """Raise :class:`NonFiniteError` naming the leaf of ``tree`` (concrete) that holds NaN/inf."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact) and not np.all(np.isfinite(np.asarray(leaf))):
            raise NonFiniteError(f"{name}{jax.tree_util.keystr(path)} (shape {jnp.shape(leaf)}) contains NaN or inf")


def route_code(name: str) -> jax.Array:
    return jnp.array(ROUTES.index(name), jnp.int32)


class Info(NamedTuple):
    """Health of a factorisation or a solve. All fields are arrays, so this works under ``jit``.

    Attributes:
      ok: ``finite`` and every pivot's reciprocal condition above ``rcond_tol``: solves are valid.
      factor_ok: ``finite`` and every pivot but the first layer's (the last one eliminated, whose
        inverse is never used) nonsingular: the congruence ``H + λI = Tᵀ blockdiag(Q_uu) T``
        exists, so ``logdet`` and ``inertia`` are exact even when ``H + λI`` is singular.
      finite: no NaN or inf in the blocks, the pivots (and the solution, for a solve).
      min_rcond: the smallest reciprocal condition number ``min|eig| / max|eig|`` of any pivot.
      worst_layer: the first layer, in elimination order (from the top), whose pivot is
        singular (rcond ≤ ``rcond_tol``), else the layer whose pivot has ``min_rcond``.
      first_nonfinite_layer: the first layer whose Jacobian blocks are not finite, else -1.
      rcond_tol: the threshold used for ``ok``: ``max(p_l) · eps(dtype)`` for the stage
        recursion (each route states its own).
      route: which exact route computed it, an index into :data:`ROUTES` (an array, so ``Info``
        stays jit-able); :attr:`route_name` spells it out.
    """

    ok: jax.Array
    factor_ok: jax.Array
    finite: jax.Array
    min_rcond: jax.Array
    worst_layer: jax.Array
    first_nonfinite_layer: jax.Array
    rcond_tol: jax.Array
    route: jax.Array

    @property
    def route_name(self) -> str:
        """The route as a string (needs a concrete ``route``, i.e. outside ``jit``)."""
        return ROUTES[int(self.route)]


def rcond_tol(pipe):
    """The threshold below which a pivot counts as singular: ``max(p_l) · eps(dtype)``."""
    p = max([seg.p for seg in pipe.segments] + [1])
    return jnp.asarray(p * jnp.finfo(pipe.dtype).eps, pipe.dtype)


def rcond(w):
    """``min|eig| / max|eig|`` from eigenvalues ``(..., p)`` (0 for an all-zero pivot; NaN stays
    NaN: a consequence of an earlier failure, not a culprit)."""
    aw = jnp.abs(w)
    top = jnp.max(aw, axis=-1)
    rc = jnp.where(top > 0, jnp.min(aw, axis=-1) / jnp.where(top > 0, top, 1), 0)
    return jnp.where(jnp.isnan(top), jnp.nan, rc)


def summed_sign_counts(eigs, tol):
    """``(n_pos, n_neg, n_zero)`` summed over a list of eigenvalue stacks (:func:`sign_counts`
    of each): the inertia of a block-diagonal matrix, e.g. of the stage pivots."""
    pos = neg = zero = jnp.zeros((), jnp.int32)
    for w in eigs:
        p, n, z = sign_counts(w, tol)
        pos, neg, zero = pos + p, neg + n, zero + z
    return pos, neg, zero


def sign_counts(w, tol):
    """``(n_pos, n_neg, n_zero)`` (int32) of pivot eigenvalues ``w`` ``(..., p)``: an eigenvalue
    counts as zero when ``|w| ≤ tol · max|w|`` of its own pivot (Sylvester: summed over the
    pivots of a congruence, these are the inertia of the whole matrix)."""
    thr = tol * jnp.max(jnp.abs(w), axis=-1, keepdims=True)
    z = jnp.abs(w) <= thr
    count = lambda m: jnp.sum(m, dtype=jnp.int32)  # noqa: E731
    return count((w > 0) & ~z), count((w < 0) & ~z), count(z)


def make_info(pipe, ok_AB, finite, pivots, route: str = "riccati") -> Info:
    """:class:`Info` from per-layer facts: ``ok_AB`` (per segment, ``(n,)`` bools: ``A_l`` and
    ``B_l`` finite), ``finite`` (the other blocks, pivots and gains) and the pivots ``Q_uu``
    (per segment, ``(n, p, p)``; segments with ``p = 0`` are skipped)."""
    tol = rcond_tol(pipe)
    first_bad = jnp.array(pipe.n_layers, jnp.int32)
    for seg, ok_l in zip(pipe.segments, ok_AB):
        idx = (seg.start + jnp.argmin(ok_l)).astype(jnp.int32)
        first_bad = jnp.where(jnp.all(ok_l), first_bad, jnp.minimum(first_bad, idx))
        finite &= jnp.all(ok_l)
    first_bad = jnp.where(first_bad == pipe.n_layers, -1, first_bad).astype(jnp.int32)

    with_p = [(seg, Q) for seg, Q in zip(pipe.segments, pivots) if seg.p > 0]
    rc = [rcond(jnp.linalg.eigvalsh(Q)) for _, Q in with_p]
    starts = [seg.start for seg, _ in with_p]
    min_rc, worst = _argmin_rcond(rc, starts, pipe.dtype, tol)
    # The first layer's pivot is eliminated last and never inverted inside the recursion.
    inner = [(r, s0) for r, s0 in zip(rc, starts) if s0 > 0]
    min_inner, worst_inner = _argmin_rcond([r for r, _ in inner], [s0 for _, s0 in inner], pipe.dtype, tol)
    worst = jnp.where(min_inner > tol, worst, worst_inner)
    return Info(
        finite & (min_rc > tol), finite & (min_inner > tol), finite, min_rc, worst, first_bad, tol, route_code(route)
    )


def _argmin_rcond(rc, starts, dtype, tol):
    """The smallest finite pivot rcond, and the culprit layer: the first singular pivot in
    elimination order (the highest layer with rcond ≤ tol; every pivot eliminated after it is
    contaminated by it), else the layer of the smallest rcond."""
    if not rc:
        return jnp.asarray(jnp.inf, dtype), jnp.array(-1, jnp.int32)
    all_rc = jnp.concatenate(rc)
    all_idx = jnp.concatenate([s + jnp.arange(r.shape[0], dtype=jnp.int32) for s, r in zip(starts, rc)])
    safe = jnp.where(jnp.isnan(all_rc), jnp.inf, all_rc)  # NaN pivots are consequences
    bad = safe <= tol
    culprit = jnp.max(jnp.where(bad, all_idx, -1))
    return jnp.min(safe), jnp.where(jnp.any(bad), culprit, all_idx[jnp.argmin(safe)])


def raise_for(pipe, info: Info, what: str = "H + λI", need: str = "solve") -> None:
    """Turn a concrete :class:`Info` into a clear exception naming the layer. Under an outer
    trace (``jit``/``vmap`` around a closed-over factorisation) there is nothing concrete to
    check, and the caller's own ``info()`` is the diagnostic."""
    if not _pipeline.is_concrete(info):
        return
    info = jax.tree.map(np.asarray, info)
    k = int(info.first_nonfinite_layer)
    if k >= 0:
        raise NonFiniteError(f"NaN or inf in the Jacobian blocks of {what}, first at {pipe.layer_name(k)}")
    # A pivot is to blame only if one is singular, or if nothing else failed: NaN in a K_l or S_l
    # leaves every pivot it reaches NaN (skipped by min_rcond), and those above it healthy.
    failed = not bool(info.ok if need == "solve" else info.factor_ok)
    blamed = bool(info.finite) or bool(info.min_rcond <= info.rcond_tol)
    if failed and blamed and bool(np.isfinite(info.min_rcond)):
        k = int(info.worst_layer)
        raise SingularPivotError(
            f"the stage pivot of {pipe.layer_name(k)} is singular or numerically singular (reciprocal "
            f"condition <= {float(info.rcond_tol):.3g}; smallest over all pivots {float(info.min_rcond):.3g}), so {what} "
            "cannot be solved by the stage recursion. Either H + λI itself is singular (a softmax head without "
            "weight decay, say, is invariant to shifting all logits, so H has exact zero eigenvalues: only "
            "damping λ > 0 helps), or the layer has more parameters than its output has entries (p_l > a_l, "
            "e.g. a dense layer on a small batch), which makes its undamped pivot singular even when H is not "
            "(damping or a larger batch help; method='dense' does not need p_l <= a_l)."
        )
    if not bool(info.finite):
        raise NonFiniteError(f"NaN or inf in the second-derivative blocks, stage pivots or solution of {what}")
