"""``method="auto"``: the cost model's choice at clear-cut shapes, its overrides, and that auto
and every forced route give the same answer (the choice never changes a result)."""

import jax
import numpy as np
from helpers import flat, like, ref_ggn, rel_err

import hessinv
from benchmarks.shapes import regression
from hessinv import _pipeline, cost


def choose(batch, width, depth, curvature="hessian", damping=1e-3, **kw):
    layers, params, z0 = regression(batch, width, depth)
    pipe = _pipeline.build(layers, params, z0)
    return hessinv.route(layers, params, z0, damping=damping, curvature=curvature), pipe


def test_deep_narrow_takes_the_stage_recursion():
    # n = 256·20 + ... ≈ 5000 parameters, a = 16: the recursion is ~100x fewer flops than dense
    r, pipe = choose(4, 4, 256)
    assert r == "riccati" and _pipeline.n_params(pipe) > 5000


def test_few_parameters_large_batch_take_the_dense_matrix():
    # n = 65 parameters, a = 1024: S_l alone would be 1024 × 1024 per layer
    r, pipe = choose(256, 4, 2)
    assert r == "dense" and _pipeline.n_params(pipe) < 100


def test_gauss_newton_with_few_outputs_takes_the_output_space():
    r, pipe = choose(128, 8, 8, curvature="ggn")  # m = 128 outputs (targets carried), n = 649
    assert r == "gauss_newton" and pipe.segments[-1].a_in == 128
    # λ = 0 rules it out: the output-space route needs λ > 0
    assert choose(128, 8, 8, curvature="ggn", damping=0.0)[0] != "gauss_newton"
    assert choose(128, 8, 8, curvature="hessian")[0] != "gauss_newton"


def test_the_smallest_networks_are_charged_their_factorisations():
    # n = 105, batch 4: a 105 × 105 Cholesky and LU cost about ten times their flops' time, more
    # than the seven-step recursion (measured 0.2-0.5 ms against 0.5-0.65 ms for dense)
    r, pipe = choose(4, 4, 4)
    assert r == "riccati" and _pipeline.n_params(pipe) == 105
    # the Gauss-Newton output space factorises a 4 × 4 matrix: the cheapest of the three
    assert choose(4, 4, 4, curvature="ggn")[0] == "gauss_newton"
    # the same n at batch 16 (a = 64): forming the dense Hessian is cheaper than the recursion
    assert choose(16, 4, 4)[0] == "dense"


def test_machine_constants_are_overridable():
    _, pipe = choose(4, 4, 256)
    cpu = cost.MACHINES["cpu"]
    launch_bound = cpu._replace(step=1.0)  # one second per sequential step
    assert cost.choose(pipe, "hessian", positive_damping=True, mach=launch_bound) == "dense"
    assert cost.estimate(pipe, "hessian", "dense", cpu._replace(dense_bytes=1.0)) == float("inf")


def test_auto_and_every_route_agree_and_info_names_the_route():
    layers, params, z0 = regression(16, 3, 3)
    g, lam = like(params, seed=3), 0.05
    G = np.asarray(ref_ggn(layers, params, z0))  # its targets ride in z0 as a float leaf
    want = np.linalg.solve(G + lam * np.eye(len(G)), np.asarray(flat(g)))
    for method in ("auto", "riccati", "dense", "gauss_newton"):
        x, info = hessinv.ihvp(layers, params, z0, g, damping=lam, curvature="ggn", method=method, return_info=True)
        assert rel_err(flat(x), want) < 1e-9, method
        expect = hessinv.route(layers, params, z0, damping=lam, curvature="ggn") if method == "auto" else method
        assert info.route_name == expect and bool(info.ok)
    # auto under jit, with a traced damping
    f = jax.jit(lambda p, lam: hessinv.ihvp(layers, p, z0, g, damping=lam, curvature="ggn"))
    assert rel_err(flat(f(params, lam)), want) < 1e-9


def test_an_accelerator_takes_the_parallel_route_for_deep_narrow_networks():
    """Where a sequential step is expensive (the GPU constants), deep narrow networks take the
    depth-parallel route, given λ > 0 (it inverts every ``K_xx,l + λI``); shallow ones and every
    CPU choice do not."""
    gpu, cpu = cost.MACHINES["gpu"], cost.MACHINES["cpu"]
    _, deep = choose(4, 4, 256)
    _, shallow = choose(4, 4, 2)
    _, wide_batch = choose(256, 4, 2)
    assert cost.choose(deep, "hessian", positive_damping=True, mach=gpu) == "parallel"
    assert cost.choose(deep, "hessian", positive_damping=False, mach=gpu) != "parallel"
    assert cost.choose(shallow, "hessian", positive_damping=True, mach=gpu) != "parallel"
    assert cost.choose(wide_batch, "hessian", positive_damping=True, mach=gpu) == "dense"
    for pipe in (deep, shallow, wide_batch):
        for curvature in ("hessian", "ggn"):
            assert cost.choose(pipe, curvature, positive_damping=True, mach=cpu) != "parallel"
    # the estimate's steps: O(log L) per segment, against L for the stage recursion
    assert cost.parallel_steps(deep) < 100 < deep.n_layers


def test_auto_on_an_accelerator_machine_takes_the_parallel_route_and_the_optimiser_the_recursion(monkeypatch):
    """With the GPU constants in force, ``auto`` takes the parallel route (whose answers
    test_parallel.py checks against dense), and the optimiser's steps stay on the stage
    recursion, whose pivots its health check reads. (Not run end to end here: on a CPU the
    parallel route's 128-layer program can hang in XLA:CPU's concurrency-optimised scheduler,
    which the suite does not turn off; seen once in three full runs.)"""
    from hessinv import _optax_step

    layers, params, z0 = regression(4, 4, 128)
    lam = 0.1
    monkeypatch.setitem(cost.MACHINES, "cpu", cost.MACHINES["gpu"])
    assert hessinv.route(layers, params, z0, damping=lam) == "parallel"
    pipe = _pipeline.build(layers, params, z0)
    assert _optax_step.route(pipe, "auto", "hessian", lam) == "riccati"
