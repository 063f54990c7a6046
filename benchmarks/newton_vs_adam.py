"""Exact Newton / Gauss-Newton (hessinv.optax) against tuned Adam and SGD on a deep narrow tanh MLP.

Data: scikit-learn's bundled 8x8 digits (1797 images, 10 classes; no download), standardised per
pixel, one fixed training batch of ``--batch`` images. Model: 64 -> w tanh, ``--depth`` hidden
w -> w tanh layers (a :class:`hessinv.Stack`), w -> 10 logits, then a parameter-free
cross-entropy layer (the generalised Gauss-Newton needs the loss as its own layer). Every method
trains the same model from the same initial parameters on the same batch.

Wall-clock is what the comparison is about; the process CPU time (all threads) is recorded
too, because on a shared machine the wall-clock of one run depends on the other jobs.

Every step is a jitted function ``(params, state, batch) -> (params, state, loss, acc)``; its
first call (compilation) is timed separately and excluded from the wall-clock curves. Then the
usual optax loop runs step by step, with ``block_until_ready`` after each step, until the loss
reaches the smallest of ``--targets`` or the method's step / time budget is spent. The time and
step count to each target are recorded: which method is faster depends on how low the target is
(the exact methods converge quadratically at the end). Adam and SGD (with momentum) are tuned
over a learning-rate grid: the curve shown is the rate fastest to the headline ``--target``
(else lowest final loss), and the table gives, per target, the best rate of the grid.

All of that is repeated for each of ``--seeds`` (each seed draws the batch and the initial
parameters): whether Gauss-Newton reaches a low loss quickly depends strongly on the draw, so a
single seed says little. The summary counts the seeds that reach each target and gives the
median (min-max) time of those that do.

Run (CPU, about 15 minutes for 5 seeds): ``PYTHONPATH=. python benchmarks/newton_vs_adam.py``; writes
``benchmarks/results/newton_vs_adam_<platform>.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import hessinv
from benchmarks import common

# -- data and model ------------------------------------------------------------------------------


def load_batch(n: int, seed: int = 0):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    # Standardise per pixel from exact integer sums (the pixels are integers 0..16), so the
    # float32 batch is the same on every machine. The last bits of X.mean(0) / X.std(0) depend on
    # how numpy sums; the GPU machine's batch most likely differed by float32 ulps, and the
    # training runs are chaotic enough for that to matter. On this project's CPU the result
    # equals the old one bit for bit, so the recorded CPU runs stand.
    Xi, m = X.astype(np.int64), len(y)
    s1, s2 = Xi.sum(0), (Xi * Xi).sum(0)
    mean, std = s1 / m, np.sqrt((m * s2 - s1 * s1) / (m * m))
    X = (X - mean) / np.where(std > 0, std, 1.0)
    idx = np.random.default_rng(seed).permutation(len(y))[:n]
    return jnp.asarray(X[idx], jnp.float32), jnp.asarray(y[idx], jnp.int32)


def hidden(z, p):
    h, y = z
    return (jnp.tanh(h @ p["W"] + p["b"]), y)


def logits(z, p):
    h, y = z
    return (h @ p["W"] + p["b"], y)


def cross_entropy(z, p):
    o, y = z
    return jnp.mean(jax.nn.logsumexp(o, axis=-1) - jnp.take_along_axis(o, y[:, None], axis=1)[:, 0])


def make_model(width: int, depth: int, seed: int = 0):
    """The layers and LeCun-normal initial parameters, drawn in float32 whatever the run's dtype
    (``jax.random.normal``'s default dtype follows ``jax_enable_x64``, which once made the float32
    and float64 runs start from different points), so every dtype starts from the same point."""
    layers = (hidden, hessinv.Stack(hidden, depth), logits, cross_entropy)
    k = jax.random.split(jax.random.PRNGKey(seed), 3)
    f32 = jnp.float32
    params = [
        dict(W=jax.random.normal(k[0], (64, width), f32) / np.sqrt(64), b=jnp.zeros(width, f32)),
        dict(W=jax.random.normal(k[1], (depth, width, width), f32) / np.sqrt(width), b=jnp.zeros((depth, width), f32)),
        dict(W=jax.random.normal(k[2], (width, 10), f32) / np.sqrt(width), b=jnp.zeros(10, f32)),
        {},
    ]
    return layers, params


def accuracy(layers, params, batch):
    z = batch
    for layer, x in zip(layers[:-1], params[:-1]):
        if isinstance(layer, hessinv.Stack):
            z, _ = jax.lax.scan(lambda z, x, f=layer.layer: (f(z, x), None), z, x)
        else:
            z = layer(z, x)
    return jnp.mean(jnp.argmax(z[0], axis=-1) == batch[1])


# -- one training run ----------------------------------------------------------------------------


def make_step(layers, opt, second_order: bool):
    def step(params, state, batch):
        loss, g = jax.value_and_grad(lambda p: hessinv.loss(layers, p, batch))(params)
        acc = accuracy(layers, params, batch)
        updates, state = opt.update(g, state, params, z0=batch, value=loss) if second_order else opt.update(g, state, params)
        return optax.apply_updates(params, updates), state, loss, acc

    return jax.jit(step)


def run(layers, params, batch, opt, *, second_order, target, targets, max_steps, max_seconds):
    """The optax loop, until the loss reaches ``min(targets)`` (or the budget is spent). Returns a
    dict with per-step loss, accuracy and cumulative wall time (entry k: after k steps), the
    compile time, and the steps and times to ``target`` and to each of ``targets``."""
    step = make_step(layers, opt, second_order)
    state = opt.init(params)
    t0 = time.perf_counter()
    compiled = step.lower(params, state, batch).compile()
    compile_s = time.perf_counter() - t0
    losses, accs, times, cpu_times, extra = [], [], [0.0], [0.0], []
    elapsed = cpu_elapsed = 0.0
    for k in range(max_steps + 1):
        t, c = time.perf_counter(), time.process_time()
        new_params, new_state, loss, acc = jax.block_until_ready(compiled(params, state, batch))
        dt, dc = time.perf_counter() - t, time.process_time() - c
        # loss/acc are at `params`, i.e. after k steps (at cumulative time times[k]). One transfer
        # for everything read back (on a GPU each scalar read is its own round trip).
        info = optax.tree_utils.tree_get(new_state, "info") if second_order else None
        loss, acc, info = jax.device_get((loss, acc, info))
        losses.append(float(loss))
        accs.append(float(acc))
        if second_order:
            extra.append(
                dict(
                    damping=float(info.damping),
                    ratio=float(info.ratio),
                    accepted=bool(info.accepted),
                    factorisations=int(info.iterations),
                    n_neg=int(info.n_neg),
                    min_rcond=float(info.min_rcond),
                )
            )
        if not np.isfinite(losses[-1]) or losses[-1] <= min(targets) or k == max_steps or elapsed + dt > max_seconds:
            break
        params, state = new_params, new_state
        elapsed += dt
        cpu_elapsed += dc
        times.append(elapsed)
        cpu_times.append(cpu_elapsed)
    times, cpu_times = times[: len(losses)], cpu_times[: len(losses)]
    hit = [i for i, v in enumerate(losses) if v <= target]
    hit_acc = [i for i, a in enumerate(accs) if a >= 1.0]
    first = {t: next((i for i, v in enumerate(losses) if v <= t), None) for t in targets}
    # Keep the JSON small: every step up to 200, then 300 log-spaced ones, and the marked ones.
    keep = sorted(
        set(range(min(len(losses), 200)))
        | set(np.unique(np.geomspace(200, len(losses) - 1, 300).astype(int)).tolist() if len(losses) > 201 else [])
        | {len(losses) - 1}
        | set(hit[:1] + hit_acc[:1])
        | {i for i in first.values() if i is not None}
    )
    out = dict(
        compile_s=compile_s,
        steps=len(losses) - 1,
        step=keep,
        loss=[losses[i] for i in keep],
        acc=[accs[i] for i in keep],
        time=[times[i] for i in keep],
        cpu_time=[cpu_times[i] for i in keep],
        final_loss=losses[-1],
        steps_to_target=hit[0] if hit else None,
        time_to_target=times[hit[0]] if hit else None,
        cpu_time_to_target=cpu_times[hit[0]] if hit else None,
        steps_to_acc1=hit_acc[0] if hit_acc else None,
        to_targets={
            f"{t:g}": None if i is None else dict(steps=i, time=times[i], cpu_time=cpu_times[i])
            for t, i in first.items()
        },
        time_to_acc1=times[hit_acc[0]] if hit_acc else None,
        sec_per_step=(times[-1] / (len(times) - 1)) if len(times) > 1 else None,
        cpu_sec_per_step=(cpu_times[-1] / (len(cpu_times) - 1)) if len(cpu_times) > 1 else None,
    )
    if extra:
        out["diagnostics"] = extra
    return out


def _better(a, b):
    """Is run a better than run b: reaches the target sooner, else lower final loss."""
    ta, tb = a["time_to_target"], b["time_to_target"]
    if ta is not None or tb is not None:
        return tb is None or (ta is not None and ta < tb)
    return a["final_loss"] < b["final_loss"]


def run_seed(args, seed, dt, targets):
    """Every method on the batch and initial parameters of ``seed``: ``({method: run}, n_params)``.
    Adam and SGD are tuned over their grids on this seed."""
    X, y = load_batch(args.batch, seed)
    batch = (X.astype(dt), y)
    layers, params = make_model(args.width, args.depth, seed)
    params = jax.tree.map(lambda a: a.astype(dt), params)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    print(
        f"seed {seed}: batch {args.batch}, width {args.width}, depth {args.depth} hidden (+ input and logits layers), "
        f"{n_params} params, initial loss {float(hessinv.loss(layers, params, batch)):.4f}"
    )
    common = dict(target=args.target, targets=targets)
    so = dict(second_order=True, max_steps=args.second_order_steps, max_seconds=args.second_order_seconds, **common)
    fo = dict(second_order=False, max_steps=args.first_order_steps, **common)
    seconds = dict(adam=args.first_order_seconds, sgd_momentum=args.sgd_seconds or args.first_order_seconds)

    results = {}
    for name in args.second_order:
        method, damping = name.rsplit("_", 1)
        settings = dict(curvature="ggn" if method == "gauss_newton" else "hessian", learning_rate=1.0)
        if damping.startswith("lm"):  # lmclassic: without the probe; lmnielsen: Nielsen's update
            settings |= dict(damping="lm", init_damping=args.init_damping)
            if damping == "lmclassic":
                settings |= dict(probe_factor=None)
            if damping == "lmnielsen":
                settings |= dict(lm_update="nielsen")
        else:
            settings |= dict(damping="trust_region", init_radius=args.init_radius)
        opt = hessinv.optax.newton(layers, **settings)
        r = run(layers, params, batch, opt, **so)
        r["settings"] = settings
        results[name] = r
        print(_summary(name, r), flush=True)

    for name, make, lrs in [
        ("adam", lambda lr: optax.adam(lr), args.adam_lrs),
        ("sgd_momentum", lambda lr: optax.sgd(lr, momentum=0.9), args.sgd_lrs),
    ]:
        grid, best = {}, None
        for lr in lrs:
            r = run(layers, params, batch, make(lr), max_seconds=seconds[name], **fo)
            grid[lr] = dict(
                final_loss=r["final_loss"],
                time_to_target=r["time_to_target"],
                steps=r["steps"],
                to_targets=r["to_targets"],
                acc1=None if r["time_to_acc1"] is None else dict(steps=r["steps_to_acc1"], time=r["time_to_acc1"]),
            )
            print(_summary(f"  {name} lr={lr:g}", r), flush=True)
            if best is None or _better(r, best[1]):
                best = (lr, r)
        if best is None:  # an empty grid: method skipped
            continue
        lr, r = best
        r["settings"] = dict(learning_rate=lr, grid=grid, **({"momentum": 0.9} if name.startswith("sgd") else {}))
        # Per target, the grid's best rate (it differs between targets).
        r["best_to_targets"] = {}
        for t in r["to_targets"]:
            hits = [(g["to_targets"][t]["time"], x) for x, g in grid.items() if g["to_targets"][t] is not None]
            if hits:
                tm, x = min(hits)
                r["best_to_targets"][t] = dict(grid[x]["to_targets"][t], learning_rate=x)
            else:
                r["best_to_targets"][t] = None
        # 100% batch accuracy too: the rate fastest to the loss target need not be fastest there.
        hits = [(g["acc1"]["time"], x) for x, g in grid.items() if g["acc1"] is not None]
        x = min(hits)[1] if hits else None
        r["best_to_targets"]["acc1"] = None if x is None else dict(grid[x]["acc1"], learning_rate=x)
        results[name] = r
        print(_summary(f"{name} (best lr {lr:g})", r), flush=True)

    print(_table(results, targets), flush=True)
    return results, n_params


def _to_targets(r):
    """A run's step and time to each target: for a tuned method, its grid's best rate per target."""
    return r.get("best_to_targets", r["to_targets"])


def _time_to_acc1(r):
    """Time to 100% batch accuracy: for a tuned method, its grid's best rate for that."""
    best = r.get("best_to_targets", {})
    if "acc1" in best:
        return best["acc1"] and best["acc1"]["time"]
    return r["time_to_acc1"]


def _summarise(results, targets):
    """Across seeds, per method and target: how many seeds reached it, and the median / min /
    max time and steps of those that did (Adam, SGD: each seed's best rate for that target)."""
    out = {}
    for name in next(iter(results.values())):
        out[name] = {}
        for t in targets:
            hits = []
            for per_seed in results.values():
                r = per_seed[name]
                h = _to_targets(r)[f"{t:g}"]
                if h is not None:
                    hits.append(h)
            times = [h["time"] for h in hits]
            steps = [h["steps"] for h in hits]
            out[name][f"{t:g}"] = dict(
                reached=len(hits),
                seeds=len(results),
                median_time=float(np.median(times)) if hits else None,
                min_time=min(times) if hits else None,
                max_time=max(times) if hits else None,
                median_steps=float(np.median(steps)) if hits else None,
            )
    return out


def _head_to_head(results, targets, against="adam"):
    """Per method and target (and 100% batch accuracy, "acc1"): on how many seeds the method got
    there in less wall-clock time than ``against`` did with its best rate for that target (a
    method that gets there beats one that does not)."""
    out = {}
    for name in next(iter(results.values())):
        if name == against:
            continue
        out[name] = {}
        for t in [f"{t:g}" for t in targets] + ["acc1"]:
            wins = 0
            for per_seed in results.values():
                r, a = per_seed[name], per_seed[against]
                if t == "acc1":
                    tm, ta = _time_to_acc1(r), _time_to_acc1(a)
                else:
                    h, ha = _to_targets(r)[t], _to_targets(a)[t]
                    tm, ta = (h and h["time"]), (ha and ha["time"])
                wins += tm is not None and (ta is None or tm < ta)
            out[name][t] = wins
    return out


def _summary_table(summary, targets, n):
    lines = [f"across {n} seeds: seeds reaching the loss, median time (min-max) of those that did:"]
    lines.append(f"{'method':22s}" + "".join(f"{t:>26g}" for t in targets))
    for name, row in summary.items():
        cells = []
        for t in targets:
            c = row[f"{t:g}"]
            if not c["reached"]:
                cells.append(f"{'0/' + str(n):>26s}")
            else:
                cells.append(
                    f"{c['reached']}/{n} {c['median_time']:.2f}s ({c['min_time']:.2f}-{c['max_time']:.2f})".rjust(26)
                )
        lines.append(f"{name:22s}" + "".join(cells))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--depth", type=int, default=16)
    ap.add_argument("--target", type=float, default=1e-3, help="the headline target (picks the tuned lr shown)")
    ap.add_argument(
        "--targets",
        type=float,
        nargs="*",
        default=[1e-2, 1e-3, 1e-4, 1e-5, 1e-6],
        help="training losses to time each method to; runs stop at the smallest",
    )
    ap.add_argument("--first-order-steps", type=int, default=20000)
    ap.add_argument("--first-order-seconds", type=float, default=8.0)
    ap.add_argument("--sgd-seconds", type=float, help="SGD's time budget per rate (default: --first-order-seconds)")
    ap.add_argument("--second-order-steps", type=int, default=200)
    ap.add_argument("--second-order-seconds", type=float, default=30.0)
    ap.add_argument("--adam-lrs", type=float, nargs="*", default=[1e-3, 3e-3, 1e-2, 3e-2])
    ap.add_argument("--sgd-lrs", type=float, nargs="*", default=[3e-3, 1e-2, 3e-2, 1e-1])
    ap.add_argument(
        "--second-order",
        nargs="*",
        default=["newton_lm", "gauss_newton_lm", "gauss_newton_lmclassic", "gauss_newton_tr"],
        choices=[
            "newton_lm",
            "newton_lmclassic",
            "newton_tr",
            "gauss_newton_lm",
            "gauss_newton_lmclassic",
            "gauss_newton_lmnielsen",
            "gauss_newton_tr",
        ],
        help="second-order variants: method (newton = exact Hessian, gauss_newton = GGN) and damping "
        "(lm; lmclassic = LM without the probe; lmnielsen = LM with Nielsen's damping update instead of "
        "the threshold rule; tr = trust region)",
    )
    ap.add_argument(
        "--init-damping", type=float, default=0.01, help="LM's initial λ (1e-3 to 1 tried; see docs/optax.md)"
    )
    ap.add_argument("--init-radius", type=float, default=1.0, help="the trust region's initial radius")
    ap.add_argument(
        "--seeds",
        type=int,
        nargs="*",
        default=[0, 1, 2, 3, 4],
        help="one run of every method per seed (the seed picks the batch and the initial parameters)",
    )
    ap.add_argument(
        "--dtype",
        choices=["float64", "float32"],
        default="float64",
        help="of params and data, for every method",
    )
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args()
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    dt = jnp.dtype(args.dtype)

    targets = sorted(set(args.targets) | {args.target}, reverse=True)
    results, n_params = {}, None
    for seed in args.seeds:
        results[str(seed)], n_params = run_seed(args, seed, dt, targets)
        # Written after every seed, so a run cut short (an accelerator's time may be short) keeps
        # the seeds it finished.
        summary, h2h = write(args, results, targets, n_params, final=seed == args.seeds[-1])
    print(_summary_table(summary, targets, len(results)), flush=True)
    print(f"seeds (of {len(results)}) on which the method got there before tuned Adam:")
    for name, row in h2h.items():
        print(f"  {name:22s}" + "  ".join(f"{t}: {w}" for t, w in row.items()))


def write(args, results, targets, n_params, final=True):
    """Summarise the seeds run so far and write ``<out>/newton_vs_adam_<platform>[_float32]``
    ``.json`` and ``.png``; returns the summary and the head-to-head counts."""
    summary = _summarise(results, targets)
    h2h = _head_to_head(results, targets)
    dev = jax.devices()[0]
    meta = dict(
        platform=dev.platform,
        device=str(dev.device_kind),
        cpu_count=os.cpu_count(),
        load_average_at_end=os.getloadavg(),
        machine=platform.machine(),
        host=common.machine(),
        python=platform.python_version(),
        jax=jax.__version__,
        optax=optax.__version__,
        hessinv=hessinv.__version__,
        config=vars(args) | {"n_params": int(n_params), "out": None},
        seeds_done=list(results),
        note=(
            (
                "wall-clock on a shared, noisy machine (other jobs ran; see load_average_at_end); "
                if dev.platform == "cpu"
                else f"wall-clock on one {dev.device_kind}, used for this run alone; "
            )
            + "compile time excluded from the curves and reported as compile_s; cpu_time is this process's CPU time "
            "over all threads"
        ),
    )
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(
        args.out, f"newton_vs_adam_{dev.platform}" + ("" if args.dtype == "float64" else f"_{args.dtype}")
    )
    with open(stem + ".json", "w") as f:
        json.dump(dict(meta=meta, summary=summary, head_to_head=h2h, results=results), f, indent=1)
    plot(results, meta, stem + ".png")
    print(("wrote " if final else f"wrote ({len(results)} seeds so far) ") + stem + ".json, .png", flush=True)
    return summary, h2h


def _table(results, targets):
    """Time (and steps) to each target per method: for Adam and SGD the grid's best rate per target."""
    lines = ["time to training loss (steps; lr for the tuned first-order methods):"]
    lines.append(f"{'method':22s}" + "".join(f"{t:>24g}" for t in targets))
    for name, r in results.items():
        row = _to_targets(r)
        cells = []
        for t in targets:
            h = row.get(f"{t:g}")
            if h is None:
                cells.append(f"{'-':>24s}")
            else:
                lr = f", lr {h['learning_rate']:g}" if "learning_rate" in h else ""
                cells.append(f"{h['time']:>8.2f}s ({h['steps']}{lr})".rjust(24))
        lines.append(f"{name:22s}" + "".join(cells))
    return "\n".join(lines)


def _summary(name, r):
    tt = "not reached" if r["time_to_target"] is None else f"{r['time_to_target']:.2f}s ({r['steps_to_target']} steps)"
    ta = "not reached" if r["time_to_acc1"] is None else f"{r['time_to_acc1']:.2f}s ({r['steps_to_acc1']} steps)"
    sps = f"{1e3 * r['sec_per_step']:.2f} ms/step" if r["sec_per_step"] else ""
    return (
        f"{name:28s} final loss {r['final_loss']:.3e} after {r['steps']} steps; to target: {tt}; "
        f"to 100% acc: {ta}; {sps}; compile {r['compile_s']:.1f}s"
    )


def plot(results, meta, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5))
    colors = {}
    for i, (seed, per_seed) in enumerate(results.items()):  # one line per method and seed
        for name, r in per_seed.items():
            first_order = name in ("adam", "sgd_momentum")
            color = colors.setdefault(name, f"C{len(colors)}")
            label = (name + (" (lr tuned per seed)" if first_order else "")) if i == 0 else None
            loss = np.maximum(np.asarray(r["loss"]), 1e-8)
            style = dict(ls="-" if first_order else "--", color=color, lw=1.0, alpha=0.8, label=label)
            a1.plot(np.maximum(np.asarray(r["step"]), 0.8), loss, **style)
            a2.plot(np.maximum(np.asarray(r["time"]), 1e-3), loss, **style)
    target = meta["config"]["target"]
    for a in (a1, a2):
        for t in meta["config"]["targets"]:
            a.axhline(t, color="gray", ls=":", lw=1.2 if t == target else 0.5)
        a.set_yscale("log")
        a.set_ylabel("training loss (fixed batch)")
        a.legend(fontsize=8, loc="lower left")
    a1.set_xscale("log")
    a1.set_xlabel("step (step 0 drawn at 0.8)")
    a2.set_xscale("log")
    a2.set_xlabel("wall-clock seconds (compile excluded; t=0 drawn at 1e-3)")
    c = meta["config"]
    fig.suptitle(
        f"digits, batch {c['batch']}, tanh MLP width {c['width']}, depth {c['depth']}+2, {c.get('dtype', 'float32')}, "
        f"{len(results)} seeds (one line each); "
        + (f"cpu ({meta['cpu_count']} cores, shared)" if meta["platform"] == "cpu" else meta["device"])
        + f", jax {meta['jax']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
