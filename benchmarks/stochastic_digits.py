"""Mini-batch training on digits, judged by held-out test accuracy against wall-clock.

    python -m benchmarks.stochastic_digits                      # seeds 0-9 (~20 min, 2 CPU cores)
    python -m benchmarks.stochastic_digits --seeds 0 --seconds 2 --no-write

Data: scikit-learn's bundled 8x8 digits, standardised as in :mod:`benchmarks.newton_vs_adam`,
split once into 1437 training and 360 test images (the same split for every seed). Model: the
digits MLP of that benchmark (64 → 8 tanh, 16 tanh layers 8 → 8, 8 → 10 logits, a
parameter-free cross-entropy layer; 1762 parameters). A seed draws the initial parameters and
the order of the batches: every epoch a fresh permutation of the training set, cut into batches
(the remainder dropped). Every method sees the same batches in the same order and starts from
the same parameters.

Methods, each in its documented optax loop, one jitted call per update (the batch is gathered
inside it from the step number), ``block_until_ready`` after each:

* ``hessinv.optax.stochastic_gauss_newton`` (learning rate 1) on batches of 64 with its
  Levenberg-Marquardt damping from ``λ₀ = 0.01``, refactorising every update (with the default threshold
  rule, and with Nielsen's damping update) and every fourth update; and on batches of 16 (a cheaper curvature: 160 outputs instead of 640) with a fixed
  damping from a grid (``--gn-dampings``), refactorising every update;
* ``optax.adam`` and SGD with momentum 0.9, batches of 64, each over a learning-rate grid
  (Adam 1e-4 … 1e-2, which brackets its best rate; SGD 1e-3 … 3e-2).

Every method gets the same wall-clock budget (``--seconds``, compilation excluded). At about 40
log-spaced times the clock is stopped and the test accuracy and the loss on the whole training
set are measured (outside the timed region). Where a method has a grid (Adam's and SGD's rates,
the fixed dampings), the curve kept per seed is the value that first reaches 95 % test accuracy
(else the best final test accuracy): tuned per seed, on the test set, the same way for all.

Reported per seed and method: the test accuracy at each checkpoint, the best test accuracy, the
time to 90 % and 95 %, steps and seconds per step (and for Gauss-Newton the last damping).
The summary gives medians over seeds and, per checkpoint time, the median test accuracy.
Writes ``results/stochastic_digits_<platform>.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import hessinv

from . import common
from .newton_vs_adam import accuracy, load_batch, make_model

N_TRAIN = 1437  # of the 1797 images; the other 360 are the test set
ACCURACIES = (0.9, 0.95)


def split(dt):
    """``(train, test)``: the standardised digits, one fixed permutation, as ``(X, y)`` pairs."""
    X, y = load_batch(1797, seed=0)
    X = X.astype(dt)
    return (X[:N_TRAIN], y[:N_TRAIN]), (X[N_TRAIN:], y[N_TRAIN:])


def batch_order(seed: int, batch: int, steps: int):
    """``(steps, batch)`` training indices: epoch after epoch a fresh permutation, cut into batches."""
    rng = np.random.default_rng(seed)
    per_epoch = N_TRAIN // batch
    epochs = -(-steps // per_epoch)
    order = np.stack([rng.permutation(N_TRAIN)[: per_epoch * batch] for _ in range(epochs)])
    return jnp.asarray(order.reshape(-1, batch)[:steps], jnp.int32)


def make_step(layers, opt, train, order, second_order: bool):
    """``(params, state, k) -> (params, state, loss on batch k)``, jitted; batch ``k`` is gathered inside."""
    X, y = train

    @jax.jit
    def step(params, state, k):
        idx = order[k]
        b = (X[idx], y[idx])
        loss, g = jax.value_and_grad(lambda p: hessinv.loss(layers, p, b))(params)
        updates, state = opt.update(g, state, params, z0=b, value=loss) if second_order else opt.update(g, state, params)
        return optax.apply_updates(params, updates), state, loss

    return step


def run(layers, params, opt, train, test, order, *, second_order, seconds, checkpoints):
    """The optax loop for ``seconds`` of (timed) steps; test accuracy and training loss at each
    of ``checkpoints`` (seconds), measured with the clock stopped."""
    step = make_step(layers, opt, train, order, second_order)
    state = opt.init(params)
    t0 = time.perf_counter()
    jax.block_until_ready(step(params, state, jnp.int32(0)))  # compile (and one step, discarded)
    compile_s = time.perf_counter() - t0
    acc_test = jax.jit(lambda p: accuracy(layers, p, test))
    loss_train = jax.jit(lambda p: hessinv.loss(layers, p, train))

    def measure(p, k, elapsed):
        return {"time": elapsed, "steps": k, "test_acc": float(acc_test(p)), "train_loss": float(loss_train(p))}

    curve, elapsed, k, marks = [measure(params, 0, 0.0)], 0.0, 0, list(checkpoints)
    while elapsed < seconds and k < order.shape[0]:
        t = time.perf_counter()
        params, state, _ = jax.block_until_ready(step(params, state, jnp.int32(k)))
        elapsed += time.perf_counter() - t
        k += 1
        if marks and elapsed >= marks[0]:
            while marks and elapsed >= marks[0]:
                marks.pop(0)
            curve.append(measure(params, k, elapsed))
    if curve[-1]["steps"] != k:
        curve.append(measure(params, k, elapsed))
    out = {"compile_s": compile_s, "steps": k, "seconds": elapsed, "sec_per_step": elapsed / max(k, 1), "curve": curve}
    out["best_test_acc"] = max(c["test_acc"] for c in curve)
    out["final_test_acc"] = curve[-1]["test_acc"]
    for a in ACCURACIES:
        out[f"time_to_{a}"] = next((c["time"] for c in curve if c["test_acc"] >= a), None)
    if second_order:
        info = optax.tree_utils.tree_get(state, "info")
        out["last_damping"] = float(info.damping)
    return out


def _gauss_newton(layers, train, batch, **kw):
    """``λ ↦`` the stochastic Gauss-Newton transform on batches of ``batch`` (``"lm"`` or a fixed ``λ``)."""
    like = (train[0][:batch], train[1][:batch])
    return lambda damping: hessinv.optax.stochastic_gauss_newton(layers, like, damping=damping, **kw)


def _tuned(layers, params, train, test, order, make_opt, grid, args, checkpoints, second_order=False):
    """Every value of the grid (a learning rate, or a damping); the kept run is the first to 95 %
    test accuracy, else the best final."""
    runs = {}
    for v in grid:
        runs[str(v)] = run(
            layers,
            params,
            make_opt(v),
            train,
            test,
            order,
            second_order=second_order,
            seconds=args.seconds,
            checkpoints=checkpoints,
        )

    def key(v):
        r = runs[v]
        t = r["time_to_0.95"]
        return (0, t) if t is not None else (1, -r["final_test_acc"])

    best = min(runs, key=key)
    return {"best": best, **runs[best], "grid": {v: _brief(r) for v, r in runs.items()}}


def _brief(r):
    keys = ("steps", "sec_per_step", "best_test_acc", "final_test_acc", "time_to_0.9", "time_to_0.95")
    return {k: r[k] for k in keys}


def run_seed(args, seed, dt, checkpoints):
    train, test = split(dt)
    layers, params = make_model(8, 16, seed=seed)
    params = jax.tree.map(lambda a: a.astype(dt), params)
    order, order16 = batch_order(seed, 64, args.max_steps), batch_order(seed, 16, args.max_steps)
    gn = functools.partial(_tuned, layers, params, train, test, args=args, checkpoints=checkpoints, second_order=True)
    lm = {"init_damping": args.init_damping}
    row = {
        "gauss_newton_lm_b64": gn(order, _gauss_newton(layers, train, 64, refresh_every=1, **lm), ["lm"]),
        "gauss_newton_lm_b64_nielsen": gn(
            order, _gauss_newton(layers, train, 64, refresh_every=1, lm_update="nielsen", **lm), ["lm"]
        ),
        "gauss_newton_lm_b64_refresh4": gn(order, _gauss_newton(layers, train, 64, refresh_every=4, **lm), ["lm"]),
        "gauss_newton_b16": gn(order16, _gauss_newton(layers, train, 16, refresh_every=1), args.gn_dampings),
    }
    row["adam"] = _tuned(layers, params, train, test, order, optax.adam, args.adam_lrs, args, checkpoints)
    row["sgd"] = _tuned(
        layers, params, train, test, order, lambda lr: optax.sgd(lr, momentum=0.9), args.sgd_lrs, args, checkpoints
    )
    return row


def acc_at(r, t):
    """The test accuracy of run ``r`` at time ``t``: the last checkpoint at or before ``t``."""
    return max((c for c in r["curve"] if c["time"] <= t), key=lambda c: c["time"])["test_acc"]


def summary(rows, times):
    methods = list(rows[0])
    out = {}
    for k in methods:
        rs = [r[k] for r in rows]
        s = {
            "median_sec_per_step": float(np.median([r["sec_per_step"] for r in rs])),
            "median_best_test_acc": float(np.median([r["best_test_acc"] for r in rs])),
            "median_test_acc_at": {f"{t:g}": float(np.median([acc_at(r, t) for r in rs])) for t in times},
        }
        for a in ACCURACIES:
            ts = [r[f"time_to_{a}"] for r in rs if r[f"time_to_{a}"] is not None]
            s[f"reached_{a}"] = len(ts)
            s[f"median_time_to_{a}"] = float(np.median(ts)) if ts else None
        out[k] = s
    # Head to head: seeds on which a Gauss-Newton variant had at least tuned Adam's test accuracy
    # at every checkpoint time.
    for k in methods:
        if k.startswith("gauss_newton"):
            out[k]["seeds_at_least_adam_at_every_time"] = sum(
                all(acc_at(r[k], t) >= acc_at(r["adam"], t) for t in times) for r in rows
            )
    return out


def plot(rows, times, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k in rows[0]:
        acc = np.array([[acc_at(r[k], t) for t in times] for r in rows])
        line = ax.plot(times, np.median(acc, axis=0), label=k.replace("_", " "))[0]
        ax.fill_between(times, acc.min(axis=0), acc.max(axis=0), color=line.get_color(), alpha=0.12)
    ax.set_xscale("log")
    ax.set_xlabel("wall-clock seconds of training steps (compilation excluded)")
    ax.set_ylabel("test accuracy (360 held-out digits)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"Mini-batch training on digits: median over {len(rows)} seeds (band: min-max)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    ap.add_argument("--seconds", type=float, default=6.0, help="the wall-clock budget of every run")
    ap.add_argument("--max-steps", type=int, default=60000)
    ap.add_argument("--adam-lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2])
    ap.add_argument("--sgd-lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2, 3e-2])
    ap.add_argument("--init-damping", type=float, default=0.01, help="LM's first λ (batches of 64)")
    ap.add_argument(
        "--gn-dampings",
        type=float,
        nargs="+",
        default=[1.0, 10.0, 100.0],
        help="the fixed λ grid of Gauss-Newton on batches of 16",
    )
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    if a.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    dt = jnp.dtype(a.dtype)
    checkpoints = np.geomspace(0.01, a.seconds, 40).tolist()
    times = [t for t in (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, a.seconds) if t <= a.seconds]
    rows = []
    meta = common.machine() | {
        "dtype": a.dtype,
        "seconds": a.seconds,
        "adam_lrs": a.adam_lrs,
        "sgd_lrs": a.sgd_lrs,
        "init_damping": a.init_damping,
        "gn_dampings": a.gn_dampings,
        "n_train": N_TRAIN,
        "n_test": 1797 - N_TRAIN,
    }
    for seed in a.seeds:
        rows.append(run_seed(a, seed, dt, checkpoints))
        print(
            seed,
            {
                k: (
                    round(v["sec_per_step"] * 1e3, 2),
                    v["steps"],
                    round(v["best_test_acc"], 3),
                    v["time_to_0.95"] and round(v["time_to_0.95"], 2),
                )
                for k, v in rows[-1].items()
            },
            flush=True,
        )
        out = {"meta": meta, "seeds": a.seeds[: len(rows)], "rows": rows, "summary": summary(rows, times)}
        if not a.no_write:  # after every seed, so an interrupted run keeps what it finished
            common.write_json(out, "stochastic_digits")
            plot(rows, np.geomspace(0.01, a.seconds, 60), common.result_path("stochastic_digits", "png"))
    for k, s in out["summary"].items():
        print(k, s)
    return out


if __name__ == "__main__":
    main()
