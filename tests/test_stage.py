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
from hessinv import _pipeline, _stage


def batch_mix(z, x):
    """Same shapes as ``residual``, but every example sees the batch mean: A_l is dense."""
    h = z["h"] + jnp.sin(z["h"] @ x["W"] + x["c"])
    return {"h": h - 0.3 * jnp.mean(h, axis=0), "y": z["y"]}


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


@pytest.mark.parametrize("case", ["per_example", "mixing"])
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
