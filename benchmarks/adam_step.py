"""What one Adam step costs on the newton_vs_adam model, three ways, on whatever device JAX has.

``newton_vs_adam`` times the usual optax loop: one jitted call per step, through
``hessinv.loss`` (which scans the 16 hidden layers). On a GPU that loop is bound by dispatch and
by the scan's per-layer iterations, not by arithmetic, so this prints (and writes to
``<out>/adam_step_<platform>.json``) Adam's time a step for:

* the benchmark's step (``hessinv.loss``, one call a step);
* the same loss with the layers unrolled in Python (one call a step);
* 100 steps fused into one call by ``lax.scan``, scanned and unrolled loss.

The fastest of these is the fairest "tuned Adam" cost per step on that device; the step counts
to each loss do not depend on how the step is called.

Run: ``PYTHONPATH=. python benchmarks/adam_step.py [--out DIR]`` (about 20 s).
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

from benchmarks.newton_vs_adam import cross_entropy, load_batch, make_model

WIDTH, DEPTH, FUSED = 8, 16, 100


def unrolled_loss(p, batch):
    h, y = batch
    h = jnp.tanh(h @ p[0]["W"] + p[0]["b"])
    for i in range(DEPTH):
        h = jnp.tanh(h @ p[1]["W"][i] + p[1]["b"][i])
    return cross_entropy((h @ p[2]["W"] + p[2]["b"], y), {})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    ap.add_argument("--steps", type=int, default=2000, help="timed one-call steps per variant")
    args = ap.parse_args()
    X, y = load_batch(64, 0)
    layers, params = make_model(WIDTH, DEPTH, 0)
    batch = (X.astype(jnp.float64), y)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    opt = optax.adam(1e-2)
    rows = {}
    for name, loss in [("scan", lambda p, b: hessinv.loss(layers, p, b)), ("unrolled", unrolled_loss)]:

        def step(p, s, b, loss=loss):
            value, g = jax.value_and_grad(loss)(p, b)
            u, s = opt.update(g, s, p)
            return optax.apply_updates(p, u), s, value

        def fused(p, s, b, step=step):
            (p, s), _ = jax.lax.scan(lambda c, _: (step(*c, b)[:2], None), (p, s), None, length=FUSED)
            return p, s

        one = jax.jit(step)
        p, s = params, opt.init(params)
        for _ in range(20):  # warm-up (the first call compiles)
            p, s, _ = jax.block_until_ready(one(p, s, batch))
        times = []
        for _ in range(args.steps):
            t = time.perf_counter()
            p, s, _ = jax.block_until_ready(one(p, s, batch))
            times.append(time.perf_counter() - t)
        many = jax.jit(fused)
        p, s = jax.block_until_ready(many(params, opt.init(params), batch))
        t = time.perf_counter()
        for _ in range(20):
            p, s = jax.block_until_ready(many(p, s, batch))
        rows[name] = dict(
            one_call_a_step_median_s=float(np.median(times)),
            one_call_a_step_mean_s=float(np.mean(times)),
            fused_s_per_step=(time.perf_counter() - t) / (20 * FUSED),
        )
        r = rows[name]
        print(
            f"adam, {name:8s} loss: one call a step {1e6 * r['one_call_a_step_median_s']:6.0f} us (median), "
            f"{FUSED} steps a call {1e6 * r['fused_s_per_step']:6.0f} us a step"
        )
    dev = jax.devices()[0]
    meta = dict(platform=dev.platform, device=str(dev.device_kind), cpu_count=os.cpu_count(), jax=jax.__version__)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"adam_step_{dev.platform}.json")
    with open(path, "w") as f:
        json.dump(dict(meta=meta, width=WIDTH, depth=DEPTH, batch=64, fused=FUSED, rows=rows), f, indent=1)
    print("wrote", path)


if __name__ == "__main__":
    main()
