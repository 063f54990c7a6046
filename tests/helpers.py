"""Test pipelines and independent references.

The references never go through hessinv's pipeline machinery: `ref_loss` composes the layers
with a plain Python loop (unrolling Stacks by slicing), and everything dense is `jax.hessian`
of that loss in the `ravel_pytree` flattening of params.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import hessinv

# -- layers ---------------------------------------------------------------------------------


def dense_tanh(z, x):
    return {"h": jnp.tanh(z["h"] @ x["W"] + x["c"]), "y": z["y"]}


def residual(z, x):
    return {"h": z["h"] + jnp.sin(z["h"] @ x["W"] + x["c"]), "y": z["y"]}


def logits_layer(z, x):
    return {"h": z["h"] @ x["W"] + x["c"], "y": z["y"]}


def xent_loss(z, x):
    """Cross-entropy as its own parameter-free layer (what ``curvature="ggn"`` needs)."""
    logp = jax.nn.log_softmax(z["h"])
    return -logp[jnp.arange(z["y"].shape[0]), z["y"]].mean()


def separate_loss(layers, params):
    """Replace a pipeline's ``xent_head`` by ``logits_layer`` and a parameter-free ``xent_loss``
    (same head parameters, no weight decay)."""
    return list(layers[:-1]) + [logits_layer, xent_loss], list(params) + [{}]


def xent_head(z, x):
    """Cross-entropy on integer labels carried in z0, plus weight decay so H is nonsingular
    (softmax is invariant to shifting all logits, which makes the undecayed head singular)."""
    logits = z["h"] @ x["W"] + x["c"]
    y = z["y"]
    nll = -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(y.shape[0]), y])
    return nll + 0.05 * (jnp.sum(x["W"] ** 2) + jnp.sum(x["c"] ** 2))


def pair_pool(z, x):
    """Changes the batch size: averages consecutive pairs of examples (and keeps their labels)."""
    h = z["h"] @ x["W"]
    h = 0.5 * (h[0::2] + h[1::2])
    return {"h": jnp.tanh(h), "y": z["y"][0::2]}


def normalize(z, x):
    """A parameter-free layer (params ``{}``)."""
    h = z["h"]
    return {"h": h / jnp.sqrt(1.0 + jnp.sum(h**2, axis=-1, keepdims=True)), "y": z["y"]}


def two_stream(z, x):
    """Pytree activations and nested pytree params."""
    h = jnp.tanh(z["a"] @ x["mix"]["Wa"] + z["b"] @ x["mix"]["Wb"] + x["bias"])
    return {"a": h, "b": jnp.sin(z["b"] * x["scale"]), "t": z["t"]}


def two_stream_head(z, x):
    pred = z["a"] @ x["w"] + jnp.sum(z["b"], axis=-1) * x["v"]
    return 0.5 * jnp.mean((pred - z["t"]) ** 2) + 0.01 * jnp.sum(x["w"] ** 2) + 0.01 * x["v"] ** 2


# -- pipelines ------------------------------------------------------------------------------


def _dense_params(key, din, dout, dtype, scale=1.0):
    k1, k2 = jax.random.split(key)
    return {
        "W": (scale / np.sqrt(din) * jax.random.normal(k1, (din, dout))).astype(dtype),
        "c": (0.1 * jax.random.normal(k2, (dout,))).astype(dtype),
    }


def _batch(key, B, w, classes, dtype):
    return {"h": jax.random.normal(key, (B, w)).astype(dtype), "y": jnp.arange(B, dtype=jnp.int32) % classes}


def bias_layer(z, x):
    """Linear in its parameters (``K_xx = 0``): at ``λ = 0`` every elimination order that inverts
    ``K_xx + λI`` (the parallel and sharded routes) meets a singular matrix, the stage recursion
    does not."""
    return {"h": jnp.tanh(z["h"]) + x["c"], "y": z["y"]}


def mlp(widths=(3, 5, 2, 4), B=8, classes=3, dtype=jnp.float64, seed=0, scale=1.5):
    """Heterogeneous widths; integer labels carried in z0; cross-entropy head."""
    keys = jax.random.split(jax.random.PRNGKey(seed), len(widths) + 1)
    layers = [dense_tanh] * (len(widths) - 1) + [xent_head]
    params = [_dense_params(keys[i], widths[i], widths[i + 1], dtype, scale) for i in range(len(widths) - 1)]
    params.append(_dense_params(keys[-2], widths[-1], classes, dtype))
    return layers, params, _batch(keys[-1], B, widths[0], classes, dtype)


def stacked(depth=6, w=3, B=5, classes=3, dtype=jnp.float64, seed=1, block=residual):
    """An explicit Stack in the middle: first layer, Stack(block, depth), head."""
    k0, k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 4)
    stack_params = jax.vmap(lambda k: _dense_params(k, w, w, dtype, 0.8))(jax.random.split(k1, depth))
    layers = [dense_tanh, hessinv.Stack(block, depth), xent_head]
    params = [_dense_params(k0, w, w, dtype), stack_params, _dense_params(k2, w, classes, dtype)]
    return layers, params, _batch(k3, B, w, classes, dtype)


def mixed(dtype=jnp.float64, seed=2):
    """Batch-size change, a parameter-free layer and a residual run, auto-grouped."""
    ks = jax.random.split(jax.random.PRNGKey(seed), 8)
    w = 3
    layers = [dense_tanh, pair_pool, normalize, residual, residual, residual, xent_head]
    params = [
        _dense_params(ks[0], w, w, dtype),
        {"W": (jax.random.normal(ks[1], (w, w)) / 2).astype(dtype)},
        {},
        _dense_params(ks[2], w, w, dtype, 0.7),
        _dense_params(ks[3], w, w, dtype, 0.7),
        _dense_params(ks[4], w, w, dtype, 0.7),
        _dense_params(ks[5], w, 3, dtype),
    ]
    return layers, params, _batch(ks[6], 16, w, 3, dtype)


def pytree_pipeline(depth=3, dtype=jnp.float64, seed=3):
    """Dict activations {a, b, t} with float regression targets t, nested dict params."""
    ks = jax.random.split(jax.random.PRNGKey(seed), 3 * depth + 4)
    B, wa, wb = 8, 2, 2

    def p(i):
        return {
            "mix": {
                "Wa": jax.random.normal(ks[3 * i], (wa, wa)).astype(dtype),
                "Wb": jax.random.normal(ks[3 * i + 1], (wb, wa)).astype(dtype),
            },
            "bias": (0.1 * jax.random.normal(ks[3 * i + 2], (wa,))).astype(dtype),
            "scale": jnp.asarray(1.0 + 0.1 * i, dtype),
        }

    layers = [two_stream] * depth + [two_stream_head]
    params = [p(i) for i in range(depth)] + [
        {"w": jax.random.normal(ks[-1], (wa,)).astype(dtype), "v": jnp.asarray(0.3, dtype)}
    ]
    z0 = {
        "a": jax.random.normal(ks[-2], (B, wa)).astype(dtype),
        "b": jax.random.normal(ks[-3], (B, wb)).astype(dtype),
        "t": jax.random.normal(ks[-4], (B,)).astype(dtype),
    }
    return layers, params, z0


PIPELINES = {"mlp": mlp, "stacked": stacked, "mixed": mixed, "pytree": pytree_pipeline}


# -- independent references -----------------------------------------------------------------


def ref_loss(layers, params, z0):
    """Plain composition; a Stack is unrolled by slicing its stacked params."""
    z = z0
    for f, x in zip(layers, params):
        if isinstance(f, hessinv.Stack):
            for i in range(f.depth):
                z = f.layer(z, jax.tree.map(lambda a: a[i], x))
        else:
            z = f(z, x)
    return z


def ref_hessian(layers, params, z0):
    flat, unravel = ravel_pytree(list(params))
    return jax.hessian(lambda t: ref_loss(layers, unravel(t), z0))(flat)


def ref_ggn(layers, params, z0):
    """The generalised Gauss-Newton matrix ``Jᵀ ∇²ℓ J`` densely (differentiable in params): ``J``
    of the last layer's input ``z["h"]`` in the flattened params, ``ℓ`` the parameter-free last
    layer applied to ``{"h", "y"}``."""
    flat0, unravel = ravel_pytree(list(params))

    def logits(t):
        return ref_loss(layers[:-1], unravel(t)[:-1], z0)["h"].ravel()

    J = jax.jacobian(logits)(flat0)
    Hl = jax.hessian(lambda h: layers[-1]({"h": h.reshape(z0["y"].shape[0], -1), "y": z0["y"]}, {}))(logits(flat0))
    return J.T @ Hl @ J


def ref_hvp(layers, params, z0, v):
    """Forward-over-reverse on the plain composition (Pearlmutter 1994), jitted."""

    @jax.jit
    def hvp(p, v):
        return jax.jvp(jax.grad(lambda p: ref_loss(layers, p, z0)), (p,), (v,))[1]

    return hvp(list(params), list(v))


def flat(tree):
    return ravel_pytree(list(tree))[0]


def like(params, seed=0, dtype=None):
    """A random vector shaped like params."""
    leaves, treedef = jax.tree.flatten(list(params))
    keys = jax.random.split(jax.random.PRNGKey(100 + seed), len(leaves))
    return jax.tree.unflatten(
        treedef, [jax.random.normal(k, jnp.shape(a)).astype(dtype or a.dtype) for k, a in zip(keys, leaves)]
    )


def rel_err(x, ref):
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return np.linalg.norm(x - ref) / np.linalg.norm(ref)


@functools.cache
def dense_case(name, dtype=jnp.float64):
    """(layers, params, z0, H) for a named pipeline; H (float64 numpy) computed once per session."""
    layers, params, z0 = PIPELINES[name](dtype=dtype)
    H = jax.jit(lambda p: ref_hessian(layers, p, z0))(params)
    return layers, params, z0, np.asarray(H, np.float64)


@functools.cache
def dense_curvature_case(name, curvature="hessian"):
    """(layers, params, z0, C) with C (float64 numpy) the dense Hessian of a named pipeline, or
    with ``curvature="ggn"`` its GGN after :func:`separate_loss`; computed once per session."""
    if curvature == "hessian":
        return dense_case(name)
    layers, params, z0 = PIPELINES[name]()
    layers, params = separate_loss(layers, params)
    C = np.asarray(jax.jit(lambda p: ref_ggn(layers, p, z0))(params))
    return layers, params, z0, C


def jaxpr_loops(jaxpr) -> list:
    """``(primitive name, length)`` of every scan and while loop in a jaxpr, nested ones (inside
    ``shard_map``, ``cond``, ...) included; a while loop's length is ``None``."""
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            out.append(("scan", eqn.params["length"]))
        elif eqn.primitive.name == "while":
            out.append(("while", None))
        for p in eqn.params.values():
            for j in p if isinstance(p, (tuple, list)) else [p]:
                inner = getattr(j, "jaxpr", j)
                if hasattr(inner, "eqns"):
                    out.extend(jaxpr_loops(inner))
    return out
