"""Tests of the stochastic mode of hessinv.optax: one factorisation of ``C_b + λI`` on a batch,
reused for the gradients of later batches.

The references are independent of the engine: a dense Gauss-Newton matrix ``Jᵀ ∇²ℓ J`` from
``jax.jacobian`` / ``jax.hessian`` on the flat parameters (``jax.flatten_util.ravel_pytree``),
``hessinv.hessian`` for the Hessian, and ``jnp.linalg.solve``. As in test_optax.py the layer
functions live at module level and every optimiser is built and jitted once per configuration.
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
from hessinv.optax import (  # noqa: E402
    ScaleByStochasticNewtonState,
    gauss_newton,
    scale_by_stochastic_newton,
    stochastic_gauss_newton,
)

# -- a small digits-like classifier: 6 features, 3 classes, tanh MLP 6 -> 5 -> 3 --------------


def c_hidden(z, x):
    X, y = z
    return (jnp.tanh(X @ x["W"] + x["b"]), y)


def c_logits(z, x):
    h, y = z
    return (h @ x["W"] + x["b"], y)


def c_xent(z, _):
    o, y = z
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(o), y[:, None], axis=1))


LAYERS = (c_hidden, c_logits, c_xent)
N_DATA, BATCH = 96, 24


def classifier(seed=0):
    """Initial params and the data set (labels from a random teacher)."""
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    X = jax.random.normal(k[0], (N_DATA, 6))
    y = jnp.argmax(X @ jax.random.normal(k[1], (6, 3)), axis=1).astype(jnp.int32)
    params = [
        dict(W=jax.random.normal(k[2], (6, 5)) / np.sqrt(6), b=jnp.zeros(5)),
        dict(W=jax.random.normal(k[3], (5, 3)) / np.sqrt(5), b=jnp.zeros(3)),
        {},
    ]
    return params, (X, y)


def batch(data, i):
    """Batch ``i`` of the data, cycling through it (a fresh batch on every update)."""
    lo = BATCH * (i % (N_DATA // BATCH))
    return jax.tree.map(lambda a: a[lo : lo + BATCH], data)


_loss = jax.jit(lambda p, z0: hessinv.loss(LAYERS, p, z0))
_grad = jax.jit(jax.grad(lambda p, z0: hessinv.loss(LAYERS, p, z0)))


def _flat(tree):
    return ravel_pytree(list(tree))[0]


@jax.jit
def _dense_ggn(params, z0):
    """``Jᵀ ∇²ℓ J``, ``J`` the Jacobian of the logits in the flat params."""
    x, unravel = ravel_pytree(params)

    def logits(t):
        p = unravel(t)
        return c_logits(c_hidden(z0, p[0]), p[1])[0]

    J = jax.jacobian(logits)(x).reshape(-1, x.size)
    o = logits(x)
    Hl = jax.hessian(lambda o: c_xent((o, z0[1]), {}))(o).reshape(o.size, o.size)
    return J.T @ Hl @ J


_hessian = jax.jit(hessinv.hessian, static_argnums=0)


def _dense_step(params, z0, g, lam, curvature):
    """``(C + λI)^{-1} g`` with ``C`` at ``(params, z0)``, densely."""
    C = _dense_ggn(params, z0) if curvature == "ggn" else _hessian(LAYERS, params, z0)
    return jnp.linalg.solve(C + lam * jnp.eye(C.shape[0]), _flat(g))


@functools.lru_cache(maxsize=None)
def _opt(stochastic=True, **kwargs):
    """The optimiser (learning rate 1) and its jitted update, built once per configuration."""
    _, data = classifier()
    if stochastic and "curvature" not in kwargs:
        opt = stochastic_gauss_newton(LAYERS, batch(data, 0), **kwargs)
    elif stochastic:
        opt = optax.chain(
            scale_by_stochastic_newton(LAYERS, batch(data, 0), **kwargs), optax.scale_by_learning_rate(1.0)
        )
    else:
        opt = gauss_newton(LAYERS, **kwargs)
    return opt, jax.jit(opt.update)


def _ss(state) -> ScaleByStochasticNewtonState:
    return optax.tree_utils.tree_get(state, "ScaleByStochasticNewtonState")


def _run(n, *, g_fn=None, stochastic=True, seed=0, **kwargs):
    """``n`` updates on fresh batches; per update ``(params, batch, grad, updates, state)``."""
    opt, update = _opt(stochastic, **kwargs)
    params, data = classifier(seed)
    state, out = opt.init(params), []
    for i in range(n):
        z0 = batch(data, i)
        g = _grad(params, z0) if g_fn is None else g_fn(i, params, z0)
        updates, state = update(g, state, params, z0=z0)
        out.append((params, z0, g, updates, state))
        params = optax.apply_updates(params, updates)
    return out, params


# -- exactness --------------------------------------------------------------------------------


@pytest.mark.parametrize("damping, method", [(0.5, "riccati"), ("lm", "auto")])
def test_refresh_every_update_equals_the_per_step_exact_solve(damping, method):
    """``refresh_every=1`` is the per-step exact solve of gauss_newton (classic LM: no probe):
    the same updates, damping and verdicts, batch after batch (the LM run rejects its last
    step). On the stage recursion gauss_newton solves in one pass and the stochastic mode
    factorises the kept blocks: the same numbers to rounding."""
    kw = dict(damping=damping, init_damping=0.5, method=method)
    ours, _ = _run(5, refresh_every=1, **kw)
    ref, _ = _run(5, stochastic=False, probe_factor=None, lm_retries=0, **kw)
    for (p, _, _, u, s), (p_ref, _, _, u_ref, s_ref) in zip(ours, ref):
        np.testing.assert_allclose(_flat(p), _flat(p_ref), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(_flat(u), _flat(u_ref), rtol=1e-9, atol=1e-12)
        info, info_ref = _ss(s).info, optax.tree_utils.tree_get(s_ref, "info")
        assert bool(info.accepted) == bool(info_ref.accepted) and int(info.iterations) == 1
        assert float(info.damping) == pytest.approx(float(info_ref.damping), rel=1e-12)
        lam_ref = optax.tree_utils.tree_get(s_ref, "ScaleByNewtonState").damping
        assert float(_ss(s).damping) == pytest.approx(float(lam_ref), rel=1e-12)
    accepted = [bool(_ss(s).info.accepted) for *_, s in ours]
    assert any(accepted) and (all(accepted) if damping == 0.5 else not all(accepted))


@pytest.mark.parametrize(
    "curvature, method", [("ggn", "riccati"), ("ggn", "dense"), ("ggn", "gauss_newton"), ("hessian", "riccati")]
)
def test_stored_factorisation_solves_the_new_gradient(curvature, method):
    """Updates 1 and 2 reuse the factorisation made on batch 0 at the initial params:
    ``d = (C_0 + λI)^{-1} g_k``, ``g_k`` the gradient at the current params on batch ``k``;
    update 3 refactorises on its own params and batch."""
    lam = 2.0
    out, _ = _run(4, refresh_every=3, damping=lam, curvature=curvature, method=method)
    p0, z0, *_ = out[0]
    for k, (p, z, g, updates, state) in enumerate(out):
        info = _ss(state).info
        assert bool(info.accepted) and bool(info.positive_definite), (k, info)
        assert int(info.iterations) == (1 if k in (0, 3) else 0)
        ref = _dense_step(p0, z0, g, lam, curvature) if k < 3 else _dense_step(p, z, g, lam, curvature)
        np.testing.assert_allclose(-_flat(updates), ref, rtol=1e-9, atol=1e-12)
        if 0 < k < 3:  # a stale step: not the fresh one
            assert float(jnp.linalg.norm(ref - _dense_step(p, z, g, lam, curvature))) > 1e-6
    assert int(_ss(out[-1][-1]).age) == 1


def test_a_rejected_step_refactorises_at_a_larger_damping():
    """An uphill "gradient" on update 1 makes the stale step rejected: the update is zero, λ
    rises (LM) and update 2 refactorises, on its own batch, at the raised λ."""
    flip = lambda i, p, z0: jax.tree.map(lambda a: -a if i == 1 else a, _grad(p, z0))  # noqa: E731
    out, _ = _run(3, g_fn=flip, refresh_every=5, damping="lm", init_damping=0.5)
    s0, s1, s2 = (_ss(o[-1]) for o in out)
    assert bool(s0.info.accepted) and int(s0.info.iterations) == 1
    assert not bool(s1.info.accepted) and int(s1.info.iterations) == 0 and int(s1.rejections) == 1
    assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(out[1][3]))
    assert float(s1.damping) == pytest.approx(4 * float(s1.info.damping))
    assert int(s2.info.iterations) == 1 and int(s2.age) == 1
    assert float(s2.info.damping) == pytest.approx(float(s1.damping))
    p2, z2, g2, u2, _ = out[2]
    ref = _dense_step(p2, z2, g2, float(s1.damping), "ggn")
    np.testing.assert_allclose(-_flat(u2), ref if bool(s2.info.accepted) else 0 * ref, rtol=1e-9, atol=1e-12)


# -- training ---------------------------------------------------------------------------------


def test_training_on_fresh_batches_decreases_the_loss():
    """Twelve updates on fresh batches, refactorising every fourth (or after a rejection): the
    loss on the whole data set falls, most updates reuse the factorisation, and no accepted step
    raises its own batch's loss."""
    out, params = _run(12, refresh_every=4, damping="lm", init_damping=1.0)
    _, data = classifier()
    p0 = out[0][0]
    assert float(_loss(params, data)) < 0.5 * float(_loss(p0, data))
    infos = [_ss(o[-1]).info for o in out]
    assert sum(int(i.iterations) for i in infos) <= 6
    for i in infos:
        if bool(i.accepted):
            assert float(i.trial_loss) < float(i.loss)
    assert sum(bool(i.accepted) and int(i.iterations) == 0 for i in infos) >= 4


# -- optax conventions ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_jit_update_is_traced_once_with_stable_state(dtype):
    """Under one ``jax.jit`` the update compiles once over refresh and reuse updates, inside a
    chain with extra args, and the state (the stored factorisation included) keeps its shapes
    and the params' dtype from ``init`` on."""
    params, data = classifier()
    params = jax.tree.map(lambda a: a.astype(dtype), params)
    data = (data[0].astype(dtype), data[1])
    opt = optax.chain(
        optax.identity(),
        scale_by_stochastic_newton(LAYERS, jax.eval_shape(lambda: batch(data, 0)), refresh_every=2, damping=1.0),
        optax.scale(-1.0),
    )
    traces = []

    def update(g, state, params, z0):
        traces.append(1)  # a Python side effect: runs once per trace, not per call
        return opt.update(g, state, params, z0=z0, unused="x")

    jupdate = jax.jit(update)

    def struct(state):  # the factorisation has no __eq__: compare its tree and leaves
        leaves, treedef = jax.tree.flatten(state)
        return treedef, [(jnp.shape(a), jnp.result_type(a)) for a in leaves]

    state = opt.init(params)
    struct0 = struct(state)
    refreshed = []
    for i in range(4):
        z0 = batch(data, i)
        updates, state = jupdate(_grad(params, z0), state, params, z0)
        params = optax.apply_updates(params, updates)
        assert struct(state) == struct0
        refreshed.append(int(optax.tree_utils.tree_get(state, "info").iterations))
    assert len(traces) == 1 and jupdate._cache_size() == 1
    assert refreshed == [1, 0, 1, 0]
    assert _ss(state).damping.dtype == dtype and jax.tree.map(jnp.result_type, updates) == jax.tree.map(
        jnp.result_type, params
    )
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(params))


def test_invalid_hyperparameters_raise():
    params, data = classifier()
    with pytest.raises(ValueError, match="damping"):
        scale_by_stochastic_newton(LAYERS, batch(data, 0), damping="trust_region")
    with pytest.raises(ValueError, match="refresh_every"):
        scale_by_stochastic_newton(LAYERS, batch(data, 0), refresh_every=0)
    with pytest.raises(ValueError, match="curvature"):
        scale_by_stochastic_newton(LAYERS, batch(data, 0), curvature="fisher")
    with pytest.raises(TypeError, match="sequence"):
        scale_by_stochastic_newton(c_xent, batch(data, 0))
    opt = scale_by_stochastic_newton(LAYERS, batch(data, 0))
    with pytest.raises(ValueError, match="z0"):
        opt.update(params, opt.init(params), params)
