"""Exact eigenvalues of the curvature matrix by bisection on inertia (Sylvester's law).

For a shift ``σ``, the number of eigenvalues of ``C`` below ``σ`` is the number of negative
eigenvalues of ``C − σI``, and a factorisation gives that count exactly: the stage recursion's
``C − σI = Tᵀ blockdiag(Q_uu) T`` is a congruence, so it is the sum of the pivots' negative counts
(MATH.md section 3); the dense route counts them from its own factor. Counting is exact where
Lanczos-type spectrum estimates are not: it cannot miss an eigenvalue or count one twice. The
``index``-th eigenvalue then follows by bisection on ``σ`` to any tolerance, and counts at a grid
of shifts give an exact spectral histogram.

A shift can land on an eigenvalue, or (for the stage recursion) make one stage pivot singular
while ``C − σI`` is not; the count there is not defined. Such a shift is detected (a pivot
eigenvalue counted as zero, or a non-finite pivot) and moved by a fraction of the tolerance, which
cannot change the result by more than the tolerance.

The λ-independent part (the stage recursion's blocks, or the dense matrix) is formed once; each
count is one factorisation of it at ``λ = −σ``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _api, _blocks, _hvp, _pipeline, cost
from ._errors import SingularPivotError

#: how many times a shift is moved (by ``±k · tol / 10``) before its count is given up as undefined
_TRIES = 8


def _route(pipe, curvature: str, method: str) -> str:
    _blocks.check_curvature(pipe, curvature)
    if method == "auto":
        return cost.choose(pipe, curvature, positive_damping=False)
    if method not in ("riccati", "dense"):
        raise ValueError(
            f"method must be 'auto', 'riccati' or 'dense' for eigenvalues, got {method!r}: the shifts "
            "C − σI are indefinite, which the output-space and Woodbury routes cannot factorise"
        )
    return method


def _shifted(pipe, seg_rows, z0, curvature, route):
    """``(σ ↦ factorisation of C − σI, C's norm or an estimate of it)``; the λ-independent part
    formed once."""
    damped = _api.damped(pipe, seg_rows, z0, curvature, route)
    fac = lambda s: damped(-s)  # noqa: E731
    if route == "dense":
        C = fac(0.0).C
        return fac, (jnp.max(jnp.sum(jnp.abs(C), axis=1)) if C.size else jnp.zeros((), pipe.dtype))
    return fac, _power_norm(pipe, fac(0.0).blocks)


def _power_norm(pipe, blk, iters: int = 30):
    """An estimate of ``‖C‖₂`` by power iteration with the blocks' matrix-vector product (a lower
    bound; :func:`_bracket` widens it until the counts prove it encloses the spectrum)."""
    n, dt = _pipeline.n_params(pipe), pipe.dtype
    v = jax.random.normal(jax.random.key(0), (n,), dt)

    def mv(v):
        rows = _hvp.structured_hvp_rows(blk, _pipeline.vector_to_rows(pipe, v), jnp.zeros((), dt))
        return _pipeline.rows_to_vector(rows, dt)

    def body(_, v):
        w = mv(v)
        return w / jnp.maximum(jnp.linalg.norm(w), jnp.finfo(dt).tiny)

    v = jax.lax.fori_loop(0, iters, body, v / jnp.linalg.norm(v))
    return jnp.linalg.norm(mv(v))


def _counter(fac, n, tol):
    """``σ ↦ (#{eigenvalues of C below σ}, ok)``, moving ``σ`` by ``±k·tol/10`` (``k ≤ _TRIES``)
    while its count is undefined (a zero or non-finite pivot)."""

    def count(s):
        def attempt(state):
            k, _, _ = state
            # down first: an eigenvalue at σ is not below it
            step = (jnp.where(k % 2 == 1, -1, 1) * ((k + 1) // 2)).astype(tol.dtype) * tol / 10
            pos, neg, zero = fac(s + step)._inertia()
            return k + 1, neg, (zero == 0) & (pos + neg == n)

        init = (jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32), jnp.array(False))
        _, neg, ok = jax.lax.while_loop(lambda st: ~st[2] & (st[0] < _TRIES), attempt, init)
        return neg, ok

    return count


def _bracket(count, n, bound, dt):
    """``r`` with ``count(−r) = 0`` and ``count(r) = n``: the spectrum lies in ``(−r, r)``. Starts
    from twice the norm estimate and doubles until the counts prove it (at most 60 times).
    ``count`` is traced once (a factorisation is a large program; one copy keeps compile time and
    XLA's memory down)."""
    r0 = 2 * bound + 1e-3 + 10 * jnp.finfo(dt).eps * bound

    def body(state):
        # both ends in one lax.map: the factorisation appears once in the compiled program
        k, r, _ = state
        r = jnp.where(k == 0, r0, 2 * r)
        c, ok = jax.lax.map(count, jnp.stack([-r, r]))
        return k + 1, r, (c[0] == 0) & (c[1] == n) & ok[0] & ok[1]

    _, r, ok = jax.lax.while_loop(
        lambda st: ~st[2] & (st[0] < 60), body, (jnp.zeros((), jnp.int32), r0, jnp.array(False))
    )
    return r, ok


@functools.partial(jax.jit, static_argnames=("pipe", "curvature", "route"))
def _eigenvalues(pipe, seg_rows, z0, index, tol, curvature, route):
    dt, n = pipe.dtype, _pipeline.n_params(pipe)
    fac, bound = _shifted(pipe, seg_rows, z0, curvature, route)
    tol = jnp.where(jnp.isnan(tol), jnp.sqrt(jnp.finfo(dt).eps) * jnp.maximum(bound, 1e-30), tol).astype(dt)
    count = _counter(fac, n, tol)
    r, ok_r = _bracket(count, n, bound, dt)

    def bisect(k):
        # invariant: count(lo) <= k < count(hi)
        def body(state):
            lo, hi, ok = state
            mid = 0.5 * (lo + hi)
            c, ok_c = count(mid)
            above = c > k
            return jnp.where(above, lo, mid), jnp.where(above, mid, hi), ok & ok_c

        lo, hi, ok = jax.lax.while_loop(lambda st: (st[1] - st[0] > tol) & st[2], body, (-r, r, ok_r))
        return jnp.where(ok, 0.5 * (lo + hi), jnp.nan)

    return jax.lax.map(bisect, index)  # one index after another: a smaller program than a vmapped loop


@functools.partial(jax.jit, static_argnames=("pipe", "curvature", "route"))
def _counts(pipe, seg_rows, z0, edges, curvature, route):
    n = _pipeline.n_params(pipe)
    fac, bound = _shifted(pipe, seg_rows, z0, curvature, route)
    tol = jnp.sqrt(jnp.finfo(pipe.dtype).eps) * jnp.maximum(bound, 1e-30)
    count = _counter(fac, n, tol)

    def below(e):
        c, ok = count(jnp.where(jnp.isinf(e), 0, e))
        c = jnp.where(jnp.isposinf(e), n, jnp.where(jnp.isneginf(e), 0, c))
        return c, ok | jnp.isinf(e)

    c, ok = jax.lax.map(below, edges)
    return c, ok


def _prepare(layers, params, z0, curvature, method):
    pipe = _pipeline.build(layers, params, z0)
    route = _route(pipe, curvature, method)
    if _pipeline.is_concrete(params, z0):
        _api._check_inputs(params, z0)
    return pipe, route


def eigenvalue(
    layers: Sequence,
    params: Sequence,
    z0: Any,
    index,
    *,
    curvature: str = "hessian",
    tol=None,
    method: str = "auto",
):
    """The ``index``-th smallest eigenvalue of the Hessian (or the Gauss-Newton matrix), exactly,
    by bisection on the inertia of ``C − σI``.

    Each bisection step is one factorisation (the λ-independent blocks are formed once), so the
    cost is about ``log2(‖C‖ / tol)`` factorisations, linear in depth. Unlike Lanczos it cannot
    miss an eigenvalue of a cluster or mistake a ghost for one: every count is exact.

    Args:
      layers: the pipeline's layers (see :func:`hessinv.hvp`).
      params: its parameters.
      z0: the batch.
      index: an int or a sequence of ints; ``0`` is the smallest eigenvalue, ``-1`` the largest
        (negative indices count from the top, like Python's). Several indices are bisected one
        after another in one compiled program.
      curvature: ``"hessian"`` or ``"ggn"``.
      tol: the absolute width of the final bracket (default ``sqrt(eps) · ‖C‖``, with ``‖C‖``
        estimated by power iteration); the returned midpoint is within ``tol`` of the eigenvalue.
      method: ``"auto"`` (the cheaper of the next two), ``"riccati"`` or ``"dense"``.

    Returns:
      A scalar for an int ``index``, else an array of eigenvalues. Under ``jit`` an eigenvalue
      whose counts could not be made exact (every tried shift left a singular pivot) is NaN;
      eagerly that raises :class:`~hessinv.SingularPivotError`.

    Examples:
      >>> import jax, jax.numpy as jnp, numpy as np, hessinv
      >>> jax.config.update("jax_enable_x64", True)
      >>> def layer(z, x):
      ...     return jnp.tanh(z @ x["W"] + x["c"])
      >>> def mse(z, x):
      ...     return jnp.mean((z @ x["w"] - 1.0) ** 2)
      >>> init = lambda k: {"W": jax.random.normal(k, (3, 3)), "c": jnp.zeros(3)}
      >>> layers = [layer, hessinv.Stack(layer, 3), mse]
      >>> params = [init(jax.random.key(0)), jax.vmap(init)(jax.random.split(jax.random.key(1), 3)),
      ...           {"w": jnp.ones(3)}]
      >>> z0 = jax.random.normal(jax.random.key(2), (4, 3))
      >>> lo_hi = hessinv.eigenvalue(layers, params, z0, [0, -1], tol=1e-10)  # λ_min, λ_max
      >>> w = np.linalg.eigvalsh(hessinv.hessian(layers, params, z0))         # the dense check
      >>> bool(np.allclose(lo_hi, w[[0, -1]], atol=1e-9)), bool(w[0] < 0)
      (True, True)
    """
    pipe, route = _prepare(layers, params, z0, curvature, method)
    n = _pipeline.n_params(pipe)
    scalar = np.ndim(index) == 0
    idx = jnp.atleast_1d(jnp.asarray(index))
    if not jnp.issubdtype(idx.dtype, jnp.integer):
        raise TypeError(f"index must be an int or a sequence of ints, got {index!r}")
    if _pipeline.is_concrete(idx):
        bad = [int(i) for i in np.asarray(idx) if not -n <= int(i) < n]
        if bad:
            raise IndexError(f"index {bad[0]} is out of range for a {n} × {n} matrix (valid: {-n} … {n - 1})")
    idx = jnp.where(idx < 0, idx + n, idx).astype(jnp.int32)
    if tol is not None and _pipeline.is_concrete(tol) and not (np.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a positive finite number, got {tol!r}")
    tol = jnp.asarray(jnp.nan if tol is None else tol, pipe.dtype)
    w = _eigenvalues(pipe, _pipeline.rows(pipe, params), z0, idx, tol, curvature, route)
    if _pipeline.is_concrete(w) and np.any(np.isnan(np.asarray(w))):
        raise SingularPivotError(
            f"eigenvalue (method={route!r}): some shifts C − σI left a singular pivot even after "
            f"{_TRIES} small moves, so their eigenvalue counts are undefined; try method='dense' or a "
            "different tol"
        )
    return w[0] if scalar else w


def eigenvalue_counts(
    layers: Sequence,
    params: Sequence,
    z0: Any,
    edges,
    *,
    curvature: str = "hessian",
    method: str = "auto",
):
    """An exact spectral histogram: how many eigenvalues of ``C`` lie in each interval
    ``[edges[i], edges[i+1])``.

    One factorisation of ``C − σI`` per edge (λ-independent blocks formed once). ``edges`` must be
    increasing; ``-inf`` and ``inf`` are allowed (the counts then cover the whole spectrum:
    they sum to ``n``). An edge that falls on an eigenvalue is moved by a tiny fraction of
    ``‖C‖`` (``sqrt(eps)/10`` of it at most), so an eigenvalue that close to an edge may be
    counted on either side.

    Returns:
      ``int32`` counts, ``len(edges) - 1`` of them. Eagerly, an edge whose count could not be made
      exact raises :class:`~hessinv.SingularPivotError`; under ``jit`` its counts are -1.

    Examples:
      The number of negative eigenvalues, exactly (``layers, params, z0`` as in
      :func:`eigenvalue`'s example):

      >>> import jax, jax.numpy as jnp, numpy as np, hessinv
      >>> jax.config.update("jax_enable_x64", True)
      >>> def layer(z, x):
      ...     return jnp.tanh(z @ x["W"] + x["c"])
      >>> def mse(z, x):
      ...     return jnp.mean((z @ x["w"] - 1.0) ** 2)
      >>> init = lambda k: {"W": jax.random.normal(k, (3, 3)), "c": jnp.zeros(3)}
      >>> layers = [layer, hessinv.Stack(layer, 3), mse]
      >>> params = [init(jax.random.key(0)), jax.vmap(init)(jax.random.split(jax.random.key(1), 3)),
      ...           {"w": jnp.ones(3)}]
      >>> z0 = jax.random.normal(jax.random.key(2), (4, 3))
      >>> n_neg, n_pos = hessinv.eigenvalue_counts(layers, params, z0, [-jnp.inf, 0.0, jnp.inf])
      >>> w = np.linalg.eigvalsh(hessinv.hessian(layers, params, z0))
      >>> int(n_neg) == int(np.sum(w < 0)), int(n_neg + n_pos)
      (True, 51)
    """
    pipe, route = _prepare(layers, params, z0, curvature, method)
    e = jnp.asarray(edges, pipe.dtype)
    if e.ndim != 1 or e.shape[0] < 2:
        raise ValueError(f"edges must be a 1-D sequence of at least 2 shifts, got shape {e.shape}")
    if _pipeline.is_concrete(e):
        ev = np.asarray(e)
        if np.any(np.isnan(ev)) or np.any(np.diff(ev) <= 0):
            raise ValueError(f"edges must be increasing and not NaN, got {ev}")
    c, ok = _counts(pipe, _pipeline.rows(pipe, params), z0, e, curvature, route)
    if _pipeline.is_concrete(ok) and not np.all(np.asarray(ok)):
        raise SingularPivotError(
            f"eigenvalue_counts (method={route!r}): the shifts at edges {np.asarray(e)[~np.asarray(ok)]} left a "
            "singular pivot even after small moves; move those edges"
        )
    counts = jnp.diff(c)
    return jnp.where(ok[1:] & ok[:-1], counts, -1).astype(jnp.int32)
