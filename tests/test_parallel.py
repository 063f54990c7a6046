"""The depth-parallel route (``method="parallel"``): the stage recursion by associative scans,
against the dense references of helpers.py, its O(log L) sequential depth, and its failure path.

Small shapes throughout; factorisations are cached per case so each pipeline compiles once.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import bias_layer, dense_curvature_case, dense_tanh, flat, jaxpr_loops, like, rel_err, stacked
from jax.flatten_util import ravel_pytree

import hessinv
from hessinv import _blocks, _parallel, _pipeline, _riccati

# On a CPU every entry with method="parallel" warns about an XLA:CPU scheduler hang (tested below).
pytestmark = pytest.mark.filterwarnings("ignore:method='parallel' on a CPU:RuntimeWarning")


def parallel(layers, params, z0, damping, curvature="hessian"):
    return hessinv.factorize(layers, params, z0, damping=damping, curvature=curvature, method="parallel")


@functools.cache
def stack_mlp(depth=9):
    """A tanh MLP: first layer, ``Stack(dense_tanh, depth - 1)``, cross-entropy head (batch 3, width 3)."""
    return stacked(depth=depth - 1, w=3, B=3, block=dense_tanh, seed=4)


@functools.cache
def case(name, damping, curvature="hessian"):
    """(layers, params, z0, C + λI as float64 numpy, F)."""
    if name == "stack_mlp":
        layers, params, z0 = stack_mlp()
        C = np.asarray(hessinv.hessian(layers, params, z0))
    else:
        layers, params, z0, C = dense_curvature_case(name, curvature)
    Cd = C + damping * np.eye(C.shape[0])
    return layers, params, z0, Cd, parallel(layers, params, z0, damping, curvature)


CASES = [
    ("stack_mlp", 0.05, "hessian"),  # a Stack MLP, indefinite damped Hessian
    ("mlp", 0.05, "hessian"),  # heterogeneous widths: several segments
    ("stacked", 0.1, "ggn"),  # Gauss-Newton with a parameter-free loss layer
]


@pytest.mark.parametrize("name,damping,curvature", CASES)
def test_matches_dense(name, damping, curvature):
    layers, params, z0, Cd, F = case(name, damping, curvature)
    ev = np.linalg.eigvalsh(Cd)
    assert np.abs(ev).min() / np.abs(ev).max() > 1e-5  # well conditioned: accurate to ~cond·eps
    assert (ev.min() < 0) == (curvature == "hessian")  # indefinite Hessians, a definite GGN
    info = F.info()
    assert bool(info.ok) and info.route_name == "parallel" == F.route
    g = like(params)
    x = F.solve(g)
    assert jax.tree.structure(x) == jax.tree.structure(list(params))
    assert rel_err(flat(x), np.linalg.solve(Cd, flat(g))) < 1e-9
    # the same pivots as the sequential recursion: logdet and inertia exactly
    sign, logabs = F.logdet()
    s_ref, l_ref = np.linalg.slogdet(Cd)
    assert float(sign) == s_ref
    np.testing.assert_allclose(logabs, l_ref, rtol=1e-10, atol=1e-9)
    assert tuple(int(c) for c in F.inertia()) == (int((ev > 0).sum()), int((ev < 0).sum()), 0)


def test_inverse_diagonal_and_sample_moments():
    """Selected inversion by an associative scan; samples through the same forward scan."""
    layers, params, z0, Cd, F = case("stacked", 0.1, "ggn")
    inv = np.linalg.inv(Cd)
    v = like(case("stacked", 0.1, "ggn")[1], seed=1)
    assert rel_err(flat(F.matvec(v)), Cd @ flat(v)) < 1e-12
    # the Stack's first copy: where its parameters sit in the flat (ravel_pytree) order
    n = Cd.shape[0]
    params = case("stacked", 0.1, "ggn")[1]
    where = ravel_pytree(list(params))[1](jnp.arange(n, dtype=jnp.float64))[1]
    idx = np.asarray(ravel_pytree(jax.tree.map(lambda a: a[0], where))[0]).astype(int)
    blocks = F.inverse_blocks()  # selected inversion by an associative scan
    np.testing.assert_allclose(blocks[1][0], inv[np.ix_(idx, idx)], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(blocks[0], inv[:12, :12], rtol=1e-9, atol=1e-12)  # the first layer
    # Cov(x) = (C + λI)^{-1}: x = T^{-1} y is linear in the noise, so check it on unit vectors
    rows = jax.vmap(lambda e: flat(_pipeline.from_rows(F.pipe, F._sample_rows(_pipeline.vector_to_rows(F.pipe, e)))))(
        jnp.eye(n)
    )
    np.testing.assert_allclose(np.asarray(rows).T @ np.asarray(rows), inv, rtol=1e-8, atol=1e-10)


def test_vmap_over_right_hand_sides():
    layers, params, z0, Cd, F = case("stack_mlp", 0.05)
    gs = [like(params, seed=s) for s in range(3)]
    X = jax.vmap(F.solve)(jax.tree.map(lambda *a: jnp.stack(a), *gs))
    for i, g in enumerate(gs):
        assert rel_err(flat(jax.tree.map(lambda a: a[i], X)), np.linalg.solve(Cd, flat(g))) < 1e-9


def test_jit_with_traced_damping():
    """Pytree activations and params; one damping leaves the Hessian indefinite, the other definite."""
    layers, params, z0, C = dense_curvature_case("pytree")
    g = like(params)

    @jax.jit
    def solve(lam, g):
        x, info = hessinv.ihvp(layers, params, z0, g, damping=lam, method="parallel", return_info=True)
        return x, info.ok

    ev = np.linalg.eigvalsh(C)
    assert ev.min() + 0.05 < 0 < ev.min() + 2.0
    for lam in (0.05, 2.0):
        x, ok = solve(jnp.asarray(lam), g)
        assert bool(ok)
        assert rel_err(flat(x), np.linalg.solve(C + lam * np.eye(len(C)), flat(g))) < 1e-9


def test_grad_through_ihvp_wrt_g():
    """``d/dg ½|(C + λI)^{-1} g|² = (C + λI)^{-1} x``: one more solve with the symmetric matrix."""
    layers, params, z0, Cd, _ = case("mlp", 0.05)
    g = like(params)

    def f(g):
        x = hessinv.ihvp(layers, params, z0, g, damping=0.05, method="parallel")
        return 0.5 * sum(jnp.sum(a**2) for a in jax.tree.leaves(x))

    dg = jax.grad(f)(g)
    x = np.linalg.solve(Cd, flat(g))
    assert rel_err(flat(dg), np.linalg.solve(Cd, x)) < 1e-9
    assert hessinv.route(layers, params, z0, damping=0.05) != "parallel"  # "auto" never takes it


def test_sequential_depth_is_logarithmic():
    """The factorisation and the solve of a Stack of depth L contain no loop over the layers:
    no ``scan``/``while`` at all, and the program grows by a constant per doubling of L (the
    associative scans' levels), not in proportion to L."""
    sizes = {}
    for depth in (8, 16, 32):
        layers, params, z0 = stacked(depth=depth - 1, w=2, B=2, block=dense_tanh)
        pipe = _pipeline.build(layers, params, z0)
        rows = _pipeline.to_rows(pipe, params)
        blk = jax.eval_shape(lambda r: _blocks.compute(pipe, r, z0), rows)  # shapes only: nothing compiles
        closed = jax.make_jaxpr(lambda b, g: _parallel.factorize_blocks.__wrapped__(b, 0.1).solve_rows(g))(blk, rows)
        assert jaxpr_loops(closed.jaxpr) == []
        sizes[depth] = len(closed.jaxpr.eqns)
    # the sequential route, for contrast, loops over the Stack
    closed = jax.make_jaxpr(lambda b: _riccati.factorize_blocks(b, 0.1))(blk)
    assert ("scan", 31) in jaxpr_loops(closed.jaxpr)
    assert sizes[32] - sizes[16] == sizes[16] - sizes[8] > 0



def test_singular_element_raises_and_riccati_works():
    layers, params, z0 = stacked(depth=6, w=3, B=5, seed=5)
    layers[1] = hessinv.Stack(bias_layer, 6)
    params[1] = {"c": 0.1 * params[1]["c"]}
    g = like(params)
    ref = hessinv.factorize(layers, params, z0, damping=0.0, method="riccati")
    assert bool(ref.info().ok)  # the sequential order is fine
    # eager: a clear error naming the route and the remedy (the elimination's intermediates are not finite)
    with pytest.raises(hessinv.SingularPivotError, match="method='parallel'.*method='riccati'"):
        parallel(layers, params, z0, 0.0)
    F = _parallel.factorize_blocks(hessinv.blocks(layers, params, z0), 0.0)  # no eager checks here
    info = F.info()
    assert not bool(info.ok) and not bool(info.factor_ok)
    assert 1 <= int(info.worst_layer) <= 6  # one of the bias layers
    with pytest.raises(hessinv.SingularPivotError, match="method='parallel'.*method='riccati'"):
        F.solve(g)
    with pytest.raises(hessinv.SingularPivotError, match="method='riccati'"):
        hessinv.ihvp(layers, params, z0, g, damping=0.0, method="parallel")
    # from the compiled solve (as under jit) nothing raises: info says so, never a silent number
    x, info = hessinv.ihvp(layers, params, z0, g, damping=0.0, method="parallel", return_info=True)
    assert not bool(info.ok)
    # with damping the same pipeline is fine
    lam = 1e-2
    F = parallel(layers, params, z0, lam)
    x = F.solve(g)
    x_ref = hessinv.factorize(layers, params, z0, damping=lam, method="riccati").solve(g)
    assert rel_err(flat(x), flat(x_ref)) < 1e-9


@pytest.mark.filterwarnings("error")
def test_warns_on_a_cpu_unless_the_scheduler_flag_is_set(monkeypatch):
    """The XLA:CPU hang this route can meet is announced at the caller's line, and silenced by
    the flag that prevents it."""
    layers, params, z0 = stack_mlp()
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
    with pytest.warns(RuntimeWarning, match="concurrency_optimized_scheduler=false") as rec:
        hessinv.route(layers, params, z0, method="parallel")
    assert rec[0].filename == __file__
    monkeypatch.setenv("XLA_FLAGS", _parallel.CPU_SCHEDULER_FLAG)
    assert hessinv.route(layers, params, z0, method="parallel") == "parallel"  # no warning: "error" above
