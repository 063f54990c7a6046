"""Equinox and Flax models as pipelines: the same loss, ihvp against the dense solve of the model's
own Hessian, identical layers stacked, and clear errors for what is not supported.

The reference never goes through the adapters: it flattens the model's own parameters
(``eqx.filter``, ``nnx.state``, ``variables["params"]``) with ``ravel_pytree`` and takes
``jax.hessian`` of the model's loss in them."""

import functools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import rel_err
from jax.flatten_util import ravel_pytree

import hessinv

eqx = pytest.importorskip("equinox")
nnx = pytest.importorskip("flax.nnx")
nn = pytest.importorskip("flax.linen")

ihvp = functools.partial(hessinv.ihvp, method="riccati")  # the stage recursion, not the dense route
F64 = jnp.float64
B, DAMPING = 6, 0.1


def xent(logits, y):
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(y.shape[0]), y])


def mse(out, y):
    return 0.5 * jnp.mean((out - y) ** 2)


# Random numbers from numpy: jax.random would compile a sampler for every shape.
def _data(d_in, classes=None, d_out=2):
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.standard_normal((B, d_in)))
    y = jnp.arange(B, dtype=jnp.int32) % classes if classes else jnp.asarray(rng.standard_normal((B, d_out)))
    return x, y


def _like(tree, seed=0):
    rng = np.random.default_rng(100 + seed)
    return jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(jnp.shape(a)), a.dtype), tree)


# -- the models and their own losses, in their own flattened parameters ---------------------------


def _eqx_forward(model, x):
    if isinstance(model, (list, tuple)):
        for m in model:
            x = jax.vmap(m)(x)
        return x
    return jax.vmap(model)(x)


def _eqx_ref(model, loss, x, y):
    theta, unravel = ravel_pytree(eqx.filter(model, eqx.is_inexact_array))
    static = eqx.filter(model, eqx.is_inexact_array, inverse=True)
    return theta, lambda t: loss(_eqx_forward(eqx.combine(unravel(t), static), x), y)


def _nnx_ref(model, loss, x, y):
    graphdef, state, rest = nnx.split(model, nnx.Param, ...)
    theta, unravel = ravel_pytree(state)

    def model_loss(t):
        m = nnx.merge(graphdef, unravel(t), rest)
        if isinstance(m, (list, tuple)):
            h = x
            for layer in m:
                h = layer(h)
            return loss(h, y)
        return loss(m(x), y)

    return theta, model_loss


def _linen_ref(model, variables, loss, x, y):
    theta, unravel = ravel_pytree(variables["params"])
    return theta, lambda t: loss(model.apply({"params": unravel(t)}, x), y)


def _eqx_key(i):
    return jax.random.key(10 + i)


def _eqx_linear(i, o, k):
    return eqx.nn.Linear(i, o, key=_eqx_key(k))


def _nnx_linear(i, o, seed):
    return nnx.Linear(i, o, param_dtype=F64, rngs=nnx.Rngs(seed))


EQX_MODELS = {
    "mlp": lambda: eqx.nn.MLP(3, 2, 4, 3, activation=jnp.tanh, key=_eqx_key(0)),
    "mlp_scan": lambda: eqx.nn.MLP(3, 2, 4, 4, activation=jnp.tanh, scan=True, key=_eqx_key(1)),
    "mlp_prelu": lambda: eqx.nn.MLP(3, 2, 3, 3, activation=eqx.nn.PReLU(0.3), key=_eqx_key(2)),
    "mlp_depth0": lambda: eqx.nn.MLP(3, 2, 4, 0, key=_eqx_key(3)),
    "sequential": lambda: eqx.nn.Sequential(
        [
            _eqx_linear(3, 4, 4),
            eqx.nn.Lambda(jnp.tanh),
            _eqx_linear(4, 4, 5),
            eqx.nn.Lambda(jnp.tanh),
            _eqx_linear(4, 4, 6),
            eqx.nn.Lambda(jnp.tanh),
            _eqx_linear(4, 2, 7),
        ]
    ),
    "list": lambda: [_eqx_linear(3, 4, 8), jnp.sin, _eqx_linear(4, 2, 9)],
}


def _dense_solve(model_loss, theta, g_flat):
    H = jax.jit(jax.hessian(model_loss))(theta)
    return np.linalg.solve(H + DAMPING * np.eye(len(theta)), g_flat)


@functools.cache
def _eqx_case(kind):
    """(model, net, theta, model_loss, x) for a classifier; cached so that tests sharing a
    pipeline compile it once."""
    model = EQX_MODELS[kind]()
    x, y = _data(3, classes=2)
    net = hessinv.adapters.from_equinox(model, xent, x, y)
    return (model, net, *_eqx_ref(model, xent, x, y), x)


@pytest.mark.parametrize("kind", sorted(EQX_MODELS))
def test_equinox_loss_and_way_back_match_the_model(kind):
    model, net, theta, model_loss, x = _eqx_case(kind)
    np.testing.assert_allclose(hessinv.loss(net.layers, net.params, net.z0), model_loss(theta), rtol=1e-13)
    # to_model of the params is the model; to_updates lays arrays out like eqx.filter
    np.testing.assert_allclose(_eqx_forward(net.to_model(net.params), x), _eqx_forward(model, x), rtol=1e-13)
    assert rel_err(ravel_pytree(net.to_updates(net.params))[0], theta) == 0


@pytest.mark.parametrize("kind", ["mlp", "sequential", "list"])
def test_equinox_ihvp_matches_the_dense_solve(kind):
    _, net, theta, model_loss, _ = _eqx_case(kind)
    g = _like(net.params)
    out = ihvp(net.layers, net.params, net.z0, g, damping=DAMPING)
    ref = _dense_solve(model_loss, theta, ravel_pytree(net.to_updates(g))[0])
    assert rel_err(ravel_pytree(net.to_updates(out))[0], ref) < 1e-9


@pytest.mark.parametrize("kind", ["mlp_scan", "mlp_prelu", "mlp_depth0"])
def test_equinox_mlp_variants_hvp_matches_the_dense_hessian(kind):
    """The other MLP layouts (hidden layers scanned, a learnt activation, no hidden layer): the
    pipeline has the model's Hessian (checked by hvp, cheaper to compile than a solve)."""
    _, net, theta, model_loss, _ = _eqx_case(kind)
    v = _like(net.params)
    Hv = hessinv.hvp(net.layers, net.params, net.z0, v)
    H = jax.jit(jax.hessian(model_loss))(theta)
    assert rel_err(ravel_pytree(net.to_updates(Hv))[0], H @ ravel_pytree(net.to_updates(v))[0]) < 1e-12


def test_equinox_newton_step_applies_to_the_model():
    """``eqx.apply_updates(model, to_updates(-step))`` is one damped Newton step on the model."""
    model, net, theta, model_loss, _ = _eqx_case("sequential")
    g = jax.jit(jax.grad(lambda p: hessinv.loss(net.layers, p, net.z0)))(net.params)
    step = ihvp(net.layers, net.params, net.z0, g, damping=DAMPING)
    new = eqx.apply_updates(model, jax.tree.map(jnp.negative, net.to_updates(step)))
    ref = theta - _dense_solve(model_loss, theta, jax.grad(model_loss)(theta))
    assert rel_err(ravel_pytree(eqx.filter(new, eqx.is_inexact_array))[0], ref) < 1e-9


@pytest.mark.parametrize("scan", [False, True])
def test_deep_equinox_mlp_is_one_stack(scan):
    depth = 40
    model = eqx.nn.MLP(3, 2, 4, depth, activation=jnp.tanh, scan=scan, key=_eqx_key(20))
    x, y = _data(3, classes=2)
    net = hessinv.adapters.from_equinox(model, xent, x, y)
    assert len(net.layers) == 4  # input layer, the hidden layers, output layer, loss
    assert isinstance(net.layers[1], hessinv.Stack) and net.layers[1].depth == depth - 1
    assert net.params[1].weight.shape == (depth - 1, 4, 4)
    theta, model_loss = _eqx_ref(model, xent, x, y)
    np.testing.assert_allclose(hessinv.loss(net.layers, net.params, net.z0), jax.jit(model_loss)(theta), rtol=1e-12)
    back = eqx.filter(net.to_model(_like(net.params)), eqx.is_inexact_array)
    assert jax.tree.structure(back) == jax.tree.structure(eqx.filter(model, eqx.is_inexact_array))


def test_equinox_sequential_folds_activations_and_stacks():
    """``[Linear, tanh] * n``: each activation joins its Linear, the repeated pairs one Stack."""
    model = eqx.nn.Sequential(
        [_eqx_linear(3, 4, 0)] + [m for k in range(6) for m in (eqx.nn.Lambda(jnp.tanh), _eqx_linear(4, 4, k + 1))]
    )
    net = hessinv.adapters.from_equinox(model, mse, *_data(3, d_out=4))
    # (Linear 3 -> 4, tanh), five identical (Linear 4 -> 4, tanh), the last Linear, the loss
    assert [type(f).__name__ for f in net.layers] == ["function", "Stack", "function", "function"]
    assert net.layers[1].depth == 5 and net.layers[0].__name__ == "Linear+Lambda"


# -- Flax --------------------------------------------------------------------------------------


def _nnx_models():
    return {
        "sequential": nnx.Sequential(
            _nnx_linear(3, 4, 0), jnp.tanh, _nnx_linear(4, 4, 1), jnp.tanh, _nnx_linear(4, 4, 2), _nnx_linear(4, 2, 3)
        ),
        "list": [_nnx_linear(3, 4, 4), jnp.tanh, _nnx_linear(4, 2, 5)],
    }


@pytest.mark.parametrize("kind", ["sequential", "list"])
def test_nnx_loss_and_ihvp_match_the_model(kind):
    model = _nnx_models()[kind]
    x, y = _data(3, classes=2)
    net = hessinv.adapters.from_flax(model, xent, x, y)
    theta, model_loss = _nnx_ref(model, xent, x, y)
    np.testing.assert_allclose(hessinv.loss(net.layers, net.params, net.z0), model_loss(theta), rtol=1e-13)

    g = _like(net.params)
    out = ihvp(net.layers, net.params, net.z0, g, damping=DAMPING)
    ref = _dense_solve(model_loss, theta, ravel_pytree(net.to_updates(g))[0])
    assert rel_err(ravel_pytree(net.to_updates(out))[0], ref) < 1e-9
    # to_model puts the answer into a new model; the original keeps its parameters
    new = net.to_model(out)
    assert rel_err(ravel_pytree(nnx.state(new, nnx.Param))[0], ref) < 1e-9
    assert rel_err(ravel_pytree(nnx.state(model, nnx.Param))[0], theta) == 0


def test_deep_nnx_sequential_is_one_stack():
    depth = 30
    model = nnx.Sequential(
        _nnx_linear(3, 4, 0),
        *[m for k in range(depth) for m in (_nnx_linear(4, 4, k + 1), jnp.tanh)],
        _nnx_linear(4, 2, 99),
    )
    x, y = _data(3, classes=2)
    net = hessinv.adapters.from_flax(model, xent, x, y)
    # The first Linear 3 -> 4 differs; the 30 identical (Linear 4 -> 4, tanh) pairs are one Stack.
    assert len(net.layers) == 4 and isinstance(net.layers[1], hessinv.Stack) and net.layers[1].depth == depth
    assert net.params[1]["kernel"].shape == (depth, 4, 4)
    theta, model_loss = _nnx_ref(model, xent, x, y)
    np.testing.assert_allclose(hessinv.loss(net.layers, net.params, net.z0), jax.jit(model_loss)(theta), rtol=1e-12)


def test_linen_sequential_loss_and_ihvp_match_the_model():
    model = nn.Sequential(
        [nn.Dense(4, param_dtype=F64), nn.tanh, nn.Dense(4, param_dtype=F64), nn.Dense(2, param_dtype=F64)]
    )
    x, y = _data(3, d_out=2)
    variables = model.init(jax.random.key(0), x)
    net = hessinv.adapters.from_flax(model, mse, x, y, variables=variables)
    theta, model_loss = _linen_ref(model, variables, mse, x, y)
    np.testing.assert_allclose(hessinv.loss(net.layers, net.params, net.z0), model_loss(theta), rtol=1e-13)

    g = _like(net.params)
    out = ihvp(net.layers, net.params, net.z0, g, damping=DAMPING)
    ref = _dense_solve(model_loss, theta, ravel_pytree(net.to_updates(g))[0])
    assert rel_err(ravel_pytree(net.to_updates(out))[0], ref) < 1e-9
    assert rel_err(ravel_pytree(net.to_model(out)["params"])[0], ref) < 1e-9


def test_linen_identical_layers_stack():
    model = nn.Sequential(
        [nn.Dense(4, param_dtype=F64)] + [m for _ in range(5) for m in (nn.tanh, nn.Dense(4, param_dtype=F64))]
    )
    x, y = _data(3, d_out=4)
    net = hessinv.adapters.from_flax(model, mse, x, y, variables=model.init(jax.random.key(0), x))
    # (Dense 3 -> 4, tanh), four identical (Dense 4 -> 4, tanh), the last Dense, the loss
    assert [type(f).__name__ for f in net.layers] == ["function", "Stack", "function", "function"]
    assert net.layers[1].depth == 4


# -- what is not supported --------------------------------------------------------------------


def test_unsupported_models_raise_type_error_naming_them():
    x, y = _data(3, classes=2)
    with pytest.raises(TypeError, match=r"from_equinox expects an equinox\.nn\.Sequential.*got builtins\.dict"):
        hessinv.adapters.from_equinox({"w": jnp.ones(3)}, xent, x, y)
    with pytest.raises(TypeError, match=r"from_equinox expects .*got an empty list"):
        hessinv.adapters.from_equinox([], xent, x, y)
    with pytest.raises(TypeError, match=r"layers\[1\] is a BatchNorm, which carries state"):
        hessinv.adapters.from_equinox(
            eqx.nn.Sequential([_eqx_linear(3, 4, 0), eqx.nn.BatchNorm(4, axis_name="batch", mode="batch")]), xent, x, y
        )
    with pytest.raises(TypeError, match=r"from_flax expects a flax\.nnx\.Sequential.*got flax\.linen\.linear\.Dense"):
        hessinv.adapters.from_flax(nn.Dense(4), xent, x, y)
    with pytest.raises(TypeError, match=r"pass variables=model\.init"):
        hessinv.adapters.from_flax(nn.Sequential([nn.Dense(4)]), xent, x, y)
    with pytest.raises(TypeError, match=r"from_flax expects .*got equinox\.nn\._mlp\.MLP"):
        hessinv.adapters.from_flax(EQX_MODELS["mlp"](), xent, x, y)
    with pytest.raises(hessinv.PipelineError, match=r"layers\[0\] \(Linear\) failed on activations float64\[6, 3\]"):
        hessinv.adapters.from_equinox([_eqx_linear(5, 4, 0)], xent, x, y)
    with pytest.raises(TypeError, match="loss must be a function"):
        hessinv.adapters.from_equinox(EQX_MODELS["mlp"](), "xent", x, y)


def test_to_model_checks_its_argument():
    net = hessinv.adapters.from_equinox(EQX_MODELS["mlp"](), xent, *_data(3, classes=2))
    with pytest.raises(ValueError, match=r"with 4 entries; got 2"):
        net.to_model(net.params[:2])


def test_importing_hessinv_imports_neither_framework():
    code = "import sys, hessinv.adapters; assert not {'equinox', 'flax'} & set(sys.modules), sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
