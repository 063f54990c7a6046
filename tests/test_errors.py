"""Numerical trouble: NaN/inf inputs and singular stage pivots raise clear errors outside jit,
and come back as diagnostics inside it. Never a silent NaN or a wrong number."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import like, mlp

import hessinv

# These tests are about the stage recursion: pin it (method="auto" may pick another route).
ihvp = functools.partial(hessinv.ihvp, method="riccati")
factorize = functools.partial(hessinv.factorize, method="riccati")


def unused_param_layer(z, x):
    """``x['dead']`` never affects the loss: a zero row/column in H, so H is singular."""
    return {"h": jnp.tanh(z["h"] @ x["W"] + x["c"]) + 0.0 * x["dead"], "y": z["y"]}


def singular_pipeline():
    layers, params, z0 = mlp()
    layers[1] = unused_param_layer
    params[1] = dict(params[1], dead=jnp.ones(()))
    return layers, params, z0


def test_nan_in_params_named():
    layers, params, z0 = mlp()
    params[1] = dict(params[1], c=params[1]["c"].at[0].set(jnp.nan))
    with pytest.raises(hessinv.NonFiniteError, match=r"params\[1\]\['c'\] \(shape \(2,\)\) contains NaN"):
        ihvp(layers, params, z0, like(params))


def test_inf_in_batch_named():
    layers, params, z0 = mlp()
    z0 = dict(z0, h=z0["h"].at[2, 1].set(jnp.inf))
    with pytest.raises(hessinv.NonFiniteError, match=r"z0\['h'\]"):
        ihvp(layers, params, z0, like(params))
    with pytest.raises(hessinv.NonFiniteError, match=r"z0\['h'\]"):
        factorize(layers, params, z0)


def test_nan_in_rhs_named():
    layers, params, z0 = mlp()
    g = like(params)
    g[2] = dict(g[2], W=g[2]["W"].at[0, 0].set(jnp.nan))
    with pytest.raises(hessinv.NonFiniteError, match=r"g\[2\]\['W'\]"):
        ihvp(layers, params, z0, g)


def test_nan_inside_jit_reported_by_info():
    layers, params, z0 = mlp()
    params[1] = dict(params[1], W=params[1]["W"].at[0, 0].set(jnp.nan))
    _, info = jax.jit(lambda p: ihvp(layers, p, z0, like(params), return_info=True))(params)
    assert not bool(info.ok) and not bool(info.finite)
    assert int(info.first_nonfinite_layer) == 1
    with pytest.raises(hessinv.NonFiniteError, match=r"first at layer 1 = layers\[1\]"):
        hessinv._diagnostics.raise_for(hessinv._pipeline.build(layers, params, z0), info)


def pow_layer(z, x):
    """A ``|v|^1.5`` activation with ``v = 0`` at one entry: finite first derivatives (``A_l``,
    ``B_l``), infinite second ones (``K_l``)."""
    v = z["h"] @ x["W"] + x["c"]
    return {"h": jnp.abs(v - v[0, 0]) ** 1.5, "y": z["y"]}


def test_infinite_curvature_in_a_middle_layer_is_not_blamed_on_a_pivot():
    """The pivots above the layer stay healthy and those below are NaN: that is a non-finite
    block, not a singular pivot (which the healthy smallest rcond would wrongly name)."""
    layers, params, z0 = mlp()
    layers[1] = pow_layer
    with pytest.raises(hessinv.NonFiniteError, match="second-derivative blocks"):
        ihvp(layers, params, z0, like(params), damping=0.1)
    with pytest.raises(hessinv.NonFiniteError):
        factorize(layers, params, z0, damping=0.1)


def test_singular_pivot_raises_naming_layer():
    layers, params, z0 = singular_pipeline()
    H = np.asarray(hessinv.hessian(layers, params, z0))
    assert np.min(np.abs(np.linalg.eigvalsh(H))) < 1e-12  # the reference agrees H is singular
    with pytest.raises(
        hessinv.SingularPivotError, match=r"stage pivot of layer 1 = layers\[1\], function 'unused_param_layer'"
    ):
        ihvp(layers, params, z0, like(params))


def test_singular_pivot_inside_jit_reported_by_info():
    layers, params, z0 = singular_pipeline()
    f = jax.jit(lambda p, g: ihvp(layers, p, z0, g, return_info=True))
    _, info = f(params, like(params))
    assert not bool(info.ok) and int(info.worst_layer) == 1 and float(info.min_rcond) <= float(info.rcond_tol)
    damped = jax.jit(lambda p, g: ihvp(layers, p, z0, g, damping=0.1, return_info=True))
    _, info = damped(params, like(params))
    assert bool(info.ok)  # damping cures it


def test_singular_H_logdet_and_inertia():
    """A singular H (with a nonsingular recursion up to the first layer) has an exact inertia
    with zeros; put the dead parameter in the first layer, whose pivot is never inverted."""
    layers, params, z0 = mlp()
    layers[0] = unused_param_layer
    params[0] = dict(params[0], dead=jnp.ones(()))
    F = factorize(layers, params, z0)
    H = np.asarray(hessinv.hessian(layers, params, z0))
    ev = np.linalg.eigvalsh(H)
    tol = 1e-9 * np.abs(ev).max()
    want = (int((ev > tol).sum()), int((ev < -tol).sum()), int((np.abs(ev) <= tol).sum()))
    assert want[2] == 1
    assert tuple(int(c) for c in F.inertia()) == want
    assert bool(F.info().factor_ok) and not bool(F.info().ok)
    with pytest.raises(hessinv.SingularPivotError, match="layer 0"):
        F.solve(like(params))


def test_stage_singular_but_H_not_is_refused_not_wrong():
    """A dense layer with more parameters than outputs on a small batch has a singular undamped
    stage pivot although H is nonsingular: refuse (solve, logdet, inertia), never a wrong number."""
    layers, params, z0 = mlp(widths=(3, 5, 2, 4), B=4)
    H = np.asarray(hessinv.hessian(layers, params, z0))
    assert np.linalg.cond(H) < 1e6
    F = factorize(layers, params, z0)
    for call in (lambda: F.solve(like(params)), F.logdet, F.inertia):
        with pytest.raises(hessinv.SingularPivotError, match=r"layer 1 .*p_l > a_l"):
            call()
    x = ihvp(layers, params, z0, like(params), damping=1e-2)  # damping cures it
    assert np.all(np.isfinite(np.asarray(jax.tree.leaves(x)[0])))


def test_culprit_is_first_singular_pivot_in_elimination_order():
    """Every copy of an over-parameterised Stack has a singular undamped pivot; the recursion
    meets the top copy first, so that is the one named (the rest are contaminated by it)."""
    from helpers import stacked

    layers, params, z0 = stacked(depth=6, B=2)  # 12 parameters per layer, 6 outputs
    _, info = jax.jit(lambda p, g: ihvp(layers, p, z0, g, return_info=True))(params, like(params))
    assert not bool(info.ok) and int(info.worst_layer) == 6
    with pytest.raises(hessinv.SingularPivotError, match=r"layer 6 = layers\[1\] \(Stack of 6, copy 5\)"):
        ihvp(layers, params, z0, like(params))


@pytest.mark.parametrize(
    "damping, error, message",
    [
        ("1e-3", TypeError, "damping must be a real scalar"),
        (1e-3 + 1e-3j, TypeError, "damping must be a real scalar"),
        (True, TypeError, "damping must be a real scalar"),
        (jnp.array([1e-3, 1e-2]), ValueError, r"damping must be a scalar.*\(2,\)"),
        (float("nan"), hessinv.NonFiniteError, "damping is nan"),
        (jnp.inf, hessinv.NonFiniteError, "damping is inf"),
    ],
)
def test_bad_damping_is_refused_by_every_entry(damping, error, message):
    layers, params, z0 = mlp()
    for call in (
        lambda: hessinv.ihvp(layers, params, z0, like(params), damping=damping),
        lambda: hessinv.factorize(layers, params, z0, damping=damping),
        lambda: hessinv.route(layers, params, z0, damping=damping),
    ):
        with pytest.raises(error, match=message):
            call()


@pytest.mark.parametrize("method", ["riccati", "dense", "woodbury_square"])
def test_every_route_checks_g(method):
    """A transposed leaf or a wrong dtype in g is refused by F.solve, whichever route made F."""
    if method == "woodbury_square":  # the paper's route needs square layers: a diagonal pipeline
        w = 3
        layers = [lambda z, x: jnp.tanh(z * x["s"]), lambda z, x: jnp.sum(jnp.sin(z) * x["t"][0] + z**2)]
        params = [{"s": jnp.linspace(0.5, 1.5, w)}, {"t": jnp.ones(1)}]
        z0, method = jnp.array([0.3, 0.7, 1.1]), "woodbury"  # no zero input: each ∂f/∂s invertible
        bad = [{"s": jnp.ones(w + 1)}, params[1]]
    else:
        layers, params, z0 = mlp()
        bad = [dict(p) for p in params]
        bad[0]["W"] = params[0]["W"].T
    F = hessinv.factorize(layers, params, z0, damping=0.5, method=method)
    with pytest.raises(hessinv.PipelineError, match=r"g\[0\] has structure"):
        F.solve(bad)
    g32 = jax.tree.map(lambda a: a.astype(jnp.float32), params)
    with pytest.raises(TypeError, match=r"g\[0\] has dtypes"):
        F.solve(g32)
    nan = jax.tree.map(lambda a: a.at[(0,) * a.ndim].set(jnp.nan), params)  # eagerly: refused, not NaN
    with pytest.raises(hessinv.NonFiniteError, match=r"g\[0\]\['(W|s)'\].*NaN"):
        F.solve(nan)


# -- the dtype policy --------------------------------------------------------------------------


def _tiny(param_dtype, data_dtype):
    def layer(z, x):
        return jnp.tanh(z @ x["W"].astype(z.dtype))

    def head(z, x):
        return jnp.sum(z**2)

    params = [{"W": jnp.ones((3, 3), param_dtype)}, {}]
    return [layer, head], params, jnp.ones((2, 3), data_dtype)


@pytest.mark.parametrize("low", [jnp.bfloat16, jnp.float16])
def test_half_precision_params_raise_naming_the_leaf(low):
    layers, params, z0 = _tiny(low, jnp.float32)
    with pytest.raises(TypeError, match=r"params\[0\]\['W'\].*float32 or float64"):
        hessinv.hvp(layers, params, z0, params)


def test_half_precision_data_raises():
    layers, params, z0 = _tiny(jnp.float32, jnp.bfloat16)
    with pytest.raises(TypeError, match="z0.*bfloat16"):
        hessinv.loss(layers, params, z0)


def test_complex_params_raise():
    layers, params, z0 = _tiny(jnp.complex64, jnp.float32)
    with pytest.raises(TypeError, match=r"params\[0\]\['W'\].*real floating"):
        hessinv.loss(layers, params, z0)


def test_mixed_precision_warns_naming_both_leaves():
    """float32 params with float64 data (Flax under x64): the layers compute in float32."""
    layers, params, z0 = _tiny(jnp.float32, jnp.float64)
    with pytest.warns(hessinv.MixedPrecisionWarning, match=r"params\[0\]\['W'\] is float32 but z0 is float64") as rec:
        value = hessinv.loss(layers, params, z0)
    assert len([w for w in rec if issubclass(w.category, hessinv.MixedPrecisionWarning)]) == 1
    assert np.isfinite(float(value))  # a warning, not an error: the answer is still computed


def test_one_precision_does_not_warn():
    import warnings

    for dt in (jnp.float32, jnp.float64):
        layers, params, z0 = _tiny(dt, dt)
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            value = hessinv.loss(layers, params, z0)
        assert not [w for w in rec if issubclass(w.category, hessinv.MixedPrecisionWarning)]
        assert value.dtype == dt and float(value) == pytest.approx(6 * np.tanh(3.0) ** 2, rel=1e-6)
