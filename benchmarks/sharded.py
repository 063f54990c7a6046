"""The layers split over devices (``method="parallel"``, ``mesh=``) against the stage recursion on
one device, on the core network: 1 against 2 forced host devices on a CPU.

    python -m benchmarks.sharded                          # L = 1024, 2048, 4096, 8192, 16384
    python -m benchmarks.sharded --depth 1024 4096        # a subset

The network is the core benchmark's tanh MLP (batch 4, width 4, cross-entropy head;
:func:`benchmarks.common.mlp`) with ``L + 1`` tanh layers, so that the ``Stack`` after the first
layer (which reads the data and is never split) has ``L`` layers, a multiple of the device count;
the Hessian with ``λ = 0.1`` (indefinite at this random point). The number of devices is fixed
when JAX starts, so each device count runs in its own subprocess
(``XLA_FLAGS=--xla_force_host_platform_device_count=P``); in each, for every depth, from the same
per-layer blocks (computed once and placed on every device, not timed):

* ``riccati`` (1 device only): ``method="riccati"``, the sequential stage recursion;
* ``sharded``: the partitioned elimination over a mesh of all ``P`` devices;

each timed for factorise + one solve and for one solve with a kept factorisation: jitted and
compiled first, then the repeats in rounds (every program once per round, each call ended with
``block_until_ready``) and their median. On 2 devices the stage recursion also runs on device 0
alone, in the same rounds (``riccati_device0``): the fairest comparison on a machine whose load
drifts. The speed-ups are the 1-device ``riccati`` time (and that one) over the 2-device
``sharded`` time. The record keeps ``jax.devices()`` and the load average before and after each
subprocess: on a shared machine the second core may be busy, and then no speed-up can show.

Writes ``results/sharded_<platform>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

DAMPING = 0.1
TARGET = 1.5  # the speed-up asked of the 2-device solve at L >= 4096
FLAGS = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def child(n_devices: int, depths, repeats: int) -> dict:
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from hessinv import _blocks, _pipeline, _riccati, _sharded

    from . import common

    jax.config.update("jax_enable_x64", True)
    assert jax.device_count() == n_devices, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("layers",))
    everywhere = NamedSharding(mesh, PartitionSpec())
    dev0 = jax.devices()[0]
    # name -> (factorise, where the blocks live); on 2 devices the stage recursion also runs on
    # device 0 alone, timed in turn with the sharded route (the same load for both)
    routes = {"sharded": (lambda b: _sharded.factorize_blocks.__wrapped__(b, DAMPING, mesh=mesh), everywhere)}
    routes["riccati" if n_devices == 1 else "riccati_device0"] = (
        lambda b: _riccati.factorize_blocks.__wrapped__(b, DAMPING),
        dev0,
    )
    out = {"n_devices": n_devices, "devices": [str(d) for d in jax.devices()], "loadavg_start": os.getloadavg()}
    out["machine"], out["depths"] = common.machine(), []
    for L in depths:
        layers, params, z0, g = common.mlp(L + 1)
        pipe = _pipeline.build(layers, params, z0)
        blk0 = _blocks.compute(pipe, _pipeline.rows(pipe, params), z0)
        rec, xs, calls = {"depth": L, "n": _pipeline.n_params(pipe)}, {}, {}
        for name, (factorize, where) in routes.items():
            blk, g_rows = jax.block_until_ready(jax.device_put((blk0, _pipeline.rows(pipe, g)), where))
            fs, c_fs = common.compile_fn(lambda b, g, f=factorize: f(b).solve_rows(g), blk, g_rows)
            F = jax.jit(factorize)(blk)
            s, c_s = common.compile_fn(lambda F, g: F.solve_rows(g), F, g_rows)
            calls[name] = {"factor_solve": (fs, (blk, g_rows)), "solve": (s, (F, g_rows))}
            rec[name] = {"compile_s": {"factor_solve": c_fs, "solve": c_s}}
            xs[name] = np.concatenate([np.ravel(a) for a in jax.block_until_ready(fs(blk, g_rows))])
            if name == "sharded":
                rec["sharded_ok"] = bool(jax.jit(lambda F: F._info().ok)(F))
        timed = common.time_interleaved({(n, w): calls[n][w] for n in calls for w in calls[n]}, repeats)
        for (n, w), t in timed.items():
            rec[n][w] = t
        ref = [k for k in xs if k != "sharded"][0]
        rec["rel_diff"] = float(np.linalg.norm(xs["sharded"] - xs[ref]) / np.linalg.norm(xs[ref]))
        print(
            f"P={n_devices} L={L:>6}  "
            + "  ".join(
                f"{k} {rec[k]['factor_solve']['time_s'] * 1e3:8.1f} ms (solve {rec[k]['solve']['time_s'] * 1e3:6.1f})"
                for k in routes
            ),
            file=sys.stderr,
            flush=True,
        )
        out["depths"].append(rec)
    out["loadavg_end"] = os.getloadavg()
    return out


def run_child(n_devices: int, depths, repeats: int) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"{FLAGS} --xla_force_host_platform_device_count={n_devices}")
    cmd = [sys.executable, "-m", "benchmarks.sharded", "--child", str(n_devices), "--repeats", str(repeats)]
    proc = subprocess.run(cmd + ["--depth", *map(str, depths)], env=env, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(common_jsonable(child(a.child, a.depth, a.repeats))))
        return None
    one, two = run_child(1, a.depth, a.repeats), run_child(2, a.depth, a.repeats)
    rows = []
    for r1, r2 in zip(one["depths"], two["depths"]):
        ric, sh1, sh2, ric0 = r1["riccati"], r1["sharded"], r2["sharded"], r2["riccati_device0"]
        speed = {}
        for what in ("factor_solve", "solve"):
            t2 = sh2[what]["time_s"]
            speed[f"{what}_speedup_vs_riccati"] = ric[what]["time_s"] / t2
            speed[f"{what}_speedup_vs_riccati_same_process"] = ric0[what]["time_s"] / t2
            speed[f"{what}_speedup_vs_sharded_1dev"] = sh1[what]["time_s"] / t2
        rows.append({"depth": r1["depth"], "n": r1["n"], "one_device": r1, "two_devices": r2, **speed})
        print(
            f"L={r1['depth']:>6}  factorise+solve: riccati {ric['factor_solve']['time_s'] * 1e3:7.1f} ms "
            f"(in the 2-device process {ric0['factor_solve']['time_s'] * 1e3:7.1f}), sharded on 2 devices "
            f"{sh2['factor_solve']['time_s'] * 1e3:7.1f} ms: x{speed['factor_solve_speedup_vs_riccati']:.2f} "
            f"(x{speed['factor_solve_speedup_vs_riccati_same_process']:.2f});  solve: {ric['solve']['time_s'] * 1e3:6.1f} "
            f"({ric0['solve']['time_s'] * 1e3:6.1f}) / {sh2['solve']['time_s'] * 1e3:6.1f} ms: "
            f"x{speed['solve_speedup_vs_riccati']:.2f} (x{speed['solve_speedup_vs_riccati_same_process']:.2f})",
            flush=True,
        )
    deep = [r for r in rows if r["depth"] >= 4096]
    out = {
        "network": "tanh MLP, batch 4, width 4, L + 1 layers (a Stack of L after the first), cross-entropy head "
        "(benchmarks.common.mlp(L + 1))",
        "curvature": "hessian",
        "damping": DAMPING,
        "timing": "from precomputed blocks (on every device; on device 0 for the stage recursion); jitted and "
        "compiled, one call to check, then the repeats in rounds (every program once per round) and their "
        "median; factor_solve = factorise + one solve, solve = one solve with a kept factorisation",
        "xla_flags": FLAGS,
        "one_device": {k: one[k] for k in ("devices", "machine", "loadavg_start", "loadavg_end")},
        "two_devices": {k: two[k] for k in ("devices", "machine", "loadavg_start", "loadavg_end")},
        "target": f"sharded solve on 2 devices >= {TARGET}x the 1-device stage recursion at L >= 4096",
        "target_met_factor_solve": bool(deep) and all(r["factor_solve_speedup_vs_riccati"] >= TARGET for r in deep),
        "target_met_solve": bool(deep) and all(r["solve_speedup_vs_riccati"] >= TARGET for r in deep),
        "target_met_solve_same_process": bool(deep)
        and all(r["solve_speedup_vs_riccati_same_process"] >= TARGET for r in deep),
        "depths": rows,
    }
    if not a.no_write:
        from . import common

        print("wrote", common.write_json(out, "sharded"))
    return out


def common_jsonable(x):
    from . import common

    return common._jsonable(x)


if __name__ == "__main__":
    main()
