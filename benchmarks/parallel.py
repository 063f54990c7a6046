"""The depth-parallel route (``method="parallel"``, associative scans) against the sequential stage
recursion (``method="riccati"``) on the core network, as depth grows.

    python -m benchmarks.parallel                       # L = 64, 256, 1024, 4096
    python -m benchmarks.parallel --depth 64 256        # a subset
    python -m benchmarks.parallel --ihvp                # also hessinv.ihvp end to end, and dense

The network is the core benchmark's tanh MLP (batch 4, width 4, ``L`` layers in one
:class:`hessinv.Stack`, cross-entropy head; :func:`benchmarks.common.mlp`), the Hessian with
``λ = 0.1`` (indefinite at this random point). For each depth, from the same per-layer blocks
(computed once, not timed): factorise + one solve, jitted, warmed up and timed with
``block_until_ready`` (median of the repeats), for both routes, plus the compile time, the relative
difference of the two answers and the parallel route's own health (``info().ok``, ``min_rcond``).

On a CPU, which runs the sequential recursion's tiny steps as fast as their flops allow, the
parallel route is expected to be slower (it does several times the work); its point is an
accelerator, where the sequential recursion is bound by the number of steps. The figures record
``jax.devices()`` so CPU and accelerator runs can be told apart.

With ``--ihvp``, each depth also times the user's call, ``jax.jit`` of ``hessinv.ihvp(...,
method=m)`` from the parameters (the blocks included), for the stage recursion, the parallel
route and the dense route (the dense Hessian formed and factorised; only up to ``--dense-max-n``
parameters): the comparison an accelerator run needs, where the sequential recursion is bound by
its number of steps and the dense solve by its ``n³``.

Writes ``results/parallel_<platform>.json``.

XLA:CPU in jaxlib 0.10.2 can hang (never return) on a program with several independent batched
linear-algebra calls, as the parallel route's is (``jit`` of four ``jnp.linalg.inv`` of
``(64, 20, 20)`` hangs too); its concurrency-optimised scheduler is the cause, so this benchmark
turns it off unless ``XLA_FLAGS`` is already set.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_enable_concurrency_optimized_scheduler=false")

import jax  # noqa: E402  (after XLA_FLAGS)
import numpy as np

import hessinv
from hessinv import _blocks, _parallel, _pipeline, _riccati

from . import common

DAMPING = 0.1
ROUTES = {"riccati": _riccati.factorize_blocks, "parallel": _parallel.factorize_blocks}


def one_depth(depth: int, repeats: int) -> dict:
    layers, params, z0, g = common.mlp(depth)
    pipe = _pipeline.build(layers, params, z0)
    blk = jax.block_until_ready(_blocks.compute(pipe, _pipeline.rows(pipe, params), z0))
    g_rows = _pipeline.rows(pipe, g)
    rec = {"depth": depth, "n": _pipeline.n_params(pipe)}
    xs = {}
    for name, factorize in ROUTES.items():

        def solve(blk, g_rows, factorize=factorize):
            return factorize(blk, DAMPING).solve_rows(g_rows)

        r, x = common.bench(solve, blk, g_rows, repeats=repeats, warmup=1, max_seconds=60)
        xs[name] = np.concatenate([np.ravel(a) for a in x])
        rec[name] = r
    info = jax.jit(lambda b: _parallel.factorize_blocks(b, DAMPING).info())(blk)
    rec["parallel_ok"], rec["parallel_min_rcond"] = bool(info.ok), float(info.min_rcond)
    rec["rel_diff"] = float(np.linalg.norm(xs["parallel"] - xs["riccati"]) / np.linalg.norm(xs["riccati"]))
    rec["parallel_over_riccati"] = rec["parallel"]["time_s"] / rec["riccati"]["time_s"]
    print(
        f"L={depth:>5} n={rec['n']:>7}  riccati {rec['riccati']['time_s'] * 1e3:9.2f} ms  "
        f"parallel {rec['parallel']['time_s'] * 1e3:9.2f} ms  (x{rec['parallel_over_riccati']:.2f}; "
        f"compile {rec['riccati']['compile_s']:.1f} / {rec['parallel']['compile_s']:.1f} s)  "
        f"rel. diff {rec['rel_diff']:.1e}  ok {rec['parallel_ok']}",
        flush=True,
    )
    return rec


def end_to_end(depth: int, repeats: int, dense_max_n: int) -> dict:
    """``jax.jit(hessinv.ihvp)`` by each route from the parameters, and each answer's relative
    difference to the stage recursion's."""
    layers, params, z0, g = common.mlp(depth)
    n = sum(int(np.size(a)) for a in jax.tree.leaves(params))
    rec, xs = {}, {}
    for method in ("riccati", "parallel", "dense"):
        if method == "dense" and n > dense_max_n:
            rec[method] = {"skipped": f"n = {n} > --dense-max-n {dense_max_n}"}
            continue

        def solve(params, g, method=method):
            return hessinv.ihvp(layers, params, z0, g, damping=DAMPING, method=method)

        rec[method], x = common.bench(solve, params, g, repeats=repeats, warmup=1, max_seconds=60)
        xs[method] = np.concatenate([np.ravel(a) for a in jax.tree.leaves(x)])
    for method, x in xs.items():
        rec[method]["rel_diff"] = float(np.linalg.norm(x - xs["riccati"]) / np.linalg.norm(xs["riccati"]))
    times = "  ".join(
        f"{m} {r['time_s'] * 1e3:9.2f} ms" if "time_s" in r else f"{m} skipped" for m, r in rec.items()
    )
    print(f"L={depth:>5} n={n:>7}  ihvp: {times}", flush=True)
    return rec


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, nargs="+", default=[64, 256, 1024, 4096])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ihvp", action="store_true", help="also time hessinv.ihvp end to end, and the dense route")
    ap.add_argument("--dense-max-n", type=int, default=6000)
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    out = {
        "machine": common.machine(),
        "devices": [str(d) for d in jax.devices()],
        "network": "tanh MLP, batch 4, width 4, Stack of L layers, cross-entropy head (benchmarks.common.mlp)",
        "curvature": "hessian",
        "damping": DAMPING,
        "timing": "factorise + one solve from precomputed blocks, jitted, 1 warm-up, median of the repeats",
        "depths": [one_depth(d, a.repeats) for d in a.depth],
    }
    if a.ihvp:
        for rec in out["depths"]:
            rec["ihvp"] = end_to_end(rec["depth"], a.repeats, a.dense_max_n)
    if not a.no_write:
        print("wrote", common.write_json(out, "parallel"))
    return out


if __name__ == "__main__":
    main()
