"""Shared benchmark helpers: the test network, timing, the machine record and the JSON writer.

Timing rules (the same for every figure): the function is jitted; compile time is measured
separately (``lower(...).compile()``); then one warm-up call and the median of ``repeats``
calls, each ended with ``jax.block_until_ready``. Everything runs on ``jax.devices()[0]``,
whatever platform that is, so the scripts run unchanged on CPU, GPU and TPU.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import hessinv

RESULTS = Path(__file__).resolve().parent / "results"


# -- the test network: a tanh MLP with a cross-entropy head ---------------------------------------


def tanh_layer(z, x):
    """One dense tanh layer on a batch; the labels ride along as a carried integer constant."""
    return {"h": jnp.tanh(z["h"] @ x["W"] + x["c"]), "y": z["y"]}


def ce_head(z, x):
    """Linear classifier + mean softmax cross-entropy: the scalar loss."""
    logits = z["h"] @ x["W"] + x["c"]
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, z["y"][:, None], axis=1))


def mlp(depth: int, *, batch: int = 4, width: int = 4, classes: int = 4, dtype=jnp.float64, seed: int = 0):
    """A deep narrow tanh MLP: ``depth`` tanh layers (one :class:`hessinv.Stack`) and a CE head.

    Returns ``(layers, params, z0, g)`` with ``g`` a random right-hand side shaped like params.
    The initialisation (variance 1/width) is a random point, not a minimum: ``H`` is indefinite.
    """
    k = jax.random.split(jax.random.PRNGKey(seed), 6)

    def init(key):
        kw, kc = jax.random.split(key)
        return {
            "W": jax.random.normal(kw, (width, width), dtype) / np.sqrt(width),
            "c": 0.1 * jax.random.normal(kc, (width,), dtype),
        }

    stack = jax.vmap(init)(jax.random.split(k[0], depth))
    head = {
        "W": jax.random.normal(k[1], (width, classes), dtype) / np.sqrt(width),
        "c": jnp.zeros((classes,), dtype),
    }
    z0 = {"h": jax.random.normal(k[2], (batch, width), dtype), "y": jax.random.randint(k[3], (batch,), 0, classes)}
    layers = (hessinv.Stack(tanh_layer, depth), ce_head)
    params = [stack, head]
    g = jax.tree.map(lambda a: jax.random.normal(k[4], a.shape, a.dtype), params)
    return layers, params, z0, g


def n_params(params) -> int:
    return int(sum(np.prod(a.shape) for a in jax.tree.leaves(params)))


# -- vector helpers on params-shaped pytrees ------------------------------------------------------


def tree_norm(t):
    return jnp.sqrt(sum(jnp.vdot(a, a).real for a in jax.tree.leaves(t)))


def tree_sub(a, b):
    return jax.tree.map(jnp.subtract, a, b)


def tree_axpy(alpha, x, y):
    return jax.tree.map(lambda u, v: alpha * u + v, x, y)


def make_relres(layers):
    """``||(H + λI) x − g|| / ||g||`` with ``H x`` by Pearlmutter's hvp (independent of the engine)."""

    @jax.jit
    def relres(params, z0, x, g, damping):
        Hx = hessinv.hvp(layers, params, z0, x)
        r = tree_sub(tree_axpy(damping, x, Hx), g)
        return tree_norm(r) / tree_norm(g)

    return relres


# -- timing ---------------------------------------------------------------------------------------


def compile_fn(fn, *args, static_argnums=()):
    """``(compiled, seconds)``: jit ``fn``, lower and compile it for ``args``."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn, static_argnums=static_argnums).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def time_compiled(compiled, *args, repeats: int = 5, warmup: int = 1, max_seconds: float | None = None):
    """Median wall time of ``compiled(*args)`` over ``repeats`` calls, after ``warmup`` calls.

    With ``max_seconds``, stops repeating once that much time has been spent (at least one
    call); a warm-up call that alone takes longer than ``max_seconds`` is kept as the only
    sample (slow baselines are timed once). Returns ``(median_seconds, last_output, times)``.
    """
    out = None
    for _ in range(warmup):
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        dt = time.perf_counter() - t0
        if max_seconds is not None and dt > max_seconds:
            return dt, out, [dt]
    times, spent = [], 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
        if max_seconds is not None and spent > max_seconds:
            break
    return statistics.median(times), out, times


def time_interleaved(calls: dict, rounds: int = 5, budget: float | None = None) -> dict:
    """Wall times of several compiled programs taken in turn, one call of each per round, so
    that a change in the machine's load touches them all alike (what a side-by-side comparison
    needs). ``calls`` maps a name to ``(compiled, args)``; each is called once first, untimed.
    A program stops repeating once its samples add up to ``budget`` seconds (it keeps at least
    one); one under 50 ms gets an untimed call before each timed one. Returns, per name,
    ``{"time_s": median, "min_s": min, "times_s": samples}``."""
    for c, args in calls.values():
        jax.block_until_ready(c(*args))
    times = {k: [] for k in calls}
    for _ in range(rounds):
        for k, (c, args) in calls.items():
            if budget is not None and times[k] and sum(times[k]) > budget:
                continue
            if times[k] and times[k][-1] < 0.05:
                # A fast program right after a large one runs on evicted caches: one untimed
                # call first, so each is timed warm, as in a loop of its own.
                jax.block_until_ready(c(*args))
            t0 = time.perf_counter()
            jax.block_until_ready(c(*args))
            times[k].append(time.perf_counter() - t0)
    return {k: {"time_s": statistics.median(v), "min_s": min(v), "times_s": v} for k, v in times.items()}


def warm_up(step, params, state):
    """Compile ``step`` for every state signature it meets: ``optax.lbfgs``'s state changes its
    types after the first update, so its second step would compile again (about 2 s here, inside
    the timed loop). Chains up to three steps until no new program is compiled; returns the
    seconds spent (compilation, plus those few steps)."""
    t0 = time.perf_counter()
    p, s = params, state
    for i in range(3):
        n = step._cache_size()
        p, s, _ = jax.block_until_ready(step(p, s))
        if i > 0 and step._cache_size() == n:
            break
    return time.perf_counter() - t0


def bench(fn, *args, repeats: int = 5, warmup: int = 1, max_seconds: float | None = None):
    """Compile and time ``fn(*args)``: a dict with ``compile_s``, ``time_s``, ``times_s`` and the output."""
    compiled, c = compile_fn(fn, *args)
    t, out, times = time_compiled(compiled, *args, repeats=repeats, warmup=warmup, max_seconds=max_seconds)
    return {"compile_s": c, "time_s": t, "min_s": min(times), "times_s": times}, out


def fit_exponent(xs, ys):
    """Least-squares slope of ``log y`` against ``log x``: the ``k`` in ``y ∝ x^k``."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    ok = (xs > 0) & (ys > 0) & np.isfinite(ys)
    if ok.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(xs[ok]), np.log(ys[ok]), 1)[0])


# -- the machine record and the JSON writer -------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """Where the figures came from: host, CPU, device, jax version, time."""
    dev = jax.devices()[0]
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "platform": dev.platform,
        "device": getattr(dev, "device_kind", str(dev)),
        "n_devices": jax.device_count(),
        "cpu": _cpu_model(),
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "loadavg_at_start": load,
        "tag": os.environ.get("HESSINV_BENCH_TAG"),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": getattr(jax.lib, "__version__", None) or _jaxlib_version(),
        "x64": bool(jax.config.jax_enable_x64),
        "hessinv": hessinv.__version__,
        # The jaxlib LAPACK kernels (LU, Cholesky, eigh) run on SciPy's OpenBLAS, whose own
        # threads compete with XLA's for the cores (docs/performance.md, "OpenBLAS threads").
        "thread_env": {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "XLA_FLAGS")},
    }


def _jaxlib_version():
    try:
        import jaxlib

        return jaxlib.__version__
    except Exception:  # noqa: BLE001
        return None


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.generic, jax.Array)):
        x = np.asarray(x).item() if np.ndim(x) == 0 else np.asarray(x).tolist()
    if isinstance(x, float) and not np.isfinite(x):
        return str(x)  # JSON has no nan/inf
    return x


def _stem(name: str) -> str:
    """``<name>_<platform>``, plus ``_<tag>`` from ``$HESSINV_BENCH_TAG`` (e.g. ``1core``)."""
    tag = os.environ.get("HESSINV_BENCH_TAG")
    return f"{name}_{jax.devices()[0].platform}" + (f"_{tag}" if tag else "")


def write_json(record: dict, name: str, *, directory: Path | None = None) -> Path:
    """Write ``record`` to ``<directory>/<name>_<platform>[_<tag>].json``; returns the path."""
    directory = Path(directory) if directory else RESULTS
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{_stem(name)}.json"
    path.write_text(json.dumps(_jsonable(record), indent=1) + "\n")
    return path


def result_path(name: str, ext: str, directory: Path | None = None) -> Path:
    directory = Path(directory) if directory else RESULTS
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{_stem(name)}.{ext}"
