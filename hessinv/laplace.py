"""Exact Laplace approximations: evidence, prior precision and the linearised predictive.

The Laplace approximation replaces the posterior of a network's parameters ``θ`` at a mode
``θ*`` by ``N(θ*, (C + δI)^{-1})``, with ``C`` the Hessian (or the generalised Gauss-Newton
matrix) of the negative log-likelihood and ``δ`` the precision of an isotropic Gaussian prior
``N(0, δ^{-1} I)``. Libraries usually approximate ``C`` (diagonal, Kronecker factors, the last
layer only) because the full matrix is too large to form. hessinv never forms it: every
quantity here is exact, in time linear in depth, through a :class:`~hessinv.Factorization`.

* :func:`log_marginal_likelihood`:
  ``log p(D | δ) ≈ −ℓ(θ*) − ½ δ ‖θ*‖² + ½ n log δ − ½ log det(C + δI)``, and its derivative in
  ``δ``, ``−½ ‖θ*‖² + n / (2δ) − ½ tr((C + δI)^{-1})``, with the trace from the exact inverse
  diagonal (selected inversion).
* :func:`optimize_prior_precision`: the ``δ`` that maximises the evidence, by bisection on the
  sign of that derivative in ``log δ``. For a positive semi-definite ``C`` (the GGN) the
  derivative is ``½ (Σ_i g_i / (δ (δ + g_i)) − ‖θ*‖²)`` over ``C``'s eigenvalues ``g_i``,
  strictly decreasing in ``δ``: the maximiser is unique and bisection finds it.
* :func:`predictive`: the linearised (GLM) predictive at test inputs: mean ``f(x*, θ*)`` and
  variance ``diag(J* (C + δI)^{-1} J*ᵀ)``, ``J*`` the Jacobian of the network outputs (the
  input of the loss layer) at the test batch, one solve per output.

The pipeline's loss must be the **negative log-likelihood summed over the data** (a mean
would flatten the likelihood by the number of examples), and ``params`` a mode of the posterior
(a minimiser of ``loss + ½ δ ‖θ‖²``). The default curvature is the GGN, which is positive
semi-definite, so ``C + δI`` is positive definite for every ``δ > 0``; the exact Hessian
(``curvature="hessian"``) is valid where ``C + δI`` is positive definite, and the functions
say so when it is not.

Example: a Bayesian regression network, its evidence-tuned prior and predictive bands.

    >>> import jax, jax.numpy as jnp, hessinv
    >>> jax.config.update("jax_enable_x64", True)
    >>> def layer(z, x):
    ...     return {"h": jnp.tanh(z["h"] @ x["W"] + x["c"]), "t": z["t"]}
    >>> def out(z, x):
    ...     return {"h": z["h"] @ x["W"] + x["c"], "t": z["t"]}
    >>> def nll(z, x):  # Gaussian noise 0.1, summed over the data
    ...     return 0.5 * jnp.sum((z["h"] - z["t"]) ** 2) / 0.1**2
    >>> init = lambda k, a, b: {"W": jax.random.normal(k, (a, b)) / a**0.5, "c": jnp.zeros(b)}
    >>> layers = [layer, layer, out, nll]
    >>> k = jax.random.split(jax.random.key(0), 3)
    >>> params = [init(k[0], 1, 8), init(k[1], 8, 8), init(k[2], 8, 1), {}]
    >>> X = jnp.linspace(-2, 2, 20)[:, None]
    >>> z0 = {"h": X, "t": jnp.sin(2 * X)}
    >>> delta = hessinv.laplace.optimize_prior_precision(layers, params, z0)
    >>> value, slope = hessinv.laplace.log_marginal_likelihood(layers, params, z0, delta, return_grad=True)
    >>> bool(abs(slope) < 1e-3 * abs(value))  # a stationary point of the evidence
    True
    >>> F = hessinv.factorize(layers, params, z0, damping=delta, curvature="ggn")
    >>> Xt = jnp.linspace(-3, 3, 7)[:, None]
    >>> mean, var = hessinv.laplace.predictive(F, layers, params, {"h": Xt, "t": jnp.zeros_like(Xt)})
    >>> mean["h"].shape, bool(jnp.all(var["h"] > 0))
    ((7, 1), True)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _api, _flat, _gauss_newton, _pipeline
from ._errors import SingularPivotError
from ._factorization import Factorization

__all__ = ["log_marginal_likelihood", "optimize_prior_precision", "predictive"]


def _sq_norm(params) -> jax.Array:
    return sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(params))


def _evidence(F: Factorization, loss, sq_norm, n):
    """``(log p(D | δ), d/dδ)`` from a factorisation of ``C + δI`` (traceable)."""
    delta = F.damping
    sign, logdet = F._logdet()
    trace = sum(jnp.sum(d) for d in F._inverse_blocks_rows(True))
    value = -loss - 0.5 * delta * sq_norm + 0.5 * n * jnp.log(delta) - 0.5 * logdet
    grad = -0.5 * sq_norm + 0.5 * n / delta - 0.5 * trace
    ok = (sign > 0) & (delta > 0)
    return jnp.where(ok, value, jnp.nan), jnp.where(ok, grad, jnp.nan)


def _setup(layers, params, z0, prior_precision, curvature, method):
    pipe = _pipeline.build(layers, params, z0)
    delta = _api._damping(pipe, prior_precision)
    if _pipeline.is_concrete(delta) and not float(delta) > 0:
        raise ValueError(f"prior_precision must be positive, got {float(delta)}")
    route = _api._route(pipe, method, curvature, delta)
    if _pipeline.is_concrete(params, z0):
        _api._check_inputs(params, z0)
    return pipe, delta, route


@functools.partial(jax.jit, static_argnames=("pipe", "curvature", "route"))
def _evidence_jit(pipe, seg_rows, z0, delta, curvature, route):
    F = _api.damped(pipe, seg_rows, z0, curvature, route)(delta)
    loss = _pipeline.forward(pipe, seg_rows, z0)[0].astype(pipe.dtype)
    return _evidence(F, loss, _sq_norm(seg_rows), _pipeline.n_params(pipe))


def _refuse_indefinite(value, what: str) -> None:
    if _pipeline.is_concrete(value) and np.any(np.isnan(np.asarray(value))):
        raise SingularPivotError(
            f"{what}: C + δI is not positive definite at this prior precision, so the Laplace "
            "approximation has no Gaussian posterior (log det is undefined). Use curvature='ggn' "
            "(the default) or a larger prior precision."
        )


def log_marginal_likelihood(
    layers: Sequence,
    params: Sequence,
    z0: Any,
    prior_precision,
    *,
    curvature: str = "ggn",
    method: str = "auto",
    return_grad: bool = False,
):
    """The Laplace approximation of the log evidence ``log p(D | δ)``, exactly.

    ``−ℓ(θ*) − ½ δ ‖θ*‖² + ½ n log δ − ½ log det(C + δI)`` for the pipeline loss ``ℓ`` (the
    negative log-likelihood summed over the data) at the mode ``θ* = params``, prior
    ``N(0, δ^{-1} I)``.

    Args:
      layers: the pipeline's layers (see :func:`hessinv.hvp`).
      params: its parameters, a posterior mode.
      z0: the training batch.
      prior_precision: ``δ > 0``, a scalar (may be traced).
      curvature: ``"ggn"`` (default; the last layer must be a parameter-free loss) or
        ``"hessian"``.
      method: the factorisation route (see :func:`hessinv.factorize`).
      return_grad: also return the exact derivative in ``δ``,
        ``−½ ‖θ*‖² + n / (2δ) − ½ tr((C + δI)^{-1})`` (the trace by selected inversion).

    Returns:
      The log evidence (a scalar), or ``(value, d value / dδ)``. NaN under ``jit`` where
      ``C + δI`` is not positive definite; eagerly that raises
      :class:`~hessinv.SingularPivotError`.
    """
    pipe, delta, route = _setup(layers, params, z0, prior_precision, curvature, method)
    value, grad = _evidence_jit(pipe, _pipeline.rows(pipe, params), z0, delta, curvature, route)
    _refuse_indefinite(value, "log_marginal_likelihood")
    return (value, grad) if return_grad else value


@functools.partial(jax.jit, static_argnames=("pipe", "curvature", "route", "iters"))
def _optimize_jit(pipe, seg_rows, z0, lo, hi, curvature, route, iters):
    # The λ-independent part of C + δI (blocks, C itself, or Z) once; one factorisation per step.
    damped = _api.damped(pipe, seg_rows, z0, curvature, route)
    loss = _pipeline.forward(pipe, seg_rows, z0)[0].astype(pipe.dtype)
    sq, n = _sq_norm(seg_rows), _pipeline.n_params(pipe)

    def grad(t):
        return _evidence(damped(jnp.exp(t)), loss, sq, n)[1]

    g_lo, g_hi = grad(lo), grad(hi)

    def body(_, state):
        lo, hi = state
        mid = 0.5 * (lo + hi)
        up = grad(mid) > 0  # the evidence still increases: the maximiser is above mid
        return jnp.where(up, mid, lo), jnp.where(up, hi, mid)

    lo, hi = jax.lax.fori_loop(0, iters, body, (lo, hi))
    return jnp.exp(0.5 * (lo + hi)), g_lo, g_hi


def optimize_prior_precision(
    layers: Sequence,
    params: Sequence,
    z0: Any,
    *,
    curvature: str = "ggn",
    method: str = "auto",
    bounds=(1e-6, 1e6),
    rtol: float = 1e-6,
):
    """The prior precision ``δ`` that maximises :func:`log_marginal_likelihood`.

    Bisection on the sign of the exact derivative in ``log δ`` within ``bounds`` until the bracket
    is narrower than ``rtol`` (relative): about ``log2(log(hi / lo) / rtol)`` factorisations,
    the λ-independent part formed once. For the GGN the derivative decreases strictly, so the
    maximiser is unique (see the module docstring).

    Returns:
      ``δ*``, a scalar. Eagerly, a ValueError when the derivative has the same sign at both
      bounds (the maximiser lies outside them: widen ``bounds``), and
      :class:`~hessinv.SingularPivotError` when ``C + δI`` is not positive definite at a bound.
    """
    lo, hi = (float(b) for b in bounds)
    if not (0 < lo < hi and np.isfinite(hi)):
        raise ValueError(f"bounds must be 0 < lo < hi < inf, got {bounds!r}")
    if not (np.isfinite(rtol) and rtol > 0):
        raise ValueError(f"rtol must be positive, got {rtol!r}")
    pipe, _, route = _setup(layers, params, z0, lo, curvature, method)
    iters = max(1, int(np.ceil(np.log2(np.log(hi / lo) / rtol))))
    dt = pipe.dtype
    delta, g_lo, g_hi = _optimize_jit(
        pipe, _pipeline.rows(pipe, params), z0, jnp.log(jnp.asarray(lo, dt)), jnp.log(jnp.asarray(hi, dt)),
        curvature, route, iters,
    )
    if _pipeline.is_concrete(g_lo, g_hi):
        _refuse_indefinite(jnp.stack([g_lo, g_hi]), "optimize_prior_precision")
        if not (float(g_lo) > 0 > float(g_hi)):
            side = "below" if float(g_lo) <= 0 else "above"
            raise ValueError(
                f"optimize_prior_precision: the evidence's derivative in δ has the same sign at both bounds "
                f"({float(g_lo):.3g} at δ = {lo:g}, {float(g_hi):.3g} at δ = {hi:g}), so its maximiser lies {side} "
                "them; widen bounds"
            )
    return delta


def _same_layout(a: _pipeline.Pipeline, b: _pipeline.Pipeline) -> bool:
    """Whether two pipelines lay the parameters out in the same rows."""
    return [(s.n, s.p, s.pieces) for s in a.segments] == [(s.n, s.p, s.pieces) for s in b.segments]


@functools.partial(jax.jit, static_argnames=("pipe", "full_cov"))
def _predictive_jit(F, pipe, seg_rows, z0, full_cov):
    x = _pipeline.rows_to_vector(seg_rows, pipe.dtype)
    f, J, z = _gauss_newton.jacobian(pipe, x, z0)

    def solve(row):  # (C + δI)^{-1} J*ᵀ e_i, through F's own layout of the parameters
        if _same_layout(pipe, F.pipe):
            return _pipeline.rows_to_vector(F.solve_rows(_pipeline.vector_to_rows(F.pipe, row)), pipe.dtype)
        tree = _pipeline.from_rows(pipe, _pipeline.vector_to_rows(pipe, row))
        sol = F.solve_rows(_pipeline.to_rows(F.pipe, tree))
        return _pipeline.rows_to_vector(_pipeline.to_rows(pipe, _pipeline.from_rows(F.pipe, sol)), pipe.dtype)

    X = jax.vmap(solve)(J)  # (m*, n)
    cov = J @ X.T
    last = pipe.segments[-1]
    consts = _flat.constants(last.in_spec, z)
    mean = _flat.unravel(last.in_spec, f, consts)
    if full_cov:
        return mean, 0.5 * (cov + cov.T)
    return mean, _flat.unravel(last.in_spec, jnp.diagonal(cov), consts)


def predictive(F: Factorization, layers: Sequence, params: Sequence, z0_test: Any, *, full_cov: bool = False):
    """The linearised Laplace predictive at test inputs: ``f(x*, θ*)`` and the variance of the
    network outputs ``diag(J* (C + δI)^{-1} J*ᵀ)`` (``full_cov``: the whole ``m* × m*`` matrix).

    Args:
      F: the posterior precision's factorisation, ``hessinv.factorize(layers, params, z0_train,
        damping=δ, curvature="ggn")`` (any route).
      layers: the pipeline's layers; the last a parameter-free loss whose input holds the
        network outputs.
      params: its parameters (the posterior mode ``F`` was built at).
      z0_test: a batch of test inputs, shaped like the training ``z0`` but for the batch size
        (targets are not used; any values of the right shape do).

    Returns:
      ``(mean, var)``, each shaped like the loss layer's input at ``z0_test`` (the outputs' leaves
      hold the predictive mean and variance, carried leaves such as labels pass through); with
      ``full_cov``, ``var`` is the ``(m*, m*)`` covariance of the flattened outputs. Outputs of a
      classifier are logits: push samples through the softmax (probit or Monte Carlo) yourself.
    """
    if not isinstance(F, Factorization):
        raise TypeError(f"F must be a hessinv.Factorization (from hessinv.factorize), got {type(F).__name__}")
    pipe = _pipeline.build(layers, params, z0_test)
    _gauss_newton.check(pipe, "ggn")  # the outputs are the loss layer's input
    if _pipeline.n_params(pipe) != _pipeline.n_params(F.pipe):
        raise ValueError(
            f"F factorises a matrix over {_pipeline.n_params(F.pipe)} parameters, but these params have "
            f"{_pipeline.n_params(pipe)}"
        )
    if _pipeline.is_concrete(params, z0_test):
        _api._check_inputs(params, z0_test)
        F._eager_check("solve")
    return _predictive_jit(F, pipe, _pipeline.rows(pipe, params), z0_test, full_cov)
