"""The paper's Woodbury route against the stage (Riccati) recursion and the dense solve.

A square pipeline (every ∂f_l/∂x_l square, so the Woodbury route applies): batch 1, width W,
``L`` elementwise bias layers ``z + 0.1 (softplus(z + c) − softplus(z))`` between a tanh input
layer and a one-parameter loss head. For each depth we time, jitted and after a warm-up,

* ``riccati``: factorise + solve from the per-layer blocks (the default method);
* ``woodbury``: the same with the paper's section 6 route;
* ``dense``: ``jax.hessian`` + ``jnp.linalg.solve`` (while the Hessian has ≤ 4000 rows),

and the relative residual ``|(H + λI) x − g| / |g|`` with ``H v`` from Pearlmutter's trick
(independent of the blocks), plus the relative difference to the dense solution.
The per-layer blocks (shared by both structured methods) are timed separately.

Run: ``PYTHONPATH=. python benchmarks/woodbury.py`` (about 2-3 minutes on 2 CPU cores).
Writes ``benchmarks/results/woodbury_cpu.json`` and ``woodbury_cpu.png``.
"""

from __future__ import annotations

import faulthandler
import json
import os
import platform
import subprocess
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

import hessinv  # noqa: E402
from hessinv import _pipeline, _riccati, _woodbury  # noqa: E402

W = 8
DEPTHS = [16, 64, 256, 1024, 4096]
DENSE_MAX = 4000
DAMPING = 0.0
REPEATS = 5
TIMEOUT_S = 60
OUT = os.path.join(os.path.dirname(__file__), "results")


def first(z, c):
    return jnp.tanh(z + c)


def bias_sp(z, c):
    return z + 0.1 * (jax.nn.softplus(z + c) - jax.nn.softplus(z))


def head(z, x):
    return (1 + x[0] ** 2) * jnp.sum(jax.nn.softplus(z))


def pipeline(L):
    k0, k1, k2 = jax.random.split(jax.random.PRNGKey(0), 3)
    layers = (first, hessinv.Stack(bias_sp, L), head)
    params = [0.5 * jax.random.normal(k1, (W,)), 0.5 * jax.random.normal(k2, (L, W)), jnp.array([0.7])]
    return layers, params, jax.random.normal(k0, (W,))


def timed(f, *args):
    jax.block_until_ready(f(*args))  # warm-up (compiles)
    ts = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)), f(*args)


def run_depth(L):
    layers, params, z0 = pipeline(L)
    flat, unravel = ravel_pytree(params)
    n = flat.shape[0]
    g = unravel(jax.random.normal(jax.random.PRNGKey(1), (n,)))
    pipe = _pipeline.build(layers, params, z0)
    rows = _pipeline.to_rows(pipe, g)

    blocks_fn = jax.jit(lambda p: hessinv.blocks(layers, p, z0))
    t_blocks, blk = timed(blocks_fn, params)
    solvers = {
        "riccati": jax.jit(lambda b, r: _riccati.factorize_blocks(b, DAMPING).solve_rows(r)),
        "woodbury": jax.jit(lambda b, r: _woodbury.factorize_blocks(b, DAMPING).solve_rows(r)),
    }
    hvp = jax.jit(lambda v: hessinv.hvp(layers, params, z0, v))
    gflat = ravel_pytree(g)[0]
    res = {"L": L, "n_params": int(n), "t_blocks": t_blocks}
    xs = {}
    for name, f in solvers.items():
        t, x_rows = timed(f, blk, rows)
        x = ravel_pytree(_pipeline.from_rows(pipe, x_rows))[0]
        r = ravel_pytree(hvp(unravel(x)))[0] + DAMPING * x - gflat
        res[f"t_{name}"] = t
        res[f"residual_{name}"] = float(jnp.linalg.norm(r) / jnp.linalg.norm(gflat))
        xs[name] = x
    if n <= DENSE_MAX:
        dense = jax.jit(lambda p, gf: jnp.linalg.solve(hessinv.hessian(layers, p, z0) + DAMPING * jnp.eye(n), gf))
        t, xd = timed(dense, params, gflat)
        r = ravel_pytree(hvp(unravel(xd)))[0] + DAMPING * xd - gflat
        res["t_dense"] = t
        res["residual_dense"] = float(jnp.linalg.norm(r) / jnp.linalg.norm(gflat))
        for name, x in xs.items():
            res[f"vs_dense_{name}"] = float(jnp.linalg.norm(x - xd) / jnp.linalg.norm(xd))
    res["woodbury_vs_riccati"] = float(jnp.linalg.norm(xs["woodbury"] - xs["riccati"]) / jnp.linalg.norm(xs["riccati"]))
    return res


def main():
    os.makedirs(OUT, exist_ok=True)
    machine = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "device": str(jax.devices()[0]),
        "device_kind": jax.devices()[0].device_kind,
        "loadavg_at_start": os.getloadavg(),
        "note": "2-core CPU; times are medians after a warm-up; see loadavg_at_start for other load",
    }
    results = []
    for L in DEPTHS:
        # One fresh process per depth, with a timeout: at L >= 1024 the first call of the jitted
        # Woodbury solve was seen to stall on this machine (all threads waiting on a futex, no
        # CPU used; see docs/woodbury.md). A stalled depth is recorded as an error.
        t0 = time.perf_counter()
        try:
            p = subprocess.run(
                [sys.executable, "-X", "faulthandler", __file__, str(L)], capture_output=True, text=True, timeout=TIMEOUT_S
            )
            line = p.stdout.strip().splitlines()[-1] if p.returncode == 0 else None
            r = json.loads(line) if line else {"L": L, "error": p.stderr[-2000:]}
        except subprocess.TimeoutExpired as e:
            r = {"L": L, "error": f"timed out after {TIMEOUT_S} s", "stderr": (e.stderr or b"")[-2000:].decode(errors="replace")}
        r["wall_incl_compile"] = time.perf_counter() - t0
        results.append(r)
        print(json.dumps(r), flush=True)
    results = [r for r in results if "error" not in r] + [r for r in results if "error" in r]
    setup = {"width": W, "batch": 1, "dtype": "float64", "damping": DAMPING, "repeats": REPEATS, "timing": "median"}
    with open(os.path.join(OUT, "woodbury_cpu.json"), "w") as f:
        json.dump({"machine": machine, "setup": setup, "results": results}, f, indent=1)
    plot(results)


def plot(results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [r for r in results if "error" not in r]
    Ls = [r["L"] for r in results]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name, m in [("riccati", "o-"), ("woodbury", "s-"), ("dense", "^-")]:
        pts = [(r["L"], r[f"t_{name}"]) for r in results if f"t_{name}" in r]
        if pts:
            ax1.loglog(*zip(*pts), m, label=name)
        pts = [(r["L"], r[f"residual_{name}"]) for r in results if f"residual_{name}" in r]
        if pts:
            ax2.loglog(*zip(*pts), m, label=name)
    ax1.loglog(Ls, [r["t_blocks"] for r in results], "k:", label="blocks (shared)")
    ax1.set(xlabel="depth L", ylabel="seconds (median)", title=f"time, width {W}, batch 1, float64, CPU")
    ax2.set(xlabel="depth L", ylabel="|(H+λI)x − g| / |g|", title="relative residual")
    for ax in (ax1, ax2):
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(OUT, "woodbury_cpu.png"), dpi=120)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        faulthandler.dump_traceback_later(TIMEOUT_S - 10, exit=True)
        print(json.dumps(run_depth(int(sys.argv[1]))), flush=True)
    else:
        main()
