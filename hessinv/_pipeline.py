"""The pipeline contract: a list of pure layers ``z_l = f_l(z_{l-1}, x_l)``, validated and grouped.

A user hands us ``layers`` (functions, or :class:`Stack` for a run of identical layers),
``params`` (one pytree per entry) and ``z0`` (the batch, any pytree). Here we

* check the contract eagerly (at trace time), naming the layer index and shapes on failure;
* group the expanded layer sequence into *segments*: maximal runs of the same function with the
  same parameter and activation shapes. Every per-layer computation is then a ``vmap`` or a
  ``lax.scan`` over a segment, so compile time depends on the number of distinct segments, not
  on depth. A run of consecutive plain entries (the same function object ``f`` listed again
  and again) is one segment exactly as ``Stack(f, n)`` would be: it is traced once, and its
  params are stacked leaf by leaf, never touched one entry at a time by the recursions;
* convert between a params-shaped pytree (params, ``v``, ``g``) and per-segment row matrices
  ``(n, p)`` that the recursions consume, and (:func:`grouped`, :func:`ungrouped`) between the
  user's list and the same pipeline with each such run written as one :class:`Stack`.

The first layer is always its own segment, with its input ``z_0`` frozen: ``dz_0 = 0``, so its
input block has dimension 0 (MATH.md section 3) and a wide raw input never enters a Jacobian.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from . import _flat
from ._errors import MixedPrecisionWarning, PipelineError


@dataclasses.dataclass(frozen=True)
class Stack:
    """``depth`` consecutive copies of one layer function with their own parameters.

    The matching entry of ``params`` holds the parameters of all copies stacked on a leading
    axis of length ``depth`` (as produced by ``jax.vmap`` of an initialiser). The layer must map
    activations to activations of the same shapes and dtypes. Everything about a Stack (forward
    pass, blocks, recursions) is a ``lax.scan`` or ``vmap``, so compile time does not grow with
    ``depth``.

    Example::

        layers = [embed, hessinv.Stack(block, 1024), head]
        params = [p_embed, jax.vmap(init_block)(jax.random.split(key, 1024)), p_head]
    """

    layer: Callable
    depth: int

    def __post_init__(self):
        if not callable(self.layer):
            raise TypeError(f"Stack(layer, depth): layer must be callable, got {type(self.layer).__name__}")
        if not isinstance(self.depth, int) or self.depth < 1:
            raise ValueError(f"Stack(layer, depth): depth must be a positive int, got {self.depth!r}")


class Piece(NamedTuple):
    """Layers ``lo:hi`` of user entry ``entry`` (a plain function entry has ``lo=0, hi=1``)."""

    entry: int
    lo: int
    hi: int


class Segment(NamedTuple):
    """A run of ``n`` identical layers: same function and shapes, so one vmap/scan covers it."""

    fn: Callable
    n: int
    pieces: tuple  # of Piece, in layer order
    start: int  # index of its first layer in the expanded pipeline
    in_spec: _flat.Spec  # of z_{l-1}
    out_spec: _flat.Spec  # of z_l
    param_spec: _flat.Spec  # of x_l, one layer
    frozen_input: bool  # first layer: z_0 is data, dz_0 = 0

    @property
    def a_in(self) -> int:
        return 0 if self.frozen_input else self.in_spec.size

    @property
    def a_out(self) -> int:
        return self.out_spec.size

    @property
    def p(self) -> int:
        return self.param_spec.size


class Pipeline(NamedTuple):
    """Everything static about a (layers, params, z0) triple. Hashable."""

    entries: tuple  # per user entry: (fn, depth, is_stack)
    entry_specs: tuple  # per user entry: Spec of one layer's params
    params_spec: _flat.Spec  # of the whole params sequence
    segments: tuple  # of Segment
    dtype: Any  # the floating dtype the recursions run in
    n_layers: int

    def layer_name(self, k: int) -> str:
        """Human-readable location of expanded layer ``k``."""
        e, off = self.locate(k)
        fn, depth, is_stack = self.entries[e]
        name = getattr(fn, "__name__", type(fn).__name__)
        where = f"layers[{e}]" + (f" (Stack of {depth}, copy {off})" if is_stack else "")
        return f"layer {k} = {where}, function {name!r}"

    def locate(self, k: int) -> tuple[int, int]:
        for e, (_, depth, _) in enumerate(self.entries):
            if k < depth:
                return e, k
            k -= depth
        raise IndexError(k)


def _struct(spec: _flat.Spec):
    leaves = [jax.ShapeDtypeStruct(s, d) for s, d in zip(spec.shapes, spec.dtypes)]
    return jax.tree.unflatten(spec.treedef, leaves)


def _uncarried(spec: _flat.Spec) -> _flat.Spec:
    return spec._replace(carried=(False,) * len(spec.carried))


def _eval_layer(fn, in_spec, param_spec, where: str) -> _flat.Spec:
    """The spec of ``fn``'s output, traced once. An output leaf that is one of the input's
    carried leaves, passed through untouched (the same variable in the traced program), is
    carried too: it still depends on the batch alone."""
    try:
        closed, out = jax.make_jaxpr(fn, return_shape=True)(_struct(in_spec), _struct(param_spec))
    except Exception as e:
        raise PipelineError(
            f"{where} failed on activations {in_spec.describe()} and parameters "
            f"{param_spec.describe()}: {type(e).__name__}: {e}"
        ) from e
    n_in = in_spec.treedef.num_leaves
    carried_in = [v for v, c in zip(closed.jaxpr.invars[:n_in], in_spec.carried) if c]
    return _flat.spec_of(out, [any(o is v for v in carried_in) for o in closed.jaxpr.outvars], activation=True)


def _check_floating(x, xs: _flat.Spec, e: int) -> None:
    if all(jnp.issubdtype(d, jnp.inexact) for d in xs.dtypes):
        return
    for path, leaf in jax.tree_util.tree_leaves_with_path(x):
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            raise TypeError(
                f"params[{e}]{jax.tree_util.keystr(path)} has dtype {jnp.result_type(leaf)}; "
                "parameters must be floating point (carry integer data in z0 instead)"
            )


def _check_precision(params: tuple, entry_specs: list, z0) -> None:
    """The dtype policy: every floating leaf of ``params`` and ``z0`` is float32 or float64
    (half precision raises: a second-order solve needs the mantissa), and all of one precision
    (mixing warns, naming a leaf of each, since the layers then compute at the lowest)."""
    first: dict = {}  # dtype -> the first leaf that has it
    prev = None
    named = [(f"params[{e}]", x, xs) for e, (x, xs) in enumerate(zip(params, entry_specs))]
    for prefix, tree, spec in named + [("z0", z0, None)]:
        if spec is not None and spec == prev:  # a plain run: its first entry spoke for it
            continue
        prev = spec
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            dt = jnp.result_type(leaf)
            if not jnp.issubdtype(dt, jnp.inexact):
                continue
            name = f"{prefix}{jax.tree_util.keystr(path)}"
            if jnp.issubdtype(dt, jnp.complexfloating):
                raise TypeError(f"{name} has dtype {dt}; hessinv needs real floating point (float32 or float64)")
            if jnp.finfo(dt).bits < 32:
                raise TypeError(
                    f"{name} has dtype {dt}; hessinv solves in float32 or float64 (a {jnp.finfo(dt).bits}-bit "
                    "mantissa cannot resolve second derivatives): cast it, e.g. with jnp.asarray(x, jnp.float32)"
                )
            first.setdefault(dt, name)
    if len(first) > 1:
        lo, hi = min(first, key=lambda d: jnp.finfo(d).bits), max(first, key=lambda d: jnp.finfo(d).bits)
        warnings.warn(
            f"mixed precision: {first[lo]} is {lo} but {first[hi]} is {hi}; the layers compute (and the answer "
            f"is accurate) only to {lo}. Cast params and z0 to one dtype (jax_enable_x64 with float64 "
            "everywhere for exact solves).",
            MixedPrecisionWarning,
            stacklevel=4,
        )


def build(layers: Sequence, params: Sequence, z0: Any) -> Pipeline:
    """Validate the pipeline and group it into segments. Runs at trace time only."""
    if callable(layers) or isinstance(layers, Stack):
        raise PipelineError("layers must be a sequence of layer functions (or Stack), not a single layer")
    layers, params = tuple(layers), tuple(params) if isinstance(params, (list, tuple)) else params
    if not isinstance(params, tuple):
        raise PipelineError(f"params must be a list or tuple with one entry per layer, got {type(params).__name__}")
    if len(layers) != len(params):
        raise PipelineError(
            f"len(layers) = {len(layers)} but len(params) = {len(params)}; give one params entry per layer"
        )
    if not layers:
        raise PipelineError("the pipeline is empty: give at least one layer")

    param_specs = [_flat.spec_of(x) for x in params]
    _check_precision(params, param_specs, z0)  # before any layer is traced
    entries, entry_specs, units = [], [], []
    k, checked = 0, None
    # z0 is data: every floating leaf of it is carried until a layer computes from it.
    z_spec = _flat.spec_of(
        z0, [jnp.issubdtype(jnp.result_type(x), jnp.inexact) for x in jax.tree.leaves(z0)], activation=True
    )
    act_specs = [z_spec]
    for e, (layer, x) in enumerate(zip(layers, params)):
        is_stack = isinstance(layer, Stack)
        fn, depth = (layer.layer, layer.depth) if is_stack else (layer, 1)
        if not callable(fn):
            raise PipelineError(f"layers[{e}] is not callable: {type(fn).__name__}")
        xs = param_specs[e]
        if xs != checked:  # an entry like the one before (a plain run) needs no second look
            _check_floating(x, xs, e)
            checked = xs
        if is_stack:
            bad = [s for s in xs.shapes if len(s) == 0 or s[0] != depth]
            if bad:
                raise PipelineError(
                    f"layers[{e}] is a Stack of depth {depth}, so every leaf of params[{e}] needs a leading "
                    f"axis of length {depth}; got {xs.describe()}"
                )
            xs = xs._replace(shapes=tuple(s[1:] for s in xs.shapes))
        entries.append((fn, depth, is_stack))
        entry_specs.append(xs)
        name = getattr(fn, "__name__", type(fn).__name__)
        where = f"layer {k} = layers[{e}] ({name!r}{', Stack of ' + str(depth) if is_stack else ''})"
        # Same function, same shapes as the unit before: the output spec is known; skip the trace.
        prev = units[-1] if units else None
        if prev is not None and prev[0] is fn and prev[3] == xs and prev[4] == z_spec == prev[5]:
            out_spec = z_spec
        else:
            out_spec = _eval_layer(fn, z_spec, xs, where)
        if is_stack and _uncarried(out_spec) != _uncarried(z_spec):
            raise PipelineError(
                f"{where}: a Stack layer must map activations to the same shapes and dtypes, but it maps "
                f"{z_spec.describe()} to {out_spec.describe()}"
            )
        lo = 0
        # A copy whose output carries other leaves than its input (the first copy of a Stack
        # on z0: its input is all data) is a unit of its own; the copies after it agree.
        while out_spec != z_spec and lo < depth - 1:
            units.append([fn, 1, [Piece(e, lo, lo + 1)], xs, z_spec, out_spec, k + lo])
            z_spec, out_spec, lo = out_spec, _eval_layer(fn, out_spec, xs, where), lo + 1
            act_specs.append(z_spec)
            if lo > z_spec.treedef.num_leaves:
                raise PipelineError(f"{where}: the layer keeps permuting the leaves it passes through unchanged")
        units.append([fn, depth - lo, [Piece(e, lo, depth)], xs, z_spec, out_spec, k + lo])
        z_spec = out_spec
        act_specs.append(out_spec)
        k += depth

    n_layers = k
    if not (z_spec.treedef.num_leaves == 1 and z_spec.shapes[0] == () and z_spec.is_active[0]):
        raise PipelineError(
            f"the last layer ({n_layers - 1}) must return a scalar floating loss, but it returns {z_spec.describe()}"
        )

    # Merge neighbouring units that are the same function on the same shapes.
    merged = []
    for u in units:
        if merged:
            m = merged[-1]
            if m[0] is u[0] and m[3] == u[3] and m[4] == m[5] == u[4] == u[5]:
                m[1] += u[1]
                m[2] = m[2] + u[2]
                continue
        merged.append(list(u))

    # Peel the first layer (frozen input) and the last layer (scalar output) into segments of their own.
    def split(unit, k):
        fn, n, pieces, xs, i, o, start = unit
        head, tail, count = [], [], 0
        for p in pieces:
            take = max(0, min(p.hi - p.lo, k - count))
            if take:
                head.append(Piece(p.entry, p.lo, p.lo + take))
            if take < p.hi - p.lo:
                tail.append(Piece(p.entry, p.lo + take, p.hi))
            count += p.hi - p.lo
        return [fn, k, head, xs, i, o, start], [fn, n - k, tail, xs, i, o, start + k]

    if merged[0][1] > 1:
        merged[0:1] = split(merged[0], 1)
    if merged[-1][1] > 1:
        merged[-1:] = split(merged[-1], merged[-1][1] - 1)

    segments = tuple(
        Segment(fn, n, tuple(pieces), start, i, o, xs, frozen_input=(j == 0))
        for j, (fn, n, pieces, xs, i, o, start) in enumerate(merged)
    )
    dtype = _flat.float_dtype(*dict.fromkeys(entry_specs), *dict.fromkeys(act_specs))
    return Pipeline(tuple(entries), tuple(entry_specs), _flat.spec_of(params), segments, dtype, n_layers)


def check_like_params(pipe: Pipeline, tree: Any, name: str) -> None:
    """``tree`` (a ``v`` or ``g``) must have exactly the structure, shapes and dtypes of params."""
    if not isinstance(tree, (list, tuple)) or len(tree) != len(pipe.entries):
        n = len(tree) if isinstance(tree, (list, tuple)) else type(tree).__name__
        raise PipelineError(f"{name} must be a sequence like params, with {len(pipe.entries)} entries; got {n}")
    for e, (t, xs, (_, depth, is_stack)) in enumerate(zip(tree, pipe.entry_specs, pipe.entries)):
        ts = _flat.spec_of(t)
        want = xs._replace(shapes=tuple((depth, *s) for s in xs.shapes)) if is_stack else xs
        if ts.treedef != want.treedef or ts.shapes != want.shapes:
            raise PipelineError(f"{name}[{e}] has structure {ts.describe()} but params[{e}] has {want.describe()}")
        if ts.dtypes != want.dtypes:
            raise TypeError(f"{name}[{e}] has dtypes {ts.describe()} but params[{e}] has {want.describe()}")


def is_concrete(*trees) -> bool:
    """True outside any trace: no leaf is a tracer, so values can be checked and errors raised."""
    return not any(isinstance(x, jax.core.Tracer) for t in trees for x in jax.tree.leaves(t))


# -- params-shaped pytrees <-> per-segment row matrices ------------------------------------------


#: Stacks and unstacks go in chunks of this many arrays: one concatenate (or split) of thousands
#: of operands costs XLA seconds to compile, eagerly and inside ``jit`` alike.
_CHUNK = 64


def stack_trees(trees: Sequence) -> Any:
    """``jnp.stack`` of same-shaped pytrees, leaf by leaf (a new leading axis)."""

    def leaf(*xs):
        if len(xs) <= _CHUNK:
            return jnp.stack(xs)
        return jnp.concatenate([jnp.stack(xs[i : i + _CHUNK]) for i in range(0, len(xs), _CHUNK)])

    return jax.tree.map(leaf, *trees)


def unstack_tree(tree: Any, n: int) -> list:
    """Inverse of :func:`stack_trees`: the ``n`` slices of ``tree`` along its leading axis, cut 8 at a
    time from blocks of 8 (eagerly, one compiled program serves every block)."""
    leaves, treedef = jax.tree.flatten(tree)

    def leaf(a):
        full, out = n - n % 8, []
        if full:
            blocks = jnp.reshape(jax.lax.slice_in_dim(a, 0, full), (full // 8, 8, *a.shape[1:]))
            for b in range(full // 8):
                out.extend(jax.lax.unstack(jax.lax.dynamic_index_in_dim(blocks, b, 0, keepdims=False)))
        if full < n:
            out.extend(jax.lax.unstack(jax.lax.slice_in_dim(a, full, n)))
        return out

    cols = [leaf(a) for a in leaves]
    return [jax.tree.unflatten(treedef, [c[i] for c in cols]) for i in range(n)]


def _pieces(pipe: Pipeline, seg: Segment):
    """A segment's pieces, with each run of consecutive plain entries gathered: yields
    ``(entries, None)`` for such a run (a list of entry indices) and ``(None, piece)`` for a
    piece of a Stack."""
    run = []
    for p in seg.pieces:
        if pipe.entries[p.entry][2]:
            if run:
                yield run, None
                run = []
            yield None, p
        else:
            run.append(p.entry)
    if run:
        yield run, None


def to_rows(pipe: Pipeline, tree: Sequence) -> list:
    """A params-shaped pytree as one ``(n, p)`` matrix per segment (row ``i`` = layer ``i``).
    A run of plain entries is stacked leaf by leaf and raveled once, as a Stack's params are."""
    dt = pipe.dtype
    stack_rows = {}  # a Stack's rows, raveled once even where its copies span two segments
    out = []
    for seg in pipe.segments:
        parts = []
        for run, piece in _pieces(pipe, seg):
            if run is None:
                e = piece.entry
                if e not in stack_rows:
                    stack_rows[e] = jax.vmap(lambda x, xs=pipe.entry_specs[e]: _flat.ravel(xs, x, dt))(tree[e])
                parts.append(stack_rows[e][piece.lo : piece.hi])
            elif len(run) == 1:
                parts.append(_flat.ravel(seg.param_spec, tree[run[0]], dt)[None])
            else:
                stacked = stack_trees([tree[e] for e in run])
                parts.append(jax.vmap(lambda x, xs=seg.param_spec: _flat.ravel(xs, x, dt))(stacked))
        out.append(parts[0] if len(parts) == 1 else jnp.concatenate(parts))
    return out


def from_rows(pipe: Pipeline, seg_rows: Sequence) -> list:
    """Inverse of :func:`to_rows`: per-segment rows back to a params-shaped list."""
    out = [None] * len(pipe.entries)
    stack_parts = {}  # a Stack's row blocks, in layer order
    for seg, rows in zip(pipe.segments, seg_rows):
        i = 0
        for run, piece in _pieces(pipe, seg):
            k = len(run) if piece is None else piece.hi - piece.lo
            block = rows if k == seg.n else jax.lax.slice_in_dim(rows, i, i + k)
            i += k
            if piece is not None:
                stack_parts.setdefault(piece.entry, []).append(block)
            elif k == 1:
                out[run[0]] = _flat.unravel(seg.param_spec, block[0])
            else:
                stacked = jax.vmap(lambda r, xs=seg.param_spec: _flat.unravel(xs, r))(block)
                for e, t in zip(run, unstack_tree(stacked, k)):
                    out[e] = t
    for e, parts in stack_parts.items():
        rows = parts[0] if len(parts) == 1 else jnp.concatenate(parts)
        out[e] = jax.vmap(lambda r, xs=pipe.entry_specs[e]: _flat.unravel(xs, r))(rows)
    return out


def _runs(pipe: Pipeline) -> dict:
    """``{first entry: length}`` of every run of two or more consecutive plain entries that lie
    in one segment (the same function on the same shapes: what a Stack would hold)."""
    return {run[0]: len(run) for seg in pipe.segments for run, _ in _pieces(pipe, seg) if run and len(run) > 1}


@functools.lru_cache(maxsize=256)
def has_runs(pipe: Pipeline) -> bool:
    """Whether the pipeline has a run of identical plain entries (what :func:`grouped` stacks)."""
    return bool(_runs(pipe))


def grouped(pipe: Pipeline, layers: Sequence, *trees: Sequence) -> tuple:
    """``(layers, *trees)`` with every run of consecutive plain entries of one segment written as
    a single :class:`Stack` entry (its params, ``v`` or ``g`` stacked): the same expanded layers,
    which :func:`build` groups into the same segments, so every result is the same. A program
    traced on the grouped form takes one stacked array a leaf and run instead of one array an
    entry, which keeps XLA's compile time flat in the length of a plain list. Expanded layer
    ``k`` is layer ``k`` of both forms, so ``pipe`` still names it in messages."""
    runs = _runs(pipe)
    if not runs:
        return (tuple(layers), *(list(t) for t in trees))
    new_layers, new_trees, e = [], [[] for _ in trees], 0
    while e < len(pipe.entries):
        n = runs.get(e, 1)
        new_layers.append(Stack(layers[e], n) if n > 1 else layers[e])
        for out, t in zip(new_trees, trees):
            out.append(stack_trees([t[i] for i in range(e, e + n)]) if n > 1 else t[e])
        e += n
    return (tuple(new_layers), *new_trees)


def ungrouped(pipe: Pipeline, tree: Sequence) -> list:
    """Inverse of :func:`grouped` for one tree shaped like the grouped params (``ihvp``'s or
    ``hvp``'s answer): back to one entry per user entry."""
    runs = _runs(pipe)
    if not runs:
        return list(tree)
    out, e = [], 0
    for t in tree:
        n = runs.get(e, 1)
        out.extend(unstack_tree(t, n) if n > 1 else [t])
        e += n
    return out


def rows(pipe: Pipeline, tree: Sequence) -> list:
    """:func:`to_rows` at an entry point: one compiled program, except for a pipeline with runs
    of plain entries (:func:`has_runs`), which converts op by op (a program taking each entry's
    arrays as arguments compiles in time growing with their number). Inside a trace: inline."""
    if has_runs(pipe) or not is_concrete(tree):
        return to_rows(pipe, list(tree))
    return _to_rows_jit(pipe, list(tree))


def trees(pipe: Pipeline, seg_rows: Sequence) -> list:
    """:func:`from_rows` at an entry point, compiled the way :func:`rows` is."""
    if has_runs(pipe) or not is_concrete(seg_rows):
        return from_rows(pipe, seg_rows)
    return _from_rows_jit(pipe, seg_rows)


def n_params(pipe: Pipeline) -> int:
    """``n``: the number of (floating) parameters, the order of the curvature matrix."""
    return sum(seg.n * seg.p for seg in pipe.segments)


def rows_to_vector(seg_rows: Sequence, dtype) -> jax.Array:
    """Per-segment row matrices as one flat vector of length ``n`` (row-major, segment after
    segment): the order in which the dense routes index ``C``."""
    return jnp.concatenate([jnp.reshape(r, (-1,)).astype(dtype) for r in seg_rows])


def vector_to_rows(pipe: Pipeline, x: jax.Array) -> list:
    """Inverse of :func:`rows_to_vector`: one ``(n_seg, p)`` matrix per segment."""
    out, i = [], 0
    for seg in pipe.segments:
        k = seg.n * seg.p
        out.append(jnp.reshape(x[i : i + k], (seg.n, seg.p)))
        i += k
    return out


# -- the forward pass ------------------------------------------------------------------------------


def run_segment(seg: Segment, z, rows):
    """Forward through one segment. Returns (output, stacked inputs of each layer)."""

    def step(z, row):
        return seg.fn(z, _flat.unravel(seg.param_spec, row)), z

    if seg.n == 1:  # no loop for a single layer: keeps the common head/tail cheap to trace
        out, zin = step(z, rows[0])
        return out, jax.tree.map(lambda a: a[None], zin)
    return jax.lax.scan(step, z, rows)


def run_segments(segments: Sequence, seg_rows: Sequence, z):
    """Forward through consecutive segments: (output, per-segment stacked layer inputs)."""
    inputs = []
    for seg, rows in zip(segments, seg_rows):
        z, zin = run_segment(seg, z, rows)
        inputs.append(zin)
    return z, inputs


def forward(pipe: Pipeline, seg_rows: Sequence, z0):
    """The whole forward pass: (loss, per-segment stacked layer inputs)."""
    return run_segments(pipe.segments, seg_rows, z0)


def loss(layers: Sequence, params: Sequence, z0: Any) -> jax.Array:
    """The pipeline's scalar loss ``z_L``: ``f_L(... f_1(z0, x_1) ..., x_L)``.

    Stacks run as ``lax.scan``; every other entry is called directly. Differentiable in
    ``params`` and ``z0``.
    """
    z = z0
    for layer, x in zip(layers, params):
        if isinstance(layer, Stack):
            z, _ = jax.lax.scan(lambda z, x, f=layer.layer: (f(z, x), None), z, x)
        else:
            z = layer(z, x)
    return z


def scan(f, carry, xs, n: int, *, reverse: bool = False, unroll: int = 1):
    """``lax.scan`` over the ``n`` layers of a segment. A single layer (``n == 1``) is applied
    directly: its carry may change shape (``a_out`` to ``a_in``), which a scan cannot express."""
    if n == 1:
        carry, y = f(carry, jax.tree.map(lambda a: a[0], xs))
        return carry, jax.tree.map(lambda a: a[None], y)
    return jax.lax.scan(f, carry, xs, reverse=reverse, unroll=unroll)


_to_rows_jit = jax.jit(to_rows, static_argnums=0)
_from_rows_jit = jax.jit(from_rows, static_argnums=0)
