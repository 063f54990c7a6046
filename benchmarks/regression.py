"""Gauss-Newton against L-BFGS on a small deterministic regression, in one process.

    python -m benchmarks.regression              # seeds 0-9, to losses 1e-3, 1e-4, 1e-6 (~4 min, 2 CPU cores)
    python -m benchmarks.regression --seeds 0 --targets 1e-3

The network: 128 points ``x ∈ [-1, 1]`` → tanh 1→8 → 8 tanh layers 8→8 (a ``Stack``) → 8→1,
loss ``½ mean (f(x) − sin 3x₀)²``, 601 parameters, float64. Both optimisers run in their
documented optax loops, each step one jitted call, from the same initialisation, every program
compiled before the timing (``optax.lbfgs``'s state changes type after its first update, so its
step compiles twice): ``hessinv.optax.gauss_newton(layers)`` (Levenberg-Marquardt, default
settings, on the route ``auto`` picks), the same with Nielsen's damping update
(``lm_update="nielsen"``) instead of the threshold rule, the same without the in-update retries
(``lm_retries=0``: one damping per update, as classic LM), the same with
``damping="trust_region"``, and ``optax.lbfgs`` (memory 10 and 50, its default zoom line
search); on ``--riccati-seeds`` also Gauss-Newton LM with the stage recursion forced (the route
matters). Each step returns the loss after it from what it computed anyway (Gauss-Newton: its
trial loss, or the loss where the step was rejected; L-BFGS: its line search's value at the new
point), and Gauss-Newton gets the loss at the current point as ``value=``, as L-BFGS does.
Reported per method and target: the steps and wall-clock seconds (compilation excluded) to
reach it, or the loss reached within the step and time caps. Writes
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


def _race(step, p, s, targets, max_steps, max_seconds):
    """Steps and seconds to each of ``targets`` (descending); stops at the last or a cap."""
    common.warm_up(step, p, s)
    programs = step._cache_size()
    reached, t0 = {}, time.perf_counter()
    for i in range(max_steps):
        p, s, v = step(p, s)
        v = float(v)
        for t in targets:
            if v < t and str(t) not in reached:
                reached[str(t)] = {"steps": i + 1, "seconds": time.perf_counter() - t0}
        if v < targets[-1] or time.perf_counter() - t0 > max_seconds:
            break
    out = {"reached": reached, "seconds": time.perf_counter() - t0, "loss": v, "stopped_after": i + 1}
    out["recompiled_during_race"] = step._cache_size() != programs
    return out


def gauss_newton(layers, params, z0, method, targets, max_steps=300, max_seconds=60.0, **settings):
    opt = hessinv.optax.gauss_newton(layers, method=method, **settings)

    @jax.jit
    def step(p, s):
        v, g = jax.value_and_grad(lambda p: hessinv.loss(layers, p, z0))(p)
        u, s = opt.update(g, s, p, z0=z0, value=v)
        i = optax.tree_utils.tree_get(s, "info")  # the loss after the step, computed by the step
        return optax.apply_updates(p, u), s, jax.numpy.where(i.accepted, i.trial_loss, i.loss)

    return _race(step, params, opt.init(params), targets, max_steps, max_seconds)


def lbfgs(layers, params, z0, memory, targets, max_steps=50000, max_seconds=60.0):
    def loss(p):
        return hessinv.loss(layers, p, z0)

    opt = optax.lbfgs(memory_size=memory)
    value_and_grad = optax.value_and_grad_from_state(loss)

    @jax.jit
    def step(p, s):
        v, g = value_and_grad(p, state=s)
        u, s = opt.update(g, s, p, value=v, grad=g, value_fn=loss)
        # the loss after the step: the line search's value at the new point (reused next step)
        return optax.apply_updates(p, u), s, optax.tree_utils.tree_get(s, "value")

    return _race(step, params, opt.init(params), targets, max_steps, max_seconds)


def run(seeds=range(10), targets=(1e-3, 1e-4, 1e-6), riccati_seeds=(0,), write=True):
    targets = tuple(sorted(targets, reverse=True))
    rows = []
    for seed in seeds:
        layers, params, z0 = regression(128, 8, 8, seed=seed, inputs=1)
        row = {"seed": seed, "auto_route": hessinv.route(layers, params, z0, damping=1e-3, curvature="ggn")}
        row["gauss_newton_lm"] = gauss_newton(layers, params, z0, "auto", targets)
        row["gauss_newton_lm_nielsen"] = gauss_newton(layers, params, z0, "auto", targets, lm_update="nielsen")
        row["gauss_newton_lm_no_retries"] = gauss_newton(layers, params, z0, "auto", targets, lm_retries=0)
        row["gauss_newton_tr"] = gauss_newton(layers, params, z0, "auto", targets, damping="trust_region")
        if seed in riccati_seeds:
            row["gauss_newton_lm_riccati"] = gauss_newton(
                layers, params, z0, "riccati", targets, max_steps=60, max_seconds=20.0
            )
        for m in (10, 50):
            row[f"lbfgs_{m}"] = lbfgs(layers, params, z0, m, targets)
        rows.append(row)
        print(seed, {k: _brief(v, targets) for k, v in row.items() if isinstance(v, dict)}, flush=True)
    out = {
        "meta": common.machine() | {"targets": list(targets), "network": "1-8-(8x8)-1 tanh, 128 points, 601 params"},
        "rows": rows,
        "summary": summary(rows, targets),
    }
    for t, s in out["summary"].items():
        print(f"loss {t}: " + "  ".join(f"{k} {v}" for k, v in s.items()))
    if write:
        common.write_json(out, "regression")
    return out


def _brief(r, targets):
    return " ".join(
        f"{r['reached'][str(t)]['steps']}/{r['reached'][str(t)]['seconds']:.3f}s" if str(t) in r["reached"] else "-"
        for t in targets
    )


def summary(rows, targets):
    """Per target: each method's median seconds over the seeds that reached it (and how many did),
    and how many seeds each method was first on."""
    methods = [k for k in rows[0] if isinstance(rows[0][k], dict) and "riccati" not in k]
    out = {}
    for t in targets:
        key, s = str(t), {}
        for k in methods:
            times = sorted(r[k]["reached"][key]["seconds"] for r in rows if key in r[k]["reached"])
            s[k] = {"reached": len(times), "median_s": times[len(times) // 2] if times else None}
        for r in rows:
            got = {k: r[k]["reached"][key]["seconds"] for k in methods if key in r[k]["reached"]}
            if got:
                first = min(got, key=got.get)
                s[first]["first_on"] = s[first].get("first_on", 0) + 1
        out[key] = s
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    ap.add_argument("--targets", type=float, nargs="+", default=[1e-3, 1e-4, 1e-6])
    ap.add_argument("--riccati-seeds", type=int, nargs="*", default=[0])
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    run(a.seeds, a.targets, a.riccati_seeds, write=not a.no_write)


if __name__ == "__main__":
    main()
