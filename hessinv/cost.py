"""The cost model behind ``method="auto"``: which exact route is cheapest for a pipeline.

Every route gives the same answer to rounding (MATH.md section 7), so the choice changes only
the time. It is made at trace time from the static shapes alone (``a_l``, ``p_l``, ``n``, the
number ``m`` of network outputs, the batch size), as

    seconds ≈ flops / rate + sequential steps × step

with constants per backend (:class:`Machine`): chiefly ``rate``, the floating-point rate the
route's kernels reach, and ``step``, the fixed cost of one step of a sequential loop (a
``lax.scan`` iteration over a layer: kernel launches on an accelerator, thunk dispatch on a
CPU), plus a few terms no flop count sees (the stage recursion's passes over its ``a × a``
state, the dense Hessian's ``n``-wide passes, a pass over each matrix a dense route
factorises). The CPU constants were fitted to the ``shapes``
benchmark (``python -m benchmarks.run --suite shapes``, ``docs/performance.md``); replace
``MACHINES[backend]`` to override them, or force a route with ``method=``.

The flop counts (documented per route below) are estimates: a layer's forward cost is taken as
``2 · p_l · N_l`` (every parameter used once per example, ``N_l`` the batch size), which is exact
for dense layers and an underestimate for convolutions; that is enough to separate the routes,
whose costs differ by orders of magnitude away from the crossovers.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax

from . import _pipeline, _stage

ROUTES_AUTO = ("riccati", "dense", "gauss_newton", "parallel")


class Machine(NamedTuple):
    """Constants of the cost model.

    Attributes:
      rate: flop/s of the dense linear algebra (factorisations, matrix products).
      step: seconds per sequential step (one ``lax.scan`` iteration over a layer).
      hessian_rate: flop/s of the ``n`` vmapped forward-over-reverse passes that form a dense
        Hessian (on the CPU they run at about ``rate``).
      entry: seconds per entry of the ``a × a`` stage state per stage (the passes over ``S_l``
        that no flop count sees: the stage recursion's memory traffic); the dense and
        output-space routes pay it per entry of each matrix they factorise
        (:func:`factorisations`).
      tangent: seconds per entry of those passes' tangents: ``n`` tangents of every activation,
        ``n Σ_l a_l`` numbers, which the vmapped passes write and read (memory traffic that no
        flop count sees; it dominates the dense Hessian at large batches).
      dense_bytes: the most memory the dense and output-space routes may take.
      parallel_work: the depth-parallel route's work as a multiple of the stage recursion's
        (``inf``: never chosen). It trades about this much more work for ``O(log L)`` sequential
        steps instead of ``L``, which pays only where a step is expensive and the work is not.
    """

    rate: float
    step: float
    hessian_rate: float
    entry: float
    tangent: float
    dense_bytes: float = 2e9
    parallel_work: float = math.inf


#: CPU: fitted on 2 cores (float64) to the ``shapes`` benchmark's measured route times (least
#: squares on log time; fitting on depths 4 and 64 alone gives the same constants to 10 % and the
#: same choices at every point of the grid); estimates are within 0.6-1.8x of the measured times
#: at 80 % of the points, 0.13-3.5x at worst, and closest where the routes' costs are close; the
#: depth-parallel route is never chosen there (it took 2.6-4.3x the stage recursion's time at
#: every depth measured, ``benchmarks/results/parallel_cpu.json``). GPU/TPU: not fitted; the
#: recorded H200 run gives a scan step of about 100 µs (launch-bound), the rate is the
#: accelerator's order of magnitude, and ``parallel_work`` is the CPU's measured time ratio (an
#: upper bound on the work ratio), so deep narrow networks take the parallel route there.
#: Override with ``hessinv.cost.MACHINES[backend] = ...``.
MACHINES = {
    "cpu": Machine(rate=2.3e10, step=5.1e-5, hessian_rate=2.3e10, entry=1.0e-8, tangent=1.7e-8),
    "gpu": Machine(
        rate=2.0e12, step=1.0e-4, hessian_rate=1.0e11, entry=1.0e-11, tangent=1.0e-11, dense_bytes=2e10, parallel_work=4.0
    ),
    "tpu": Machine(
        rate=2.0e12, step=1.0e-4, hessian_rate=1.0e11, entry=1.0e-11, tangent=1.0e-11, dense_bytes=8e9, parallel_work=4.0
    ),
}


def machine(backend: str | None = None) -> Machine:
    """The constants for ``backend`` (default: JAX's default backend); an unknown accelerator
    gets the GPU's."""
    backend = backend or jax.default_backend()
    return MACHINES.get(backend, MACHINES["gpu" if backend not in ("cpu",) else "cpu"])


def _batch(spec) -> int:
    """The leading length of the first active leaf (the batch size, for the usual layers)."""
    for shape, f in zip(spec.shapes, spec.is_active):
        if f and shape:
            return shape[0]
    return 1


def forward_flops(seg: _pipeline.Segment) -> float:
    """One layer's forward cost: ``2 p N`` (a dense layer's), at least its output size."""
    return float(max(2 * seg.p * _batch(seg.out_spec), seg.a_out))


def riccati_flops(pipe: _pipeline.Pipeline, curvature: str) -> float:
    """The stage recursion (MATH.md section 3), per layer: the blocks ``M_l = [A_l B_l]`` by
    ``min(a_out, a_in + p)`` forward/backward passes, ``K_l`` by ``a_in + p`` reverse-over-reverse
    passes (Hessian only), the stage products ``Mᵀ S M`` (with a batch-block-diagonal ``A_l``:
    ``O(a² (w + p))``), the pivot LU ``⅔ p³ + 2 p² a_in`` and the ``S`` update ``2 a_in² p``.
    A per-example layer's ``A_l`` and ``K_l``'s z-z part take ``w_in + 2⌈log₂ e⌉`` passes
    instead of ``a_in`` (coloured tangents and the support probes, see ``hessinv._blocks``)."""
    total = 0.0
    for j, seg in enumerate(pipe.segments):
        a_in, a_out, p = seg.a_in, seg.a_out, seg.p
        m, f = a_in + p, forward_flops(seg)
        bb = _stage.batch_blocks(seg)
        if bb is None:
            z_passes, jac_passes = a_in, min(a_out, m)
        else:
            z_passes = bb[2] + 2 * max(1, (bb[0] - 1).bit_length())
            jac_passes = z_passes + min(a_out, p)
        blocks = 3 * f * jac_passes
        if curvature == "hessian" or j == len(pipe.segments) - 1:
            blocks += 6 * f * (z_passes + p)
        if bb is not None:  # A_l applied block by block
            _, wo, wi = bb
            stage = 2 * a_out * a_in * (wo + wi) + 2 * a_out * a_out * p + 2 * a_in * wo * p + 2 * p * p * a_out
        else:
            stage = 2 * a_out * a_out * m + 2 * m * m * a_out
        stage += (2 / 3) * p**3 + 3 * p * p * a_in + 4 * a_in * a_in * p
        total += seg.n * (blocks + stage)
    return total


def dense_seconds(pipe: _pipeline.Pipeline, curvature: str, mach: Machine) -> float:
    """The dense route, factorise once and solve once:

    * Hessian: ``n`` forward-over-reverse hvps (``jacfwd(grad)``), each about four forward
      passes, at ``hessian_rate``, plus ``tangent`` per entry of their ``n Σ_l a_l`` activation
      tangents; it is indefinite
      away from a minimum, so it is charged the failing Cholesky and the LU fallback,
      ``n³/3 + 2n³/3`` and two :func:`factorisations`;
    * GGN: ``J`` by ``min(n, m)`` passes of the body (``m`` the network outputs), ``Hℓ`` by ``m``
      passes of the loss, ``Jᵀ (Hℓ J)`` by ``2 m² n + 2 m n²``; ``G + λI`` is positive definite,
      so one Cholesky, ``n³/3``, and one :func:`factorisations`.
    """
    n = _pipeline.n_params(pipe)
    if curvature == "ggn":
        m = pipe.segments[-1].a_in
        form = (
            3 * min(n, m) * _forward(pipe.segments[:-1])
            + 4 * m * forward_flops(pipe.segments[-1])
            + 2 * m * m * n
            + 2 * m * n * n
        )
        return (form + n**3 / 3 + 2 * n * n) / mach.rate + factorisations(1, n, mach)
    activations = sum(seg.n * seg.a_out for seg in pipe.segments)
    form = 4 * n * _forward(pipe.segments) / mach.hessian_rate + n * activations * mach.tangent
    return form + (n**3 + 2 * n * n) / mach.rate + factorisations(2, n, mach)


def factorisations(count: int, size: int, mach: Machine) -> float:
    """What ``count`` factorisations of a ``size × size`` matrix cost beyond their flops: one
    pass over its entries each, at ``mach.entry`` an entry. Below ``size ≈ 300`` a LAPACK
    factorisation runs far below the rate of products (a 105 × 105 Cholesky took about ten
    times its flops' time on the CPU), and this term is what decides the smallest networks."""
    return count * size * size * mach.entry


def dense_bytes(pipe: _pipeline.Pipeline) -> float:
    """Peak memory of the dense route: ``C`` and its Cholesky and LU factors (``3 n²`` numbers),
    and while ``C`` is formed the tangents of every activation in all ``n`` directions at once
    (``n Σ_l a_l``: the vmapped ``jacfwd`` keeps them)."""
    n = _pipeline.n_params(pipe)
    activations = sum(seg.n * seg.a_out for seg in pipe.segments)
    return jax.numpy.dtype(pipe.dtype).itemsize * (3 * n * n + n * activations)


def _forward(segments) -> float:
    """One forward pass through ``segments``."""
    return sum(seg.n * forward_flops(seg) for seg in segments)


def gauss_newton_flops(pipe: _pipeline.Pipeline) -> float:
    """Gauss-Newton in the output space: ``J`` by ``min(m, n)`` passes, ``Z Zᵀ`` (``2 m² n``)
    and the ``m × m`` factorisations, charged ``4 m³``: the LU of ``K`` and the eigenvalues of
    ``K`` for ``info()``, which run below the rate of products. The loss is taken to be a sum
    over examples, whose ``Hℓ`` is block-diagonal and costs no ``m × m`` eigendecomposition
    (:func:`hessinv._gauss_newton.signed_factor`); a loss that couples the examples pays about
    ``5 m³`` more than charged. (The shapes benchmark's fit gave ``9 m³`` when every ``Hℓ`` was
    decomposed whole; with ``4``, auto's choice was within 1.25x of the fastest route at the 12
    Gauss-Newton points of batch 64 and 256, widths 4-16, depths 4 and 16 measured since.)"""
    n, m = _pipeline.n_params(pipe), pipe.segments[-1].a_in
    return 3 * _forward(pipe.segments) * min(m, n) + 2 * m * m * n + 4 * m * n + 4 * m**3


def parallel_steps(pipe: _pipeline.Pipeline) -> int:
    """Sequential steps of the depth-parallel route: per segment of ``n`` layers, three
    associative scans (the stage matrices, and the solve's two passes) of ``2 ⌈log₂ n⌉`` levels
    each, and the segment's own joining steps."""
    return sum(6 * math.ceil(math.log2(seg.n + 1)) + 2 for seg in pipe.segments)


def estimate(pipe: _pipeline.Pipeline, curvature: str, route: str, mach: Machine) -> float:
    """Estimated seconds of one factorisation + solve by ``route`` (``inf`` where it does not
    apply or would not fit).

    Args:
      pipe: the pipeline's static shapes, from ``hessinv._pipeline.build(layers, params, z0)``.
      curvature: ``"hessian"`` or ``"ggn"``.
      route: ``"riccati"``, ``"dense"``, ``"gauss_newton"`` or ``"parallel"`` (the stage
        recursion's cost times ``mach.parallel_work``, with :func:`parallel_steps` steps).
      mach: the constants, e.g. ``MACHINES["cpu"]`` or :func:`machine`.

    Examples:
      A deep, narrow network: 512 tanh layers of width 4 on a batch of 4 (``n = 10244``).

      >>> import jax, jax.numpy as jnp, hessinv
      >>> jax.config.update("jax_enable_x64", True)
      >>> def dense(z, x):
      ...     return jnp.tanh(z @ x["W"] + x["c"])
      >>> def mse(z, x):
      ...     return jnp.mean((z @ x["w"] - 1.0) ** 2)
      >>> init = lambda key: {"W": jax.random.normal(key, (4, 4)) / 2, "c": jnp.zeros(4)}
      >>> layers = [dense, hessinv.Stack(dense, 511), mse]
      >>> params = [init(jax.random.key(0)), jax.vmap(init)(jax.random.split(jax.random.key(1), 511)),
      ...           {"w": jnp.ones(4)}]
      >>> pipe = hessinv._pipeline.build(layers, params, jnp.ones((4, 4)))  # shapes only
      >>> cpu = hessinv.cost.MACHINES["cpu"]
      >>> s = {r: hessinv.cost.estimate(pipe, "hessian", r, cpu) for r in ("riccati", "dense", "gauss_newton")}
      >>> s["riccati"] < 0.1, s["dense"], s["gauss_newton"]  # dense: 3 n² floats exceed 2 GB
      (True, inf, inf)
    """
    n, m = _pipeline.n_params(pipe), pipe.segments[-1].a_in
    itemsize = jax.numpy.dtype(pipe.dtype).itemsize
    if route in ("riccati", "parallel"):
        state = sum(seg.n * seg.a_out**2 for seg in pipe.segments)
        work = riccati_flops(pipe, curvature) / mach.rate + state * mach.entry
        if route == "riccati":
            return work + pipe.n_layers * mach.step
        return mach.parallel_work * work + parallel_steps(pipe) * mach.step
    if route == "dense":
        return math.inf if dense_bytes(pipe) > mach.dense_bytes else dense_seconds(pipe, curvature, mach)
    if route == "gauss_newton":
        if curvature != "ggn" or 3 * m * n * itemsize > mach.dense_bytes:
            return math.inf
        return gauss_newton_flops(pipe) / mach.rate + factorisations(1, m, mach)
    raise ValueError(route)


def choose(pipe: _pipeline.Pipeline, curvature: str, *, positive_damping: bool, mach: Machine | None = None) -> str:
    """The cheapest exact route. ``gauss_newton`` and ``parallel`` need ``λ > 0`` (the latter
    inverts every ``K_xx,l + λI``): pass ``positive_damping=False`` when the damping is known to
    be 0 (a traced damping counts as positive; the route's ``Info`` then reports a failure as
    not ok). ``parallel`` is considered only where ``mach.parallel_work`` is finite (not on a
    CPU).

    Args:
      pipe: the pipeline's static shapes, from ``hessinv._pipeline.build(layers, params, z0)``.
      curvature: ``"hessian"`` or ``"ggn"``.
      positive_damping: whether ``λ > 0`` may be assumed.
      mach: the constants; default :func:`machine` of JAX's default backend.

    Returns:
      ``"riccati"``, ``"dense"``, ``"gauss_newton"`` or ``"parallel"``: what ``method="auto"``
      runs (:func:`hessinv.route` asks this for a pipeline).

    Examples:
      >>> import jax, jax.numpy as jnp, hessinv
      >>> jax.config.update("jax_enable_x64", True)
      >>> def dense(z, x):
      ...     return jnp.tanh(z @ x["W"] + x["c"])
      >>> def xent(z, x):  # a parameter-free loss, as curvature="ggn" needs
      ...     return -jnp.mean(jax.nn.log_softmax(z)[:, 0])
      >>> init = lambda key: {"W": jax.random.normal(key, (4, 4)) / 2, "c": jnp.zeros(4)}
      >>> layers = [dense, hessinv.Stack(dense, 511), xent]
      >>> params = [init(jax.random.key(0)), jax.vmap(init)(jax.random.split(jax.random.key(1), 511)), {}]
      >>> pipe = hessinv._pipeline.build(layers, params, jnp.ones((4, 4)))
      >>> cpu = hessinv.cost.MACHINES["cpu"]
      >>> hessinv.cost.choose(pipe, "ggn", positive_damping=True, mach=cpu)  # 16 outputs, n = 10240
      'gauss_newton'
      >>> hessinv.cost.choose(pipe, "ggn", positive_damping=False, mach=cpu)
      'riccati'
      >>> hessinv.cost.choose(pipe, "hessian", positive_damping=True, mach=cpu)
      'riccati'
      >>> gpu = hessinv.cost.MACHINES["gpu"]  # launch-bound: 512 sequential steps cost more than the scans
      >>> hessinv.cost.choose(pipe, "hessian", positive_damping=True, mach=gpu)
      'parallel'
    """
    mach = mach or machine()
    needs_damping = {"gauss_newton": curvature == "ggn" and positive_damping, "parallel": positive_damping}
    routes = [r for r in ROUTES_AUTO if needs_damping.get(r, True)]
    return min(routes, key=lambda r: estimate(pipe, curvature, r, mach))
