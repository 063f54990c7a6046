"""Log-determinant, inverse diagonal and one posterior sample at n = 1e4 … 1e6 parameters, exactly,
against the dense route (where it fits) and against the stochastic estimates people use instead,
given the same time.

    python -m benchmarks.spectral                     # n ≈ 1e4, 1e5, 1e6 (about 10 minutes on 2 cores)
    python -m benchmarks.spectral --depth 140 1400    # a subset

The network is a deep narrow tanh MLP (width 8, batch 4, 4 classes; ``depth`` layers in one
``Stack``, then a linear output layer and a parameter-free softmax cross-entropy), curvature the
generalised Gauss-Newton matrix with ``λ = 1e-2`` (a Laplace posterior precision). For each size:

* the stage recursion (``method="riccati"``) and ``method="auto"`` (here the output-space route:
  the GGN has rank ≤ batch × classes = 16): factorisation, ``logdet``, ``inverse_diagonal`` and one
  ``sample``, each jitted, warmed up and timed with ``block_until_ready``;
* the dense route at n ≈ 1e4 (forming and factorising the n × n matrix);
* at the time the recursion took for ``logdet``: stochastic Lanczos quadrature (Rademacher probes,
  30 Lanczos steps each, full reorthogonalisation) with the exact matrix-vector product, and its
  relative error; at the time it took for ``inverse_diagonal``: Hutchinson's diagonal estimator
  ``mean(v ⊙ (C + λI)^{-1} v)`` with conjugate-gradient solves (relative residual 1e-6), and its
  relative error against the exact diagonal.

Writes ``results/spectral_<platform>.json`` and ``.png`` (``--plot-only`` redraws the figure).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

import hessinv
from hessinv import _pipeline

from . import common

WIDTH, BATCH, CLASSES, DAMPING = 8, 4, 4, 1e-2


def logits(z, x):
    return {"h": z["h"] @ x["W"] + x["c"], "y": z["y"]}


def xent(z, x):
    logp = jax.nn.log_softmax(z["h"])
    return -jnp.mean(jnp.take_along_axis(logp, z["y"][:, None], axis=1))


def network(depth: int, seed: int = 0):
    k = jax.random.split(jax.random.key(seed), 5)

    def init(key, a, b):
        kw, kc = jax.random.split(key)
        return {"W": jax.random.normal(kw, (a, b)) / np.sqrt(a), "c": 0.1 * jax.random.normal(kc, (b,))}

    layers = (common.tanh_layer, hessinv.Stack(common.tanh_layer, depth), logits, xent)
    params = [
        init(k[0], 2, WIDTH),
        jax.vmap(lambda kk: init(kk, WIDTH, WIDTH))(jax.random.split(k[1], depth)),
        init(k[2], WIDTH, CLASSES),
        {},
    ]
    z0 = {"h": jax.random.normal(k[3], (BATCH, 2)), "y": jnp.arange(BATCH) % CLASSES}
    return layers, params, z0


def timed(fn, *args, repeats=3):
    """(median seconds of a warmed-up jitted call, its output)."""
    r, out = common.bench(fn, *args, repeats=repeats, warmup=1, max_seconds=60)
    return r["time_s"], out


def slq_logdet(matvec, n, probes, steps, key, dt):
    """Stochastic Lanczos quadrature of log det (``probes`` Rademacher vectors, ``steps`` steps)."""

    def one(key):
        v = jax.random.rademacher(key, (n,), dt)
        v = v / jnp.linalg.norm(v)

        def body(carry, _):
            V, k, beta, w_prev = carry
            q = V[k]
            w = matvec(q) - beta * w_prev
            alpha = q @ w
            w = w - alpha * q
            w = w - V.T @ (V @ w)  # full reorthogonalisation
            b = jnp.linalg.norm(w)
            V = V.at[k + 1].set(w / b)
            return (V, k + 1, b, q), (alpha, b)

        V = jnp.zeros((steps + 1, n), dt).at[0].set(v)
        _, (alphas, betas) = jax.lax.scan(body, (V, 0, jnp.zeros((), dt), jnp.zeros(n, dt)), None, length=steps)
        T = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
        theta, U = jnp.linalg.eigh(T)
        return n * jnp.sum(U[0] ** 2 * jnp.log(jnp.abs(theta)))

    return jnp.mean(jax.lax.map(one, jax.random.split(key, probes)))


def hutchinson_diag(matvec, n, probes, key, dt, tol=1e-6, maxiter=200):
    """``mean(v ⊙ M^{-1} v)`` over Rademacher ``v``, with CG solves."""

    def one(key):
        v = jax.random.rademacher(key, (n,), dt)
        x, _ = jax.scipy.sparse.linalg.cg(matvec, v, tol=tol, maxiter=maxiter)
        return v * x

    return jnp.mean(jax.lax.map(one, jax.random.split(key, probes)), axis=0)


def flat_matvec(F, pipe):
    dt = pipe.dtype

    def mv(v):
        return _pipeline.rows_to_vector(F.matvec_rows(_pipeline.vector_to_rows(pipe, v)), dt)

    return mv


def flat_diag(d):
    return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(d)])


def one_size(depth: int) -> dict:
    layers, params, z0 = network(depth)
    pipe = _pipeline.build(layers, params, z0)
    n, dt = _pipeline.n_params(pipe), pipe.dtype
    rec = {"depth": depth, "n": n, "route_auto": hessinv.route(layers, params, z0, damping=DAMPING, curvature="ggn")}
    key = jax.random.key(1)
    exact = {}
    for method in ("riccati", "auto", "dense"):
        if method == "dense" and n > 12_000:
            continue

        def fac(p, method=method):
            return hessinv.factorize(layers, p, z0, damping=DAMPING, curvature="ggn", method=method)

        t_f, F = timed(fac, params)
        t_ld, (sign, ld) = timed(lambda F: F.logdet(), F)
        t_d, d = timed(lambda F: F.inverse_diagonal(), F)
        t_s, _ = timed(lambda F: F.sample(key), F)
        rec[method] = {"factorize_s": t_f, "logdet_s": t_ld, "inverse_diagonal_s": t_d, "sample_s": t_s}
        exact[method] = (float(ld), np.asarray(flat_diag(d)))
        print(f"n={n:>8} {method:8} factorize {t_f:8.3f} s  logdet {t_ld:.3g} s  diag {t_d:.3g} s  sample {t_s:.3g} s")
        if method == "riccati":
            F_r = F
    ld_ref, d_ref = exact["riccati"]
    for m, (ld, d) in exact.items():
        rec[m]["logdet"] = ld
        rec[m]["logdet_rel_diff_vs_riccati"] = abs(ld - ld_ref) / abs(ld_ref)
        rec[m]["diag_rel_diff_vs_riccati"] = float(np.linalg.norm(d - d_ref) / np.linalg.norm(d_ref))

    # The stochastic alternatives, given the recursion's time (factorisation + the query).
    mv = jax.jit(flat_matvec(F_r, pipe))
    budget_ld = rec["riccati"]["factorize_s"] + rec["riccati"]["logdet_s"]
    budget_d = rec["riccati"]["factorize_s"] + rec["riccati"]["inverse_diagonal_s"]
    jax.block_until_ready(mv(jnp.ones(n, dt)))  # compile
    t0 = time.perf_counter()
    for _ in range(5):
        jax.block_until_ready(mv(jnp.ones(n, dt)))
    t_mv = (time.perf_counter() - t0) / 5
    steps = 30
    probes = max(1, int(budget_ld / (steps * t_mv)))
    slq = jax.jit(lambda k: slq_logdet(mv, n, probes, steps, k, dt))
    jax.block_until_ready(slq(key))
    t0 = time.perf_counter()
    est = float(jax.block_until_ready(slq(jax.random.key(2))))
    rec["slq"] = {"probes": probes, "steps": steps, "time_s": time.perf_counter() - t0,
                  "logdet": est, "abs_error": abs(est - ld_ref), "rel_error": abs(est - ld_ref) / abs(ld_ref)}
    # Hutchinson: time one CG probe, then as many as the budget allows
    one = jax.jit(lambda k: hutchinson_diag(mv, n, 1, k, dt))
    jax.block_until_ready(one(key))
    t0 = time.perf_counter()
    jax.block_until_ready(one(jax.random.key(3)))
    t_probe = time.perf_counter() - t0
    hp = max(1, int(budget_d / t_probe))
    hut = jax.jit(lambda k: hutchinson_diag(mv, n, hp, k, dt))
    jax.block_until_ready(hut(key))
    t0 = time.perf_counter()
    dh = np.asarray(jax.block_until_ready(hut(jax.random.key(4))))
    rec["hutchinson_cg"] = {"probes": hp, "time_s": time.perf_counter() - t0,
                            "rel_error": float(np.linalg.norm(dh - d_ref) / np.linalg.norm(d_ref)),
                            # against the part of the diagonal the data explain (1/λ is the prior's)
                            "rel_error_of_data_part": float(np.linalg.norm(dh - d_ref) / np.linalg.norm(d_ref - 1 / DAMPING))}
    print(f"           SLQ {probes} probes x {steps} steps: logdet error {rec['slq']['abs_error']:.3g} nats "
          f"(relative {rec['slq']['rel_error']:.2e}); "
          f"Hutchinson+CG {hp} probes: diagonal rel. error {rec['hutchinson_cg']['rel_error']:.2e} "
          f"({rec['hutchinson_cg']['rel_error_of_data_part']:.2e} of diag − 1/λ)")
    return rec


def plot(out, path):
    """Time of each exact query against n, per route (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    queries = [("factorize_s", "factorise"), ("logdet_s", "logdet"), ("inverse_diagonal_s", "inverse diagonal"),
               ("sample_s", "one sample")]
    fig, axes = plt.subplots(1, len(queries), figsize=(14, 3.4), sharex=True)
    for ax, (key, title) in zip(axes, queries):
        for method, style in (("riccati", "o-"), ("auto", "s-"), ("dense", "^")):
            pts = [(s["n"], s[method][key]) for s in out["sizes"] if method in s]
            if pts:
                ax.loglog(*zip(*pts), style, label={"auto": "auto (output space)"}.get(method, method))
        ax.set_title(title)
        ax.set_xlabel("parameters n")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("seconds")
    axes[0].legend()
    m = out["machine"]
    fig.suptitle(f"GGN + {out['damping']} I of a deep tanh MLP (width {out['width']}, batch {out['batch']}): "
                 f"{m['cpu']}, {m['nproc']} cores, jax {m['jax']}, float64", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, nargs="+", default=[140, 1400, 14000])
    ap.add_argument("--plot-only", action="store_true", help="redraw the figure from the recorded JSON")
    a = ap.parse_args(argv)
    if a.plot_only:
        path = common.RESULTS / f"{common._stem('spectral')}.json"
        out = json.loads(path.read_text())
    else:
        jax.config.update("jax_enable_x64", True)
        out = {"machine": common.machine(), "damping": DAMPING, "width": WIDTH, "batch": BATCH, "classes": CLASSES,
               "curvature": "ggn", "sizes": [one_size(d) for d in a.depth]}
        path = common.write_json(out, "spectral")
    plot(out, path.with_suffix(".png"))


if __name__ == "__main__":
    main()
