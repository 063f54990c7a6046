"""One stage of the recursion at large ``a = batch × width``, against its own dominant products.

    python -m benchmarks.stage                   # a = 512 and 1024 (batch 64 and 128, width 8)
    python -m benchmarks.stage --batch 32 64 128 256 --width 8
    python -m benchmarks.stage --network jet     # activations of two leaves: a = batch × 2 width

A stage's time is measured by difference: the jitted stage-recursion ``ihvp`` (``method=
"riccati"``, Hessian and Gauss-Newton) of the ``shapes`` regression network at two depths,
``(t(L2) − t(L1)) / (L2 − L1)``, so the forward pass, the head and the call overhead cancel.
Beside it, in the same process and timed in turn with them (the minimum of ten rounds each),
the stage's dominant products are timed as plain ``jnp`` matmuls on arrays of the same shapes (``S B``, ``Bᵀ S B``, ``Aᵀ S A`` and ``Aᵀ S B`` with a
batch-block-diagonal ``A``, the ``S`` update ``½ (Q_uzᵀ G + Gᵀ Q_uz)`` and the pivot LU): the
rate the machine reaches on this work. Reported: both times, their ratio, and GFLOP/s of the
products' flops in each. Writes ``results/stage_<platform>.json``.

``--network jet`` times a network whose activations are two leaves with a common batch axis, the
value ``u`` and the input derivative ``u_x`` of every hidden unit (Sobolev training: the loss fits
values and slopes), so ``a = batch × 2 width`` and an example's block of ``A`` is ``2w × 2w``;
written to ``results/stage_jet_<platform>.json``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import hessinv

from . import common
from .shapes import regression

DAMPING = 1e-3
ROUNDS = 10


def _jet_first(z, x):
    t = jnp.tanh(z["x"] @ x["W"] + x["c"])
    return {"u": t, "ux": (1 - t * t) * x["W"][0], "y": z["y"]}


def _jet_hidden(z, x):
    t = jnp.tanh(z["u"] @ x["W"] + x["c"])
    return {"u": t, "ux": (1 - t * t) * (z["ux"] @ x["W"]), "y": z["y"]}


def _jet_out(z, x):
    return {"u": z["u"] @ x["W"][:, 0] + x["c"][0], "ux": z["ux"] @ x["W"][:, 0], "y": z["y"]}


def _sobolev(z, x):
    """Values and slopes of ``sin(3 x₀)``, halved mean squares."""
    return 0.5 * jnp.mean((z["u"] - jnp.sin(3 * z["y"])) ** 2 + (z["ux"] - 3 * jnp.cos(3 * z["y"])) ** 2)


def jet_regression(batch: int, width: int, depth: int):
    """The ``shapes`` regression network (1 input here) carrying the jet ``(u, u_x)``, with the
    inputs ``x₀`` riding in ``z0`` as the target's argument."""
    layers, params, z0 = regression(batch, width, depth, inputs=1)
    return (
        [_jet_first, hessinv.Stack(_jet_hidden, depth), _jet_out, _sobolev],
        params,
        {"x": z0["x"], "y": z0["x"][:, 0]},
    )


NETWORKS = {"mlp": (regression, 1), "jet": (jet_regression, 2)}  # the network, leaves per example


def product_flops(a: int, w: int, p: int) -> float:
    """Flops of the dominant products of one stage with ``a_in = a_out = a``, ``w`` the width of
    an example's block of ``A``, ``p`` the layer's parameters."""
    return 2 * a * a * p + 2 * a * p * p + 4 * a * a * w + 2 * a * w * p + 4 * a * a * p + (2 / 3) * p**3


def products(a: int, w: int, p: int, dtype=jnp.float64):
    """A jitted function doing one stage's dominant products on ``(S, B, blocks, G)``, and its inputs."""
    k = jax.random.split(jax.random.key(0), 4)
    S = jax.random.normal(k[0], (a, a), dtype)
    S = S @ S.T / a
    B = jax.random.normal(k[1], (a, p), dtype)
    blocks = jax.random.normal(k[2], (a // w, w, w), dtype)
    e = a // w

    def stage(S, B, blocks):
        SA = jnp.einsum("xew,ewv->xev", S.reshape(a, e, w), blocks).reshape(a, a)
        AtSA = jnp.einsum("ewv,ewy->evy", blocks, SA.reshape(e, w, a)).reshape(a, a)
        SB = S @ B
        Q_uz = jnp.einsum("ewv,ewp->evp", blocks, SB.reshape(e, w, p)).reshape(a, p).T
        Q_uu = B.T @ SB + jnp.eye(p, dtype=dtype)
        lu, _, _ = jax.lax.linalg.lu(Q_uu)
        G = jax.lax.linalg.triangular_solve(lu, Q_uz, left_side=True, lower=False)
        return AtSA - 0.5 * (Q_uz.T @ G + G.T @ Q_uz)

    return stage, (S, B, blocks)


def _ihvp(batch: int, width: int, depth: int, curvature: str, network: str):
    """The jitted stage-recursion ``ihvp`` of the benchmark network, compiled, and its arguments."""
    layers, params, z0 = NETWORKS[network][0](batch, width, depth)
    g = jax.tree.map(jnp.ones_like, params)

    def f(p, z, g):
        return hessinv.ihvp(layers, p, z, g, damping=DAMPING, curvature=curvature, method="riccati")

    return common.compile_fn(f, params, z0, g)[0], (params, z0, g)


def run(batches=(64, 128), widths=(8,), write=True, network="mlp", depths=(8, 24), rounds=ROUNDS):
    rows = []
    leaves = NETWORKS[network][1]
    for b in batches:
        for w in widths:
            a, p = b * w * leaves, w * w + w
            fn, args = products(a, w * leaves, p)
            calls = {"products": (common.compile_fn(fn, *args)[0], args)}
            for curv in ("hessian", "ggn"):
                for d in depths:
                    calls[curv, d] = _ihvp(b, w, d, curv, network)
            # every program in turn, round after round: a change of load touches them all alike
            t = common.time_interleaved(calls, rounds=rounds)
            t_prod = t["products"]["min_s"]
            fl = product_flops(a, w * leaves, p)
            for curv in ("hessian", "ggn"):
                raw = [t[curv, d]["min_s"] for d in depths]
                t_stage = (raw[1] - raw[0]) / (depths[1] - depths[0])
                row = {
                    "network": network,
                    "batch": b,
                    "width": w,
                    "a": a,
                    "p": p,
                    "curvature": curv,
                    "stage_s": t_stage,
                    "products_s": t_prod,
                    "stage_over_products": t_stage / t_prod,
                    "products_gflops": fl / t_prod / 1e9,
                    "stage_gflops": fl / t_stage / 1e9,
                    "ihvp_depths_s": raw,
                }
                rows.append(row)
                print(
                    f"a={a:5d} p={p:4d} {curv:7s} stage {t_stage * 1e3:7.2f} ms ({row['stage_gflops']:.1f} GFLOP/s) "
                    f"products {t_prod * 1e3:6.2f} ms ({row['products_gflops']:.1f} GFLOP/s) "
                    f"ratio {row['stage_over_products']:.1f}",
                    flush=True,
                )
    timing = f"min of {rounds} rounds, the ihvp at depths {depths[0]} and {depths[1]} and the products timed in turn"
    out = {"meta": common.machine() | {"damping": DAMPING, "timing": timing}, "rows": rows}
    if write:
        common.write_json(out, "stage" if network == "mlp" else f"stage_{network}")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=(64, 128))
    ap.add_argument("--width", type=int, nargs="+", default=(8,))
    ap.add_argument("--network", choices=sorted(NETWORKS), default="mlp")
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    run(tuple(a.batch), tuple(a.width), write=not a.no_write, network=a.network, rounds=a.rounds)


if __name__ == "__main__":
    main()
