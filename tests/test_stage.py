"""Batch-block-diagonal A_l (hessinv._stage): the structured stage product is used only where
A_l's off-diagonal blocks are exactly zero, and every answer still equals the dense reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import flat, like, ref_ggn, ref_hessian, rel_err, residual, separate_loss, stacked

import hessinv

# These tests are about the stage recursion: pin it (method="auto" may pick another route).
ihvp = functools.partial(hessinv.ihvp, method="riccati")
factorize = functools.partial(hessinv.factorize, method="riccati")
from hessinv import _blocks, _oneshot, _pipeline, _stage


def batch_mix(z, x):
    """Same shapes as ``residual``, but every example sees the batch mean: A_l is dense."""
    h = z["h"] + jnp.sin(z["h"] @ x["W"] + x["c"])
    return {"h": h - 0.3 * jnp.mean(h, axis=0), "y": z["y"]}


def pair_mix(z, x):
    """Per example but for one pair: example 5 also sees example 12, through a product (so the
    coupling is in A_l and in K_l's z-z part), and only there."""
    h = z["h"] + jnp.sin(z["h"] @ x["W"] + x["c"])
    return {"h": h.at[5].add(0.3 * h[5] * h[12]), "y": z["y"]}


def _case(block):
    # a = 32 examples x width 4 = 128: big enough for the structured product (MIN_STRUCTURED).
    layers, params, z0 = stacked(depth=4, w=4, B=32, block=block)
    H = np.asarray(jax.jit(lambda p: ref_hessian(layers, p, z0))(params))
    return layers, params, z0, H


@pytest.fixture(scope="module")
def per_example():
    return _case(residual)


@pytest.fixture(scope="module")
def mixing():
    return _case(batch_mix)


@pytest.fixture(scope="module")
def pair_mixing():
    return _case(pair_mix)


def _flags(layers, params, z0):
    """Per segment: the candidate block shape and, per layer, whether A_l proved block-diagonal."""
    blk = hessinv.blocks(layers, params, z0)
    out = []
    for seg, sb in zip(blk.pipe.segments, blk.segments):
        _, is_block = _stage.diagonal_blocks(seg, sb.A)
        out.append((_stage.batch_blocks(seg), None if is_block is None else np.asarray(is_block)))
    return out


def test_structure_is_found_only_where_it_holds(per_example, mixing):
    layers, params, z0, _ = per_example
    flags = _flags(layers, params, z0)
    assert flags[0] == (None, None)  # the first layer: frozen input, no A_l
    assert flags[1][0] == (32, 4, 4) and flags[1][1].all()  # the residual Stack: per example
    assert flags[-1][0] is None  # the head returns a scalar
    layers, params, z0, _ = mixing
    bb, is_block = _flags(layers, params, z0)[1]
    assert bb == (32, 4, 4) and not is_block.any()  # a candidate by shape, refused by the numbers


def test_small_activations_stay_dense():
    layers, params, z0 = stacked(depth=4, w=4, B=4)
    assert all(_stage.batch_blocks(seg) is None for seg in _pipeline.build(layers, params, z0).segments)


# batch_mix couples examples linearly (a batch mean): A_l is dense, K_l's z-z part is not.
@pytest.mark.parametrize("block, A_ok, K_ok", [(residual, True, True), (batch_mix, False, True), (pair_mix, False, False)])
def test_coloured_blocks_equal_dense_and_probes_refuse_coupling(block, A_ok, K_ok):
    """A per-example A_l or K_l from w coloured tangents equals the dense one; where a layer
    couples examples (all of them, or one pair), the support probes refuse it."""
    layers, params, z0 = stacked(depth=3, w=4, B=32, block=block)
    pipe = _pipeline.build(layers, params, z0)
    rows = _pipeline.rows(pipe, params)
    _, inputs = _pipeline.forward(pipe, rows, z0)
    seg, zin, r = pipe.segments[1], inputs[1], rows[1]
    b = jax.random.normal(jax.random.PRNGKey(4), (seg.n, seg.a_out))
    M, ok_M = _blocks._per_example_jacobian(seg, zin, r, jnp.float64)
    K, ok_K = _blocks._per_example_second_derivatives(seg, zin, r, b, jnp.float64)
    M_dense = _blocks.dense_jacobian(seg, zin, r, jnp.float64)
    K_dense = _blocks.dense_second_derivatives(seg, zin, r, b, jnp.float64)
    assert (bool(ok_M), bool(ok_K)) == (A_ok, K_ok)
    if A_ok:
        np.testing.assert_allclose(M, M_dense, rtol=0, atol=1e-14 * float(jnp.abs(M_dense).max()))
    if K_ok:
        np.testing.assert_allclose(K, K_dense, rtol=0, atol=1e-13 * float(jnp.abs(K_dense).max()))
    # Either way, what the stage reads is the coloured answer where proved, else the dense one
    # (to rounding: compiled and eager evaluation may differ in the last bit).
    for got, want in (
        (_blocks.jacobian(seg, zin, r, jnp.float64), M if A_ok else M_dense),
        (_blocks.second_derivatives(seg, zin, r, b, jnp.float64), K if K_ok else K_dense),
    ):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-14 * float(jnp.abs(want).max()))


def test_per_example_float32_matches_dense():
    layers, params, z0 = stacked(depth=4, w=4, B=32, dtype=jnp.float32)
    params64 = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    z64 = jax.tree.map(lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a, z0)
    A = np.asarray(ref_hessian(layers, params64, z64)) + 0.2 * np.eye(flat(params).size)
    assert np.linalg.cond(A) < 1e3
    g = like(params, seed=3)
    x = ihvp(layers, params, z0, g, damping=0.2)
    assert flat(x).dtype == np.float32
    assert rel_err(flat(x), np.linalg.solve(A, flat(g).astype(np.float64))) < 2e-4


@pytest.mark.parametrize("case", ["per_example", "mixing", "pair_mixing"])
@pytest.mark.parametrize("damping", [0.02, 0.2])
def test_ihvp_factorize_logdet_inertia_match_dense(case, damping, request):
    layers, params, z0, H = request.getfixturevalue(case)
    A = H + damping * np.eye(len(H))
    ev = np.linalg.eigvalsh(A)
    assert np.linalg.cond(A) < 1e5 and ev.min() < 0  # well conditioned and indefinite
    g = like(params, seed=3)
    ref = np.linalg.solve(A, flat(g))
    assert rel_err(flat(ihvp(layers, params, z0, g, damping=damping)), ref) < 1e-10
    F = factorize(layers, params, z0, damping=damping)
    assert rel_err(flat(F.solve(g)), ref) < 1e-10
    sign, logabs = F.logdet()
    s_ref, l_ref = np.linalg.slogdet(A)
    assert float(sign) == s_ref and abs(float(logabs) - l_ref) < 1e-9 * max(1.0, abs(l_ref))
    assert tuple(int(c) for c in F.inertia()) == (int((ev > 0).sum()), int((ev < 0).sum()), 0)


def test_structured_product_equals_dense_product():
    """The two branches of _stage.Q_parts on one random stage, directly."""
    e, w, p = 8, 3, 5
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    blocks = jax.random.normal(k[0], (e, w, w))
    A = jax.scipy.linalg.block_diag(*blocks)
    M = jnp.concatenate([A, jax.random.normal(k[1], (e * w, p))], axis=1)
    S = jax.random.normal(k[2], (e * w, e * w))
    S = S + S.T
    K = jax.random.normal(k[3], (e * w + p, e * w + p))
    K = K + K.T  # a Hessian block: symmetric (Q_parts reads its lower blocks only)
    want = K + M.T @ S @ M
    a = e * w
    for is_block in (True, False):  # the structured branch, and the dense one it falls back to
        Q_zz, Q_uz, Q_uu = _stage.Q_parts(S, M, K, a, blocks, jnp.array(is_block))
        np.testing.assert_allclose(Q_zz, want[:a, :a], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(Q_uz, want[a:, :a], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(Q_uu, want[a:, a:], rtol=1e-12, atol=1e-12)


@pytest.fixture
def every_layer_large(monkeypatch):
    """Lower the size threshold so that every layer takes the large-layer paths. Compiled
    functions traced either way are dropped before and after, so no cached trace leaks across."""
    jax.clear_caches()
    monkeypatch.setattr(_stage, "MIN_STRUCTURED", 1)
    yield
    monkeypatch.undo()
    jax.clear_caches()


@pytest.mark.parametrize("curvature, damping", [("hessian", 0.05), ("ggn", 0.1)])
def test_factorization_of_large_layers_matches_dense(every_layer_large, curvature, damping):
    """A large layer's stage keeps neither ``S_l`` nor ``A_l − B_l G_l``; ``F.solve`` then uses
    ``A_l`` (block by block where it is block-diagonal) and ``B_l``. Every layer of the pipeline
    that way: the frozen first layer, the Stack, the head, a parameter-free loss."""
    layers, params, z0 = stacked(depth=5, w=3, B=8)
    if curvature == "ggn":
        layers, params = separate_loss(layers, params)
        C = np.asarray(ref_ggn(layers, params, z0))
    else:
        C = np.asarray(ref_hessian(layers, params, z0))
    A = C + damping * np.eye(len(C))
    assert np.linalg.cond(A) < 1e5
    F = factorize(layers, params, z0, damping=damping, curvature=curvature)
    assert all(st.A_cl.shape[1:] == (0, 0) and st.S.shape[1:] == (0, 0) for st in F.stages)
    assert F.stages[1].A_blocks.shape[1:] == (8, 3, 3) and bool(F.stages[1].A_is_block.all())
    g = like(params, seed=7)
    assert rel_err(flat(F.solve(g)), np.linalg.solve(A, flat(g))) < 1e-10
    sign, logabs = F.logdet()
    s_ref, l_ref = np.linalg.slogdet(A)
    assert float(sign) == s_ref and abs(float(logabs) - l_ref) < 1e-9 * max(1.0, abs(l_ref))


def _soft(z, x):
    """A parameter-free layer that acts on each example on its own (p = 0)."""
    return {"h": jnp.tanh(z["h"]), "y": z["y"]}


@pytest.fixture
def dense_run_poisoned(monkeypatch):
    """The dense run of a per-example segment in the one-pass ``ihvp`` (taken only where a
    support probe fails) returns NaN. Traces are dropped before and after."""
    jax.clear_caches()
    per_example_chunk = _oneshot._per_example_chunk

    def poisoned(*args):
        *rest, dense = args

        def nan(carry, xs):
            out = dense(carry, xs)
            return jax.tree.map(lambda a: a * jnp.nan if jnp.issubdtype(a.dtype, jnp.floating) else a, out)

        return per_example_chunk(*rest, nan)

    monkeypatch.setattr(_oneshot, "_per_example_chunk", poisoned)
    yield
    monkeypatch.undo()
    jax.clear_caches()


@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
def test_one_pass_reads_the_diagonal_blocks_where_the_probes_pass(dense_run_poisoned, curvature):
    """Through a per-example segment the one-pass ``ihvp`` reads ``A_l`` and ``K_l``'s z-z part
    as their diagonal blocks and takes the dense run only where a probe fails: with that run
    poisoned, per-example pipelines (a parameter-free layer among them) still get the dense
    reference's answer, and pipelines that couple examples fail loudly."""
    for block, per_example in ((residual, True), (batch_mix, False), (pair_mix, False)):
        layers, params, z0 = stacked(depth=4, w=4, B=32, block=block)
        layers, params = layers[:2] + [_soft] + layers[2:], params[:2] + [{}] + params[2:]
        if curvature == "ggn":
            layers, params = separate_loss(layers, params)
        g = like(params, seed=5)
        if not per_example:
            with pytest.raises(hessinv.NonFiniteError):
                ihvp(layers, params, z0, g, damping=0.2, curvature=curvature)
            continue
        ref = ref_ggn if curvature == "ggn" else ref_hessian
        C = np.asarray(jax.jit(lambda p: ref(layers, p, z0))(params)) + 0.2 * np.eye(flat(params).size)
        assert np.linalg.cond(C) < 1e5
        x = flat(ihvp(layers, params, z0, g, damping=0.2, curvature=curvature))
        assert rel_err(x, np.linalg.solve(C, flat(g))) < 1e-10
