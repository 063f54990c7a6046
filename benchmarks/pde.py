"""A physics-informed residual problem: 1-D Poisson, second-order methods against first-order ones.

    python -m benchmarks.pde                  # 10 seeds (~20 minutes on 2 shared CPU cores)
    python -m benchmarks.pde --seeds 0 1      # a subset

The problem: ``-u''(x) = f(x)`` on ``[-1, 1]``, ``u(±1) = g(±1)``, with the known solution
``u*(x) = sin(πx) + 0.2 sin(3πx) + 0.5 cos(πx/2)`` (odd and even modes, so a network with odd
symmetry cannot fit it by accident; ``g = 0`` at both ends). ``--interior`` fixed collocation
points (uniform, interior), the two boundary points, and a fine grid of ``--test-points`` for
the relative L2 error of ``u`` against ``u*``.

The network is a deep narrow tanh MLP, ``1 → w`` tanh, ``--depth`` tanh layers ``w → w`` (one
:class:`hessinv.Stack`), ``w → 1`` linear. Its layers carry the forward-mode jet
``(u, u_x, u_xx)`` of every interior point as activations: for ``h = z W + c``, ``h_x = z_x W``,
``h_xx = z_xx W``, and for ``t = tanh(h)``, ``t_x = (1 − t²) h_x``,
``t_xx = (1 − t²) h_xx − 2 t (1 − t²) h_x²``. The boundary points go through the same layers
(their value only). The forcing ``f`` and the boundary values ``g`` ride in ``z0`` as carried
constants. The last layer is the parameter-free loss
``mean (u_xx + f)² + β · mean (u_b − g)²``, so ``hessinv.optax.gauss_newton`` applies.

Methods, all from the same initialisation per seed, each in its documented optax loop, each step
one jitted call (compiled once, timed separately, excluded), ``block_until_ready`` after each:

* ``gauss_newton``: ``hessinv.optax.gauss_newton(layers)``, the default LM damping rule;
* ``gauss_newton_nielsen``: the same with Nielsen's damping update (``lm_update="nielsen"``);
* ``newton``: ``hessinv.optax.newton(layers)`` (exact Hessian, LM);
* ``gauss_newton_tr``: ``hessinv.optax.gauss_newton(layers, damping="trust_region")`` (its
  search on auto's route: the dense Gauss-Newton matrix here, since its default ``λ`` floor
  of 0 rules out the output space);
* ``lbfgs_10``, ``lbfgs_50``: ``optax.lbfgs(memory_size=m)``, its default zoom line search;
* ``adam``: ``optax.adam(lr)`` over ``--adam-lrs``; ``sgd_momentum``: ``optax.sgd(lr, 0.9)``
  over ``--sgd-lrs`` (per seed and per target, the best rate of the grid).

Every run stops at the smallest loss target, or at its step or time cap. The loss is recorded
at every step; the test error on a schedule (every step up to 200, then every ~1% of the step
count), outside the timed region. The per-step cost is also measured interleaved: after the
races of a seed, one step of every method in turn, from its initial state, ``--cost-rounds``
rounds, so that the machine's load falls on all of them alike. Wall-clock and process CPU time
are both recorded, with ``os.getloadavg()`` (the machine is shared).

Writes ``benchmarks/results/pde_<platform>.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import hessinv

from . import common

BETA = 1.0  # the boundary term's weight
DOMAIN = (-1.0, 1.0)
FIRST_ORDER = ("adam", "sgd_momentum")
HESSINV = ("gauss_newton", "newton", "gauss_newton_tr", "gauss_newton_nielsen")


# -- the problem -----------------------------------------------------------------------------------


def exact(x):
    """The known solution ``u*``."""
    return jnp.sin(jnp.pi * x) + 0.2 * jnp.sin(3 * jnp.pi * x) + 0.5 * jnp.cos(0.5 * jnp.pi * x)


def forcing(x):
    """``f = −u*''``."""
    p = jnp.pi
    return p**2 * jnp.sin(p * x) + 0.2 * 9 * p**2 * jnp.sin(3 * p * x) + 0.5 * (p / 2) ** 2 * jnp.cos(0.5 * p * x)


# -- the layers: the jet (u, u_x, u_xx) of each interior point, the value of each boundary point ------


def jet_tanh(z, p):
    """``tanh(z W + c)`` on the jets of the interior points and on the boundary values."""
    W, c = p["W"], p["c"]
    h, hx, hxx = z["u"] @ W + c, z["ux"] @ W, z["uxx"] @ W
    t = jnp.tanh(h)
    s = 1.0 - t * t
    return {
        "u": t,
        "ux": s * hx,
        "uxx": s * hxx - 2.0 * t * s * hx * hx,
        "ub": jnp.tanh(z["ub"] @ W + c),
        "f": z["f"],
        "g": z["g"],
    }


def jet_out(z, p):
    """The linear output ``w → 1``: ``u_xx`` at the interior points, ``u`` at the boundary."""
    return {
        "uxx": (z["uxx"] @ p["W"])[:, 0],
        "ub": (z["ub"] @ p["W"] + p["c"])[:, 0],
        "f": z["f"],
        "g": z["g"],
    }


def residual_loss(z, p):
    """The parameter-free loss: mean squared PDE residual plus ``BETA`` × the boundary term."""
    return jnp.mean((z["uxx"] + z["f"]) ** 2) + BETA * jnp.mean((z["ub"] - z["g"]) ** 2)


def collocation(n_interior: int, dtype=jnp.float64):
    """``n_interior`` uniform interior points of the domain, and its two end points."""
    a, b = DOMAIN
    x = jnp.linspace(a, b, n_interior + 2, dtype=dtype)[1:-1]
    return x, jnp.asarray([a, b], dtype)


def make_z0(x, xb):
    """The input jet ``(x, 1, 0)`` per interior point, the boundary points, and the carried
    forcing ``f(x)`` and boundary values ``g(x_b) = u*(x_b)``."""
    x, xb = x[:, None], xb[:, None]
    return {
        "u": x,
        "ux": jnp.ones_like(x),
        "uxx": jnp.zeros_like(x),
        "ub": xb,
        "f": forcing(x[:, 0]),
        "g": exact(xb[:, 0]),
    }


@functools.partial(jax.jit, static_argnums=(1, 2))
def init_params(key, width: int, depth: int):
    """Glorot-normal weights and ``N(0, 0.1²)`` biases in float64 (one compiled call)."""
    k = jax.random.split(key, 6)

    def dense(kw, kc, i, o):
        return {
            "W": jax.random.normal(kw, (i, o), jnp.float64) * np.sqrt(2.0 / (i + o)),
            "c": 0.1 * jax.random.normal(kc, (o,), jnp.float64),
        }

    stack = jax.vmap(lambda kw, kc: dense(kw, kc, width, width))(
        jax.random.split(k[1], depth), jax.random.split(k[2], depth)
    )
    return [dense(k[0], k[3], 1, width), stack, dense(k[4], k[5], width, 1), {}]


def make_problem(seed: int = 0, *, width: int = 8, depth: int = 6, n_interior: int = 64, dtype=jnp.float64):
    """``(layers, params, z0)``: ``1 → width`` tanh, ``depth`` tanh layers ``width → width`` (a
    Stack), ``width → 1``, the residual loss. The initial parameters are drawn from ``seed``
    (:func:`init_params`); the collocation points do not depend on it."""
    params = init_params(jax.random.PRNGKey(seed), width, depth)
    params = jax.tree.map(lambda a: a.astype(dtype), params)
    layers = (jet_tanh, hessinv.Stack(jet_tanh, depth), jet_out, residual_loss)
    x, xb = collocation(n_interior, dtype)
    return layers, params, jax.jit(make_z0)(x, xb)


def network(params, x):
    """The plain network ``u(x)`` at one scalar point (no jets): for the test error and the tests."""
    h = jnp.tanh(x * params[0]["W"][0] + params[0]["c"])

    def body(h, p):
        return jnp.tanh(h @ p["W"] + p["c"]), None

    h, _ = jax.lax.scan(body, h, params[1])
    return (h @ params[2]["W"] + params[2]["c"])[0]


def rel_l2_error(params, x_test):
    """``‖u − u*‖ / ‖u*‖`` on the points ``x_test`` (a uniform grid: the discrete L2 norm)."""
    u = jax.vmap(lambda x: network(params, x))(x_test)
    ue = exact(x_test)
    return jnp.linalg.norm(u - ue) / jnp.linalg.norm(ue)


# -- the methods: each a jitted step (params, state) -> (params, state, loss at the old params) ----------


def make_method(name, layers, z0, lr=None):
    """``(opt, step)`` for one method; ``step`` is jitted, ``z0`` closed over."""

    def loss(p):
        return hessinv.loss(layers, p, z0)

    if name in HESSINV:
        if name == "gauss_newton":
            opt = hessinv.optax.gauss_newton(layers)
        elif name == "newton":
            opt = hessinv.optax.newton(layers)
        elif name == "gauss_newton_nielsen":
            opt = hessinv.optax.gauss_newton(layers, lm_update="nielsen")
        else:
            opt = hessinv.optax.gauss_newton(layers, damping="trust_region")

        def step(p, s):
            v, g = jax.value_and_grad(loss)(p)
            u, s = opt.update(g, s, p, z0=z0, value=v)
            return optax.apply_updates(p, u), s, v

    elif name.startswith("lbfgs"):
        opt = optax.lbfgs(memory_size=int(name.split("_")[1]))
        value_and_grad = optax.value_and_grad_from_state(loss)

        def step(p, s):
            v, g = value_and_grad(p, state=s)
            u, s = opt.update(g, s, p, value=v, grad=g, value_fn=loss)
            return optax.apply_updates(p, u), s, v

    else:
        opt = optax.adam(lr) if name == "adam" else optax.sgd(lr, momentum=0.9)

        def step(p, s):
            v, g = jax.value_and_grad(loss)(p)
            u, s = opt.update(g, s, p)
            return optax.apply_updates(p, u), s, v

    return opt, jax.jit(step)


def _error_due(k: int, last: int) -> bool:
    """Evaluate the test error at step ``k``: every step up to 200, then every ~1%."""
    return k <= 200 or k - last >= max(1, k // 100)


def race(step, params, state, err_fn, *, targets, max_steps, max_seconds):
    """The optax loop until the loss is at most ``min(targets)`` or a cap is hit. Per step: the
    loss at the params after ``k`` steps and the wall-clock and CPU time of those ``k`` steps; the
    test error at the scheduled steps (not timed)."""
    losses, times, cpus, err_steps, errs = [], [0.0], [0.0], [], []
    elapsed = cpu = 0.0
    last = -(10**9)
    for k in range(max_steps + 1):
        if _error_due(k, last):
            errs.append(float(err_fn(params)))
            err_steps.append(k)
            last = k
        t, c = time.perf_counter(), time.process_time()
        new_params, new_state, v = jax.block_until_ready(step(params, state))
        dt, dc = time.perf_counter() - t, time.process_time() - c
        v = float(v)  # the loss after k steps
        losses.append(v)
        if not np.isfinite(v) or v <= min(targets) or k == max_steps or elapsed + dt > max_seconds:
            break
        params, state = new_params, new_state
        elapsed += dt
        cpu += dc
        times.append(elapsed)
        cpus.append(cpu)
    if err_steps[-1] != len(losses) - 1:
        errs.append(float(err_fn(params)))
        err_steps.append(len(losses) - 1)
    return losses, times[: len(losses)], cpus[: len(losses)], err_steps, errs, params


def _first_below(values, target):
    return next((i for i, v in enumerate(values) if v <= target), None)


def _thin(steps, marked=(), head=50, tail=100):
    """The step numbers of ``steps`` (ascending) a record keeps: the first ``head``, about
    ``tail`` log-spaced ones after them, the last, and the ``marked`` ones (targets reached)."""
    steps = list(steps)
    if len(steps) <= head + tail:
        return steps
    last = steps[-1]
    grid = set(np.unique(np.geomspace(max(steps[head], 1), last, tail).astype(int)).tolist())
    # the first recorded step at or after each grid point, so that sparse records thin alike
    picked, g = set(steps[:head]) | {last} | (set(marked) & set(steps)), sorted(grid)
    i = 0
    for k in steps[head:]:
        while i < len(g) and g[i] <= k:
            picked.add(k)
            i += 1
    return sorted(picked)


def thin_record(r):
    """Thin a stored run's curves in place (``--report`` applies it to records written before)."""
    marked = {h["steps"] for h in r["to_targets"].values() if h is not None}
    keep = set(_thin(r["step"], marked))
    idx = [j for j, k in enumerate(r["step"]) if k in keep]
    for key in ("step", "loss", "time", "cpu_time"):
        r[key] = [r[key][j] for j in idx]
    keep = set(_thin(r["error_step"], marked))
    idx = [j for j, k in enumerate(r["error_step"]) if k in keep]
    for key in ("error_step", "error", "error_time"):
        r[key] = [r[key][j] for j in idx]
    for key in ("loss", "time", "cpu_time", "error", "error_time"):  # 6 digits are plenty for curves
        r[key] = [float(f"{v:.6g}") for v in r[key]]


def summarise_run(losses, times, cpus, err_steps, errs, *, targets, err_targets):
    """Steps, wall-clock and CPU time to each loss and error target, and a thinned record."""
    to = {}
    for t in targets:
        i = _first_below(losses, t)
        to[f"loss<={t:g}"] = None if i is None else dict(steps=i, time=times[i], cpu_time=cpus[i])
    for t in err_targets:
        j = _first_below(errs, t)
        if j is None:
            to[f"err<={t:g}"] = None
        else:
            i = err_steps[j]
            to[f"err<={t:g}"] = dict(steps=i, time=times[i], cpu_time=cpus[i])
    n = len(losses)
    marked = {h["steps"] for h in to.values() if h is not None}
    keep = _thin(range(n), marked)
    ek = [j for j, k in enumerate(err_steps) if k in set(_thin(err_steps, marked))]
    err_steps, errs = [err_steps[j] for j in ek], [errs[j] for j in ek]
    rec = dict(
        steps=n - 1,
        final_loss=losses[-1],
        final_error=errs[-1],
        min_error=min(errs),
        to_targets=to,
        sec_per_step=times[-1] / (n - 1) if n > 1 else None,
        cpu_sec_per_step=cpus[-1] / (n - 1) if n > 1 else None,
        step=keep,
        loss=[losses[i] for i in keep],
        time=[times[i] for i in keep],
        cpu_time=[cpus[i] for i in keep],
        error_step=err_steps,
        error=errs,
        error_time=[times[i] for i in err_steps],
    )
    thin_record(rec)  # rounds the curves
    return rec


# -- the benchmark ---------------------------------------------------------------------------------


def _methods(args):
    """``[(key, name, lr)]`` for every run of a seed."""
    runs = [(m, m, None) for m in args.methods if m not in FIRST_ORDER]
    for m, lrs in (("adam", args.adam_lrs), ("sgd_momentum", args.sgd_lrs)):
        if m in args.methods:
            runs += [(f"{m}@{lr:g}", m, lr) for lr in lrs]
    return runs


def _caps(args, name):
    if name == "newton":
        return dict(max_steps=args.second_order_steps, max_seconds=args.newton_seconds)
    if name in HESSINV:
        return dict(max_steps=args.second_order_steps, max_seconds=args.second_order_seconds)
    if name.startswith("lbfgs"):
        return dict(max_steps=args.lbfgs_steps, max_seconds=args.lbfgs_seconds)
    seconds = args.sgd_seconds if name == "sgd_momentum" else args.first_order_seconds
    return dict(max_steps=args.first_order_steps, max_seconds=seconds)


def interleaved_cost(compiled, rounds, budget=2.0):
    """Per-step wall-clock of every method, one step each in turn from its initial state, ``rounds``
    rounds (a method stops repeating once it has taken ``budget`` seconds): median and min."""
    t = common.time_interleaved({k: (step, (p, s)) for k, (step, p, s) in compiled.items()}, rounds, budget)
    return {k: dict(median=float(v["time_s"]), min=float(v["min_s"])) for k, v in t.items()}


def run_seed(args, seed, steps, targets, err_targets, x_test):
    layers, params, z0 = make_problem(seed, width=args.width, depth=args.depth, n_interior=args.interior)
    err_fn = jax.jit(lambda p: rel_l2_error(p, x_test))
    loss0 = float(hessinv.loss(layers, params, z0))
    print(f"seed {seed}: initial loss {loss0:.4g}, error {float(err_fn(params)):.4g}", flush=True)
    out, initial = {}, {}
    for key, name, lr in _methods(args):
        opt, step = steps[key]
        state = opt.init(params)
        if key not in steps["_compile"]:  # once for all seeds (same shapes)
            steps["_compile"][key] = common.warm_up(step, params, state)
        initial[key] = (step, params, state)
        load, programs = os.getloadavg(), step._cache_size()
        rec = race(step, params, state, err_fn, targets=targets, **_caps(args, name))
        r = summarise_run(*rec[:5], targets=targets, err_targets=err_targets)
        r |= dict(method=name, learning_rate=lr, loadavg=load, compile_s=steps["_compile"][key])
        r["recompiled_during_race"] = step._cache_size() != programs
        out[key] = r
        hit = {k: (v["steps"], round(v["time"], 3)) for k, v in r["to_targets"].items() if v is not None}
        print(
            f"  {key:22s} {r['steps']:6d} steps, loss {r['final_loss']:.3e}, error {r['final_error']:.3e} "
            f"(min {r['min_error']:.2e}), {1e3 * (r['sec_per_step'] or 0):.2f} ms/step; {hit}",
            flush=True,
        )
    # Methods slower than a second a step (the trust region here) keep their race's average only.
    cost = interleaved_cost(
        {k: v for k, v in initial.items() if (out[k]["sec_per_step"] or 10.0) < 1.0}, args.cost_rounds
    )
    for key in out:
        out[key]["interleaved_step_s"] = cost.get(key)
    return out


def best_of_grid(per_seed, name, target):
    """For a tuned method, the best rate of its grid for ``target`` on one seed: ``(hit, lr)``."""
    hits = [
        (r["to_targets"][target], r["learning_rate"])
        for r in per_seed.values()
        if r["method"] == name and r["to_targets"][target] is not None
    ]
    return min(hits, key=lambda h: h[0]["time"]) if hits else (None, None)


def method_names(args):
    return [m for m in args.methods]


def to_target(per_seed, name, target):
    """One seed's hit of ``target`` by ``name`` (tuned methods: the best rate for that target)."""
    if name in FIRST_ORDER:
        return best_of_grid(per_seed, name, target)
    r = per_seed[name]
    return r["to_targets"][target], None


def summarise(results, names, target_keys):
    """Per method and target, across seeds: seeds reaching it, median (min-max) steps and time."""
    out = {}
    for name in names:
        out[name] = {}
        ran = [ps for ps in results.values() if any(r["method"] == name for r in ps.values())]
        for t in target_keys:
            hits = [to_target(ps, name, t)[0] for ps in ran]
            hits = [h for h in hits if h is not None]
            st, tm, cp = ([h[k] for h in hits] for k in ("steps", "time", "cpu_time"))
            missing = [np.inf] * (len(ran) - len(hits))  # over all seeds: a miss counts as never
            med_all = float(np.median(tm + missing)) if ran else np.inf
            cpu_all = float(np.median(cp + missing)) if ran else np.inf
            out[name][t] = dict(
                median_time_all=med_all if np.isfinite(med_all) else None,
                median_cpu_time_all=cpu_all if np.isfinite(cpu_all) else None,
                reached=len(hits),
                seeds=len(ran),
                median_steps=float(np.median(st)) if hits else None,
                min_steps=min(st) if hits else None,
                max_steps=max(st) if hits else None,
                median_time=float(np.median(tm)) if hits else None,
                min_time=min(tm) if hits else None,
                max_time=max(tm) if hits else None,
                median_cpu_time=float(np.median(cp)) if hits else None,
            )
    return out


def ratios(summary, names, target_keys):
    """Per target: the best hessinv method and the best competitor by their median over all the
    seeds they ran (a seed that misses the target counts as never, so a median exists only where
    more than half reach it), wall-clock and CPU time, and competitor / hessinv for each."""
    out = {}
    for t in target_keys:
        row = {}
        for kind in ("time", "cpu_time"):

            def best(group, t=t, kind=kind):
                c = [(summary[n][t][f"median_{kind}_all"], n) for n in group if summary[n][t][f"median_{kind}_all"]]
                return min(c) if c else (None, None)

            h, hn = best([n for n in names if n in HESSINV])
            o, on = best([n for n in names if n not in HESSINV])
            row |= {
                f"best_hessinv_{kind}": hn,
                f"hessinv_median_{kind}": h,
                f"best_competitor_{kind}": on,
                f"competitor_median_{kind}": o,
                f"competitor_over_hessinv_{kind}": (o / h) if h and o else None,
            }
        out[t] = row
    return out


def head_to_head(results, target_keys):
    """Per target: on how many seeds the best hessinv method of that seed got there before every
    competitor (each tuned one at its best rate)."""
    out = {}
    for t in target_keys:
        wins = 0
        for ps in results.values():
            names = {r["method"] for r in ps.values()}
            h = [to_target(ps, n, t)[0] for n in names if n in HESSINV]
            o = [to_target(ps, n, t)[0] for n in names if n not in HESSINV]
            h = min([x["time"] for x in h if x is not None], default=None)
            o = min([x["time"] for x in o if x is not None], default=None)
            wins += h is not None and (o is None or h < o)
        out[t] = wins
    return out


def table(summary, rat, names, target_keys):
    lines = ["per method: seeds reaching the target; median (min-max) steps; median (min-max) seconds"]
    for t in target_keys:
        lines.append(f"-- {t}")
        for n in names:
            c = summary[n][t]
            if not c["reached"]:
                lines.append(f"  {n:16s} 0/{c['seeds']}")
                continue
            lines.append(
                f"  {n:16s} {c['reached']:2d}/{c['seeds']:<2d} {c['median_steps']:8.0f} ({c['min_steps']}-{c['max_steps']}) "
                f"steps  {c['median_time']:7.3f} s ({c['min_time']:.3f}-{c['max_time']:.3f})  "
                f"CPU {c['median_cpu_time']:.3f} s"
            )
        r = rat[t]
        for kind, label in (("time", "wall"), ("cpu_time", "CPU")):
            h, o = r[f"hessinv_median_{kind}"], r[f"competitor_median_{kind}"]
            lines.append(
                f"  {label}, median over all seeds: best hessinv {r[f'best_hessinv_{kind}']} "
                + (f"{h:.3f} s" if h else "-")
                + f", best competitor {r[f'best_competitor_{kind}']} "
                + (f"{o:.3f} s" if o else "-")
                + (f": competitor / hessinv = {o / h:.2f}" if h and o else "")
            )
    return "\n".join(lines)


def plot(results, meta, path, names, target_keys):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seed = meta["plot_seed"]
    ps = results[seed]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    colors = {n: f"C{i}" for i, n in enumerate(names)}
    for n in names:
        if not any(r["method"] == n for r in ps.values()):
            continue
        if n in FIRST_ORDER:  # the rate fastest to the loss target 1e-3 (else lowest final loss)
            cand = [k for k, r in ps.items() if r["method"] == n]
            if not cand:
                continue
            key = min(
                cand,
                key=lambda k: (
                    ps[k]["to_targets"][target_keys[0]] is None,
                    (ps[k]["to_targets"][target_keys[0]] or {}).get("time", 0.0),
                    ps[k]["final_loss"],
                ),
            )
            label = f"{n} (lr {ps[key]['learning_rate']:g})"
        else:
            key, label = n, n
        r = ps[key]
        ls = "--" if n in HESSINV else "-"
        axes[0].plot(np.maximum(r["time"], 1e-4), r["loss"], ls, color=colors[n], label=label, lw=1.2)
        axes[1].plot(np.maximum(r["error_time"], 1e-4), r["error"], ls, color=colors[n], label=label, lw=1.2)
    for t in meta["config"]["targets"]:
        axes[0].axhline(t, color="gray", ls=":", lw=0.8)
    for t in meta["config"]["err_targets"]:
        axes[1].axhline(t, color="gray", ls=":", lw=0.8)
    for a, yl in zip(axes[:2], ("loss (residual² + boundary)", "relative L2 error of u (test grid)")):
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_xlabel("wall-clock s (compile excluded; t=0 at 1e-4)")
        a.set_ylabel(yl)
        a.legend(fontsize=7, loc="lower left")
    axes[0].set_title(f"seed {seed}", fontsize=9)
    axes[1].set_title(f"seed {seed}", fontsize=9)
    # Medians over seeds: time to each target per method (missing: not reached on half the seeds).
    summ = meta["summary"]
    xs = np.arange(len(target_keys))
    wdt = 0.8 / len(names)
    for i, n in enumerate(names):
        vals = [
            summ[n][t]["median_time"]
            if summ[n][t]["reached"] and summ[n][t]["reached"] * 2 >= summ[n][t]["seeds"]
            else np.nan
            for t in target_keys
        ]
        axes[2].bar(xs + i * wdt, vals, wdt, color=colors[n], label=n)
    axes[2].set_xticks(xs + 0.4 - wdt / 2, target_keys, fontsize=8)
    axes[2].set_yscale("log")
    axes[2].set_ylabel("median wall-clock s to target over seeds")
    axes[2].set_title("medians (bar missing: reached on fewer than half the seeds)", fontsize=9)
    axes[2].legend(fontsize=7)
    c = meta["config"]
    fig.suptitle(
        f"1-D Poisson, tanh MLP 1-{c['width']}-({c['depth']}x{c['width']})-1 with (u, u_x, u_xx) jets, "
        f"{c['interior']} interior points, {meta['n_params']} params, float64, {len(results)} seeds; "
        f"{meta['device']} ({meta['nproc']} cores, shared), jax {meta['jax']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(path):
    """Recompute the summary of a written record, rewrite it and its plot, print the table."""
    import json

    with open(path) as f:
        rec = json.load(f)
    meta, results = rec["meta"], rec["results"]
    for per_seed in results.values():
        for r in per_seed.values():
            thin_record(r)
    c = meta["config"]
    names = list(c["methods"])
    target_keys = [f"loss<={t:g}" for t in c["targets"]] + [f"err<={t:g}" for t in c["err_targets"]]
    meta["summary"] = summarise(results, names, target_keys)
    meta["ratios"] = ratios(meta["summary"], names, target_keys)
    meta["head_to_head"] = head_to_head(results, target_keys)
    with open(path, "w") as f:
        f.write(json.dumps(common._jsonable(rec), indent=1) + "\n")
    plot(results, meta, path[: -len(".json")] + ".png", names, target_keys)
    print(table(meta["summary"], meta["ratios"], names, target_keys))
    print("seeds on which a hessinv method got there first:", meta["head_to_head"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--interior", type=int, default=64)
    ap.add_argument("--test-points", type=int, default=1001)
    ap.add_argument("--targets", type=float, nargs="+", default=[1e-3, 1e-6])
    ap.add_argument("--err-targets", type=float, nargs="+", default=[1e-3, 1e-4, 1e-5])
    ap.add_argument(
        "--methods",
        nargs="+",
        default=[
            "gauss_newton",
            "newton",
            "gauss_newton_tr",
            "gauss_newton_nielsen",
            "lbfgs_10",
            "lbfgs_50",
            "adam",
            "sgd_momentum",
        ],
    )
    ap.add_argument("--adam-lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    ap.add_argument("--sgd-lrs", type=float, nargs="+", default=[3e-5, 1e-4, 3e-4])
    ap.add_argument("--second-order-steps", type=int, default=300)
    ap.add_argument("--second-order-seconds", type=float, default=10.0)
    ap.add_argument("--newton-seconds", type=float, default=20.0, help="Newton's time cap (about 0.2 s a step)")
    ap.add_argument("--lbfgs-steps", type=int, default=50000)
    ap.add_argument("--lbfgs-seconds", type=float, default=15.0)
    ap.add_argument("--first-order-steps", type=int, default=100000)
    ap.add_argument("--first-order-seconds", type=float, default=8.0)
    ap.add_argument("--sgd-seconds", type=float, default=5.0)
    ap.add_argument("--cost-rounds", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--report", metavar="JSON", help="only re-summarise a written record (table, plot)")
    args = ap.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    if args.report:
        return report(args.report)

    targets = sorted(args.targets, reverse=True)
    err_targets = sorted(args.err_targets, reverse=True)
    target_keys = [f"loss<={t:g}" for t in targets] + [f"err<={t:g}" for t in err_targets]
    x_test = jnp.linspace(*DOMAIN, args.test_points, dtype=jnp.float64)
    layers, params, z0 = make_problem(0, width=args.width, depth=args.depth, n_interior=args.interior)
    steps = {key: make_method(name, layers, z0, lr) for key, name, lr in _methods(args)}
    steps["_compile"] = {}
    meta = common.machine() | dict(
        optax=optax.__version__,
        devices=[str(d) for d in jax.devices()],
        n_params=common.n_params(params),
        routes=dict(
            gauss_newton=hessinv.route(layers, params, z0, damping=1e-3, curvature="ggn"),
            newton=hessinv.route(layers, params, z0, damping=1e-3),
        ),
        config=vars(args) | dict(targets=targets, err_targets=err_targets, beta=BETA),
        note=(
            "wall-clock on a shared machine (see loadavg per run); compile excluded (compile_s); cpu_time is this "
            "process's CPU time over all threads; test error evaluated outside the timed region"
        ),
    )
    print(f"{meta['n_params']} params, routes {meta['routes']}, devices {meta['devices']}", flush=True)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    results = {}
    names = method_names(args)
    for seed in args.seeds:
        results[str(seed)] = run_seed(args, seed, steps, targets, err_targets, x_test)
        summary = summarise(results, names, target_keys)
        rat = ratios(summary, names, target_keys)
        meta |= dict(
            summary=summary,
            ratios=rat,
            head_to_head=head_to_head(results, target_keys),
            seeds_done=list(results),
            loadavg_at_end=os.getloadavg(),
            total_wall_s=time.perf_counter() - wall0,
            total_cpu_s=time.process_time() - cpu0,
            plot_seed=str(args.seeds[0]),
        )
        if not args.no_write:
            common.write_json(dict(meta=meta, results=results), "pde")
            plot(results, meta, common.result_path("pde", "png"), names, target_keys)
    print(table(summary, rat, names, target_keys))
    print("seeds on which a hessinv method got there first:", meta["head_to_head"])
    print(f"total {meta['total_wall_s']:.0f} s wall, {meta['total_cpu_s']:.0f} s CPU, load {meta['loadavg_at_end']}")


if __name__ == "__main__":
    main()
