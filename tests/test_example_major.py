"""Activations of several leaves with a common batch axis (a jet ``(u, u_x)`` per point, a
per-example scalar beside it) are laid out example-major (hessinv._flat), so a per-example layer's
A_l is block-diagonal there too and the stage exploits it (hessinv._stage): every answer still
equals the dense reference, and a layer that couples examples is refused by the numbers."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import flat, like, ref_hessian, ref_loss, rel_err
from jax.flatten_util import ravel_pytree

import hessinv
from hessinv import _blocks, _flat, _pipeline, _stage

ihvp = functools.partial(hessinv.ihvp, method="riccati")
factorize = functools.partial(hessinv.factorize, method="riccati")

N, W = 24, 4  # a = N (2 W + 1) = 216: big enough for the structured stage (MIN_STRUCTURED)


def _jet(z, x):
    """``tanh(u W + c)`` on the jet ``(u, u_x)`` of every point, and a per-example scalar ``s``
    accumulating ``|u|²``; the targets ``f`` ride along."""
    h, hx = z["u"] @ x["W"] + x["c"], z["ux"] @ x["W"]
    t = jnp.tanh(h)
    return {"u": t, "ux": (1 - t * t) * hx, "s": 0.5 * z["s"] + 0.3 * jnp.sum(t * t, axis=1), "f": z["f"]}


def _jet_mix(z, x):
    """The same shapes, but ``u_x`` of every example also sees the batch mean of ``u``."""
    out = _jet(z, x)
    return {**out, "ux": out["ux"] + 0.2 * jnp.mean(out["u"], axis=0)}


def _first(z, x):
    """From the data: ``z0 = (x, 1, 0)`` per point, so its floating leaves are carried."""
    out = _jet(z, x)
    return {**out, "s": jnp.sum(out["u"], axis=1)}


def _readout(z, x):
    v = x["v"]
    return {"o": z["u"] @ v + 0.1 * z["s"], "ox": z["ux"] @ v, "f": z["f"]}


def _fit(z, x):
    """A parameter-free residual loss on the value and the derivative (what GGN needs)."""
    return jnp.mean((z["o"] - z["f"]) ** 2) + 0.5 * jnp.mean((z["ox"] - jnp.cos(z["f"])) ** 2)


def _head(z, x):
    return _fit(_readout(z, x), {}) + 0.05 * jnp.sum(x["v"] ** 2)


def _ref_ggn(layers, params, z0):
    """``Jᵀ ∇²ℓ J`` densely: ``J`` of the readout ``(o, o_x)`` in the flattened params."""
    t0, unravel = ravel_pytree(list(params))

    def outputs(t):
        z = ref_loss(layers[:-1], unravel(t)[:-1], z0)
        return jnp.concatenate([z["o"], z["ox"]])

    J = jax.jit(jax.jacobian(outputs))(t0)
    Hl = jax.hessian(lambda o: _fit({"o": o[:N], "ox": o[N:], "f": z0["f"]}, {}))(outputs(t0))
    return J.T @ Hl @ J


def _ref_hessian_jit(layers, params, z0):
    return np.asarray(jax.jit(lambda p: ref_hessian(layers, p, z0))(params))


def _problem(block=_jet, depth=3, curvature="hessian", dtype=jnp.float64):
    k = jax.random.split(jax.random.PRNGKey(0), 6)

    def dense(kw, kc, i):
        return {
            "W": jax.random.normal(kw, (i, W), dtype) * dtype(1.6 / np.sqrt(i)),
            "c": 0.3 * jax.random.normal(kc, (W,), dtype),
        }

    stack = jax.vmap(lambda kw, kc: dense(kw, kc, W))(jax.random.split(k[1], depth), jax.random.split(k[2], depth))
    x = jnp.linspace(-1, 1, N, dtype=dtype)[:, None]
    z0 = {"u": x, "ux": jnp.ones_like(x), "s": jnp.zeros(N, dtype), "f": jnp.sin(3 * x[:, 0])}
    head = {"v": jax.random.normal(k[3], (W,), dtype)}
    if curvature == "ggn":
        return [_first, hessinv.Stack(block, depth), _readout, _fit], [dense(k[0], k[4], 1), stack, head, {}], z0
    return [_first, hessinv.Stack(block, depth), _head], [dense(k[0], k[4], 1), stack, head], z0


def test_layout_is_example_major_and_round_trips():
    layers, params, z0 = _problem()
    pipe = _pipeline.build(layers, params, z0)
    spec = pipe.segments[1].in_spec
    assert spec.example_major == N and spec.size == N * (2 * W + 1)
    z = _pipeline.forward(pipe, _pipeline.rows(pipe, params), z0)[1][1]  # the Stack's input
    z = jax.tree.map(lambda a: a[0], z)  # its first layer's
    v = _flat.ravel(spec, z, jnp.float64)
    # example 3's entries are contiguous, leaf after leaf in the tree's order: s, u, u_x
    want = jnp.concatenate([z["s"][3:4], z["u"][3], z["ux"][3]])
    np.testing.assert_array_equal(v[3 * (2 * W + 1) : 4 * (2 * W + 1)], want)
    back = _flat.unravel(spec, v, _flat.constants(spec, z))
    jax.tree.map(np.testing.assert_array_equal, back, z)
    (part,) = _flat.parts(spec, z, jnp.float64)  # one part: the leaves interleave
    jax.tree.map(np.testing.assert_array_equal, _flat.unravel_parts(spec, (part,), _flat.constants(spec, z)), z)
    # parameters and single-leaf activations keep the leaf-after-leaf order
    assert pipe.segments[1].param_spec.example_major == 0 and pipe.segments[-1].out_spec.example_major == 0


@pytest.mark.parametrize("block, proved", [(_jet, True), (_jet_mix, False)])
def test_block_structure_is_proved_only_where_it_holds(block, proved):
    layers, params, z0 = _problem(block)
    blk = hessinv.blocks(layers, params, z0)
    seg, sb = blk.pipe.segments[1], blk.segments[1]
    assert _stage.batch_blocks(seg) == (N, 2 * W + 1, 2 * W + 1)
    _, is_block = _stage.diagonal_blocks(seg, sb.A)
    assert bool(is_block.all()) == proved and bool(is_block.any()) == proved
    # what the stage reads equals the dense blocks either way
    pipe = blk.pipe
    rows = _pipeline.rows(pipe, params)
    zin = _pipeline.forward(pipe, rows, z0)[1][1]
    M_dense = _blocks.dense_jacobian(seg, zin, rows[1], jnp.float64)
    K_dense = _blocks.dense_second_derivatives(seg, zin, rows[1], sb.b, jnp.float64)
    np.testing.assert_allclose(jnp.concatenate([sb.A, sb.B], axis=2), M_dense, rtol=0, atol=1e-13)
    np.testing.assert_allclose(sb.K, K_dense, rtol=0, atol=1e-12 * float(jnp.abs(K_dense).max()))


# The dense fallback (a mixing layer) is the same code for either curvature: one case of it.
@pytest.mark.parametrize(
    "block, curvature, dampings",
    [(_jet, "hessian", (0.05, 0.5)), (_jet, "ggn", (0.01,)), (_jet_mix, "hessian", (0.05, 0.5))],
)
def test_solve_logdet_inertia_match_dense(block, curvature, dampings):
    layers, params, z0 = _problem(block, curvature=curvature)
    ref = _ref_ggn if curvature == "ggn" else _ref_hessian_jit
    C = np.asarray(ref(layers, params, z0))
    g = like(params, seed=5)
    for damping in dampings:  # one compiled program each: the damping is traced
        A = C + damping * np.eye(len(C))
        ev = np.linalg.eigvalsh(A)
        assert np.linalg.cond(A) < 1e6
        if curvature == "hessian" and damping < 0.1:
            assert ev.min() < 0  # the test covers an indefinite matrix
        want = np.linalg.solve(A, flat(g))
        kw = dict(damping=damping, curvature=curvature)
        assert rel_err(flat(ihvp(layers, params, z0, g, **kw)), want) < 1e-9
        F = factorize(layers, params, z0, **kw)
        assert rel_err(flat(F.solve(g)), want) < 1e-9
        sign, logabs = F.logdet()
        s_ref, l_ref = np.linalg.slogdet(A)
        assert float(sign) == s_ref and abs(float(logabs) - l_ref) < 1e-9 * max(1.0, abs(l_ref))
        assert tuple(int(c) for c in F.inertia()) == (int((ev > 0).sum()), int((ev < 0).sum()), 0)
        for method in ("auto", "dense"):  # every other route agrees
            x = hessinv.ihvp(layers, params, z0, g, method=method, **kw)
            assert rel_err(flat(x), want) < 1e-9, method


def test_float32_matches_float64_dense():
    layers, params, z0 = _problem(dtype=jnp.float32)
    up = lambda t: jax.tree.map(lambda a: a.astype(jnp.float64), t)
    A = _ref_hessian_jit(layers, up(params), up(z0)) + 2.0 * np.eye(flat(params).size)
    assert np.linalg.cond(A) < 1e3 and np.linalg.eigvalsh(A).min() < 0  # indefinite
    g = like(params, seed=2)
    x = ihvp(layers, params, z0, g, damping=2.0)
    assert flat(x).dtype == np.float32
    assert rel_err(flat(x), np.linalg.solve(A, flat(g).astype(np.float64))) < 2e-4
