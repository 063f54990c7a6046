"""Every exact route at the shapes users have: batch × width × depth, Hessian and Gauss-Newton.

    python -m benchmarks.run --suite shapes                 # the grid below (~14 min, 2 CPU cores)
    python -m benchmarks.shapes --batch 4 64 --width 8 --depth 16   # a subset

The network is a 1-D-output tanh MLP, ``x (batch × width) → Stack of depth tanh layers →
linear → MSE against targets``, the targets carried in ``z0``. At each point every exact route
(``riccati``, ``dense``, ``gauss_newton`` for the GGN) solves ``(C + λI) x = g`` for the same
``g``, and so does ``method="auto"``; each is jitted, compiled and warmed up, then all are timed in turn, seven
rounds (``block_until_ready``; a program stops repeating after 1 s), in this one process; the
fastest call of each is reported (``*_s``, the median beside it), and each answer is compared
with the dense route's. ``auto`` picks its route at trace time, so it compiles to that route's
program: where the optimised HLO texts are equal (``auto_same_program``), the ratios use the
faster of the two programs' calls for both (they are one program; their separate figures stay
in the JSON).
Conjugate gradients on the hvp (``jax.scipy.sparse.linalg.cg``, tolerance 1e-8) is timed for
reference. A route is skipped, and says so, where the cost model estimates more than
``--cap`` seconds or the dense matrix would not fit. Writes ``results/shapes_<platform>.json``
and ``.png`` (the fastest route at each point, and auto's time over the fastest).
"""

from __future__ import annotations

import argparse
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

import hessinv
from hessinv import _pipeline, cost

from . import baselines, common

DAMPING = 1e-3
ROUTES = ("riccati", "dense", "gauss_newton")
GRID = {"batch": (4, 16, 64, 256), "width": (4, 8, 16, 32), "depth": (4, 16, 64, 256)}


def _first(z, x):
    return {"h": jnp.tanh(z["x"] @ x["W"] + x["c"]), "y": z["y"]}


def _hidden(z, x):
    return {"h": jnp.tanh(z["h"] @ x["W"] + x["c"]), "y": z["y"]}


def _out(z, x):
    return {"h": z["h"] @ x["W"] + x["c"], "y": z["y"]}


def _mse(z, x):
    return 0.5 * jnp.mean((z["h"][:, 0] - z["y"]) ** 2)


def regression(batch: int, width: int, depth: int, seed: int = 0, dtype=jnp.float64, inputs: int | None = None):
    """``(layers, params, z0)``: ``inputs`` (default ``width``) → ``depth`` hidden tanh layers of
    ``width`` → 1 output, mean squared error (halved) against targets sin(3 x₀) carried in z0."""
    inputs = width if inputs is None else inputs
    k = jax.random.split(jax.random.key(seed), 4)
    x = jax.random.uniform(k[3], (batch, inputs), dtype, -1.0, 1.0)

    def init(key, i, o):
        return {"W": (jax.random.normal(key, (i, o)) / math.sqrt(i)).astype(dtype), "c": jnp.zeros(o, dtype)}

    layers = [_first, hessinv.Stack(_hidden, depth), _out, _mse]
    params = [
        init(k[0], inputs, width),
        jax.vmap(lambda kk: init(kk, width, width))(jax.random.split(k[1], depth)),
        init(k[2], width, 1),
        {},
    ]
    return layers, params, {"x": x, "y": jnp.sin(3 * x[:, 0])}


def point(batch, width, depth, curvature, cap):
    layers, params, z0 = regression(batch, width, depth)
    pipe = _pipeline.build(layers, params, z0)
    g = jax.tree.map(lambda a: jnp.sin(jnp.arange(a.size, dtype=a.dtype).reshape(a.shape) + 1.0), params)
    mach = cost.machine()
    rec = {"batch": batch, "width": width, "depth": depth, "curvature": curvature, "n": _pipeline.n_params(pipe)}
    rec["a"] = max(seg.a_out for seg in pipe.segments[:-1])
    rec["auto_choice"] = hessinv.route(layers, params, z0, damping=DAMPING, curvature=curvature)
    answers, calls = {}, {}
    for r in ROUTES + ("auto",):
        if r == "gauss_newton" and curvature != "ggn":
            continue
        est = cost.estimate(pipe, curvature, rec["auto_choice"] if r == "auto" else r, mach)
        rec[f"{r}_estimate_s"] = est
        if est > cap:
            rec[f"{r}_skipped"] = f"estimate {est:.3g} s > cap {cap} s" if math.isfinite(est) else "does not fit"
            continue

        def f(p, z, g, r=r):
            return hessinv.ihvp(layers, p, z, g, damping=DAMPING, curvature=curvature, method=r)

        calls[r], rec[f"{r}_compile_s"] = common.compile_fn(f, params, z0, g)
    if curvature == "hessian" and rec.get("riccati_estimate_s", 0) < cap:
        calls["cg"], _ = common.compile_fn(
            lambda p, z, g: baselines.jax_cg(layers, p, z, g, DAMPING, maxiter=500), params, z0, g
        )
    for r, c in calls.items():
        answers[r] = jax.block_until_ready(c(params, z0, g))
    # Interleaved, so that auto and the route it picks (the same program) see the same load.
    # The ratios use each program's fastest call: identical programs (auto and its pick) then
    # agree to a few per cent even at sub-millisecond sizes, where medians still wander.
    timed = common.time_interleaved({r: (c, (params, z0, g)) for r, c in calls.items()}, rounds=7, budget=1.0)
    times = {r: t["min_s"] for r, t in timed.items()}
    for r, t in timed.items():
        rec[f"{r}_s"], rec[f"{r}_median_s"] = t["min_s"], t["time_s"]
    # auto decides at trace time, so it compiles to the very program of the route it picks; where
    # the optimised HLO says so, both are one program and share their fastest call.
    pick = rec["auto_choice"]
    if "auto" in calls and pick in calls:
        rec["auto_same_program"] = calls["auto"].as_text() == calls[pick].as_text()
        if rec["auto_same_program"]:
            times["auto"] = times[pick] = min(times["auto"], times[pick])
    ref = answers.get("dense") or answers.get("riccati")
    if ref is not None:
        den = float(common.tree_norm(ref))
        for r, x in answers.items():
            rec[f"{r}_vs_ref"] = float(common.tree_norm(common.tree_sub(x, ref))) / den
    exact = {r: times[r] for r in ROUTES if r in times}
    if exact:
        best = min(exact, key=exact.get)
        rec["fastest"], rec["fastest_s"] = best, exact[best]
        if "auto" in times:
            rec["auto_over_fastest"] = times["auto"] / exact[best]
        if "dense" in times and "auto" in times:
            rec["auto_over_dense"] = times["auto"] / times["dense"]
    return rec


def run(batches, widths, depths, curvatures=("hessian", "ggn"), cap=10.0, write=True, progress=print):
    rows = []
    for b, w, d, c in itertools.product(batches, widths, depths, curvatures):
        rec = point(b, w, d, c, cap)
        rows.append(rec)
        progress(_line(rec))
    out = {
        "meta": common.machine() | {"damping": DAMPING, "cap_s": cap, "cost_model": cost.machine()._asdict()},
        "rows": rows,
    }
    out["summary"] = summary(rows)
    if write:
        common.write_json(out, "shapes")
        plot(out, common.result_path("shapes", "png"))
    return out


def _line(r):
    ts = " ".join(f"{k}={r[k + '_s'] * 1e3:.1f}ms" for k in ROUTES + ("auto", "cg") if k + "_s" in r)
    return f"B={r['batch']:3d} w={r['width']:2d} L={r['depth']:3d} {r['curvature']:7s} n={r['n']:6d} auto->{r['auto_choice']:12s} {ts}"


def summary(rows):
    ratios = [r["auto_over_fastest"] for r in rows if "auto_over_fastest" in r]
    vs_dense = [r["auto_over_dense"] for r in rows if "auto_over_dense" in r]
    corner = [
        1 / r["auto_over_dense"]
        for r in rows
        if "auto_over_dense" in r and r["n"] >= 5000 and r["a"] <= 256 and r["width"] <= 16
    ]
    errs = [r[k] for r in rows for k in r if k.endswith("_vs_ref") and not k.startswith("cg")]
    return {
        "points": len(rows),
        "auto_over_fastest_max": max(ratios, default=None),
        "auto_within_1.25x": f"{sum(x <= 1.25 for x in ratios)}/{len(ratios)}",
        "auto_over_dense_max": max(vs_dense, default=None),
        "deep_narrow_speedup_over_dense_min": min(corner, default=None),
        "max_disagreement_between_exact_routes": max(errs, default=None),
    }


def plot(rec, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = rec["rows"]
    curvs = sorted({r["curvature"] for r in rows})
    widths = sorted({r["width"] for r in rows})
    fig, axes = plt.subplots(2, len(curvs), figsize=(6 * len(curvs), 9), squeeze=False)
    colours = {"riccati": 0, "dense": 1, "gauss_newton": 2}
    for j, c in enumerate(curvs):
        sub = [r for r in rows if r["curvature"] == c]
        keys = sorted({(r["batch"], r["depth"]) for r in sub})
        M = np.full((len(widths), len(keys)), np.nan)
        A = np.full_like(M, np.nan)
        for r in sub:
            i, k = widths.index(r["width"]), keys.index((r["batch"], r["depth"]))
            if "fastest" in r:
                M[i, k] = colours[r["fastest"]]
            A[i, k] = r.get("auto_over_fastest", np.nan)
        for ax, data, title, kw in (
            (
                axes[0, j],
                M,
                f"{c}: fastest exact route (blue riccati, orange dense, green GN)",
                {"cmap": "tab10", "vmin": 0, "vmax": 9},
            ),
            (axes[1, j], A, f"{c}: auto time / fastest time", {"cmap": "viridis", "vmin": 1, "vmax": 2}),
        ):
            im = ax.imshow(data, aspect="auto", **kw)
            ax.set_yticks(range(len(widths)), [f"w={w}" for w in widths])
            ax.set_xticks(range(len(keys)), [f"B{b}\nL{d}" for b, d in keys], fontsize=7)
            ax.set_title(title, fontsize=9)
            if data is A:
                fig.colorbar(im, ax=ax)
    m = rec["meta"]
    fig.suptitle(
        f"hessinv routes by shape, {m['platform']} / {m['cpu']} ({m['nproc']} cores), jax {m['jax']}, λ={DAMPING}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=GRID["batch"])
    ap.add_argument("--width", type=int, nargs="+", default=GRID["width"])
    ap.add_argument("--depth", type=int, nargs="+", default=GRID["depth"])
    ap.add_argument("--curvature", nargs="+", default=("hessian", "ggn"))
    ap.add_argument("--cap", type=float, default=10.0, help="skip a route whose estimate exceeds this (s)")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    out = run(a.batch, a.width, a.depth, tuple(a.curvature), a.cap, write=not a.no_write)
    print(out["summary"])


if __name__ == "__main__":
    main()
