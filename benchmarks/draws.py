"""How often each method reaches each training loss, over many draws of the newton_vs_adam problem.

Training a deep narrow tanh net is chaotic: moving a few pixels of the float32 batch by one ulp
(a relative change of 6e-8) sends a run somewhere else after a few dozen steps. The GPU run of
``newton_vs_adam`` most likely met exactly that (its machine's batch differed in the last bits:
the loss at step 0 differed in the 9th digit), and its seeds behaved differently from the CPU's.
So five seeds are five draws from a distribution; this script samples more of it: for each seed, the unperturbed batch and
``--perturbations`` copies in which each pixel is moved one float32 ulp up or down with
probability ``--flip``. Every method runs on every draw from the seed's initial parameters, and
the steps to each target are recorded (steps, not seconds: multiply by a step's cost on a
device, e.g. from newton_vs_adam or adam_step).

Methods: Gauss-Newton LM (``hessinv.optax.newton``, as in newton_vs_adam) for up to
``--second-order-steps`` steps; Adam at each rate of ``--adam-lrs`` for up to
``--first-order-steps`` steps (per draw, the best rate per target is what counts).

Run: ``PYTHONPATH=. python benchmarks/draws.py`` (CPU, about 10 minutes); writes
``<out>/draws_<platform>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import numpy as np
import optax

import hessinv

from benchmarks.newton_vs_adam import load_batch, make_model, make_step


def perturb(X, rng, flip):
    """Each entry of the float32 array moved one ulp up or down with probability ``flip``."""
    X = np.asarray(X, np.float32)
    mask = rng.random(X.shape) < flip
    toward = np.where(rng.random(X.shape) < 0.5, np.float32(np.inf), np.float32(-np.inf))
    return np.where(mask, np.nextafter(X, toward), X)


def steps_to(step, opt, params, batch, targets, max_steps):
    """Run the optax loop with the jitted ``step`` (from ``newton_vs_adam.make_step``); the first
    step at which the loss is <= each target (None if never), the last loss and the steps run."""
    state, first, loss = opt.init(params), {t: None for t in targets}, None
    for k in range(max_steps + 1):
        new_params, new_state, loss, _ = step(params, state, batch)
        loss = float(loss)
        for t in targets:
            if first[t] is None and loss <= t:
                first[t] = k
        if not np.isfinite(loss) or loss <= min(targets):
            break
        params, state = new_params, new_state
    return first, loss, k


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    ap.add_argument("--perturbations", type=int, default=4, help="perturbed copies of each seed's batch")
    ap.add_argument("--flip", type=float, default=0.01, help="probability that a pixel moves one ulp")
    ap.add_argument("--targets", type=float, nargs="*", default=[1e-2, 1e-3, 1e-4, 1e-6])
    ap.add_argument("--second-order-steps", type=int, default=150)
    ap.add_argument("--first-order-steps", type=int, default=20000)
    ap.add_argument("--adam-lrs", type=float, nargs="*", default=[3e-3, 1e-2])
    ap.add_argument("--init-damping", type=float, default=0.01)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args()
    targets = sorted(args.targets, reverse=True)
    rows = []
    t0 = time.perf_counter()
    # One jitted step per method for every seed and draw: the layers are the same functions for
    # every seed, and params and batch are arguments, so each compiles once.
    layers = make_model(8, 16)[0]
    gn = hessinv.optax.newton(layers, curvature="ggn", damping="lm", init_damping=args.init_damping)
    adams = {lr: optax.adam(lr) for lr in args.adam_lrs}
    steps = {"gn": make_step(layers, gn, True)} | {lr: make_step(layers, opt, False) for lr, opt in adams.items()}
    for seed in args.seeds:
        X, y = load_batch(64, seed)
        params = jax.tree.map(lambda a: a.astype(jnp.float64), make_model(8, 16, seed)[1])
        rng = np.random.default_rng(1000 + seed)
        for j in range(args.perturbations + 1):
            Xj = np.asarray(X) if j == 0 else perturb(X, rng, args.flip)
            batch = (jnp.asarray(Xj, jnp.float32).astype(jnp.float64), y)
            row = dict(seed=seed, perturbation=j, initial_loss=float(hessinv.loss(layers, params, batch)))
            first, final, _ = steps_to(steps["gn"], gn, params, batch, targets, args.second_order_steps)
            row["gauss_newton_lm"] = dict(to_targets={f"{t:g}": s for t, s in first.items()}, final_loss=final)
            for lr in args.adam_lrs:
                first, final, _ = steps_to(steps[lr], adams[lr], params, batch, targets, args.first_order_steps)
                row[f"adam_{lr:g}"] = dict(to_targets={f"{t:g}": s for t, s in first.items()}, final_loss=final)
            adam = [row[f"adam_{lr:g}"]["to_targets"] for lr in args.adam_lrs]
            row["adam_best"] = {
                f"{t:g}": min((a[f"{t:g}"] for a in adam if a[f"{t:g}"] is not None), default=None) for t in targets
            }
            rows.append(row)
            print(
                f"seed {seed} draw {j}: GN "
                + " ".join(f"{t}:{s}" for t, s in row["gauss_newton_lm"]["to_targets"].items())
                + f" (final {row['gauss_newton_lm']['final_loss']:.1e}) | Adam best "
                + " ".join(f"{t}:{s}" for t, s in row["adam_best"].items())
                + f"  [{time.perf_counter() - t0:.0f}s]",
                flush=True,
            )
    summary = {}
    for name in ("gauss_newton_lm", "adam_best"):
        summary[name] = {}
        for t in targets:
            s = [(r[name]["to_targets"] if name != "adam_best" else r[name])[f"{t:g}"] for r in rows]
            hit = [x for x in s if x is not None]
            summary[name][f"{t:g}"] = dict(
                reached=len(hit),
                draws=len(rows),
                median_steps=float(np.median(hit)) if hit else None,
                max_steps=max(hit) if hit else None,
            )
        print(name, {t: f"{c['reached']}/{c['draws']} median {c['median_steps']}" for t, c in summary[name].items()})
    dev = jax.devices()[0]
    meta = dict(
        platform=dev.platform, device=str(dev.device_kind), jax=jax.__version__, config=vars(args) | {"out": None}
    )
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"draws_{dev.platform}.json")
    with open(path, "w") as f:
        json.dump(dict(meta=meta, summary=summary, rows=rows), f, indent=1)
    print("wrote", path)


if __name__ == "__main__":
    main()
