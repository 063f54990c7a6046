"""The one-pass ihvp (blocks computed chunk by chunk inside the recursion), chunk boundaries
included, against the dense reference and against factorize + solve."""

import functools

import jax
import numpy as np
import pytest
from helpers import flat, like, ref_ggn, ref_hessian, rel_err, separate_loss, stacked

import hessinv

# These tests are about the stage recursion: pin it (method="auto" may pick another route).
ihvp = functools.partial(hessinv.ihvp, method="riccati")
factorize = functools.partial(hessinv.factorize, method="riccati")
from hessinv import _oneshot, _pipeline, _stage


def _oneshot_ihvp(layers, params, z0, g, damping, chunk, curvature="hessian", keep_pivot=False):
    pipe = _pipeline.build(layers, params, z0)
    f = jax.jit(
        lambda p, g: _oneshot.solve(
            pipe, p, z0, _pipeline.to_rows(pipe, g), damping, curvature, keep_pivot=keep_pivot, chunk=chunk
        )
    )
    rows, outs = f(params, g)
    return pipe, _pipeline.from_rows(pipe, rows), outs


@pytest.fixture(scope="module")
def deep():
    """A Stack of 11 residual layers (the segment after peeling the first: 10 layers) on a batch
    large enough for nonsingular undamped pivots, with its dense Hessian (indefinite)."""
    layers, params, z0 = stacked(depth=11, w=3, B=8)
    H = np.asarray(jax.jit(lambda p: ref_hessian(layers, p, z0))(params))
    ev = np.linalg.eigvalsh(H)
    assert ev.min() < 0 < ev.max()
    return layers, params, z0, H


# 10 layers in chunks of 1 (10 chunks), 3 (3 + 1 left over), 4 (2 + 2), 5 (2 + 0), 64 (one).
@pytest.mark.parametrize("chunk, damping", [(1, 0.0), (3, 0.3), (4, 0.0), (5, 0.3), (64, 0.0)])
def test_chunked_solve_matches_dense(deep, chunk, damping):
    layers, params, z0, H = deep
    g = like(params, seed=4)
    _, x, _ = _oneshot_ihvp(layers, params, z0, g, damping, chunk)
    A = H + damping * np.eye(len(H))
    assert np.linalg.cond(A) < 1e5
    assert rel_err(flat(x), np.linalg.solve(A, flat(g))) < 1e-10


@pytest.mark.parametrize("chunk", [3, 64])
def test_chunked_ggn_matches_factorize(chunk):
    layers, params, z0 = stacked(depth=9, w=3, B=6)
    layers, params = separate_loss(layers, params)  # the GGN needs a parameter-free loss layer
    g = like(params, seed=5)
    _, x, _ = _oneshot_ihvp(layers, params, z0, g, 0.1, chunk, curvature="ggn")
    ref = factorize(layers, params, z0, damping=0.1, curvature="ggn").solve(g)
    assert rel_err(flat(x), flat(ref)) < 1e-10


def test_info_matches_factorization(chunk=3):
    """Healthy and singular (over-parameterised Stack on a batch of 2) cases: the one-pass Info
    agrees with the factorisation's, culprit layer included."""
    for B, damping in [(6, 0.0), (2, 0.0), (2, 0.5)]:
        layers, params, z0 = stacked(depth=11, w=3, B=B)
        pipe, _, outs = _oneshot_ihvp(layers, params, z0, like(params), damping, chunk, keep_pivot=True)
        got = _oneshot.info(pipe, outs)
        want = hessinv.blocks(layers, params, z0).factorize(damping).info()
        assert bool(got.ok) == bool(want.ok) and bool(got.factor_ok) == bool(want.factor_ok)
        assert int(got.worst_layer) == int(want.worst_layer)
        assert int(got.first_nonfinite_layer) == int(want.first_nonfinite_layer) == -1
        np.testing.assert_allclose(float(got.min_rcond), float(want.min_rcond), rtol=1e-6, atol=1e-15)


@pytest.mark.parametrize("curvature, damping", [("hessian", 0.0), ("hessian", 0.3), ("ggn", 0.1)])
def test_recomputed_forward_matches_dense(deep, monkeypatch, curvature, damping):
    """Large layers (``_stage.is_large``) skip the kept closed-loop map and redo
    ``A_l dz + B_l dx`` as a jvp in the forward pass. Lowering the size threshold sends every
    layer of the test pipelines that way: the frozen first layer, the Stack (in chunks), a
    parameter-free loss, pytree activations with integer labels."""
    monkeypatch.setattr(_stage, "MIN_STRUCTURED", 1)
    if curvature == "hessian":
        layers, params, z0, H = deep
    else:
        layers, params, z0 = stacked(depth=9, w=3, B=6)
        layers, params = separate_loss(layers, params)
        H = np.asarray(ref_ggn(layers, params, z0))
    pipe = _pipeline.build(layers, params, z0)
    assert all(_stage.is_large(seg) for seg in pipe.segments)
    g = like(params, seed=6)
    _, x, _ = _oneshot_ihvp(layers, params, z0, g, damping, 3, curvature=curvature)
    A = H + damping * np.eye(len(H))
    assert np.linalg.cond(A) < 1e5
    assert rel_err(flat(x), np.linalg.solve(A, flat(g))) < 1e-10
