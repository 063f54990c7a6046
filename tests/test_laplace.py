"""``hessinv.laplace`` against dense Laplace algebra written out independently here: the GGN
``Jᵀ ∇²ℓ J`` of a plain composition (``jax.jacobian`` in the ``ravel_pytree`` flattening),
``slogdet`` for the evidence, autodiff of that dense evidence for its derivative in δ, a dense
1-D search for the optimal prior precision, and ``J* (G + δI)^{-1} J*ᵀ`` for the predictive."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import hessinv

NOISE = 0.1


def layer(z, x):
    return {"h": jnp.tanh(z["h"] @ x["W"] + x["c"]), "t": z["t"]}


def out(z, x):
    return {"h": z["h"] @ x["W"] + x["c"], "t": z["t"]}


def nll(z, x):
    """Gaussian negative log-likelihood summed over the data (constants dropped)."""
    return 0.5 * jnp.sum((z["h"] - z["t"]) ** 2) / NOISE**2


def init(key, a, b):
    return {"W": jax.random.normal(key, (a, b)) / np.sqrt(a), "c": 0.1 * jax.random.normal(key, (b,))}


@functools.cache
def problem(depth=3, w=5, N=12):
    k = jax.random.split(jax.random.key(0), 4)
    layers = [layer, hessinv.Stack(layer, depth), out, nll]
    params = [init(k[0], 1, w), jax.vmap(lambda kk: init(kk, w, w))(jax.random.split(k[1], depth)), init(k[2], w, 1), {}]
    X = jnp.linspace(-2, 2, N)[:, None]
    z0 = {"h": X, "t": jnp.sin(2 * X)}
    return layers, params, z0


def outputs(params, z0, depth=3):
    """The network outputs by a plain loop (no hessinv machinery)."""
    z = layer(z0, params[0])
    for i in range(depth):
        z = layer(z, jax.tree.map(lambda a: a[i], params[1]))
    return out(z, params[2])["h"]


def dense(delta):
    """(evidence, G + δI, unravel) densely."""
    layers, params, z0 = problem()
    theta, unravel = ravel_pytree(params)
    n = theta.size
    J = jax.jacobian(lambda t: outputs(unravel(t), z0).ravel())(theta)
    G = J.T @ J / NOISE**2
    M = G + delta * jnp.eye(n)
    loss = nll({"h": outputs(params, z0), "t": z0["t"]}, {})
    ev = -loss - 0.5 * delta * theta @ theta + 0.5 * n * jnp.log(delta) - 0.5 * jnp.linalg.slogdet(M)[1]
    return ev, M, unravel


@pytest.mark.parametrize("method", ["riccati", "dense", "gauss_newton"])
def test_evidence_and_its_derivative(method):
    layers, params, z0 = problem()
    value, grad = hessinv.laplace.log_marginal_likelihood(layers, params, z0, 2.0, method=method, return_grad=True)
    ref = float(dense(2.0)[0])
    ref_grad = float(jax.grad(lambda d: dense(d)[0])(2.0))
    assert abs(float(value) - ref) < 1e-10 * abs(ref)
    assert abs(float(grad) - ref_grad) < 1e-9 * abs(ref_grad)
    # without return_grad: the value alone
    assert float(hessinv.laplace.log_marginal_likelihood(layers, params, z0, 2.0, method=method)) == float(value)


def test_optimize_prior_precision():
    layers, params, z0 = problem()
    delta = float(hessinv.laplace.optimize_prior_precision(layers, params, z0, rtol=1e-8))
    # Dense check: the derivative of the dense evidence vanishes there and changes sign around it.
    dev = jax.grad(lambda d: dense(d)[0])
    assert float(dev(delta * (1 - 1e-4))) > 0 > float(dev(delta * (1 + 1e-4)))
    # and it is the maximum over a grid of the dense evidence
    grid = delta * np.exp(np.linspace(-3, 3, 13))
    assert all(float(dense(d)[0]) <= float(dense(delta)[0]) + 1e-9 for d in grid)


@pytest.mark.parametrize("method", ["riccati", "gauss_newton"])
def test_predictive(method):
    layers, params, z0 = problem()
    delta = 0.5
    F = hessinv.factorize(layers, params, z0, damping=delta, curvature="ggn", method=method)
    Xt = jnp.linspace(-3, 3, 7)[:, None]
    zt = {"h": Xt, "t": jnp.zeros_like(Xt)}
    mean, var = hessinv.laplace.predictive(F, layers, params, zt)
    _, M, unravel = dense(delta)
    theta = ravel_pytree(params)[0]
    Jt = jax.jacobian(lambda t: outputs(unravel(t), zt).ravel())(theta)
    cov = Jt @ jnp.linalg.solve(M, Jt.T)
    assert mean["h"].shape == (7, 1) and var["h"].shape == (7, 1)
    np.testing.assert_allclose(np.asarray(mean["h"]).ravel(), np.asarray(outputs(params, zt)).ravel(), atol=1e-13)
    np.testing.assert_allclose(np.asarray(var["h"]).ravel(), np.diag(cov), rtol=1e-10)
    assert np.all(np.asarray(var["h"]) > 0)
    _, full = hessinv.laplace.predictive(F, layers, params, zt, full_cov=True)
    np.testing.assert_allclose(np.asarray(full), np.asarray(cov), rtol=1e-10, atol=1e-14)


def test_exact_hessian_where_definite_and_refusal():
    layers, params, z0 = problem()
    # With the exact Hessian the evidence is valid where H + δI is positive definite ...
    H = np.asarray(hessinv.hessian(layers, params, z0))
    theta = ravel_pytree(params)[0]
    big = float(-np.linalg.eigvalsh(H)[0]) + 1.0
    v = hessinv.laplace.log_marginal_likelihood(layers, params, z0, big, curvature="hessian")
    n = theta.size
    ref = (
        -float(hessinv.loss(layers, params, z0))
        - 0.5 * big * float(theta @ theta)
        + 0.5 * n * np.log(big)
        - 0.5 * np.linalg.slogdet(H + big * np.eye(n))[1]
    )
    assert abs(float(v) - ref) < 1e-10 * abs(ref)
    # ... and refused where it is not (away from a mode the Hessian is indefinite)
    assert np.linalg.eigvalsh(H)[0] < -1e-3
    with pytest.raises(hessinv.SingularPivotError, match="positive definite"):
        hessinv.laplace.log_marginal_likelihood(layers, params, z0, 1e-4, curvature="hessian", method="riccati")


def test_bad_input():
    layers, params, z0 = problem()
    with pytest.raises(ValueError, match="prior_precision"):
        hessinv.laplace.log_marginal_likelihood(layers, params, z0, 0.0)
    with pytest.raises(TypeError, match="damping|real scalar"):
        hessinv.laplace.log_marginal_likelihood(layers, params, z0, "1.0")
    with pytest.raises(ValueError, match="bounds"):
        hessinv.laplace.optimize_prior_precision(layers, params, z0, bounds=(1.0, 0.5))
    with pytest.raises(ValueError, match="widen bounds"):
        hessinv.laplace.optimize_prior_precision(layers, params, z0, bounds=(1e3, 1e4))
    with pytest.raises(TypeError, match="Factorization"):
        hessinv.laplace.predictive("F", layers, params, z0)
