"""Tests of hessinv.optax: exact Newton / Gauss-Newton steps as optax transformations.

References are independent of the engine: ``jax.hessian`` of the flattened loss, a dense
``Jᵀ ∇²ℓ J`` from ``jax.jacobian``, ``jnp.linalg.solve`` / ``eigvalsh``.

Compilation dominates the run time on a small CPU, so the layer functions live at module level
(same function objects, same shapes: one compilation serves many seeds) and every optimiser is
built once per configuration (:func:`_opt`) and jitted once.
"""

import functools

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

import hessinv  # noqa: E402
from hessinv.optax import NewtonInfo, ScaleByNewtonState, gauss_newton, newton, scale_by_newton  # noqa: E402

# -- small pipelines --------------------------------------------------------------------------

ALPHA = 0.1


def q_affine(z, x):
    X, Y = z
    return (X @ x["W"] + x["b"], Y, 0.5 * ALPHA * (jnp.sum(x["W"] ** 2) + jnp.sum(x["b"] ** 2)))


def q_shift(z, c):
    h, Y, r = z
    return (h + c, Y, r + 0.5 * ALPHA * jnp.sum(c**2))


def q_head(z, d):
    h, Y, r = z
    return 0.5 * jnp.mean((h - Y) ** 2) + r + 0.5 * ALPHA * jnp.sum(d**2) - jnp.sum(d)


QUAD = (q_affine, q_shift, q_head)


def quadratic_problem(seed):
    """A strictly convex quadratic in the params: ridge-regularised linear regression in 3 layers."""
    k = jax.random.split(jax.random.PRNGKey(seed), 5)
    X, Y = jax.random.normal(k[0], (6, 3)), jax.random.normal(k[1], (6, 2))
    params = [
        dict(W=jax.random.normal(k[2], (3, 2)), b=jax.random.normal(k[3], (2,))),
        jax.random.normal(k[4], (2,)),
        jnp.ones(2),
    ]
    return QUAD, params, (X, Y)


def t_first(z, x):
    X, Y = z
    return (jnp.tanh(X @ x["W"] + x["b"]), Y)


def t_hidden(z, x):
    h, Y = z
    return (jnp.tanh(h @ x["W"] + x["b"]), Y)


def t_out(z, x):
    h, Y = z
    return (h @ x["W"] + x["b"], Y)


def t_sq(z, x):
    o, Y = z
    return 0.5 * jnp.sum((o - Y) ** 2)


TANH = (t_first, hessinv.Stack(t_hidden, 2), t_out, t_sq)


def tanh_net(seed, dtype=jnp.float64):
    """A small tanh MLP (3 -> 3 -> 3 -> 3 -> 2) with a parameter-free squared-error loss layer."""
    n, d_in, w, d_out, depth = 6, 3, 3, 2, 2
    k = jax.random.split(jax.random.PRNGKey(seed), 6)
    params = [
        dict(W=jax.random.normal(k[0], (d_in, w)) / np.sqrt(d_in), b=0.1 * jax.random.normal(k[1], (w,))),
        dict(W=jax.random.normal(k[2], (depth, w, w)) / np.sqrt(w), b=jnp.zeros((depth, w))),
        dict(W=jax.random.normal(k[3], (w, d_out)) / np.sqrt(w), b=jnp.zeros((d_out,))),
        {},
    ]
    z0 = (jax.random.normal(k[4], (n, d_in)), jax.random.normal(k[5], (n, d_out)))
    return TANH, jax.tree.map(lambda a: a.astype(dtype), params), jax.tree.map(lambda a: a.astype(dtype), z0)


def i_l1(z, x):
    return jnp.tanh(z @ x["W"] + x["b"])


def i_l2(z, x):
    return jnp.tanh(z @ x)


def i_head(z, x):
    return 0.5 * jnp.sum((z - 0.3) ** 2) + 0.01 * jnp.sum(x**2)


INDEF = (i_l1, i_l2, i_head)


def indefinite_problem(seed=0):
    """A net whose Hessian at the start has many negative eigenvalues."""
    k = jax.random.split(jax.random.PRNGKey(seed), 3)
    z0 = jax.random.normal(k[0], (5, 3))
    params = [
        dict(W=0.5 * jax.random.normal(k[1], (3, 4)), b=jnp.zeros(4)),
        0.5 * jax.random.normal(k[2], (4, 4)),
        jnp.ones(2),
    ]
    return INDEF, params, z0


def r_link(z, x):
    prev, acc = z
    r1, r2 = 10.0 * (x - prev**2), 1.0 - x
    return (x, acc + 0.5 * jnp.sum(r1**2) + 0.5 * jnp.sum(r2**2))


def r_total(z, _):
    return z[1]


ROSEN = (r_link, hessinv.Stack(r_link, 2), r_total)


def rosenbrock_chain():
    """Zero-residual least squares ``½ Σ_l |10 (x_l − x_{l−1}²)|² + |1 − x_l|²`` with ``x_0 = 1``.

    Every layer sees the previous layer's parameters as its input; the strict minimum is at
    ``x_l = 1``, where the loss is 0 and the Hessian ``JᵀJ`` is positive definite.
    """
    return ROSEN, [jnp.ones(2), jnp.ones((2, 2)), {}], (jnp.ones(2), jnp.zeros(()))


# -- jitted helpers, one compilation per pipeline / optimiser ----------------------------------


@functools.lru_cache(maxsize=None)
def _grad_fn(layers):
    return jax.jit(jax.grad(lambda p, z0: hessinv.loss(layers, p, z0)))


def _grad(layers, params, z0):
    return _grad_fn(layers)(params, z0)


_loss = jax.jit(hessinv.loss, static_argnums=0)
_hessian = jax.jit(hessinv.hessian, static_argnums=0)


@functools.lru_cache(maxsize=None)
def _opt(layers, **kwargs):
    """``newton(layers, **kwargs)`` and its jitted update, built once per configuration."""
    opt = newton(layers, **kwargs)
    return opt, jax.jit(opt.update)


def _flat(tree):
    return ravel_pytree(list(tree) if isinstance(tree, (list, tuple)) else tree)[0]


def _step(layers, params, state, z0, *, g=None, **kwargs):
    """One step of the (cached, jitted) ``newton(layers, **kwargs)``, given the gradient ``g``
    (default: the true one at ``params``)."""
    _, update = _opt(layers, **kwargs)
    updates, state = update(_grad(layers, params, z0) if g is None else g, state, params, z0=z0)
    return optax.apply_updates(params, updates), updates, state


def _init(layers, params, **kwargs):
    return _opt(layers, **kwargs)[0].init(params)


def _ns(state) -> ScaleByNewtonState:
    """The ScaleByNewtonState inside a chain's state."""
    return optax.tree_utils.tree_get(state, "ScaleByNewtonState")


def _keys_like(tree, seed=7):
    leaves, treedef = jax.tree.flatten(tree)
    return jax.tree.unflatten(treedef, list(jax.random.split(jax.random.PRNGKey(seed), len(leaves))))


# -- exactness --------------------------------------------------------------------------------


def test_one_newton_step_minimises_a_strictly_convex_quadratic():
    layers, params, z0 = quadratic_problem(0)
    H = _hessian(layers, params, z0)
    assert np.linalg.eigvalsh(np.asarray(H)).min() > 0
    x_star = _flat(params) - jnp.linalg.solve(H, _flat(_grad(layers, params, z0)))

    new, _, state = _step(layers, params, _init(layers, params, damping=0.0), z0, damping=0.0)
    info = _ns(state).info
    assert bool(info.accepted)
    np.testing.assert_allclose(_flat(new), x_star, rtol=1e-10, atol=1e-12)
    assert float(jnp.linalg.norm(_flat(_grad(layers, new, z0)))) < 1e-10
    # On a quadratic the model is the function: the ratio is 1.
    np.testing.assert_allclose(float(info.ratio), 1.0, rtol=1e-8)


def test_newton_converges_quadratically_near_a_strict_minimum():
    layers, x_star_tree, z0 = rosenbrock_chain()
    assert float(_loss(layers, x_star_tree, z0)) == 0.0
    assert np.linalg.eigvalsh(np.asarray(_hessian(layers, x_star_tree, z0))).min() > 0.1
    x_star = _flat(x_star_tree)
    params = jax.tree.map(
        lambda a, k: a + 0.03 * jax.random.normal(k, a.shape, a.dtype), x_star_tree, _keys_like(x_star_tree)
    )
    state = _init(layers, params, damping=0.0)
    errs = [float(jnp.linalg.norm(_flat(params) - x_star))]
    for _ in range(5):
        params, _, state = _step(layers, params, state, z0, damping=0.0)
        assert bool(_ns(state).info.accepted)
        errs.append(float(jnp.linalg.norm(_flat(params) - x_star)))
        if errs[-1] < 1e-14:
            break
    assert errs[-1] < 1e-13, errs
    # Quadratic: e_{k+1} <= C e_k² with a moderate C, i.e. the error roughly squares each step.
    for e0, e1 in zip(errs[:-1], errs[1:]):
        if e0 > 1e-7:
            assert e1 <= 20 * e0**2, errs
    assert np.log(errs[2]) / np.log(errs[1]) > 1.7, errs


def _outputs(layers, params, z0):
    """The input of the last (loss) layer: the network's outputs."""
    z = z0
    for layer, x in zip(layers[:-1], params[:-1]):
        if isinstance(layer, hessinv.Stack):
            z, _ = jax.lax.scan(lambda z, x, f=layer.layer: (f(z, x), None), z, x)
        else:
            z = layer(z, x)
    return z[0]


@jax.jit
def _dense_ggn(params, z0):
    """``Jᵀ ∇²ℓ J`` for TANH, with ``J`` the Jacobian of the network's outputs in the flat params."""
    x, unravel = ravel_pytree(params)
    pre = lambda t: _outputs(TANH, unravel(t), z0)  # noqa: E731
    J = jax.jacobian(pre)(x).reshape(-1, x.size)
    o = pre(x)
    Hl = jax.hessian(lambda o: t_sq((o, z0[1]), {}))(o).reshape(o.size, o.size)
    return J.T @ Hl @ J


@jax.jit
def _ggn_columns(params, z0):
    x, unravel = ravel_pytree(params)
    blk = hessinv.blocks(TANH, params, z0, curvature="ggn")
    return jax.vmap(lambda e: _flat(blk.matvec(unravel(e))))(jnp.eye(x.size))


@jax.jit
def _ggn_descent(params, z0, g, lam):
    """``gᵀ (G + λI)^{-1} g`` and the negative-eigenvalue count of ``G + λI``, via the engine."""
    F = hessinv.blocks(TANH, params, z0, curvature="ggn").factorize(lam)
    return _flat(g) @ _flat(F.solve(g)), F.inertia()[1]


@pytest.mark.parametrize("method", ["riccati", "dense", "gauss_newton"])
def test_first_gauss_newton_step_is_exact_on_every_route(method):
    """The optimiser's solve runs on the route asked for (or auto's); every route's step is
    ``(G + λI)^{-1} g`` and reports the same health."""
    layers, params, z0 = tanh_net(0)
    G = _dense_ggn(params, z0)
    kw = dict(curvature="ggn", init_damping=0.3, method=method, probe_factor=None)
    g = _grad(layers, params, z0)
    _, updates, state = _step(layers, params, _init(layers, params, **kw), z0, **kw)
    info = _ns(state).info
    assert bool(info.accepted) and bool(info.positive_definite) and bool(info.ok)
    d_ref = jnp.linalg.solve(G + 0.3 * jnp.eye(G.shape[0]), _flat(g))
    np.testing.assert_allclose(-_flat(updates), d_ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_ggn_equals_dense_jt_hessian_j(seed):
    layers, params, z0 = tanh_net(seed)
    G = _dense_ggn(params, z0)
    # Column by column, the engine's GGN operator equals the dense Jᵀ ∇²ℓ J ...
    np.testing.assert_allclose(_ggn_columns(params, z0), G, rtol=1e-10, atol=1e-12)
    # ... and the first step of gauss_newton (LM, λ = 0.3) is (G + λI)^{-1} g, or exactly 0.
    kw = dict(curvature="ggn", init_damping=0.3)
    g = _grad(layers, params, z0)
    _, updates, state = _step(layers, params, _init(layers, params, **kw), z0, **kw)
    d_ref = jnp.linalg.solve(G + 0.3 * jnp.eye(G.shape[0]), _flat(g))
    if bool(_ns(state).info.accepted):
        np.testing.assert_allclose(-_flat(updates), d_ref, rtol=1e-9, atol=1e-12)
    else:
        assert np.all(_flat(updates) == 0)


@pytest.mark.parametrize("seed", range(3))
def test_damped_ggn_steps_always_descend(seed):
    layers, params, z0 = tanh_net(10 + seed)
    g = _grad(layers, params, z0)
    for lam in [1e-6, 1e-2, 1.0]:
        gd, n_neg = _ggn_descent(params, z0, g, lam)
        assert float(gd) > 0 and int(n_neg) == 0  # -d is a descent direction; G + λI ≻ 0
    # ... and the LM-safeguarded GGN iteration never increases the loss.
    kw = dict(curvature="ggn", init_damping=0.3)
    state, losses = _init(layers, params, **kw), [float(_loss(layers, params, z0))]
    for _ in range(6):
        params, _, state = _step(layers, params, state, z0, **kw)
        losses.append(float(_loss(layers, params, z0)))
    assert all(b <= a for a, b in zip(losses[:-1], losses[1:])), losses
    assert losses[-1] < losses[0]


def test_ggn_needs_a_parameter_free_loss_layer():
    layers, params, z0 = quadratic_problem(0)
    opt = gauss_newton(layers)
    with pytest.raises(hessinv.PipelineError, match="parameter-free loss"):
        opt.update(params, opt.init(params), params, z0=z0)


# -- Levenberg-Marquardt and trust region -----------------------------------------------------

LM_KW = dict(damping="lm", init_damping=0.5, decrease_factor=0.25, lm_retries=0)  # one damping per update


def test_lm_rejected_step_leaves_params_unchanged_and_raises_damping():
    # An uphill "gradient" (the negated one) makes the step increase the loss: it must be rejected.
    layers, params, z0 = quadratic_problem(2)
    _, update = _opt(layers, **LM_KW)
    g = jax.tree.map(lambda a: -a, _grad(layers, params, z0))
    updates, state = update(g, _init(layers, params, **LM_KW), params, z0=z0)
    new = optax.apply_updates(params, updates)
    s = _ns(state)
    assert not bool(s.info.accepted) and float(s.info.trial_loss) > float(s.info.loss)
    assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))
    np.testing.assert_array_equal(_flat(new), _flat(params))
    # The probe tried 0.5 · probe_factor in the same update, was rejected too, and λ rose from 0.5.
    assert int(s.info.iterations) == 2 and float(s.info.damping) == pytest.approx(0.5e-3)
    assert float(s.damping) == pytest.approx(2.0) and int(s.rejections) == 1
    # Within a streak of rejections there is no probe: one factorisation, and λ rises again.
    updates, state = update(g, state, params, z0=z0)
    s = _ns(state)
    assert not bool(s.info.accepted) and all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))
    assert int(s.info.iterations) == 1 and float(s.info.damping) == pytest.approx(2.0)
    assert float(s.damping) == pytest.approx(8.0) and int(s.rejections) == 2


def test_lm_retries_raise_the_damping_within_one_update():
    """``lm_retries``: a rejected step is tried again at ``λ·4``, ``λ·16``, … in the same update;
    when every try fails the update is zero and the next starts above the last ``λ`` tried."""
    layers, params, z0 = quadratic_problem(2)
    kw = dict(LM_KW, lm_retries=3)
    _, update = _opt(layers, **kw)
    g = jax.tree.map(lambda a: -a, _grad(layers, params, z0))  # uphill: every damping is rejected
    updates, state = update(g, _init(layers, params, **kw), params, z0=z0)
    s = _ns(state)
    assert not bool(s.info.accepted) and all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))
    # λ = 0.5, the probe at 0.5e-3, then 2, 8 and 32: five factorisations; the next update starts at 128.
    assert int(s.info.iterations) == 5 and float(s.info.damping) == pytest.approx(32.0)
    assert float(s.damping) == pytest.approx(128.0) and int(s.rejections) == 1


@pytest.mark.parametrize("method", ["riccati", "dense", "gauss_newton"])
def test_lm_retries_take_the_accepted_steps_of_plain_lm_in_fewer_updates(method):
    """With retries, LM takes the same accepted steps as without (the rejected updates of plain
    LM are merged into the next accepted one), each the exact ``(G + λI)^{-1} g`` at its λ with
    the predicted decrease ``gᵀd − ½ dᵀGd`` of the dense ``G``, on every route."""
    layers, params, z0 = tanh_net(0)
    base = dict(curvature="ggn", method=method, init_damping=1e-3)

    def run(n_updates, **kw):
        p, state, out = params, _init(layers, params, **base, **kw), []
        for _ in range(n_updates):
            g = _grad(layers, p, z0)
            p_new, _, state = _step(layers, p, state, z0, **base, **kw)
            out.append((p, g, _ns(state).info))
            p = p_new
        return out

    plain = run(10, lm_retries=0)
    accepted = [(p, g, i) for p, g, i in plain if bool(i.accepted)]
    assert len(accepted) < len(plain)  # plain LM rejected some updates here
    retried = run(len(accepted), lm_retries=8)
    assert all(bool(i.accepted) for _, _, i in retried)
    last = max(k for k, (_, _, i) in enumerate(plain) if bool(i.accepted))
    assert sum(int(i.iterations) for _, _, i in retried) == sum(int(i.iterations) for _, _, i in plain[: last + 1])
    for (p0, _, i0), (p, g, i) in zip(accepted, retried):
        np.testing.assert_allclose(_flat(p), _flat(p0), rtol=1e-9, atol=1e-12)
        assert float(i.damping) == pytest.approx(float(i0.damping), rel=1e-12)
        G, gf = _dense_ggn(p, z0), _flat(g)
        d = jnp.linalg.solve(G + float(i.damping) * jnp.eye(G.shape[0]), gf)
        np.testing.assert_allclose(float(i.step_norm), float(jnp.linalg.norm(d)), rtol=1e-8)
        np.testing.assert_allclose(float(i.predicted_decrease), float(gf @ d - 0.5 * d @ G @ d), rtol=1e-8)


# (a, b, λ0, λ0's step, which step the update keeps): the perturbed gradient is a·v_min + b·v_max.
PROBE_CASES = [
    (1.0, -2.0, 10.0, "rejected", "probe"),  # loss rises along g~, falls along (H + small λ)^{-1} g~
    (1.0, -2.0, 0.3, "poor", "probe"),  # accepted with ρ < 0.25; the probe's step is better
    (-1.0, 2.0, 100.0, "poor", "first"),  # accepted with ρ < 0.25; the probe's step is rejected
]


@pytest.mark.parametrize("a, b, lam0, first, kept", PROBE_CASES)
def test_lm_probe_tries_a_smaller_damping_where_lm_would_raise_it(a, b, lam0, first, kept):
    # On a strictly convex quadratic with minimiser x*, start at x0 = x* + H^{-1}(v_min + v_max),
    # where the gradient is v_min + v_max (eigenvectors of the smallest and largest eigenvalue),
    # and pass the perturbed gradient g~ = a v_min + b v_max. Then the ratio of actual to predicted
    # decrease is not monotone in λ (for a = 1, b = -2 it is negative at λ = 10 and 0.45 at
    # λ = 0.01), which is the case the probe is for. Everything is checked densely.
    layers, params, z0 = quadratic_problem(0)
    H = np.asarray(_hessian(layers, params, z0))
    x, unravel = ravel_pytree(params)
    _, V = np.linalg.eigh(H)
    v_min, v_max = V[:, 0], V[:, -1]
    x0 = (
        np.asarray(x)
        - np.linalg.solve(H, np.asarray(_flat(_grad(layers, params, z0))))
        + np.linalg.solve(H, v_min + v_max)
    )
    params0 = unravel(jnp.asarray(x0))
    np.testing.assert_allclose(_flat(_grad(layers, params0, z0)), v_min + v_max, atol=1e-12)
    g_flat = a * v_min + b * v_max
    g = unravel(jnp.asarray(g_flat))
    loss0 = float(_loss(layers, params0, z0))

    def dense(lam):  # the step, its ratio and the loss change, densely
        d = np.linalg.solve(H + lam * np.eye(len(x0)), g_flat)
        pred = g_flat @ d - 0.5 * d @ H @ d
        change = float(_loss(layers, unravel(jnp.asarray(x0 - d)), z0)) - loss0
        return d, -change / pred, change

    factor = 1e-3
    lam_p = lam0 * factor
    _, rho0, change0 = dense(lam0)
    d_p, rho_p, change_p = dense(lam_p)
    # The premises, densely.
    assert (rho0 < 0) if first == "rejected" else (0 < rho0 < 0.25)
    assert (0 < rho_p and change_p < change0) if kept == "probe" else rho_p < 0
    # Classic LM (no probe): one factorisation; λ rises, and a rejected step is not applied.
    kw = dict(damping="lm", init_damping=lam0, probe_factor=None, lm_retries=0)
    new, _, state = _step(layers, params0, _init(layers, params0, **kw), z0, g=g, **kw)
    s = _ns(state)
    assert int(s.info.iterations) == 1 and float(s.damping) == pytest.approx(4 * lam0)
    assert bool(s.info.accepted) == (first == "poor")
    # With the probe: two factorisations in the same update, and the better step is kept.
    kw = dict(damping="lm", init_damping=lam0, probe_factor=factor)
    new, updates, state = _step(layers, params0, _init(layers, params0, **kw), z0, g=g, **kw)
    s = _ns(state)
    assert bool(s.info.accepted) and int(s.info.iterations) == 2 and int(s.rejections) == 0
    lam_kept = lam_p if kept == "probe" else lam0
    d_ref, rho_ref, change_ref = dense(lam_kept)
    assert float(s.info.damping) == pytest.approx(lam_kept)
    np.testing.assert_allclose(-_flat(updates), d_ref, rtol=1e-9, atol=1e-12)
    assert float(s.info.ratio) == pytest.approx(rho_ref, rel=1e-8)
    assert float(_loss(layers, new, z0)) - loss0 == pytest.approx(change_ref, rel=1e-8) and change_ref < 0
    # The damping rule (the default threshold rule), applied to the step kept: the probe's
    # ρ = 0.45 keeps λ; a poor ρ raises it.
    assert float(s.damping) == pytest.approx(lam_kept if 0.25 <= rho_ref <= 0.75 else 4 * lam_kept)


def test_lm_damping_falls_on_success():
    layers, params, z0 = quadratic_problem(3)
    new, _, state = _step(layers, params, _init(layers, params, **LM_KW), z0, **LM_KW)
    s = _ns(state)
    assert bool(s.info.accepted) and float(s.info.ratio) > 0.75
    assert float(_loss(layers, new, z0)) < float(_loss(layers, params, z0))
    assert float(s.damping) == pytest.approx(0.5 * 0.25)


def _lm_reference(rule, accepted, rho, pd, lam_step, lam, up=4.0, down=1 / 3):
    """Levenberg-Marquardt's next λ, written out case by case."""
    if not accepted:
        return lam * up
    if rho < 0.25:
        return lam_step * up
    if rule == "threshold":
        return lam_step * (down if rho > 0.75 and pd else 1.0)
    factor = max(down, 1 - (2 * min(rho, 1.0) - 1) ** 3)
    return lam_step * (factor if pd else max(factor, 1.0))


@pytest.mark.parametrize("rule", ["nielsen", "threshold"])
def test_lm_damping_rules_case_by_case(rule):
    from hessinv import _optax_damping, _optax_health, _optax_step

    rhos = [-1.0, 0.0, 0.1, 0.2499, 0.25, 0.3, 0.5, 0.6, 0.75, 0.76, 0.9, 0.95, 1.0, 3.0]
    for rho in rhos:
        for accepted in (True, False):
            for pd in (True, False):
                health = _optax_health.Health(jnp.array(pd), jnp.array(0), jnp.array(1.0), jnp.array(True))
                t = _optax_step.Trial(
                    jnp.array(0.2), [], jnp.array(0.0), jnp.array(1.0), jnp.array(rho), jnp.array(accepted),
                    jnp.array(1.0), health,
                )  # fmt: skip
                got = _optax_damping.lm_damping(
                    t, jnp.array(2.0), increase_factor=4.0, decrease_factor=1 / 3, min_damping=1e-9,
                    max_damping=1e10, update=rule,
                )  # fmt: skip
                want = _lm_reference(rule, accepted, rho, pd, 0.2, 2.0)
                assert float(got) == pytest.approx(want, rel=1e-12), (rho, accepted, pd)
    # Nielsen's factor: 1 at ρ = ½, 1.125 at ρ = 0.25, the floor from ρ ≈ 0.94.
    f = _optax_damping.nielsen_factor
    assert [float(f(jnp.array(r), 1 / 3)) for r in (0.5, 0.25, 0.95)] == pytest.approx([1.0, 1.125, 1 / 3])


def test_lm_update_is_validated():
    layers, _, _ = quadratic_problem(0)
    with pytest.raises(ValueError, match="lm_update"):
        scale_by_newton(layers, lm_update="moré")
    with pytest.raises(ValueError, match="lm_update"):
        hessinv.optax.stochastic_gauss_newton(layers, {}, lm_update=None)


@pytest.mark.parametrize("retries", [0, 8])
def test_lm_on_an_indefinite_hessian_never_increases_the_loss(retries):
    layers, params, z0 = indefinite_problem()
    kw = dict(damping="lm", init_damping=1e-3, lm_retries=retries)
    state, loss = _init(layers, params, **kw), float(_loss(layers, params, z0))
    n_accepted = n_rejected = 0
    for _ in range(12):
        new, _, state = _step(layers, params, state, z0, **kw)
        s = _ns(state)
        new_loss = float(_loss(layers, new, z0))
        if bool(s.info.accepted):
            n_accepted += 1
            assert new_loss < loss
            if float(s.info.ratio) > 0.75 and bool(s.info.positive_definite):
                assert float(s.damping) < float(s.info.damping)  # falls on success (convex model)
            elif not bool(s.info.positive_definite):
                assert float(s.damping) >= float(s.info.damping)  # never falls while nonconvex
        else:
            n_rejected += 1
            np.testing.assert_array_equal(_flat(new), _flat(params))
            assert float(s.damping) > float(s.info.damping)  # rises on rejection
        if retries:  # the rejections of plain LM became retries in the update (more factorisations)
            assert bool(s.info.accepted) or int(s.info.iterations) > retries
        params, loss = new, new_loss
    assert n_accepted >= 3 and n_rejected >= (0 if retries else 1)


@pytest.mark.parametrize("lam", [1e-3, 0.3, 5.0])
def test_inertia_diagnostics_match_dense_eigenvalues(lam):
    layers, params, z0 = indefinite_problem()
    kw = dict(damping=lam, inertia=True)
    _, _, state = _step(layers, params, _init(layers, params, **kw), z0, **kw)
    info = _ns(state).info
    H = np.asarray(_hessian(layers, params, z0))
    ev = np.linalg.eigvalsh(H + lam * np.eye(H.shape[0]))
    assert int(info.n_neg) == int(np.sum(ev < 0))
    assert bool(info.positive_definite) == bool(ev.min() > 0)
    # Without inertia=True, only positive definiteness is known (Cholesky of the pivots).
    kw = dict(damping=lam)
    _, _, state = _step(layers, params, _init(layers, params, **kw), z0, **kw)
    assert bool(_ns(state).info.positive_definite) == bool(ev.min() > 0)
    assert int(_ns(state).info.n_neg) == (0 if ev.min() > 0 else -1)


TR_KW = dict(damping="trust_region")


@pytest.mark.parametrize("method", ["riccati", "dense"])
@pytest.mark.parametrize("radius", [1e-3, 0.05, 0.5])
def test_trust_region_step_is_within_the_radius(radius, method):
    """On either route that takes an indefinite Hessian: the search runs on that route's
    factorisations (the stage recursion on kept blocks, or Cholesky of the dense matrix)."""
    layers, params, z0 = indefinite_problem()
    kw = dict(TR_KW, method=method)
    state = _init(layers, params, **kw)
    state = (_ns(state)._replace(radius=jnp.asarray(radius)),) + state[1:]
    g = _grad(layers, params, z0)
    _, updates, state = _step(layers, params, state, z0, **kw)
    info = _ns(state).info
    d = -_flat(updates)
    assert float(info.step_norm) <= radius * (1 + 1e-12)
    assert float(jnp.linalg.norm(d)) <= radius * (1 + 1e-12)
    # H is indefinite here, so the step is on the boundary, at a λ making H + λI ≻ 0 ...
    assert float(info.step_norm) >= 0.9 * radius
    H = np.asarray(_hessian(layers, params, z0))
    lam = float(info.damping)
    assert np.linalg.eigvalsh(H).min() < 0
    assert np.linalg.eigvalsh(H + lam * np.eye(H.shape[0])).min() > 0
    # ... and it is exactly (H + λI)^{-1} g at that λ, when accepted.
    if bool(info.accepted):
        np.testing.assert_allclose(d, np.linalg.solve(H + lam * np.eye(H.shape[0]), _flat(g)), rtol=1e-8)
    else:
        assert np.all(d == 0)


@pytest.mark.parametrize("method", ["riccati", "dense", "gauss_newton"])
def test_gauss_newton_trust_region_on_every_route(method):
    """The same trust-region step on every route (the output space needs ``λ > 0``: a floor):
    on the boundary, exactly ``(G + λI)^{-1} g`` at the ``λ`` found, and the same ``λ``."""
    layers, params, z0 = tanh_net(0)
    G = np.asarray(_dense_ggn(params, z0))
    kw = dict(TR_KW, curvature="ggn", method=method, min_damping=1e-6)
    g = _grad(layers, params, z0)
    d_newton = np.linalg.solve(G + 1e-6 * np.eye(len(G)), _flat(g))
    radius = 0.3 * np.linalg.norm(d_newton)
    state = _init(layers, params, **kw)
    state = (_ns(state)._replace(radius=jnp.asarray(radius)),) + state[1:]
    _, updates, state = _step(layers, params, state, z0, **kw)
    info = _ns(state).info
    lam = float(info.damping)
    assert bool(info.positive_definite) and lam > 1e-6
    assert 0.9 * radius <= float(info.step_norm) <= radius * (1 + 1e-12)
    d = -_flat(updates) if bool(info.accepted) else None
    if d is not None:
        np.testing.assert_allclose(d, np.linalg.solve(G + lam * np.eye(len(G)), _flat(g)), rtol=1e-8)
    kw_ref = dict(kw, method="dense")
    state_ref = (_ns(_init(layers, params, **kw_ref))._replace(radius=jnp.asarray(radius)),) + state[1:]
    _, _, state_ref = _step(layers, params, state_ref, z0, **kw_ref)
    assert abs(float(_ns(state_ref).info.damping) - lam) <= 1e-8 * lam


def test_trust_region_iterations_respect_the_radius_and_descend():
    layers, params, z0 = tanh_net(4)
    state, loss = _init(layers, params, **TR_KW), float(_loss(layers, params, z0))
    for _ in range(8):
        radius = float(_ns(state).radius)
        new, updates, state = _step(layers, params, state, z0, **TR_KW)
        s = _ns(state)
        assert float(jnp.linalg.norm(_flat(updates))) <= radius * (1 + 1e-12)
        new_loss = float(_loss(layers, new, z0))
        if bool(s.info.accepted):
            assert new_loss < loss
        else:
            np.testing.assert_array_equal(_flat(new), _flat(params))
            assert float(s.radius) < radius  # the radius shrinks on rejection
        params, loss = new, new_loss


def test_trust_region_takes_the_plain_newton_step_inside_the_radius():
    layers, params, z0 = quadratic_problem(5)
    H = _hessian(layers, params, z0)
    x_star = _flat(params) - jnp.linalg.solve(H, _flat(_grad(layers, params, z0)))
    state = _init(layers, params, **TR_KW)
    big = 10 * jnp.linalg.norm(x_star - _flat(params))
    state = (_ns(state)._replace(radius=big),) + state[1:]
    new, _, state = _step(layers, params, state, z0, **TR_KW)
    s = _ns(state)
    # From the warm start λ = init_damping the search finds no boundary root and tries λ = 0.
    assert bool(s.info.accepted) and float(s.info.damping) == 0.0 and int(s.info.iterations) <= 3
    np.testing.assert_allclose(_flat(new), x_star, rtol=1e-10)


# -- optax conventions ------------------------------------------------------------------------


def test_unknown_extra_args_are_ignored_and_tuple_params_keep_their_structure():
    layers, params, z0 = quadratic_problem(0)
    opt, update = _opt(layers, damping=0.0)
    state = opt.init(params)
    g = _grad(layers, params, z0)
    u1, _ = update(g, state, params, z0=z0)
    with_extras = jax.jit(lambda g, s, p, z0: opt.update(g, s, p, z0=z0, grad=g, value_fn=None, some_other_arg="x"))
    u2, _ = with_extras(tuple(g), state, tuple(params), z0)
    assert jax.tree.structure(u2) == jax.tree.structure(tuple(params))
    np.testing.assert_allclose(_flat(u1), _flat(u2), rtol=1e-12)


@pytest.mark.parametrize("kw", [dict(curvature="ggn", method="gauss_newton"), dict(damping="trust_region")])
def test_value_is_the_loss_it_saves_a_forward_pass_for(kw):
    """``value=`` (the loss at ``params``, e.g. from ``jax.value_and_grad``, as optax's L-BFGS
    takes it) gives the same update and state as the optimiser's own forward pass."""
    layers, params, z0 = tanh_net(3)
    opt = newton(layers, **kw)
    v, g = jax.value_and_grad(lambda p: hessinv.loss(layers, p, z0))(params)
    u1, s1 = jax.jit(lambda g, s, p, z0: opt.update(g, s, p, z0=z0))(g, opt.init(params), params, z0)
    u2, s2 = jax.jit(lambda g, s, p, z0, v: opt.update(g, s, p, z0=z0, value=v))(g, opt.init(params), params, z0, v)
    np.testing.assert_allclose(_flat(u2), _flat(u1), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(float(_ns(s2).info.loss), float(v), rtol=1e-15)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), _ns(s1).info, _ns(s2).info))
    with pytest.raises(ValueError, match="value must be the scalar loss"):
        opt.update(g, opt.init(params), params, z0=z0, value=jnp.ones(2))


def test_update_needs_params_and_z0():
    layers, params, z0 = quadratic_problem(0)
    opt = newton(layers)
    with pytest.raises(ValueError, match="z0"):
        opt.update(params, opt.init(params), params)
    with pytest.raises(ValueError, match="params"):
        opt.update(params, opt.init(params), z0=z0)


def test_works_inside_optax_chain():
    layers, params, z0 = tanh_net(5)
    kw = dict(curvature="ggn", init_damping=0.3)
    chained = optax.chain(optax.identity(), scale_by_newton(layers, **kw), optax.scale(-0.5))
    assert isinstance(chained, optax.GradientTransformationExtraArgs)
    g = _grad(layers, params, z0)
    u_ch, s_ch = jax.jit(lambda g, s, p, z0: chained.update(g, s, p, z0=z0, unused=3))(
        g, chained.init(params), params, z0
    )
    _, u_ref, _ = _step(layers, params, _init(layers, params, **kw), z0, **kw)  # newton(..., learning_rate=1)
    np.testing.assert_allclose(_flat(u_ch), 0.5 * _flat(u_ref), rtol=1e-12)
    # The diagnostics are found by name in any chain.
    assert isinstance(optax.tree_utils.tree_get(s_ch, "info"), NewtonInfo)


@pytest.mark.parametrize(
    "dtype, kw",
    [(jnp.float32, dict(damping="lm")), (jnp.float64, dict(damping="trust_region", curvature="ggn"))],
)
def test_jit_update_is_traced_once_with_stable_state(dtype, kw):
    layers, params, z0 = tanh_net(7, dtype)
    opt = newton(layers, **kw)
    traces = []

    def update(g, state, params, z0):
        traces.append(1)  # a Python side effect: runs once per trace, not per call
        return opt.update(g, state, params, z0=z0)

    jupdate = jax.jit(update)
    state = opt.init(params)
    struct = jax.tree.map(lambda a: (jnp.shape(a), jnp.result_type(a)), state)
    assert _ns(state).damping.dtype == dtype
    for _ in range(3):
        updates, state = jupdate(_grad(layers, params, z0), state, params, z0)
        params = optax.apply_updates(params, updates)
        assert jax.tree.map(lambda a: (jnp.shape(a), jnp.result_type(a)), state) == struct
        assert jax.tree.map(jnp.result_type, updates) == jax.tree.map(jnp.result_type, params)
    assert len(traces) == 1 and jupdate._cache_size() == 1
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(params))


def test_invalid_hyperparameters_raise():
    with pytest.raises(ValueError, match="curvature"):
        scale_by_newton(QUAD, curvature="fisher")
    with pytest.raises(ValueError, match="damping"):
        scale_by_newton(QUAD, damping="adaptive")
    with pytest.raises(ValueError, match="damping"):
        scale_by_newton(QUAD, damping=-1.0)
    with pytest.raises(ValueError, match="increase_factor"):
        scale_by_newton(QUAD, increase_factor=0.5)
    with pytest.raises(TypeError, match="sequence"):
        scale_by_newton(q_affine)
    with pytest.raises(ValueError, match="lm_retries"):
        scale_by_newton(QUAD, lm_retries=-1)
