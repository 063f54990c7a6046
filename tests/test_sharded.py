"""The multi-device route (``method="parallel"`` with ``mesh=``): partitioned elimination over the
devices of a one-dimensional mesh, against the dense references of helpers.py.

The device count is fixed when JAX starts, so the checks on 2 and 4 devices run in one
subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (this file run as a
script); what one device can check (a 1-device mesh, bad input, the failure path) runs here.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import _batch, _dense_params, bias_layer, dense_tanh, flat, jaxpr_loops, like, rel_err, residual, separate_loss, stacked, xent_head

import hessinv
from hessinv import _pipeline, _sharded

pytestmark = pytest.mark.filterwarnings("ignore:method='parallel' on a CPU:RuntimeWarning")


# -- pipelines and checks, shared by this process and the 4-device subprocess -----------------------


def stack_mlp():
    """First layer, ``Stack(dense_tanh, 10)``, cross-entropy head (batch 3, width 3)."""
    return stacked(depth=10, w=3, B=3, block=dense_tanh, seed=4)


def two_stacks():
    """Heterogeneous segments: a width-3 Stack, a widening layer, a width-4 residual Stack."""
    ks = jax.random.split(jax.random.PRNGKey(7), 6)
    w, v, n = 3, 4, 8
    stack = lambda k, d: jax.vmap(lambda k: _dense_params(k, d, d, jnp.float64, 0.8))(jax.random.split(k, n))  # noqa: E731
    layers = [dense_tanh, hessinv.Stack(dense_tanh, n), dense_tanh, hessinv.Stack(residual, n), xent_head]
    params = [
        _dense_params(ks[0], w, w, jnp.float64),
        stack(ks[1], w),
        _dense_params(ks[2], w, v, jnp.float64),
        stack(ks[3], v),
        _dense_params(ks[4], v, 3, jnp.float64),
    ]
    return layers, params, _batch(ks[5], 3, w, 3, jnp.float64)


def ggn_stack():
    """``stacked`` with its loss as a parameter-free layer (what ``curvature="ggn"`` needs)."""
    layers, params, z0 = stacked(depth=8, w=3, B=4, seed=2)
    return (*separate_loss(layers, params), z0)


PIPELINES = {"stack_mlp": stack_mlp, "two_stacks": two_stacks, "ggn_stack": ggn_stack}


@functools.cache
def dense(name, curvature):
    layers, params, z0 = PIPELINES[name]()
    if curvature == "ggn":
        from helpers import ref_ggn

        return layers, params, z0, np.asarray(jax.jit(lambda p: ref_ggn(layers, p, z0))(params))
    return layers, params, z0, np.asarray(hessinv.hessian(layers, params, z0))


def mesh_of(n_devices):
    return jax.sharding.Mesh(np.array(jax.devices()[:n_devices]), ("layers",))


def check_against_dense(name, curvature, damping, n_devices, *, public=True) -> dict:
    """Solve, logdet, inertia and info of the sharded factorisation against the dense matrix:
    through the public methods, or (``public=False``, to compile one program instead of five)
    through the route's own functions in one ``jit``."""
    layers, params, z0, C = dense(name, curvature)
    Cd = C + damping * np.eye(len(C))
    F = hessinv.factorize(
        layers, params, z0, damping=damping, curvature=curvature, method="parallel", mesh=mesh_of(n_devices)
    )
    g = like(params)
    if public:
        x, (sign, logabs), inertia, info = F.solve(g), F.logdet(), F.inertia(), F.info()
    else:
        x, (sign, logabs), inertia, info = jax.jit(
            lambda F, g: (
                _pipeline.from_rows(F.pipe, F.solve_rows(_pipeline.to_rows(F.pipe, g))),
                F._logdet(),
                F._inertia(),
                F._info(),
            )
        )(F, g)
    s_ref, l_ref = np.linalg.slogdet(Cd)
    ev = np.linalg.eigvalsh(Cd)
    return {
        "case": f"{name}/{curvature}/P={n_devices}",
        "split": sum(type(p).__name__ == "Chunks" for p in F.parts),
        "ok": bool(info.ok),
        "route": hessinv._diagnostics.ROUTES[int(info.route)],
        "solve_err": rel_err(flat(x), np.linalg.solve(Cd, flat(g))),
        "sign_ok": float(sign) == float(s_ref),
        "logdet_err": abs(float(logabs) - float(l_ref)) / max(1.0, abs(float(l_ref))),
        "inertia": [int(c) for c in inertia],
        "inertia_ref": [int((ev > 0).sum()), int((ev < 0).sum()), 0],
        "indefinite": bool(ev.min() < 0),
    }


# -- the subprocess: 2 and 4 devices ----------------------------------------------------------------


def _loop_lengths(jaxpr) -> list:
    """The length of every ``scan`` in a jaxpr, nested ones (inside ``shard_map``) included, and
    ``-1`` for every ``while``."""
    return [-1 if n == "while" else length for n, length in jaxpr_loops(jaxpr)]


def sequential_steps(n_layers: int, n_devices: int) -> dict:
    """The loops of the factorisation and one solve on a Stack of ``n_layers``: their lengths
    (shapes only, nothing runs), against the sequential route's."""
    from hessinv import _blocks, _riccati

    layers, params, z0 = stacked(depth=n_layers, w=2, B=2, block=dense_tanh)
    pipe = _pipeline.build(layers, params, z0)
    rows = _pipeline.to_rows(pipe, params)
    blk = jax.eval_shape(lambda r: _blocks.compute(pipe, r, z0), rows)
    mesh = mesh_of(n_devices)

    def sharded(b, g):
        return _sharded.factorize_blocks.__wrapped__(b, 0.1, mesh=mesh).solve_rows(g)

    def riccati(b, g):
        return _riccati.factorize_blocks.__wrapped__(b, 0.1).solve_rows(g)

    return {
        "n_layers": n_layers,
        "sharded": _loop_lengths(jax.make_jaxpr(sharded)(blk, rows).jaxpr),
        "riccati": _loop_lengths(jax.make_jaxpr(riccati)(blk, rows).jaxpr),
    }


def sharded_right_hand_sides() -> float:
    """``jax.vmap(F.solve)`` on a batch of right-hand sides sharded over the mesh's devices."""
    layers, params, z0, C = dense("stack_mlp", "hessian")
    mesh = mesh_of(4)
    F = hessinv.factorize(layers, params, z0, damping=0.05, method="parallel", mesh=mesh)
    gs = [like(params, seed=s) for s in range(4)]
    G = jax.tree.map(lambda *a: jnp.stack(a), *gs)
    G = jax.device_put(G, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("layers")))
    X = jax.jit(jax.vmap(F.solve))(G)
    Cd = C + 0.05 * np.eye(len(C))
    return max(rel_err(flat(jax.tree.map(lambda a: a[i], X)), np.linalg.solve(Cd, flat(g))) for i, g in enumerate(gs))


def _child() -> None:
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    assert jax.device_count() == 4, jax.devices()
    out = {
        "dense": [
            check_against_dense("stack_mlp", "hessian", 0.05, 4, public=False),
            check_against_dense("two_stacks", "hessian", 0.05, 2, public=False),
            check_against_dense("ggn_stack", "ggn", 0.1, 4, public=False),
        ],
        "steps": [sequential_steps(n, 4) for n in (32, 64)],
        "rhs_err": sharded_right_hand_sides(),
    }
    print("RESULTS " + json.dumps(out))


@functools.cache
def four_devices() -> dict:
    """Run this file as a script on 4 forced host devices and return what it found."""
    flags = os.environ.get("XLA_FLAGS", "")
    env = dict(os.environ, XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count=4 "
               "--xla_cpu_enable_concurrency_optimized_scheduler=false")
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    return json.loads(lines[-1][len("RESULTS ") :])


@pytest.mark.parametrize("k", range(3))
def test_matches_dense_on_several_devices(k):
    r = four_devices()["dense"][k]
    assert r["ok"] and r["route"] == "parallel", r
    assert r["split"] >= 1, r  # the long segments really were split over the devices
    assert r["solve_err"] < 1e-9, r
    assert r["sign_ok"] and r["logdet_err"] < 1e-10, r
    assert r["inertia"] == r["inertia_ref"], r
    assert r["indefinite"] == r["case"].startswith(("stack_mlp", "two_stacks")), r


def test_sequential_steps_are_depth_over_devices():
    """Every loop of the sharded factorisation and solve runs over one device's chunk
    (``n / P`` layers) or over the few leftover layers (``n mod P``); the boundary system is ``P``
    unrolled steps. The stage recursion loops over all ``n``."""
    for rec in four_devices()["steps"]:
        n = rec["n_layers"]
        assert -1 not in rec["sharded"] and max(rec["sharded"]) == n // 4, rec
        assert n in rec["riccati"], rec


def test_sharded_right_hand_sides():
    assert four_devices()["rhs_err"] < 1e-9


# -- one device: a 1-device mesh, bad input, the failure path ---------------------------------------


def test_one_device_mesh_matches_dense():
    r = check_against_dense("stack_mlp", "hessian", 0.05, 1)
    assert r["ok"] and r["split"] == 1 and r["solve_err"] < 1e-9 and r["logdet_err"] < 1e-10, r
    assert r["inertia"] == r["inertia_ref"], r


def test_bad_mesh_and_method():
    layers, params, z0 = stack_mlp()
    with pytest.raises(ValueError, match="one-dimensional"):
        two_d = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("a", "b"))
        hessinv.factorize(layers, params, z0, damping=0.1, method="parallel", mesh=two_d)
    with pytest.raises(ValueError, match="only method='parallel'"):
        hessinv.factorize(layers, params, z0, damping=0.1, method="riccati", mesh=mesh_of(1))
    with pytest.raises(ValueError, match="only method='parallel'"):
        hessinv.ihvp(layers, params, z0, like(params), damping=0.1, mesh=mesh_of(1))
    with pytest.raises(TypeError, match="jax.sharding.Mesh"):
        hessinv.factorize(layers, params, z0, damping=0.1, method="parallel", mesh=jax.devices())



def test_singular_free_end_pivot_raises_and_riccati_works():
    layers, params, z0 = stacked(depth=6, w=3, B=5, seed=5)
    layers[1] = hessinv.Stack(bias_layer, 6)
    params[1] = {"c": 0.1 * params[1]["c"]}
    g = like(params)
    assert bool(hessinv.factorize(layers, params, z0, damping=0.0, method="riccati").info().ok)
    with pytest.raises(hessinv.SingularPivotError, match="mesh.*method='riccati'"):
        hessinv.factorize(layers, params, z0, damping=0.0, method="parallel", mesh=mesh_of(1))
    F = _sharded.factorize_blocks(hessinv.blocks(layers, params, z0), 0.0, mesh=mesh_of(1))  # no eager checks
    info = F.info()
    assert not bool(info.ok) and 1 <= int(info.worst_layer) <= 6
    with pytest.raises(hessinv.SingularPivotError, match="mesh.*method='riccati'"):
        F.solve(g)
    with pytest.raises(hessinv.SingularPivotError, match="mesh.*method='riccati'"):
        hessinv.ihvp(layers, params, z0, g, damping=0.0, method="parallel", mesh=mesh_of(1))
    x, info = hessinv.ihvp(layers, params, z0, g, damping=0.0, method="parallel", mesh=mesh_of(1), return_info=True)
    assert not bool(info.ok)  # never a silent number
    # with damping the same pipeline is fine (the same compiled ihvp: the damping is traced)
    x, info = hessinv.ihvp(layers, params, z0, g, damping=1e-2, method="parallel", mesh=mesh_of(1), return_info=True)
    x_ref = hessinv.factorize(layers, params, z0, damping=1e-2, method="riccati").solve(g)
    assert bool(info.ok) and rel_err(flat(x), flat(x_ref)) < 1e-9


if __name__ == "__main__":
    _child()
