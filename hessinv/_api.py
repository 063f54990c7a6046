"""The public entry points: ``hvp``, ``ihvp``, ``factorize``, ``blocks``, ``loss``.

Every entry point validates the pipeline at trace time (:func:`hessinv._pipeline.build`), so bad
input raises a ``PipelineError``/``TypeError`` naming the layer before any number is computed.
Called eagerly (concrete arrays, outside ``jit``), they also check inputs for NaN/inf and
``ihvp`` checks its stage pivots, raising instead of returning a wrong number. Under ``jit`` an
exception is impossible, so ``ihvp(..., return_info=True)`` and ``Factorization.info()`` return
the same diagnostics as arrays.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from . import _blocks, _hvp, _oneshot, _pipeline, _riccati
from ._errors import NonFiniteError


def _check_finite(tree, name: str) -> None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact) and not np.all(np.isfinite(np.asarray(leaf))):
            raise NonFiniteError(f"{name}{jax.tree_util.keystr(path)} (shape {jnp.shape(leaf)}) contains NaN or inf")


def _check_inputs(params, z0, **vectors) -> None:
    _check_finite(list(params), "params")
    _check_finite(z0, "z0")
    for name, t in vectors.items():
        _check_finite(list(t), name)


def loss(layers: Sequence, params: Sequence, z0: Any) -> jax.Array:
    """The pipeline's scalar loss ``z_L = f_L(…f_1(z0, x_1)…, x_L)``, after validating it."""
    _pipeline.build(layers, params, z0)
    return _pipeline.loss(layers, params, z0)


def hvp(layers: Sequence, params: Sequence, z0: Any, v: Sequence) -> list:
    """Hessian-vector product ``H v`` of the pipeline loss in its parameters (Pearlmutter 1994).

    Args:
      layers: sequence of pure functions ``f(z, x) -> z_next`` (or :class:`hessinv.Stack`); the
        last returns the scalar loss.
      params: sequence of the same length; ``params[l]`` is any pytree of floating arrays.
      z0: the batch, any pytree; integer/bool leaves are carried constants.
      v: shaped exactly like ``params``.

    Returns:
      ``H v``, shaped like ``params``.
    """
    pipe = _pipeline.build(layers, params, z0)
    _pipeline.check_like_params(pipe, v, "v")
    if _pipeline.is_concrete(params, z0, v):
        _check_inputs(params, z0, v=v)
    return _hvp.pearlmutter_hvp(tuple(layers), list(params), z0, list(v))


def blocks(layers: Sequence, params: Sequence, z0: Any, *, curvature: str = "hessian") -> _blocks.Blocks:
    """The λ-independent per-layer blocks ``A_l, B_l, b_l, K_l`` (MATH.md section 1).

    Factorise them for any damping with :meth:`Blocks.factorize`; with ``curvature="ggn"`` they
    describe the generalised Gauss-Newton matrix (last layer must be a parameter-free loss).
    """
    pipe = _pipeline.build(layers, params, z0)
    if _pipeline.is_concrete(params, z0):
        _check_inputs(params, z0)
    return _blocks.compute(pipe, list(params), z0, curvature)


METHODS = ("riccati", "woodbury")


def _factorize_blocks(blk: _blocks.Blocks, damping, method: str):
    if method == "riccati":
        return blk.factorize(damping)
    if method == "woodbury":
        from . import _woodbury

        return _woodbury.factorize_blocks(blk, damping)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def factorize(
    layers: Sequence,
    params: Sequence,
    z0: Any,
    *,
    damping=0.0,
    curvature: str = "hessian",
    method: str = "riccati",
) -> _riccati.Factorization:
    """Factorise ``H + λI`` by the exact stage recursion, for many solves.

    ``F = factorize(...)`` is a pytree; ``F.solve(g)`` is ``(H + λI)^{-1} g``,
    ``jax.vmap(F.solve)(gs)`` solves many right-hand sides, ``F.logdet()`` gives
    ``(sign, log|det|)``, ``F.inertia()`` the eigenvalue sign counts and ``F.info()`` the pivot
    health. A singular pivot is not an error here (``logdet`` is then ``-inf`` and ``inertia``
    counts the zeros); solving with it is.

    ``method="riccati"`` (default) is the stage recursion of MATH.md section 3, valid for every
    layer shape; ``method="woodbury"`` is the paper's own route (section 6), which needs square
    invertible ``∂f_l/∂x_l`` and invertible ``K_xx`` blocks.

    Cost ``O(Σ_l (a_l + p_l)^3)`` time, ``O(Σ_l (a_l + p_l)^2)`` memory.
    """
    F = _factorize_blocks(blocks(layers, params, z0, curvature=curvature), damping, method)
    if _pipeline.is_concrete(F):
        info = F.info()
        if not bool(info.finite):
            _riccati.raise_for(F.pipe, info)
    return F


@functools.partial(jax.jit, static_argnames=("layers", "curvature", "method"))
def _ihvp_jit(layers, params, z0, g, damping, curvature, method):
    return _ihvp_traced(layers, params, z0, g, damping, curvature, method, True)


@functools.partial(jax.jit, static_argnames=("pipe", "curvature", "with_info"))
def _oneshot_jit(pipe, params, z0, b_rows, damping, curvature, with_info):
    rows, outs = _oneshot.solve(pipe, params, z0, b_rows, damping, curvature, keep_pivot=with_info)
    return rows, (_oneshot.info(pipe, outs) if with_info else None)


def _riccati_solve(pipe, layers, params, z0, g_rows, damping, curvature, with_info):
    """``(C + λI)^{-1} g`` in one pass (blocks computed chunk by chunk inside the recursion, see
    :mod:`hessinv._oneshot`), as a ``jax.lax.custom_linear_solve``: differentiating the answer
    with respect to ``g`` is then one more solve with the same symmetric matrix, and with respect
    to ``params`` it goes through the matrix-vector product (Pearlmutter's hvp, or the GGN's),
    not through the factorisation. With ``with_info`` (the eager path, ``return_info=True``) it
    is the plain one-pass solve, differentiated (if at all) through the factorisation."""
    if with_info:  # (custom_linear_solve's has_aux does not survive jax.grad in jax 0.10.2)
        return _oneshot_jit(pipe, params, z0, g_rows, damping, curvature, True)
    lam = jnp.asarray(damping, pipe.dtype)
    # One flat vector for the linear system: a parameter-free segment's empty rows would reach
    # custom_linear_solve's JVP rule as symbolic zeros, which it cannot take (jax 0.10.2).
    g_flat, rows = ravel_pytree(g_rows)

    def flat(rs):
        return ravel_pytree(rs)[0]

    def matvec(x):
        v = _pipeline.from_rows(pipe, rows(x))
        Cv = _hvp.ggn_vp(layers, params, z0, v) if curvature == "ggn" else _hvp.pearlmutter_hvp(layers, params, z0, v)
        return flat(_pipeline.to_rows(pipe, Cv)) + lam * x

    def solve(_, b):
        return flat(_oneshot_jit(pipe, params, z0, rows(b), damping, curvature, False)[0])

    return rows(jax.lax.custom_linear_solve(matvec, g_flat, solve, symmetric=True)), None


def _ihvp_traced(layers, params, z0, g, damping, curvature, method, with_info):
    pipe = _pipeline.build(layers, params, z0)
    g_rows = _pipeline.to_rows(pipe, list(g))
    if method == "riccati":
        rows, info = _riccati_solve(pipe, tuple(layers), list(params), z0, g_rows, damping, curvature, with_info)
    else:
        F = _factorize_blocks(_blocks.compute(pipe, list(params), z0, curvature), damping, method)
        rows = F.solve_rows(g_rows)
        info = F.info() if with_info else None
    x = _pipeline.from_rows(pipe, rows)
    if not with_info:
        return x, None
    finite = info.finite & jnp.all(jnp.array([jnp.all(jnp.isfinite(r)) for r in rows]))
    return x, info._replace(finite=finite, ok=info.ok & finite)


def ihvp(
    layers: Sequence,
    params: Sequence,
    z0: Any,
    g: Sequence,
    *,
    damping=0.0,
    curvature: str = "hessian",
    method: str = "riccati",
    return_info: bool = False,
):
    """Inverse-Hessian-vector product ``(H + λI)^{-1} g``, exactly, in time linear in depth.

    Uses the stage (Riccati) recursion of MATH.md section 3 (Rahimi 2026, arXiv:2601.06096):
    valid for every layer shape and for indefinite ``H + λI``, as long as each stage pivot is
    nonsingular.

    Args:
      layers, params, z0: the pipeline (see :func:`hvp`).
      g: shaped exactly like ``params``.
      damping: ``λ``, a scalar (may be traced).
      curvature: ``"hessian"`` (exact) or ``"ggn"`` (generalised Gauss-Newton).
      method: ``"riccati"`` (default, any layer shapes) or ``"woodbury"`` (the paper's section 6
        route; square layers only). See :func:`factorize`.
      return_info: also return an :class:`~hessinv.Info` of pivot health. Use it under ``jit``,
        where errors cannot be raised.

    Returns:
      ``x`` shaped like ``params``, or ``(x, info)`` with ``return_info=True``.

    Raises (outside ``jit``, unless ``return_info=True``):
      NonFiniteError: NaN/inf in params, z0, g, or the blocks.
      SingularPivotError: a stage pivot is (numerically) singular; the message names the layer.
    """
    pipe = _pipeline.build(layers, params, z0)
    _pipeline.check_like_params(pipe, g, "g")
    if _pipeline.is_concrete(params, z0, g, damping):
        if not return_info:
            _check_inputs(params, z0, g=g)
        x, info = _ihvp_jit(tuple(layers), list(params), z0, list(g), damping, curvature, method)
        if return_info:
            return x, info
        if method == "woodbury" and not bool(info.ok):
            # Info cannot say which of the paper's pivots failed (B_l, Q_22, S_q or S_H);
            # refactorising eagerly raises an error naming the layer and the pivot.
            from . import _woodbury

            blk = _blocks.compute(pipe, list(params), z0, curvature)
            _woodbury.factorize_blocks(blk, damping)
        _riccati.raise_for(pipe, info)
        return x
    x, info = _ihvp_traced(layers, params, z0, g, damping, curvature, method, return_info)
    return (x, info) if return_info else x
