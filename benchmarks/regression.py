"""Gauss-Newton against L-BFGS on a small deterministic regression, in one process.

    python -m benchmarks.regression              # seeds 0-9, to losses 1e-3, 1e-4, 1e-6 (~8 min, 2 CPU cores)
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
reach it, or the loss reached within the step and time caps; the loss after every step against
wall-clock (thinned after 200 steps); and, after each seed's races, one step of each method from
its first state timed in turn (``--cost-rounds`` rounds; ``interleaved_step_s``). Writes
``results/regression_<platform>.json`` and ``.png`` (loss against wall-clock for the first seed,
median seconds to each target).
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
import optax

import hessinv

from . import common
from .shapes import regression


def _race(step, p, s, targets, max_steps, max_seconds, loss0=None):
    """Steps and seconds to each of ``targets`` (descending); stops at the last or a cap.
    ``loss0``, the loss at the start, begins the recorded curve at time 0."""
    common.warm_up(step, p, s)
    programs = step._cache_size()
    curve = [] if loss0 is None else [(0.0, loss0)]
    reached, t0 = {}, time.perf_counter()
    for i in range(max_steps):
        p, s, v = step(p, s)
        v = float(v)
        now = time.perf_counter() - t0
        curve.append((now, v))
        for t in targets:
            if v < t and str(t) not in reached:
                reached[str(t)] = {"steps": i + 1, "seconds": now}
        if v < targets[-1] or now > max_seconds:
            break
    out = {"reached": reached, "seconds": time.perf_counter() - t0, "loss": v, "stopped_after": i + 1}
    out["recompiled_during_race"] = step._cache_size() != programs
    out["curve"] = _thin(curve)
    return out


def _thin(curve, first=200, rest=200):
    """``(seconds, loss)`` after every step up to ``first``, then about ``rest`` log-spaced ones and the last."""
    if len(curve) <= first + rest:
        return curve
    idx = sorted(set(range(first)) | set(np.geomspace(first, len(curve) - 1, rest).astype(int).tolist()))
    return [curve[i] for i in idx]


def gauss_newton(layers, params, z0, method, **settings):
    """``(step, state)``: the jitted step of ``hessinv.optax.gauss_newton`` and its first state."""
    opt = hessinv.optax.gauss_newton(layers, method=method, **settings)

    @jax.jit
    def step(p, s):
        v, g = jax.value_and_grad(lambda p: hessinv.loss(layers, p, z0))(p)
        u, s = opt.update(g, s, p, z0=z0, value=v)
        i = optax.tree_utils.tree_get(s, "info")  # the loss after the step, computed by the step
        return optax.apply_updates(p, u), s, jax.numpy.where(i.accepted, i.trial_loss, i.loss)

    return step, opt.init(params)


def lbfgs(layers, params, z0, memory):
    """``(step, state)``: the jitted step of ``optax.lbfgs(memory_size=memory)`` and its first state."""
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

    return step, opt.init(params)


def run(seeds=range(10), targets=(1e-3, 1e-4, 1e-6), riccati_seeds=(0,), write=True, cost_rounds=20):
    targets = tuple(sorted(targets, reverse=True))
    rows = []
    for seed in seeds:
        layers, params, z0 = regression(128, 8, 8, seed=seed, inputs=1)
        row = {"seed": seed, "auto_route": hessinv.route(layers, params, z0, damping=1e-3, curvature="ggn")}
        loss0 = float(hessinv.loss(layers, params, z0))
        methods = {
            "gauss_newton_lm": gauss_newton(layers, params, z0, "auto"),
            "gauss_newton_lm_nielsen": gauss_newton(layers, params, z0, "auto", lm_update="nielsen"),
            "gauss_newton_lm_no_retries": gauss_newton(layers, params, z0, "auto", lm_retries=0),
            "gauss_newton_tr": gauss_newton(layers, params, z0, "auto", damping="trust_region"),
            "lbfgs_10": lbfgs(layers, params, z0, 10),
            "lbfgs_50": lbfgs(layers, params, z0, 50),
        }
        for name, (step, state) in methods.items():
            caps = (300, 60.0) if name.startswith("gauss") else (50000, 60.0)
            row[name] = _race(step, params, state, targets, *caps, loss0=loss0)
        if seed in riccati_seeds:
            step, state = gauss_newton(layers, params, z0, "riccati")
            row["gauss_newton_lm_riccati"] = _race(step, params, state, targets, 60, 20.0)
        # One step of each from its first state, in turn (the machine's load falls on all alike).
        cost = common.time_interleaved({k: (st, (params, s0)) for k, (st, s0) in methods.items()}, rounds=cost_rounds)
        for k, c in cost.items():
            row[k]["interleaved_step_s"] = {"median": c["time_s"], "min": c["min_s"]}
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
        plot(out, common.result_path("regression", "png"))
    return out


def plot(record, path, seed_index=0):
    """Loss against wall-clock for one seed, and each method's median seconds to each target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, targets = record["rows"], record["meta"]["targets"]
    row = rows[seed_index]
    names = [k for k in row if isinstance(row[k], dict) and "curve" in row[k] and "riccati" not in k]
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(13, 4.6))
    for i, n in enumerate(names):
        t, v = np.array(row[n]["curve"]).T
        a0.plot(np.maximum(t, 1e-4), v, "--" if n.startswith("gauss") else "-", color=f"C{i}", label=n, lw=1.2)
    for t in targets:
        a0.axhline(t, color="gray", ls=":", lw=0.8)
    a0.set(xscale="log", yscale="log", xlabel="wall-clock s (compile excluded; t = 0 drawn at 1e-4)", ylabel="loss")
    a0.set_title(f"seed {row['seed']}", fontsize=9)
    a0.legend(fontsize=7, loc="lower left")
    summ, w = record["summary"], 0.8 / len(names)
    for i, n in enumerate(names):
        vals = [summ[str(t)][n]["median_s"] or np.nan for t in targets]
        a1.bar(np.arange(len(targets)) + i * w, vals, w, color=f"C{i}", label=n)
    a1.set_xticks(np.arange(len(targets)) + 0.4 - w / 2, [f"loss {t:g}" for t in targets])
    a1.set(yscale="log", ylabel=f"median s to target over {len(rows)} seeds")
    a1.legend(fontsize=7)
    m = record["meta"]
    fig.suptitle(f"{m['network']}, float64; {m['cpu']} ({m['nproc']} cores), jax {m['jax']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    ap.add_argument("--cost-rounds", type=int, default=20, help="rounds of the interleaved per-step timing")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    run(a.seeds, a.targets, a.riccati_seeds, write=not a.no_write, cost_rounds=a.cost_rounds)


if __name__ == "__main__":
    main()
