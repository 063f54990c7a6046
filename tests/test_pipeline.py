"""The pipeline contract: validation errors, stacks, grouping, and depth-independent tracing."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    PIPELINES,
    dense_tanh,
    flat,
    like,
    mlp,
    normalize,
    ref_hessian,
    rel_err,
    residual,
    stacked,
    xent_head,
)

import hessinv

# These tests are about the stage recursion: pin it (method="auto" may pick another route).
ihvp = functools.partial(hessinv.ihvp, method="riccati")
factorize = functools.partial(hessinv.factorize, method="riccati")
from hessinv import _pipeline


def test_mismatched_lengths():
    layers, params, z0 = mlp()
    with pytest.raises(hessinv.PipelineError, match=r"len\(layers\) = 4 but len\(params\) = 3"):
        ihvp(layers, params[:-1], z0, params[:-1])


def test_empty_and_non_sequence():
    with pytest.raises(hessinv.PipelineError, match="empty"):
        hessinv.hvp([], [], jnp.zeros(3), [])
    with pytest.raises(hessinv.PipelineError, match="sequence of layer functions"):
        hessinv.hvp(dense_tanh, [{}], jnp.zeros(3), [{}])


def test_layer_failing_on_its_input_names_layer_and_shapes():
    layers, params, z0 = mlp(widths=(3, 5, 2, 4))
    params[1] = {"W": jnp.zeros((4, 2)), "c": jnp.zeros(2)}  # expects 5 inputs
    with pytest.raises(hessinv.PipelineError, match=r"layer 1 = layers\[1\] \('dense_tanh'\) failed") as e:
        ihvp(layers, params, z0, params)
    msg = str(e.value)
    assert "float64[8,5]" in msg and "float64[4,2]" in msg  # the activation and parameter shapes


def test_last_layer_must_return_scalar():
    layers, params, z0 = mlp()
    layers = layers[:-1] + [lambda z, x: z["h"] @ x["W"]]
    with pytest.raises(hessinv.PipelineError, match=r"last layer \(3\) must return a scalar.*float64\[8,3\]"):
        hessinv.hvp(layers, params, z0, params)


def test_integer_params_rejected():
    layers, params, z0 = mlp()
    params[0] = {"W": params[0]["W"], "c": jnp.zeros(5, jnp.int32)}
    with pytest.raises(TypeError, match=r"params\[0\]\['c'\] has dtype int32"):
        hessinv.hvp(layers, params, z0, params)


def test_stack_depth_must_match_leading_axis():
    layers, params, z0 = stacked(depth=4)
    layers[1] = hessinv.Stack(residual, 5)
    with pytest.raises(hessinv.PipelineError, match=r"Stack of depth 5.*leading axis of length 5"):
        ihvp(layers, params, z0, params)


def test_stack_must_preserve_shapes():
    layers, params, z0 = stacked(depth=3)
    layers[1] = hessinv.Stack(dense_tanh, 3)
    params[1] = jax.vmap(lambda k: {"W": jax.random.normal(k, (3, 4)), "c": jnp.zeros(4)})(
        jax.random.split(jax.random.PRNGKey(0), 3)
    )
    with pytest.raises(hessinv.PipelineError, match=r"Stack layer must map activations to the same shapes"):
        ihvp(layers, params, z0, params)


def test_stack_arguments_validated():
    with pytest.raises(ValueError, match="positive int"):
        hessinv.Stack(residual, 0)
    with pytest.raises(TypeError, match="callable"):
        hessinv.Stack(3, 2)


@pytest.mark.parametrize("fn", [hessinv.ihvp, hessinv.hvp])
def test_vector_structure_and_dtype_checked(fn):
    layers, params, z0 = mlp()
    bad = like(params)
    bad[1] = {"W": bad[1]["W"].T, "c": bad[1]["c"]}
    with pytest.raises(
        hessinv.PipelineError, match=r"\[1\] has structure .*float64\[2,5\].*params\[1\] has .*float64\[5,2\]"
    ):
        fn(layers, params, z0, bad)
    bad = like(params, dtype=jnp.float32)
    with pytest.raises(TypeError, match=r"\[0\] has dtypes .*float32"):
        fn(layers, params, z0, bad)
    with pytest.raises(hessinv.PipelineError, match="with 4 entries; got 2"):
        fn(layers, params, z0, like(params)[:2])


def test_stack_and_plain_list_agree():
    """A Stack, its unrolled plain list (auto-grouped) and a mixed split give the same answer."""
    layers, params, z0 = stacked(depth=5)
    g = like(params)
    x_stack = ihvp(layers, params, z0, g, damping=0.1)
    unroll = lambda t: [t[0]] + [jax.tree.map(lambda a: a[i], t[1]) for i in range(5)] + [t[2]]
    plain = [dense_tanh] + [residual] * 5 + [xent_head]
    x_plain = ihvp(plain, unroll(params), z0, unroll(g), damping=0.1)
    assert rel_err(flat(unroll(x_stack)), flat(x_plain)) < 1e-13
    # Auto-grouping: first layer peeled, 5 residual layers in one segment, head.
    pipe = _pipeline.build(plain, unroll(params), z0)
    assert [s.n for s in pipe.segments] == [1, 5, 1]


def test_stack_at_the_start_is_peeled():
    """A Stack that starts the pipeline: its first copy sees the frozen input."""
    _, params, z0 = stacked(depth=4)
    layers = [hessinv.Stack(residual, 4), xent_head]
    params = [params[1], params[2]]
    pipe = _pipeline.build(layers, params, z0)
    assert [(s.n, s.frozen_input) for s in pipe.segments] == [(1, True), (3, False), (1, False)]
    assert pipe.layer_name(2) == "layer 2 = layers[0] (Stack of 4, copy 2), function 'residual'"
    x = ihvp(layers, params, z0, params, damping=0.2)
    from helpers import ref_hessian

    H = np.asarray(jax.jit(lambda p: ref_hessian(layers, p, z0))(params))
    assert rel_err(flat(x), np.linalg.solve(H + 0.2 * np.eye(len(H)), flat(params))) < 1e-10


def _program_size(depth):
    """Number of operations in the lowered program (StableHLO, nested computations included).
    Only shapes differ between depths, not the operations."""
    layers, params, z0 = stacked(depth=depth)
    f = jax.jit(lambda p, g: ihvp(layers, p, z0, g, damping=0.1))
    return len(f.lower(params, params).as_text().splitlines())


def test_trace_size_does_not_grow_with_stack_depth():
    """Compile time stays flat in depth for a Stack: the traced program is the same size. (ihvp
    walks a long Stack in chunks: one program shape up to two chunks, one beyond.)"""
    assert _program_size(5) == _program_size(64)
    assert _program_size(700) == _program_size(3000)


def test_pipeline_is_hashable_static_data():
    layers, params, z0 = PIPELINES["pytree"]()
    p1 = _pipeline.build(layers, params, z0)
    p2 = _pipeline.build(layers, like(params), z0)
    assert p1 == p2 and hash(p1) == hash(p2)


# -- a plain list of one function: one segment, as a Stack would be ------------------------------


def _unrolled(depth, **kw):
    """The ``stacked`` pipeline (first layer, ``Stack(residual, depth)``, head) and the same
    network as a plain list with ``residual`` listed ``depth`` times."""
    layers, params, z0 = stacked(depth=depth, **kw)
    unroll = lambda t: [t[0]] + [jax.tree.map(lambda a, i=i: a[i], t[1]) for i in range(depth)] + [t[2]]
    return layers, params, [dense_tanh] + [residual] * depth + [xent_head], unroll, z0


def _dense(layers, params, z0, lam):
    H = np.asarray(jax.jit(lambda p: ref_hessian(layers, p, z0))(params))
    return H + lam * np.eye(len(H))


def test_plain_list_of_one_function_is_a_stack():
    """ihvp, hvp and logdet of ``[f] * n`` equal those of ``Stack(f, n)`` and the dense answers."""
    layers, params, plain, unroll, z0 = _unrolled(6)
    pp, g = unroll(params), like(unroll(params))
    lam = 0.1
    C = _dense(plain, pp, z0, lam)
    x = ihvp(plain, pp, z0, g, damping=lam)
    assert isinstance(x, list) and jax.tree.structure(x) == jax.tree.structure(pp)
    assert rel_err(flat(x), np.linalg.solve(C, flat(g))) < 1e-10
    g_stack = [g[0], jax.tree.map(lambda *a: jnp.stack(a), *g[1:-1]), g[-1]]
    x_stack = ihvp(layers, params, z0, g_stack, damping=lam)
    assert rel_err(flat(x), flat(unroll(x_stack))) < 1e-13
    Hv = hessinv.hvp(plain, pp, z0, g)
    assert rel_err(flat(Hv), (C - lam * np.eye(len(C))) @ flat(g)) < 1e-12
    sign, logdet = factorize(plain, pp, z0, damping=lam).logdet()
    ref_sign, ref_logdet = np.linalg.slogdet(C)
    assert sign == ref_sign and abs(logdet - ref_logdet) < 1e-9 * abs(ref_logdet)


def test_plain_list_segments_match_the_stack():
    """``[f] * 64 + [head]``: as many segments as ``[Stack(f, 64), head]`` (the first layer is
    peeled off: its input is the data)."""
    _, params, plain, unroll, z0 = _unrolled(64)
    plain, pp = plain[1:], unroll(params)[1:]
    seg_plain = _pipeline.build(plain, pp, z0).segments
    seg_stack = _pipeline.build([hessinv.Stack(residual, 64), xent_head], [params[1], params[2]], z0).segments
    assert len(seg_plain) == len(seg_stack) == 3
    assert [(s.n, s.start, s.in_spec, s.out_spec) for s in seg_plain] == [
        (s.n, s.start, s.in_spec, s.out_spec) for s in seg_stack
    ]


def _mixed():
    """Runs of ``residual`` interrupted by a parameter-free layer and by a Stack of the same
    function, then ``dense_tanh`` three times with different parameter shapes."""
    _, params, z0 = stacked(depth=3, w=3)
    ks = iter(jax.random.split(jax.random.PRNGKey(5), 32))
    dense = lambda i, o, s=0.7: {
        "W": s / np.sqrt(i) * jax.random.normal(next(ks), (i, o)),
        "c": 0.1 * jax.random.normal(next(ks), (o,)),
    }
    layers = [dense_tanh, residual, residual, normalize, residual, residual, residual]
    ps = [params[0], dense(3, 3), dense(3, 3), {}, dense(3, 3), dense(3, 3), dense(3, 3)]
    layers += [hessinv.Stack(residual, 3), residual, residual]
    ps += [params[1], dense(3, 3), dense(3, 3)]
    layers += [dense_tanh, dense_tanh, dense_tanh, xent_head]
    ps += [dense(3, 4), dense(4, 4), dense(4, 2), dense(2, 3)]
    return layers, ps, z0


def test_mixed_lists_group_and_match_dense():
    layers, params, z0 = _mixed()
    pipe = _pipeline.build(layers, params, z0)
    # dense_tanh | residual x2 | normalize | residual x3, Stack of 3, residual x2 | dense_tanh x3 | head
    assert [s.n for s in pipe.segments] == [1, 2, 1, 8, 1, 1, 1, 1]
    g, lam = like(params), 0.1
    C = _dense(layers, params, z0, lam)
    assert rel_err(flat(ihvp(layers, params, z0, g, damping=lam)), np.linalg.solve(C, flat(g))) < 1e-10
    assert rel_err(flat(hessinv.hvp(layers, params, z0, g)), (C - lam * np.eye(len(C))) @ flat(g)) < 1e-12
    rows = _pipeline.to_rows(pipe, g)
    assert [r.shape for r in rows] == [(s.n, s.p) for s in pipe.segments]
    back = _pipeline.from_rows(pipe, rows)
    assert jax.tree.structure(back) == jax.tree.structure(list(g)) and rel_err(flat(back), flat(g)) == 0


def test_grouped_writes_each_run_as_a_stack():
    """The grouped form has one Stack entry a run, builds into the same segments and gives the
    same answer; ungrouped restores the user's list exactly."""
    layers, params, z0 = _mixed()
    pipe = _pipeline.build(layers, params, z0)
    g = like(params)
    g_layers, g_params, g_g = _pipeline.grouped(pipe, layers, params, g)
    assert [f.depth if isinstance(f, hessinv.Stack) else 1 for f in g_layers] == [1, 2, 1, 3, 3, 2, 1, 1, 1, 1]
    g_pipe = _pipeline.build(g_layers, g_params, z0)
    key = lambda seg: (seg.fn, seg.n, seg.start, seg.in_spec, seg.out_spec, seg.param_spec)
    assert [key(s) for s in g_pipe.segments] == [key(s) for s in pipe.segments]
    assert flat(_pipeline.ungrouped(pipe, g_params)).tolist() == flat(params).tolist()
    x = _pipeline.ungrouped(pipe, ihvp(g_layers, g_params, z0, g_g, damping=0.1))
    assert rel_err(flat(x), flat(ihvp(layers, params, z0, g, damping=0.1))) < 1e-13
    # No run (each entry its own shapes): nothing changes.
    m_layers, m_params, m_z0 = mlp()
    same = _pipeline.grouped(_pipeline.build(m_layers, m_params, m_z0), m_layers, m_params)
    assert same[0] == tuple(m_layers) and same[1] == list(m_params)


@pytest.mark.parametrize("n", [1, 8, 70])
def test_stack_and_unstack_trees(n):
    """Chunked leaf-wise stacking and its inverse, eagerly and under jit."""
    trees = [{"a": jnp.full((2, 3), float(i)), "b": (jnp.arange(2.0) + i,)} for i in range(n)]
    st = _pipeline.stack_trees(trees)
    assert st["a"].shape == (n, 2, 3) and st["b"][0].shape == (n, 2)
    for back in (_pipeline.unstack_tree(st, n), jax.jit(lambda t: _pipeline.unstack_tree(t, n))(st)):
        assert len(back) == n
        assert all(float(b["a"][0, 0]) == i and float(b["b"][0][1]) == i + 1 for i, b in enumerate(back))


def _largest_program(run) -> int:
    """Bytes of the largest program JAX compiles while ``run()`` executes (its MLIR, dumped)."""
    import pathlib
    import tempfile

    jax.clear_caches()  # compile everything afresh, so every program is seen
    with tempfile.TemporaryDirectory() as d:
        jax.config.update("jax_dump_ir_to", d)
        try:
            jax.block_until_ready(jax.tree.leaves(run()))
        finally:
            jax.config.update("jax_dump_ir_to", "")  # the default: no dumps
        return max(p.stat().st_size for p in pathlib.Path(d).glob("*.mlir"))


def _entry_points(layers, params, z0):
    """One call of each way into the library that hands a compiled program the params or a
    params-shaped tree (``factorize`` compiles what ``blocks`` and ``F.logdet`` do)."""
    g = like(params)
    F = factorize(layers, params, z0, damping=1e4)  # positive definite: sample needs it
    return {
        "hvp": lambda: hessinv.hvp(layers, params, z0, g),
        "blocks": lambda: hessinv.blocks(layers, params, z0).segments,
        "F.solve": lambda: F.solve(g),
        "F.matvec": lambda: F.matvec(g),
        "F.inverse_diagonal": lambda: F.inverse_diagonal(),
        "F.sample": lambda: F.sample(jax.random.key(0), 2),
        "ihvp": lambda: ihvp(layers, params, z0, g, damping=1e4),
        # Pinned, like factorize and ihvp here: auto may take the dense route at n = 8 and not at 64.
        "eigenvalue_counts": lambda: hessinv.eigenvalue_counts(
            layers, params, z0, [-np.inf, 0.0, np.inf], method="riccati"
        ),
    }


def test_plain_list_programs_do_not_grow_with_its_length():
    """Every entry point on ``[f] * n`` compiles programs of the same size for n = 8 and n = 64
    (a program taking one argument per entry and leaf grows with n): first-call time does not
    grow with the length of a plain list."""
    sizes = {}
    for depth in (8, 64):
        _, params, plain, unroll, z0 = _unrolled(depth, w=2, B=2)
        for name, run in _entry_points(plain, unroll(params), z0).items():
            sizes.setdefault(name, []).append(_largest_program(run))
    # Measured: at most 1% larger (shape digits). Before every program took rows, the solve,
    # hvp and blocks programs were 20-400% larger at n = 64.
    grown = {k: v for k, v in sizes.items() if v[1] > 1.05 * v[0]}
    assert not grown, f"program bytes (n = 8, n = 64) grew for {grown}"
