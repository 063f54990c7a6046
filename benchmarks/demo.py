"""A one-minute demonstration: exact (H + λI)^{-1} g on a deep narrow net, checked and timed.

    python -m benchmarks.demo            # depth 256 (n = 5140 parameters), float64, λ = 1e-3
    python -m benchmarks.demo --depth 64

Builds a tanh MLP (batch 4, width 4, cross-entropy head) at a random initialisation, where the
Hessian is indefinite; solves with :func:`hessinv.ihvp`; checks the answer against the dense
``jax.hessian`` + ``jnp.linalg.solve``; and prints how much faster it is than that dense route and
than ``jax.scipy.sparse.linalg.cg`` on Pearlmutter hvp (which has no guarantee on an indefinite
matrix, and is capped at 500 iterations here).
"""

from __future__ import annotations

import argparse

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

import hessinv

from . import baselines, common


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--depth", type=int, default=256)
    ap.add_argument("--damping", type=float, default=1e-3)
    ap.add_argument("--cg-maxiter", type=int, default=500)
    a = ap.parse_args(argv)

    layers, params, z0, g = common.mlp(a.depth)
    lam = jnp.asarray(a.damping)
    n = common.n_params(params)
    dev = jax.devices()[0]
    print(
        f"tanh MLP: depth {a.depth}, batch 4, width 4, cross-entropy head; n = {n} parameters; "
        f"λ = {a.damping:g}; float64 on {dev.platform} ({getattr(dev, 'device_kind', dev)})"
    )

    ihvp = lambda p, z, g, l: hessinv.ihvp(layers, p, z, g, damping=l)
    t_ihvp, x = common.bench(ihvp, params, z0, g, lam, repeats=5)
    t_hvp, _ = common.bench(lambda p, z, v: hessinv.hvp(layers, p, z, v), params, z0, g, repeats=5)
    t_dense, x_dense = common.bench(
        lambda p, z, g, l: baselines.dense_ihvp(layers, p, z, g, l), params, z0, g, lam, repeats=1, warmup=0
    )
    t_cg, x_cg = common.bench(
        lambda p, z, g, l: baselines.jax_cg(layers, p, z, g, l, tol=1e-8, maxiter=a.cg_maxiter),
        params,
        z0,
        g,
        lam,
        repeats=1,
        warmup=0,
    )
    relres = common.make_relres(layers)
    xf, xd = ravel_pytree(x)[0], ravel_pytree(x_dense)[0]
    err = float(jnp.linalg.norm(xf - xd) / jnp.linalg.norm(xd))
    r_ihvp, r_dense, r_cg = (float(relres(params, z0, y, g, lam)) for y in (x, x_dense, x_cg))
    F = hessinv.factorize(layers, params, z0, damping=lam)
    pos, neg, _ = F.inertia()

    print(f"H + λI has {int(neg)} negative and {int(pos)} positive eigenvalues (inertia from the pivots)")
    print(
        f"hessinv.ihvp   {t_ihvp['time_s'] * 1e3:9.2f} ms   relative residual {r_ihvp:.1e}   "
        f"vs dense answer: relative error {err:.1e}"
    )
    print(f"one hvp        {t_hvp['time_s'] * 1e3:9.2f} ms   (ihvp = {t_ihvp['time_s'] / t_hvp['time_s']:.1f} hvps)")
    print(
        f"dense          {t_dense['time_s'] * 1e3:9.2f} ms   relative residual {r_dense:.1e}   "
        f"-> ihvp is {t_dense['time_s'] / t_ihvp['time_s']:.0f}x faster"
    )
    ratio = t_cg["time_s"] / t_ihvp["time_s"]
    if r_cg <= 1e-8:
        verdict = f"-> ihvp is {ratio:.0f}x faster"
    else:
        verdict = f"-> CG stopped at its {a.cg_maxiter}-iteration cap short of 1e-8, after {ratio:.0f}x ihvp's time"
    print(f"CG             {t_cg['time_s'] * 1e3:9.2f} ms   relative residual {r_cg:.1e}   {verdict}")
    print(f"compile: ihvp {t_ihvp['compile_s']:.1f} s, dense {t_dense['compile_s']:.1f} s")
    assert err < 1e-6 and r_ihvp < 1e-8, "hessinv disagrees with the dense solve"


if __name__ == "__main__":
    main()
