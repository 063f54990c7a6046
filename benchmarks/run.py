"""All benchmark suites, side by side in one run, on whatever ``jax.devices()`` offers.

    python -m benchmarks.run --suite quick    # every suite, small sizes (< 2 min on 2 CPU cores)
    python -m benchmarks.run --suite full     # every suite, full sizes (~10 min on 2 CPU cores)
    python -m benchmarks.run --suite core     # the depth benchmark (same as python -m benchmarks.core)
    python -m benchmarks.run --suite shapes   # every exact route and auto by shape (benchmarks/shapes.py)
    python -m benchmarks.run --suite full --only depth memory   # a subset

Suites (all on the tanh MLP of :func:`benchmarks.common.mlp`, batch 4 / width 4 unless varied):

1. ``depth``: hvp, ihvp, factorize, F.solve against depth L; fitted exponent of time vs L (≈ 1).
2. ``width``: factorisation and solve against ``a + p`` (``a = batch × width``, ``p`` parameters
   per layer), varying the width and, separately, the batch; fitted exponents (≈ 3 and ≈ 2) and
   the factorisation's achieved GFLOP/s against one large ``jnp.linalg.solve`` on the same device.
3. ``alternatives``: at equal accuracy (1e-8 relative residual) against the dense route and
   ``jax.scipy.sparse.linalg`` CG / GMRES on Pearlmutter hvp, at the indefinite damping 1e-3 and at
   a damping large enough for ``H + λI ≻ 0`` (checked by the inertia): hvp counts and times.
4. ``rhs``: ``jax.vmap(F.solve)`` over 1, 16, 256 right-hand sides against as many CG solves.
5. ``memory``: bytes of the compiled ``ihvp`` (XLA's memory analysis: arguments, outputs,
   temporaries, peak) against L, next to the hvp's and the dense Hessian's ``8 n²``; on GPU also
   the allocator's peak.

Writes ``benchmarks/results/<suite>_<platform>.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

import hessinv

from . import baselines, common, core

SIZES = {
    "quick": {
        "depth_Ls": (64, 256, 1024),
        "widths": (2, 4, 8),
        "batches": (8, 32),
        "width_L": 8,
        "ref_N": 1000,
        "alt_Ls": (64,),
        "krylov_maxiter": 500,
        "rhs_L": 64,
        "rhs_ks": (1, 64),
        "mem_Ls": (64, 1024, 4096),
        "repeats": 3,
        "extra": False,
    },
    "full": {
        "depth_Ls": (16, 64, 256, 1024, 4096, 16384),
        "widths": (2, 4, 8, 16, 22),
        "batches": (2, 8, 32, 128),
        "width_L": 32,
        "ref_N": 4000,
        "alt_Ls": (16, 64, 256, 1024),
        "krylov_maxiter": 1000,
        "rhs_L": 256,
        "rhs_ks": (1, 16, 256),
        "mem_Ls": (16, 64, 256, 1024, 4096, 16384),
        "repeats": 5,
        "extra": True,
    },
}
PD_DAMPING = 5.0  # large enough that H + λI ≻ 0 for this net (the inertia is recorded to show it)


def _dtype():
    # TPUs have no float64: there the suites run in float32 (with tolerances to match).
    return jnp.float32 if jax.devices()[0].platform == "tpu" else jnp.float64


def _tol(dtype):
    return 1e-8 if dtype == jnp.float64 else 1e-5


# -- suite 1: depth ---------------------------------------------------------------------------------


def depth_job(L, cfg, dtype):
    layers, params, z0, g = common.mlp(L, dtype=dtype)
    lam = jnp.asarray(1e-3, dtype)
    r = {"L": L, "n": common.n_params(params)}
    rep = cfg["repeats"]
    r["hvp"], _ = common.bench(lambda p, z, v: hessinv.hvp(layers, p, z, v), params, z0, g, repeats=rep)
    r["ihvp"], x = common.bench(
        lambda p, z, g, l: hessinv.ihvp(layers, p, z, g, damping=l), params, z0, g, lam, repeats=rep
    )
    r["blocks"], B = common.bench(lambda p, z: hessinv.blocks(layers, p, z), params, z0, repeats=rep)
    r["factor_recursion"], _ = common.bench(lambda B, l: B.factorize(l), B, lam, repeats=rep)
    if cfg["extra"]:  # blocks + recursion in one jit, returning the whole Factorization
        r["factorize"], _ = common.bench(
            lambda p, z, l: hessinv.factorize(layers, p, z, damping=l), params, z0, lam, repeats=rep
        )
    F = jax.jit(lambda B, l: B.factorize(l))(B, lam)
    r["solve"], _ = common.bench(lambda F, g: F.solve(g), F, g, repeats=rep)
    r["ihvp"]["relres"] = float(common.make_relres(layers)(params, z0, x, g, lam))
    return r


def depth_summary(rows):
    Ls = [r["L"] for r in rows if r["L"] >= 256]
    if len(Ls) < 3:  # fit over the larger depths, where fixed per-call overheads matter least
        Ls = [r["L"] for r in rows if r["L"] >= 64] or [r["L"] for r in rows]
    by = {r["L"]: r for r in rows}
    return {
        f"exponent_{k}_vs_L (L>={min(Ls)})": common.fit_exponent(Ls, [by[L][k]["time_s"] for L in Ls])
        for k in ("hvp", "ihvp", "blocks", "factor_recursion", "factorize", "solve")
        if k in rows[0]
    } | {"ihvp_over_hvp": {r["L"]: r["ihvp"]["time_s"] / r["hvp"]["time_s"] for r in rows}}


# -- suite 2: width and batch -----------------------------------------------------------------------


def factor_flops(a, p):
    """Flops of one stage of the recursion (a_in = a_out = a): WᵀSW, LU, the gain solve, S update."""
    return 2 * a * a * (a + p) + 2 * a * (a + p) ** 2 + (2 / 3) * p**3 + 2 * p * p * a + 2 * a * a * p


def solve_flops(a, p):
    """Flops of one stage of a solve: the backward and forward matrix-vector products and LU solve."""
    return 2 * (2 * a * a + 2 * a * p + 2 * a * p) + 2 * p * p + 2 * (a * p + a * a + a * p)


def width_job(batch, width, cfg, dtype, sweep):
    L = cfg["width_L"]
    layers, params, z0, g = common.mlp(L, batch=batch, width=width, dtype=dtype)
    lam = jnp.asarray(1e-3, dtype)
    a, p = batch * width, width * width + width
    rep = cfg["repeats"]
    r = {"sweep": sweep, "batch": batch, "width": width, "a": a, "p": p, "a_plus_p": a + p, "L": L}
    r["blocks"], B = common.bench(lambda p_, z: hessinv.blocks(layers, p_, z), params, z0, repeats=rep, max_seconds=5)
    r["factor_recursion"], F = common.bench(lambda B, l: B.factorize(l), B, lam, repeats=rep, max_seconds=5)
    r["solve"], _ = common.bench(lambda F, g: F.solve(g), F, g, repeats=rep, max_seconds=5)
    r["hvp"], _ = common.bench(
        lambda p_, z, v: hessinv.hvp(layers, p_, z, v), params, z0, g, repeats=rep, max_seconds=5
    )
    fl = (L - 1) * factor_flops(a, p)  # the L - 1 stages with a_in = a (the first has a_in = 0)
    r["factor_gflops"] = fl / r["factor_recursion"]["time_s"] / 1e9
    r["solve_gflops"] = (L - 1) * solve_flops(a, p) / r["solve"]["time_s"] / 1e9
    return r


def reference_job(N, dtype):
    """The device's dense-LU rate: one large ``jnp.linalg.solve``."""
    M = jax.random.normal(jax.random.PRNGKey(0), (N, N), dtype) + N**0.5 * jnp.eye(N, dtype=dtype)
    b = jnp.ones((N,), dtype)
    t, _ = common.bench(jnp.linalg.solve, M, b, repeats=3, max_seconds=5)
    return {"N": N, "time_s": t["time_s"], "gflops": ((2 / 3) * N**3 + 2 * N**2) / t["time_s"] / 1e9}


def width_summary(rows, ref):
    s = {}
    for sweep in ("width", "batch"):
        rs = [r for r in rows if r["sweep"] == sweep]
        if len(rs) >= 2:
            x = [r["a_plus_p"] for r in rs]
            for k in ("factor_recursion", "solve", "blocks"):
                s[f"{sweep}_sweep_exponent_{k}_vs_a_plus_p"] = common.fit_exponent(
                    x[-3:], [r[k]["time_s"] for r in rs][-3:]
                )
    best = max(rows, key=lambda r: r["factor_gflops"])
    s["best_factor_gflops"] = best["factor_gflops"]
    s["best_factor_gflops_at"] = {"batch": best["batch"], "width": best["width"]}
    s["reference_solve_gflops"] = ref["gflops"]
    s["best_factor_fraction_of_reference"] = best["factor_gflops"] / ref["gflops"]
    return s


# -- suite 3: alternatives at equal accuracy --------------------------------------------------------


def _count_hvps(layers, params, z0, g, lam, solver, **kw):
    """Run ``solver`` once with a host-side counter in the matvec: the number of hvps it used."""
    count = [0]

    def bump():
        count[0] += 1

    def counted(p, z, g, lam):
        A = baselines.damped_hvp(layers, p, z, lam)

        def matvec(v):
            jax.debug.callback(bump)
            return A(v)

        return solver(matvec, g, **kw)[0]

    x = jax.jit(counted)(params, z0, g, lam)
    jax.block_until_ready(x)
    jax.effects_barrier()
    return count[0], x


def alt_job(L, lam_value, cfg, dtype):
    layers, params, z0, g = common.mlp(L, dtype=dtype)
    lam = jnp.asarray(lam_value, dtype)
    n = common.n_params(params)
    tol, mx = _tol(dtype), cfg["krylov_maxiter"]
    relres = common.make_relres(layers)
    rr = lambda x: float(relres(params, z0, x, g, lam))
    rep = cfg["repeats"]
    r = {"L": L, "n": n, "damping": lam_value}
    F = hessinv.factorize(layers, params, z0, damping=lam)
    pos, neg, zero = jax.jit(lambda F: F.inertia())(F)
    r["inertia"] = {"pos": int(pos), "neg": int(neg), "zero": int(zero)}
    r["hvp"], _ = common.bench(lambda p, z, v: hessinv.hvp(layers, p, z, v), params, z0, g, repeats=rep)
    r["hessinv"], x = common.bench(
        lambda p, z, g, l: hessinv.ihvp(layers, p, z, g, damping=l), params, z0, g, lam, repeats=rep
    )
    r["hessinv"]["relres"] = rr(x)
    if n <= 6000:
        r["dense"], x = common.bench(
            lambda p, z, g, l: baselines.dense_ihvp(layers, p, z, g, l), params, z0, g, lam, repeats=rep, max_seconds=2
        )
        r["dense"]["relres"] = rr(x)
    r["cg"], x = common.bench(
        lambda p, z, g, l: baselines.jax_cg(layers, p, z, g, l, tol=tol, maxiter=mx),
        params,
        z0,
        g,
        lam,
        repeats=rep,
        max_seconds=2,
    )
    r["cg"]["relres"] = rr(x)
    r["cg"]["hvps"], _ = _count_hvps(
        layers, params, z0, g, lam, jax.scipy.sparse.linalg.cg, tol=tol, atol=0.0, maxiter=mx
    )
    restart = 50
    gm_max = max(1, mx // restart)
    r["gmres"], x = common.bench(
        lambda p, z, g, l: baselines.jax_gmres(layers, p, z, g, l, tol=tol, maxiter=gm_max, restart=restart),
        params,
        z0,
        g,
        lam,
        repeats=rep,
        max_seconds=2,
    )
    r["gmres"]["relres"] = rr(x)
    r["gmres"]["hvps"], _ = _count_hvps(
        layers,
        params,
        z0,
        g,
        lam,
        jax.scipy.sparse.linalg.gmres,
        tol=tol,
        atol=0.0,
        restart=restart,
        maxiter=gm_max,
        solve_method="batched",
    )
    for k in ("cg", "gmres"):
        r[k]["converged"] = r[k]["relres"] <= 10 * tol
        r[k]["cap_hvps"] = mx
    return r


# -- suite 4: many right-hand sides -----------------------------------------------------------------


def rhs_job(k, cfg, dtype):
    L = cfg["rhs_L"]
    layers, params, z0, _ = common.mlp(L, dtype=dtype)
    lam = jnp.asarray(PD_DAMPING, dtype)  # CG needs H + λI ≻ 0 to be a fair competitor
    gs = jax.tree.map(lambda a: jax.random.normal(jax.random.PRNGKey(k), (k, *a.shape), a.dtype), params)
    rep = cfg["repeats"]
    tol = _tol(dtype)
    r = {"L": L, "k": k, "damping": PD_DAMPING}
    F = hessinv.factorize(layers, params, z0, damping=lam)
    r["factorize"], _ = common.bench(
        lambda p, z, l: hessinv.factorize(layers, p, z, damping=l), params, z0, lam, repeats=rep
    )
    r["vmap_solve"], X = common.bench(lambda F, gs: jax.vmap(F.solve)(gs), F, gs, repeats=rep, max_seconds=5)
    r["vmap_cg"], Y = common.bench(
        lambda p, z, gs, l: jax.vmap(
            lambda g: baselines.jax_cg(layers, p, z, g, l, tol=tol, maxiter=cfg["krylov_maxiter"])
        )(gs),
        params,
        z0,
        gs,
        lam,
        repeats=rep,
        max_seconds=5,
    )
    relres = common.make_relres(layers)
    one = lambda T, i: jax.tree.map(lambda a: a[i], T)
    idx = range(min(k, 4))
    r["vmap_solve"]["max_relres"] = max(float(relres(params, z0, one(X, i), one(gs, i), lam)) for i in idx)
    r["vmap_cg"]["max_relres"] = max(float(relres(params, z0, one(Y, i), one(gs, i), lam)) for i in idx)
    r["hessinv_total_s"] = r["factorize"]["time_s"] + r["vmap_solve"]["time_s"]
    r["cg_over_hessinv"] = r["vmap_cg"]["time_s"] / r["hessinv_total_s"]
    return r


# -- suite 5: memory --------------------------------------------------------------------------------


def _mem(fn, *args):
    c = jax.jit(fn).lower(*args).compile()
    m = c.memory_analysis()
    if m is None:
        return None
    out = {k: int(getattr(m, k)) for k in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes")}
    peak = getattr(m, "peak_memory_in_bytes", None)
    out["peak_memory_in_bytes"] = int(peak) if peak else None
    out["total_bytes"] = out["argument_size_in_bytes"] + out["output_size_in_bytes"] + out["temp_size_in_bytes"]
    return out


def memory_job(L, cfg, dtype):
    layers, params, z0, g = common.mlp(L, dtype=dtype)
    n = common.n_params(params)
    lam = jnp.asarray(1e-3, dtype)
    r = {"L": L, "n": n, "dense_hessian_bytes": n * n * jnp.dtype(dtype).itemsize}
    r["ihvp"] = _mem(lambda p, z, g, l: hessinv.ihvp(layers, p, z, g, damping=l), params, z0, g, lam)
    r["hvp"] = _mem(lambda p, z, v: hessinv.hvp(layers, p, z, v), params, z0, g)
    if cfg["extra"]:
        r["factorize"] = _mem(lambda p, z, l: hessinv.factorize(layers, p, z, damping=l), params, z0, lam)
    dev = jax.devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    if stats:  # GPU/TPU: the allocator's running peak (monotone over the process: L ascending)
        jax.block_until_ready(hessinv.ihvp(layers, params, z0, g, damping=lam))
        stats = dev.memory_stats()
        r["device_peak_bytes_in_use"] = stats.get("peak_bytes_in_use")
    return r


# -- driver -----------------------------------------------------------------------------------------


def plan(size, dtype, only, krylov_maxiter=None):
    cfg = dict(SIZES[size])
    if krylov_maxiter:
        cfg["krylov_maxiter"] = krylov_maxiter
    elif jax.devices()[0].platform != "cpu":
        # On an accelerator each hvp of a deep net is a long chain of small kernels; at λ = 1e-3
        # the Krylov baselines never converge, so their cap only sets how long they burn.
        # A lower cap keeps the accelerator run within a few minutes.
        cfg["krylov_maxiter"] = min(cfg["krylov_maxiter"], 300)
    jobs = []
    if "depth" in only:
        jobs += [("depth", f"depth L={L}", lambda L=L: depth_job(L, cfg, dtype)) for L in cfg["depth_Ls"]]
    if "width" in only:
        jobs += [("width_ref", f"dense solve N={cfg['ref_N']}", lambda: reference_job(cfg["ref_N"], dtype))]
        jobs += [("width", f"width w={w}", lambda w=w: width_job(4, w, cfg, dtype, "width")) for w in cfg["widths"]]
        jobs += [("width", f"batch B={b}", lambda b=b: width_job(b, 4, cfg, dtype, "batch")) for b in cfg["batches"]]
    if "alternatives" in only:
        jobs += [
            ("alternatives", f"alternatives L={L} λ={lam:g}", lambda L=L, lam=lam: alt_job(L, lam, cfg, dtype))
            for lam in (1e-3, PD_DAMPING)
            for L in cfg["alt_Ls"]
        ]
    if "rhs" in only:
        jobs += [("rhs", f"rhs k={k}", lambda k=k: rhs_job(k, cfg, dtype)) for k in cfg["rhs_ks"]]
    if "memory" in only:
        jobs += [("memory", f"memory L={L}", lambda L=L: memory_job(L, cfg, dtype)) for L in cfg["mem_Ls"]]
    return cfg, jobs


SUITE_NAMES = ("depth", "width", "alternatives", "rhs", "memory")


def run(size="quick", only=SUITE_NAMES, write=True, krylov_maxiter=None):
    dtype = _dtype()
    cfg, jobs = plan(size, dtype, only, krylov_maxiter)
    t0 = time.perf_counter()
    rec = {
        "suite": size,
        "machine": common.machine(),
        "config": dict(
            cfg,
            dtype=jnp.dtype(dtype).name,
            pd_damping=PD_DAMPING,
            timing="jit; compile timed separately; 1 warm-up; median of repeats with block_until_ready",
        ),
    }
    res = {k: [] for k in ("depth", "width", "width_ref", "alternatives", "rhs", "memory")}
    bar = tqdm(jobs, desc=f"{size} suite", unit="job")
    for kind, label, job in bar:
        bar.set_postfix_str(label)
        res[kind].append(job())
    bar.close()
    res["width_ref"] = res["width_ref"][0] if res["width_ref"] else None
    summary = {}
    if res["depth"]:
        summary["depth"] = depth_summary(res["depth"])
    if res["width"] and res["width_ref"]:
        summary["width"] = width_summary(res["width"], res["width_ref"])
    if res["alternatives"]:
        summary["alternatives"] = [
            {
                "L": r["L"],
                "damping": r["damping"],
                "inertia_neg": r["inertia"]["neg"],
                "cg_over_hessinv": r["cg"]["time_s"] / r["hessinv"]["time_s"],
                "cg_converged": r["cg"]["converged"],
                "gmres_over_hessinv": r["gmres"]["time_s"] / r["hessinv"]["time_s"],
                "gmres_converged": r["gmres"]["converged"],
                **({"dense_over_hessinv": r["dense"]["time_s"] / r["hessinv"]["time_s"]} if "dense" in r else {}),
            }
            for r in res["alternatives"]
        ]
    if res["rhs"]:
        summary["rhs"] = {
            r["k"]: {
                "cg_over_hessinv": r["cg_over_hessinv"],
                "solve_per_rhs_s": r["vmap_solve"]["time_s"] / r["k"],
                "cg_per_rhs_s": r["vmap_cg"]["time_s"] / r["k"],
            }
            for r in res["rhs"]
        }
    if res["memory"]:
        summary["memory"] = {
            "exponent_ihvp_total_bytes_vs_L": common.fit_exponent(
                [r["L"] for r in res["memory"]], [r["ihvp"]["total_bytes"] for r in res["memory"] if r["ihvp"]]
            ),
        }
    rec.update(results=res, summary=summary, wall_s=time.perf_counter() - t0)
    if write:
        path = common.write_json(rec, size)
        png = common.result_path(size, "png")
        plot(rec, png)
        print(f"wrote {path} and {png}")
    _print_summary(summary)
    print(f"total {rec['wall_s']:.0f} s")
    return rec


def _print_summary(s):
    import json

    print(json.dumps(common._jsonable(s), indent=1))


def plot(rec, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res, m = rec["results"], rec["machine"]
    fig, ax = plt.subplots(2, 3, figsize=(16, 9))
    ax = ax.ravel()
    d = res["depth"]
    if d:
        Ls = np.array([r["L"] for r in d])
        for k, st in [
            ("hvp", "k-o"),
            ("ihvp", "C0-o"),
            ("factorize", "C0--^"),
            ("blocks", "C1:x"),
            ("factor_recursion", "C2:+"),
            ("solve", "C0:s"),
        ]:
            if k not in d[0]:
                continue
            ax[0].loglog(Ls, [r[k]["time_s"] for r in d], st, label=k)
        ax[0].loglog(Ls, d[-1]["ihvp"]["time_s"] * Ls / Ls[-1], color="0.7", lw=0.8, label="∝ L")
        ax[0].set(xlabel="depth L", ylabel="seconds", title="1. depth scaling (batch 4, width 4)")
        ax[0].legend(fontsize=7)
    w = res["width"]
    if w:
        for sweep, c in (("width", "C0"), ("batch", "C3")):
            rs = [r for r in w if r["sweep"] == sweep]
            x = [r["a_plus_p"] for r in rs]
            ax[1].loglog(x, [r["factor_recursion"]["time_s"] for r in rs], c + "-o", label=f"factorise ({sweep} sweep)")
            ax[1].loglog(x, [r["solve"]["time_s"] for r in rs], c + ":s", label=f"solve ({sweep} sweep)")
            ax[2].semilogx(x, [r["factor_gflops"] for r in rs], c + "-o", label=f"factorise ({sweep} sweep)")
        ax[1].set(xlabel="a + p", ylabel="seconds", title=f"2. width / batch scaling (L = {w[0]['L']})")
        ax[1].legend(fontsize=7)
        ref = res["width_ref"]
        if ref:
            ax[2].axhline(ref["gflops"], color="k", ls="--", lw=0.8, label=f"jnp.linalg.solve N={ref['N']}")
        ax[2].set(xlabel="a + p", ylabel="GFLOP/s", title="2. achieved rate of the factorisation")
        ax[2].legend(fontsize=7)
    alt = res["alternatives"]
    if alt:
        for lam, ls in ((1e-3, "-"), (PD_DAMPING, "--")):
            rs = [r for r in alt if r["damping"] == lam]
            Ls = [r["L"] for r in rs]
            for k, c in (("hessinv", "C0"), ("dense", "C3"), ("cg", "C2"), ("gmres", "C4")):
                pts = [(r["L"], r[k]["time_s"], r[k].get("converged", True)) for r in rs if k in r]
                if pts:
                    ax[3].loglog(
                        [p[0] for p in pts],
                        [p[1] for p in pts],
                        c + ls + ("o" if lam < 1 else "s"),
                        label=f"{k} λ={lam:g}",
                        mfc="none" if lam >= 1 else None,
                    )
                    bad = [p for p in pts if not p[2]]
                    if bad:
                        ax[3].loglog([p[0] for p in bad], [p[1] for p in bad], "x", color=c, ms=9)
        ax[3].set(xlabel="depth L", ylabel="seconds", title="3. to a 1e-8 residual (x: did not get there)")
        ax[3].legend(fontsize=6, ncol=2)
    rh = res["rhs"]
    if rh:
        ks = [r["k"] for r in rh]
        ax[4].loglog(ks, [r["hessinv_total_s"] for r in rh], "C0-o", label="factorize + vmap(F.solve)")
        ax[4].loglog(ks, [r["vmap_solve"]["time_s"] for r in rh], "C0:s", label="vmap(F.solve) alone")
        ax[4].loglog(ks, [r["vmap_cg"]["time_s"] for r in rh], "C2-v", label="vmap(CG)")
        ax[4].set(
            xlabel="right-hand sides",
            ylabel="seconds",
            title=f"4. many right-hand sides (L = {rh[0]['L']}, λ = {PD_DAMPING:g})",
        )
        ax[4].legend(fontsize=7)
    me = res["memory"]
    if me:
        Ls = [r["L"] for r in me]
        for k, c in (("ihvp", "C0"), ("factorize", "C1"), ("hvp", "k")):
            if k not in me[0]:
                continue
            ax[5].loglog(Ls, [r[k]["total_bytes"] for r in me], c + "-o", label=f"{k} (args + out + temp)")
        ax[5].loglog(Ls, [r["dense_hessian_bytes"] for r in me], "C3--", label="dense Hessian 8n²")
        ax[5].set(xlabel="depth L", ylabel="bytes", title="5. memory (XLA memory analysis)")
        ax[5].legend(fontsize=7)
    fig.suptitle(
        f"hessinv benchmarks ({rec['suite']}): {m['platform']} / {m['device']} / {m['cpu']} ({m['nproc']} cores), "
        f"jax {m['jax']}, {rec['config']['dtype']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description="hessinv benchmark suites")
    ap.add_argument("--suite", choices=("quick", "full", "core", "woodbury", "shapes"), default="quick")
    ap.add_argument("--only", nargs="*", choices=SUITE_NAMES, default=list(SUITE_NAMES))
    ap.add_argument(
        "--krylov-maxiter", type=int, help="cap on CG/GMRES hvps (default: 500 quick, 1000 full; 300 on GPU/TPU)"
    )
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    if a.suite == "core":
        core.run(core.FULL_LS, write=not a.no_write)
    elif a.suite == "woodbury":  # the paper's route vs the default and dense, L = 16 … 4096
        from . import woodbury

        woodbury.main()
    elif a.suite == "shapes":  # every exact route and auto over batch × width × depth
        from . import shapes

        shapes.main([] if not a.no_write else ["--no-write"])
    else:
        run(a.suite, tuple(a.only), write=not a.no_write, krylov_maxiter=a.krylov_maxiter)


if __name__ == "__main__":
    sys.exit(main())
