"""Floating leaves of ``z0`` that layers pass through unchanged (regression targets, fixed
inputs) are carried constants: exact, and kept out of the activation dimension ``a_l``. A leaf a
layer computes is an activation even if later layers pass it through unchanged."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from helpers import flat, like, ref_hessian, rel_err

import hessinv

# These tests are about the stage recursion: pin it (method="auto" may pick another route).
ihvp = functools.partial(hessinv.ihvp, method="riccati")
factorize = functools.partial(hessinv.factorize, method="riccati")
from hessinv import _pipeline

B, W = 6, 3


def first(z, x):
    return {"h": jnp.tanh(z["x"] @ x["W"] + x["c"]), "x": z["x"], "y": z["y"]}


def hidden(z, x):
    return {"h": jnp.tanh(z["h"] @ x["W"] + x["c"]) + 0.1 * z["x"][:, :1], "x": z["x"], "y": z["y"]}


def skip(z, x):  # computes a new leaf from the activations: not carried, although passed on
    return {"h": jnp.sin(z["h"] @ x["W"]), "x": z["x"], "y": z["y"], "s": z["h"] * x["c"]}


def hidden_s(z, x):
    return {"h": jnp.tanh(z["h"] @ x["W"] + x["c"]), "x": z["x"], "y": z["y"], "s": z["s"]}


def head(z, x):
    pred = (z["h"] + z["s"]) @ x["w"] if "s" in z else z["h"] @ x["w"]
    return 0.5 * jnp.mean((pred - z["y"]) ** 2) + 0.01 * jnp.sum(x["w"] ** 2)


def _params(key, shapes):
    ks = jax.random.split(key, len(shapes))
    return [{n: jax.random.normal(k, s) / 2 for n, s in sh.items()} for k, sh in zip(ks, shapes)]


def _batch():
    x = jnp.linspace(-1.0, 1.0, B * 2).reshape(B, 2)
    return {"x": x, "y": jnp.sin(3 * x[:, 0])}


def _check(layers, params, z0, lam=1e-2, with_factorize=False):
    H = np.asarray(ref_hessian(layers, params, z0))
    g = like(params, seed=1)
    want = np.linalg.solve(H + lam * np.eye(len(H)), np.asarray(flat(g)))
    assert rel_err(flat(ihvp(layers, params, z0, g, damping=lam)), want) < 1e-9
    if not with_factorize:
        return
    F = factorize(layers, params, z0, damping=lam)
    assert rel_err(flat(F.solve(g)), want) < 1e-9
    sign, logabs = F.logdet()
    s_ref, l_ref = np.linalg.slogdet(H + lam * np.eye(len(H)))
    assert sign == s_ref and abs(logabs - l_ref) < 1e-8 * max(1.0, abs(l_ref))


def test_passed_through_float_leaves_are_carried_and_exact():
    shapes = [{"W": (2, W), "c": (W,)}, {"W": (W, W), "c": (W,)}, {"W": (W, W), "c": (W,)}, {"w": (W,)}]
    params = _params(jax.random.key(0), shapes)
    layers, z0 = [first, hidden, hidden, head], _batch()
    pipe = _pipeline.build(layers, params, z0)
    # only h is an activation: the targets y and inputs x ride along as constants
    assert [seg.a_out for seg in pipe.segments[:-1]] == [B * W] * (len(pipe.segments) - 1)
    _check(layers, params, z0, with_factorize=True)


def test_a_computed_leaf_passed_on_stays_an_activation():
    shapes = [{"W": (2, W), "c": (W,)}, {"W": (W, W), "c": (W,)}, {"W": (W, W), "c": (W,)}, {"w": (W,)}]
    params = _params(jax.random.key(1), shapes)
    layers, z0 = [first, skip, hidden_s, head], _batch()
    pipe = _pipeline.build(layers, params, z0)
    assert pipe.segments[-1].in_spec.size == 2 * B * W  # h and s, not x or y
    _check(layers, params, z0)


def test_stack_on_z0_with_carried_targets():
    def block(z, x):
        return {"h": z["h"] + jnp.tanh(z["h"] @ x["W"] + x["c"]), "y": z["y"]}

    def loss(z, x):
        return 0.5 * jnp.mean((z["h"] @ x["w"] - z["y"]) ** 2) + 0.01 * jnp.sum(x["w"] ** 2)

    k = jax.random.split(jax.random.key(2), 2)
    z0 = {"h": jax.random.normal(k[0], (B, W)), "y": jnp.linspace(-1.0, 1.0, B)}
    stack = jax.vmap(lambda kk: {"W": jax.random.normal(kk, (W, W)) / 2, "c": jnp.zeros(W)})(jax.random.split(k[1], 4))
    layers, params = [hessinv.Stack(block, 4), loss], [stack, {"w": jnp.ones(W) / 2}]
    pipe = _pipeline.build(layers, params, z0)
    # the first copy reads data (all carried) and is peeled; the other three share one segment
    assert [seg.n for seg in pipe.segments] == [1, 3, 1]
    assert pipe.segments[1].in_spec == pipe.segments[1].out_spec and pipe.segments[1].a_in == B * W
    _check(layers, params, z0)
    # the GGN's outputs are h alone: the targets are not outputs of the network
    layers_g, params_g = (
        [hessinv.Stack(block, 4), lambda z, x: {"h": z["h"] @ x["w"], "y": z["y"]}, _mse],
        [
            stack,
            {"w": jnp.ones((W, 1)) / 2},
            {},
        ],
    )
    assert _pipeline.build(layers_g, params_g, z0).segments[-1].a_in == B


def _mse(z, x):
    return 0.5 * jnp.mean((z["h"][:, 0] - z["y"]) ** 2)
