"""The physics-informed benchmark's layers (``benchmarks/pde.py``): the forward-mode jets they
carry against autodiff of the plain network, and hessinv's exact solves and Gauss-Newton step on
the PDE residual loss against dense references built without hessinv's pipeline machinery."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import flat, like, ref_hessian, ref_loss, rel_err
from jax.flatten_util import ravel_pytree

import hessinv
from benchmarks import pde


@functools.cache
def small():
    """Width 3, two stacked layers, 6 interior points: 42 parameters, dense references cheap."""
    return pde.make_problem(1, width=3, depth=2, n_interior=6)


def jets(layers, params, z0):
    """The last layer's input (``jet_out``'s output) by the plain composition."""
    return ref_loss(layers[:-1], params[:-1], z0)


def test_jets_match_autodiff_of_the_plain_network():
    layers, params, z0 = small()
    x, xb = z0["u"][:, 0], z0["ub"][:, 0]

    def hidden(x, p, depth):
        h = jnp.tanh(x * p[0]["W"][0] + p[0]["c"])
        for j in range(depth):
            h = jnp.tanh(h @ p[1]["W"][j] + p[1]["c"][j])
        return h

    @jax.jit
    def compare(params):
        """Max deviations: the jets after the first layer and after the Stack against jacfwd of the
        hidden units; the output's u_xx against jax.hessian of the scalar network, u_b against it."""
        dev = []
        z = z0
        for i, (f, p) in enumerate(zip(layers[:2], params[:2])):
            z = ref_loss([f], [p], z)
            h = functools.partial(hidden, p=params, depth=i * params[1]["W"].shape[0])
            for got, want in [
                (z["u"], jax.vmap(h)(x)),
                (z["ux"], jax.vmap(jax.jacfwd(h))(x)),
                (z["uxx"], jax.vmap(jax.jacfwd(jax.jacfwd(h)))(x)),
                (z["ub"], jax.vmap(h)(xb)),
            ]:
                dev.append(jnp.max(jnp.abs(got - want)))
        out = jets(layers, params, z0)
        u = functools.partial(pde.network, params)
        uxx = jax.vmap(jax.hessian(u))(x)
        dev += [
            jnp.max(jnp.abs(out["uxx"] - uxx)) / jnp.max(jnp.abs(uxx)),
            jnp.max(jnp.abs(out["ub"] - jax.vmap(u)(xb))),
        ]
        res = uxx + pde.forcing(x)
        loss = jnp.mean(res**2) + pde.BETA * jnp.mean((jax.vmap(u)(xb) - pde.exact(xb)) ** 2)
        f_err = jnp.max(jnp.abs(z0["f"] + jax.vmap(jax.hessian(pde.exact))(x))) / jnp.max(jnp.abs(z0["f"]))
        return jnp.stack(dev), loss, f_err, out

    dev, loss, f_err, out = compare(params)
    assert np.all(np.asarray(dev) < 1e-12), dev
    assert f_err < 1e-13  # the forcing is -u*''
    np.testing.assert_array_equal(out["f"], z0["f"])  # carried through unchanged
    np.testing.assert_array_equal(out["g"], z0["g"])
    np.testing.assert_allclose(hessinv.loss(layers, params, z0), loss, rtol=1e-12)


def dense_ggn(layers, params, z0):
    """``Jᵀ ∇²ℓ J``: ``J`` of ``(u_xx, u_b)`` in the flattened params, ``ℓ`` the residual loss."""
    flat0, unravel = ravel_pytree(list(params))

    def outputs(t):
        o = jets(layers, unravel(t), z0)
        return jnp.concatenate([o["uxx"], o["ub"]])

    n = z0["f"].shape[0]

    def ell(o):
        return pde.residual_loss({"uxx": o[:n], "ub": o[n:], "f": z0["f"], "g": z0["g"]}, {})

    @jax.jit
    def ggn(t):
        J = jax.jacobian(outputs)(t)
        return J.T @ jax.hessian(ell)(outputs(t)) @ J

    return np.asarray(ggn(flat0))


@functools.cache
def dense_curvatures():
    layers, params, z0 = small()
    G = dense_ggn(layers, params, z0)
    H = np.asarray(jax.jit(lambda p: ref_hessian(layers, p, z0))(params))
    g = jax.jit(jax.grad(lambda p: hessinv.loss(layers, p, z0)))(params)
    return G, H, g


@pytest.mark.parametrize("method", ["riccati", "gauss_newton"])  # gauss_newton: auto's route here
def test_gauss_newton_solve_against_dense(method):
    layers, params, z0 = small()
    G, _, g = dense_curvatures()
    assert np.linalg.eigvalsh(G).min() > -1e-8 * np.abs(G).max()  # the GGN of a convex loss: PSD
    lam = 1e-2
    x = hessinv.ihvp(layers, params, z0, g, damping=lam, curvature="ggn", method=method)
    want = np.linalg.solve(G + lam * np.eye(len(G)), flat(g))
    assert rel_err(flat(x), want) < 1e-9


@pytest.mark.parametrize("method", ["riccati"])
def test_hessian_solve_against_dense(method):
    layers, params, z0 = small()
    _, H, g = dense_curvatures()
    assert np.linalg.eigvalsh(H).min() < 0  # indefinite at the initialisation
    lam = 1e-2
    v = like(params)
    x = hessinv.ihvp(layers, params, z0, v, damping=lam, method=method)
    want = np.linalg.solve(H + lam * np.eye(len(H)), flat(v))
    assert rel_err(flat(x), want) < 1e-9
    del g


def test_one_gauss_newton_step_is_the_dense_damped_step():
    layers, params, z0 = small()
    G, _, g = dense_curvatures()
    lam = 100.0  # far from the solution: a step that the GN model predicts well (ρ ≈ 0.54)
    # probe_factor=None (classic LM) compiles faster; with ρ > 0.25 the default's probe does not
    # fire, so the default rule takes this same step.
    opt = hessinv.optax.gauss_newton(layers, init_damping=lam, probe_factor=None)
    state = opt.init(params)
    updates, state = jax.jit(lambda g, s, p: opt.update(g, s, p, z0=z0))(g, state, params)
    info = optax.tree_utils.tree_get(state, "info")
    d = np.linalg.solve(G + lam * np.eye(len(G)), flat(g))
    # The premise: the first step is accepted with a ratio above 0.25 (so no probe), judged by
    # the dense model and the true loss.
    loss = functools.partial(hessinv.loss, layers, z0=z0)
    unravel = ravel_pytree(list(params))[1]
    trial = float(hessinv.loss(layers, unravel(flat(params) - d), z0))
    pred = flat(g) @ d - 0.5 * d @ G @ d
    rho = (float(loss(params)) - trial) / pred
    assert rho > 0.25 and bool(info.accepted) and int(info.iterations) == 1
    np.testing.assert_allclose(float(info.ratio), rho, rtol=1e-8)
    assert rel_err(flat(updates), -d) < 1e-9
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(float(hessinv.loss(layers, new, z0)), trial, rtol=1e-10)
