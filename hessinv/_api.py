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

from . import (
    _blocks,
    _dense,
    _diagnostics,
    _gauss_newton,
    _hvp,
    _oneshot,
    _parallel,
    _pipeline,
    _riccati,
    _sharded,
    _woodbury,
    cost,
)
from ._errors import NonFiniteError
from ._factorization import Factorization


def _check_inputs(params, z0, **vectors) -> None:
    _diagnostics.check_finite(list(params), "params")
    _diagnostics.check_finite(z0, "z0")
    for name, t in vectors.items():
        _diagnostics.check_finite(list(t), name)


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

    Examples:
      >>> import jax, jax.numpy as jnp, hessinv
      >>> from jax.flatten_util import ravel_pytree
      >>> jax.config.update("jax_enable_x64", True)
      >>> def dense(z, x):
      ...     return jnp.tanh(z @ x["W"] + x["c"])
      >>> def mse(z, x):  # the last layer returns the scalar loss
      ...     return jnp.mean((z @ x["w"] - 1.0) ** 2)
      >>> layers = [dense, mse]
      >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
      >>> params = [{"W": jax.random.normal(k1, (3, 4)), "c": jnp.zeros(4)}, {"w": jax.random.normal(k2, (4,))}]
      >>> z0 = jax.random.normal(k3, (5, 3))  # a batch of 5 examples
      >>> v = jax.tree.map(jnp.ones_like, params)
      >>> Hv = hessinv.hvp(layers, params, z0, v)
      >>> H = hessinv.hessian(layers, params, z0)  # the dense (n, n) Hessian, for the check only
      >>> bool(jnp.allclose(ravel_pytree(Hv)[0], H @ ravel_pytree(v)[0]))
      True
    """
    pipe = _pipeline.build(layers, params, z0)
    _pipeline.check_like_params(pipe, v, "v")
    if not _pipeline.is_concrete(params, z0, v):
        return _hvp.pearlmutter_hvp(tuple(layers), list(params), z0, list(v))
    _check_inputs(params, z0, v=v)
    gl, gp, gv = _pipeline.grouped(pipe, layers, params, v)  # as in ihvp: compile time flat in depth
    return _pipeline.ungrouped(pipe, _hvp.pearlmutter_hvp(gl, gp, z0, gv))


def blocks(layers: Sequence, params: Sequence, z0: Any, *, curvature: str = "hessian") -> _blocks.Blocks:
    """The λ-independent per-layer blocks ``A_l, B_l, b_l, K_l`` (MATH.md section 1).

    Factorise them for any damping with :meth:`Blocks.factorize`; with ``curvature="ggn"`` they
    describe the generalised Gauss-Newton matrix (last layer must be a parameter-free loss).
    """
    pipe = _pipeline.build(layers, params, z0)
    if _pipeline.is_concrete(params, z0):
        _check_inputs(params, z0)
    return _blocks.compute(pipe, _pipeline.rows(pipe, params), z0, curvature)


METHODS = ("auto",) + _diagnostics.ROUTES


def route(
    layers: Sequence, params: Sequence, z0: Any, *, damping=0.0, curvature: str = "hessian", method="auto"
) -> str:
    """The exact route ``ihvp``/``factorize`` take for this pipeline: ``method`` itself, or for
    ``method="auto"`` the cheapest by the cost model of :mod:`hessinv.cost` (static shapes only,
    so it is decided at trace time and never depends on the numbers).

    Args:
      layers: the pipeline's layers, as in :func:`hvp`.
      params: its parameters, as in :func:`hvp`.
      z0: the batch, as in :func:`hvp`.
      damping: ``λ``; a damping known to be ``≤ 0`` rules out ``"gauss_newton"``, which needs ``λ > 0``.
      curvature: ``"hessian"`` or ``"ggn"``.
      method: as in :func:`ihvp`.

    Returns:
      ``"riccati"``, ``"dense"`` or ``"gauss_newton"`` (what ``"auto"`` picks), or the forced
      ``method`` (``"woodbury"``, ``"parallel"``).

    Examples:
      Nothing is computed but shapes, so this is cheap even for deep networks.

      >>> import jax, jax.numpy as jnp, hessinv
      >>> jax.config.update("jax_enable_x64", True)
      >>> def dense(z, x):
      ...     return jnp.tanh(z @ x["W"] + x["c"])
      >>> def mse(z, x):
      ...     return jnp.mean((z @ x["w"] - 1.0) ** 2)
      >>> def xent(z, x):  # a parameter-free loss (params {}), as curvature="ggn" needs
      ...     return -jnp.mean(jax.nn.log_softmax(z)[:, 0])
      >>> init = lambda key: {"W": jax.random.normal(key, (4, 4)) / 2, "c": jnp.zeros(4)}
      >>> stack = jax.vmap(init)(jax.random.split(jax.random.key(1), 511))
      >>> first, head = init(jax.random.key(0)), {"w": jnp.ones(4)}
      >>> z0 = jnp.ones((4, 4))  # batch 4, width 4
      >>> deep = [dense, hessinv.Stack(dense, 511), mse]  # 512 layers, n = 10244
      >>> hessinv.route(deep, [first, stack, head], z0)
      'riccati'
      >>> ggn = [dense, hessinv.Stack(dense, 511), xent]  # 4 outputs per example
      >>> hessinv.route(ggn, [first, stack, {}], z0, curvature="ggn", damping=1e-3)
      'gauss_newton'
      >>> hessinv.route([dense, mse], [first, head], jnp.ones((64, 4)))  # 24 parameters, batch 64
      'dense'
    """
    pipe = _pipeline.build(layers, params, z0)
    return _route(pipe, method, curvature, _damping(pipe, damping))


def _damping(pipe, damping) -> jax.Array:
    """``λ`` validated (a real scalar; finite where it is concrete) and cast once to the pipeline's
    dtype. Negative values are allowed: ``C − σI`` shifts are how spectra are probed."""
    try:
        dt = jnp.result_type(damping)
    except (TypeError, ValueError):
        raise TypeError(f"damping must be a real scalar, got {type(damping).__name__} {damping!r}") from None
    if jnp.issubdtype(dt, jnp.bool_) or not (jnp.issubdtype(dt, jnp.floating) or jnp.issubdtype(dt, jnp.integer)):
        raise TypeError(f"damping must be a real scalar, got dtype {dt} ({damping!r})")
    if jnp.ndim(damping) != 0:
        raise ValueError(f"damping must be a scalar, got an array of shape {jnp.shape(damping)}")
    if _pipeline.is_concrete(damping) and not np.isfinite(np.asarray(damping)):
        raise NonFiniteError(f"damping is {float(np.asarray(damping))}; it must be finite")
    return jnp.asarray(damping, pipe.dtype)


def _route(pipe, method: str, curvature: str, damping, mesh=None) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if mesh is not None:
        _sharded.check_mesh(mesh)
        if method != "parallel":
            raise ValueError(
                f"mesh= splits the layers over devices, which only method='parallel' does; got method={method!r}"
            )
    _blocks.check_curvature(pipe, curvature)
    if method == "gauss_newton":
        _gauss_newton.check(pipe, curvature)
    if method == "parallel":
        _parallel.warn_about_cpu_scheduler()
    if method != "auto":
        return method
    # A damping known to be 0 (or negative) rules out the output-space route, which needs λ > 0.
    positive = not _pipeline.is_concrete(damping) or bool(np.all(np.asarray(damping) > 0))
    return cost.choose(pipe, curvature, positive_damping=positive)


def _factorize_route(pipe, params, z0, damping, curvature, route, mesh=None):
    seg_rows = _pipeline.rows(pipe, params)
    if route in ("riccati", "woodbury", "parallel"):
        return damped(pipe, seg_rows, z0, curvature, route, mesh)(damping)
    module = _dense if route == "dense" else _gauss_newton
    return module.factorize(pipe, seg_rows, z0, damping, curvature)


def damped(pipe, seg_rows, z0, curvature: str, route: str, mesh=None):
    """``λ ↦`` the route's factorisation of ``C + λI`` at the params ``seg_rows`` (per-segment
    rows, :func:`hessinv._pipeline.rows`), with the λ-independent part (the stage blocks, the
    dense ``C``, or the output-space ``Z``) formed once here: for many dampings or shifts (the
    optimiser's damping search, spectra by bisection, evidence maximisation). No eager checks:
    the caller validates, and reads ``info()`` under ``jit``. With a ``mesh`` (``route="parallel"``)
    the layers are split over its devices (:mod:`hessinv._sharded`)."""
    if route in ("riccati", "woodbury", "parallel"):
        blk = _blocks.compute(pipe, seg_rows, z0, curvature)
        if mesh is not None:
            return lambda lam: _sharded.factorize_blocks(blk, lam, mesh=mesh)
        module = {"riccati": _riccati, "woodbury": _woodbury, "parallel": _parallel}[route]
        return lambda lam: module.factorize_blocks(blk, lam)
    if route == "dense":
        C = _dense.matrix(pipe, seg_rows, z0, curvature)
        return lambda lam: _dense.factor(pipe, C, lam)
    ZDP = _gauss_newton.outputs_factor(pipe, seg_rows, z0)
    return lambda lam: _gauss_newton.factor(pipe, ZDP, lam)


def factorize(
    layers: Sequence,
    params: Sequence,
    z0: Any,
    *,
    damping=0.0,
    curvature: str = "hessian",
    method: str = "auto",
    mesh=None,
) -> Factorization:
    """Factorise ``C + λI`` once (``C`` the Hessian, or the Gauss-Newton matrix with
    ``curvature="ggn"``), for many solves, log-determinants and inertia.

    ``F = factorize(...)`` is a pytree; ``F.solve(g)`` is ``(C + λI)^{-1} g``,
    ``jax.vmap(F.solve)(gs)`` solves many right-hand sides, ``F.logdet()`` gives
    ``(sign, log|det|)``, ``F.inertia()`` the eigenvalue sign counts and ``F.info()`` the
    health of the factorisation, including the route that ran (``F.info().route_name``). A
    singular pivot is not an error here; solving with it, or asking ``logdet``/``inertia`` of a
    factorisation that cannot give them exactly, is (eagerly) — see :meth:`Factorization.check`.

    ``method`` chooses the exact route; all give the same answer to rounding:

    * ``"auto"`` (default): the cheapest of the next three for these shapes (:mod:`hessinv.cost`);
    * ``"riccati"``: the stage recursion of MATH.md section 3, any layer shapes, indefinite
      ``C + λI`` included; ``O(Σ_l (a_l + p_l)^3)`` time, linear in depth;
    * ``"dense"``: ``C`` formed and factorised (Cholesky, LU where indefinite); ``O(n^3)``,
      cheapest when there are few parameters for the batch (``n ≲ a``);
    * ``"gauss_newton"``: ``curvature="ggn"`` only, ``λ > 0``: Woodbury in the ``m``-dimensional
      output space; cheapest when the network has few outputs (``m = batch × outputs ≪ n``);
    * ``"woodbury"``: the paper's own route (section 6), which needs square invertible
      ``∂f_l/∂x_l`` and invertible ``K_xx`` blocks; never chosen by ``"auto"``;
    * ``"parallel"``: the stage recursion's pivots with ``O(log L)`` sequential steps
      (associative scans, :mod:`hessinv._parallel`), for accelerators, where the sequential
      recursion is bound by its number of steps; needs invertible ``K_xx,l + λI`` and loses
      digits at small ``λ``; chosen by ``"auto"`` only where a sequential step is expensive (the
      GPU/TPU constants of :mod:`hessinv.cost`) and ``λ > 0``. With ``mesh=``, the layers are split
      over the mesh's devices instead (below).

    ``mesh``, a one-dimensional :class:`jax.sharding.Mesh` (with ``method="parallel"`` only), splits
    every run of at least ``2P`` identical layers (``P`` devices; a :class:`~hessinv.Stack`, say)
    into ``P`` chunks, one per device (``jax.shard_map``): each device eliminates its chunk as if
    nothing came after it, a ``P``-step boundary system joins the chunks, and each device finishes
    its own layers of every solve. ``L/P + P`` sequential steps instead of ``L``; ``logdet`` and
    ``inertia`` stay exact. It needs each chunk's last ``K_xx,l + λI`` invertible (``λ > 0`` for a
    dense layer or a Gauss-Newton matrix) and reports any other singular matrix in ``F.info()``;
    shorter runs of layers go through the stage recursion, replicated. Right-hand sides of
    ``jax.vmap(F.solve)`` may themselves be sharded over the mesh. See :mod:`hessinv._sharded`.

    Args:
      layers: the pipeline's layers, as in :func:`hvp`.
      params: its parameters, as in :func:`hvp`.
      z0: the batch, as in :func:`hvp`.
      damping: ``λ``, a real scalar (may be traced; negative shifts are allowed).
      curvature: ``"hessian"`` (exact) or ``"ggn"`` (generalised Gauss-Newton).
      method: ``"auto"``, ``"riccati"``, ``"dense"``, ``"gauss_newton"``, ``"woodbury"`` or ``"parallel"``.
      mesh: ``None``, or a one-dimensional :class:`jax.sharding.Mesh` to split the layers over
        (``method="parallel"`` only).

    Returns:
      A :class:`~hessinv.Factorization` (a pytree) of ``C + λI``.

    Examples:
      >>> import jax, jax.numpy as jnp, hessinv
      >>> from jax.flatten_util import ravel_pytree
      >>> jax.config.update("jax_enable_x64", True)
      >>> def dense(z, x):
      ...     return jnp.tanh(z @ x["W"] + x["c"])
      >>> def mse(z, x):
      ...     return jnp.mean((z @ x["w"] - 1.0) ** 2)
      >>> layers = [dense, mse]
      >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
      >>> params = [{"W": jax.random.normal(k1, (3, 4)), "c": jnp.zeros(4)}, {"w": jax.random.normal(k2, (4,))}]
      >>> z0 = jax.random.normal(k3, (5, 3))
      >>> g = jax.grad(lambda p: hessinv.loss(layers, p, z0))(params)  # the gradient, shaped like params
      >>> F = hessinv.factorize(layers, params, z0, damping=1e-3, method="riccati")
      >>> x = F.solve(g)
      >>> bool(jnp.allclose(ravel_pytree(F.matvec(x))[0], ravel_pytree(g)[0]))  # (H + λI) x = g
      True
      >>> xs = jax.vmap(F.solve)(jax.tree.map(lambda t: jnp.stack([t, -t]), g))  # two right-hand sides
      >>> C = hessinv.hessian(layers, params, z0) + 1e-3 * jnp.eye(20)  # dense, for the checks only
      >>> sign, logabsdet = F.logdet()
      >>> bool(jnp.isclose(logabsdet, jnp.linalg.slogdet(C)[1]))
      True
      >>> n_pos, n_neg, n_zero = F.inertia()
      >>> int(n_neg) == int(jnp.sum(jnp.linalg.eigvalsh(C) < 0))
      True
    """
    pipe = _pipeline.build(layers, params, z0)
    damping = _damping(pipe, damping)
    r = _route(pipe, method, curvature, damping, mesh)
    if _pipeline.is_concrete(params, z0):
        _check_inputs(params, z0)
    F = _factorize_route(pipe, list(params), z0, damping, curvature, r, mesh)
    if _pipeline.is_concrete(F):
        info = F.info()
        if not bool(info.finite):
            F._raise_for(info, "factor")
    return F


@functools.partial(jax.jit, static_argnames=("layers", "curvature", "route", "mesh"))
def _ihvp_jit(layers, params, z0, g, damping, curvature, route, mesh=None):
    return _ihvp_traced(layers, params, z0, g, damping, curvature, route, True, mesh)


@functools.partial(jax.jit, static_argnames=("pipe", "curvature", "with_info"))
def _oneshot_jit(pipe, params, z0, b_rows, damping, curvature, with_info):
    rows, outs = _oneshot.solve(pipe, params, z0, b_rows, damping, curvature, keep_pivot=with_info)
    return rows, (_oneshot.info(pipe, outs) if with_info else None)


@functools.partial(jax.jit, static_argnames=("pipe", "curvature", "route", "with_info", "mesh"))
def _factorized_jit(pipe, params, z0, b_rows, damping, curvature, route, with_info, mesh=None):
    F = _factorize_route(pipe, params, z0, damping, curvature, route, mesh)
    return F.solve_rows(b_rows), (F._info() if with_info else None)


def _direct(pipe, layers, params, z0, b_rows, damping, curvature, route, with_info, mesh=None):
    """``(C + λI)^{-1} b`` by ``route``: the stage recursion in one pass (blocks computed chunk
    by chunk inside the recursion, see :mod:`hessinv._oneshot`), any other route by its
    factorisation."""
    if route == "riccati":
        return _oneshot_jit(pipe, params, z0, b_rows, damping, curvature, with_info)
    return _factorized_jit(pipe, params, z0, b_rows, damping, curvature, route, with_info, mesh)


def _solve(pipe, layers, params, z0, g_rows, damping, curvature, route, with_info, mesh=None):
    """``(C + λI)^{-1} g`` as a ``jax.lax.custom_linear_solve``, whatever the route:
    differentiating the answer with respect to ``g`` is then one more solve with the same
    symmetric matrix, and with respect to ``params`` it goes through the matrix-vector product
    (Pearlmutter's hvp, or the GGN's), not through the factorisation. With ``with_info`` (the
    eager path, ``return_info=True``) it is the plain solve, differentiated (if at all) through
    the factorisation."""
    if with_info:  # (custom_linear_solve's has_aux does not survive jax.grad in jax 0.10.2)
        return _direct(pipe, layers, params, z0, g_rows, damping, curvature, route, True, mesh)
    lam = damping  # cast to pipe.dtype by _damping
    # One flat vector for the linear system: a parameter-free segment's empty rows would reach
    # custom_linear_solve's JVP rule as symbolic zeros, which it cannot take (jax 0.10.2).
    g_flat, rows = ravel_pytree(g_rows)

    def flat(rs):
        return ravel_pytree(rs)[0]

    def matvec(x):
        v = _pipeline.from_rows(pipe, rows(x))
        Cv = (
            _hvp.ggn_vp(layers, params, z0, v, pipe.segments[-1].in_spec.is_active)
            if curvature == "ggn"
            else _hvp.pearlmutter_hvp(layers, params, z0, v)
        )
        return flat(_pipeline.to_rows(pipe, Cv)) + lam * x

    def solve(_, b):
        return flat(_direct(pipe, layers, params, z0, rows(b), damping, curvature, route, False, mesh)[0])

    return rows(jax.lax.custom_linear_solve(matvec, g_flat, solve, symmetric=True)), None


def _ihvp_traced(layers, params, z0, g, damping, curvature, route, with_info, mesh=None):
    pipe = _pipeline.build(layers, params, z0)
    g_rows = _pipeline.to_rows(pipe, list(g))
    rows, info = _solve(pipe, tuple(layers), list(params), z0, g_rows, damping, curvature, route, with_info, mesh)
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
    method: str = "auto",
    mesh=None,
    return_info: bool = False,
):
    """Inverse-Hessian-vector product ``(C + λI)^{-1} g``, exactly (``C`` the Hessian, or the
    Gauss-Newton matrix with ``curvature="ggn"``).

    ``method="auto"`` (default) takes the cheapest exact route for these shapes (see
    :func:`factorize` for the routes and :mod:`hessinv.cost` for the choice); the stage
    (Riccati) recursion of MATH.md section 3 (Rahimi 2026, arXiv:2601.06096) is valid for
    every layer shape and for indefinite ``C + λI``, in time linear in depth.

    Args:
      layers: the pipeline's layers, as in :func:`hvp`.
      params: its parameters, as in :func:`hvp`.
      z0: the batch, as in :func:`hvp`.
      g: shaped exactly like ``params``.
      damping: ``λ``, a real scalar (may be traced; negative shifts are allowed).
      curvature: ``"hessian"`` (exact) or ``"ggn"`` (generalised Gauss-Newton).
      method: ``"auto"``, ``"riccati"``, ``"dense"``, ``"gauss_newton"``, ``"woodbury"`` or ``"parallel"``.
      mesh: ``None``, or a one-dimensional :class:`jax.sharding.Mesh` to split the layers over
        (``method="parallel"`` only; see :func:`factorize`).
      return_info: also return an :class:`~hessinv.Info` (health, and the route that ran). Use
        it under ``jit``, where errors cannot be raised.

    Returns:
      ``x`` shaped like ``params``, or ``(x, info)`` with ``return_info=True``.

    Raises:
      NonFiniteError: NaN/inf in params, z0, g, or the blocks (outside ``jit``, unless
        ``return_info=True``).
      SingularPivotError: the route's pivots are (numerically) singular; the message names the
        layer (stage recursion) or the route (outside ``jit``, unless ``return_info=True``).

    Examples:
      The right-hand side is usually a gradient; here the answer is checked against the dense
      solve.

      >>> import jax, jax.numpy as jnp, hessinv
      >>> from jax.flatten_util import ravel_pytree
      >>> jax.config.update("jax_enable_x64", True)
      >>> def dense(z, x):
      ...     return jnp.tanh(z @ x["W"] + x["c"])
      >>> def mse(z, x):
      ...     return jnp.mean((z @ x["w"] - 1.0) ** 2)
      >>> layers = [dense, mse]
      >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
      >>> params = [{"W": jax.random.normal(k1, (3, 4)), "c": jnp.zeros(4)}, {"w": jax.random.normal(k2, (4,))}]
      >>> z0 = jax.random.normal(k3, (5, 3))
      >>> g = jax.grad(lambda p: hessinv.loss(layers, p, z0))(params)  # the gradient, shaped like params
      >>> x = hessinv.ihvp(layers, params, z0, g, damping=1e-3)  # (H + 1e-3 I)^{-1} g
      >>> H = hessinv.hessian(layers, params, z0)  # the dense (20, 20) Hessian, for the check only
      >>> ref = jnp.linalg.solve(H + 1e-3 * jnp.eye(20), ravel_pytree(g)[0])
      >>> bool(jnp.allclose(ravel_pytree(x)[0], ref, rtol=1e-8))
      True
      >>> x, info = hessinv.ihvp(layers, params, z0, g, damping=1e-3, return_info=True)
      >>> bool(info.ok), info.route_name  # the route method="auto" took for these shapes
      (True, 'dense')
    """
    pipe = _pipeline.build(layers, params, z0)
    _pipeline.check_like_params(pipe, g, "g")
    damping = _damping(pipe, damping)
    r = _route(pipe, method, curvature, damping, mesh)
    if _pipeline.is_concrete(params, z0, g, damping):
        if not return_info:
            _check_inputs(params, z0, g=g)
        # A plain list's runs of identical entries go in as stacked arrays (one per leaf and run,
        # not one per entry): XLA's compile time then stays flat in the length of the list.
        gl, gp, gg = _pipeline.grouped(pipe, layers, params, g)
        x, info = _ihvp_jit(gl, gp, z0, gg, damping, curvature, r, mesh)
        x = _pipeline.ungrouped(pipe, x)
        if return_info:
            return x, info
        if r == "riccati":
            _diagnostics.raise_for(pipe, info)
        elif not bool(info.ok):
            # Refactorise eagerly: each route's own check names what failed (for Woodbury,
            # which of the paper's pivots: B_l, Q_22, S_q or S_H).
            _factorize_route(pipe, list(params), z0, damping, curvature, r, mesh).check()
        return x
    x, info = _ihvp_traced(layers, params, z0, g, damping, curvature, r, return_info, mesh)
    return (x, info) if return_info else x
