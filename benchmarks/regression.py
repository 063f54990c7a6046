"""Gauss-Newton against L-BFGS on a small deterministic regression, in one process.

    python -m benchmarks.regression              # seeds 0-4, to a loss of 1e-4 (~1 min, 2 CPU cores)
    python -m benchmarks.regression --seeds 0 --target 1e-6

The network: 128 points ``x ∈ [-1, 1]`` → tanh 1→8 → 8 tanh layers 8→8 (a ``Stack``) → 8→1,
loss ``½ mean (f(x) − sin 3x₀)²``, 601 parameters, float64. Both optimisers run in their
documented optax loops, each step one jitted call, from the same initialisation, every program compiled before the timing
(``optax.lbfgs``'s state changes type after its first update, so its step compiles twice):
``hessinv.optax.gauss_newton(layers, method=...)`` (Levenberg-Marquardt, default settings) with
the route ``auto`` picks and with the stage recursion forced, the same with
``damping="trust_region"`` (default settings, ``auto``'s route), and ``optax.lbfgs`` (memory 10
and 50, its default zoom line search). Reported: steps and wall-clock seconds (compilation
excluded) to the target loss, or the loss reached within the step cap. Writes
``results/regression_<platform>.json``.
"""

from __future__ import annotations

import argparse
import time

import jax
import optax

import hessinv

from . import common
from .shapes import regression


def _race(step, p, s, target, max_steps, max_seconds):
    common.warm_up(step, p, s)
    programs = step._cache_size()
    t0 = time.perf_counter()
    for i in range(max_steps):
        p, s, v = step(p, s)
        v = float(v)
        if v < target or time.perf_counter() - t0 > max_seconds:
            break
    out = {"steps": i + 1 if v < target else None, "seconds": time.perf_counter() - t0, "loss": v}
    if v >= target:
        out["stopped_after"] = i + 1
    out["recompiled_during_race"] = step._cache_size() != programs
    return out


def gauss_newton(layers, params, z0, method, target, max_steps=300, max_seconds=60.0, damping="lm"):
    opt = hessinv.optax.gauss_newton(layers, method=method, damping=damping)

    @jax.jit
    def step(p, s):
        g = jax.grad(lambda p: hessinv.loss(layers, p, z0))(p)
        u, s = opt.update(g, s, p, z0=z0)
        p = optax.apply_updates(p, u)
        return p, s, hessinv.loss(layers, p, z0)

    return _race(step, params, opt.init(params), target, max_steps, max_seconds)


def lbfgs(layers, params, z0, memory, target, max_steps=20000, max_seconds=60.0):
    def loss(p):
        return hessinv.loss(layers, p, z0)

    opt = optax.lbfgs(memory_size=memory)
    value_and_grad = optax.value_and_grad_from_state(loss)

    @jax.jit
    def step(p, s):
        v, g = value_and_grad(p, state=s)
        u, s = opt.update(g, s, p, value=v, grad=g, value_fn=loss)
        return optax.apply_updates(p, u), s, v

    return _race(step, params, opt.init(params), target, max_steps, max_seconds)


def run(seeds=range(5), target=1e-4, write=True):
    rows = []
    for seed in seeds:
        layers, params, z0 = regression(128, 8, 8, seed=seed, inputs=1)
        row = {"seed": seed, "auto_route": hessinv.route(layers, params, z0, damping=1e-3, curvature="ggn")}
        row["gauss_newton_auto"] = gauss_newton(layers, params, z0, "auto", target)
        row["gauss_newton_riccati"] = gauss_newton(
            layers, params, z0, "riccati", target, max_steps=60, max_seconds=20.0
        )
        row["gauss_newton_tr"] = gauss_newton(layers, params, z0, "auto", target, damping="trust_region")
        for m in (10, 50):
            row[f"lbfgs_{m}"] = lbfgs(layers, params, z0, m, target)
        rows.append(row)
        print(
            seed,
            {
                k: (v["steps"], round(v["seconds"], 3), f"{v['loss']:.2e}")
                for k, v in row.items()
                if isinstance(v, dict)
            },
            flush=True,
        )
    out = {
        "meta": common.machine() | {"target": target, "network": "1-8-(8x8)-1 tanh, 128 points, 601 params"},
        "rows": rows,
    }
    if write:
        common.write_json(out, "regression")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(5)))
    ap.add_argument("--target", type=float, default=1e-4)
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    run(a.seeds, a.target, write=not a.no_write)


if __name__ == "__main__":
    main()
