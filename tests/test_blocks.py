"""Per-layer blocks against independent definitions, and the Gauss-Newton variant."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import PIPELINES, flat, like, ref_ggn, ref_loss, rel_err

import hessinv

# These tests are about the stage recursion: pin it (method="auto" may pick another route).
ihvp = functools.partial(hessinv.ihvp, method="riccati")
factorize = functools.partial(hessinv.factorize, method="riccati")


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_gradient_from_blocks(name):
    """∂z_L/∂x_l = B_lᵀ b_l (paper eq. 4) equals jax.grad of the plain composition."""
    layers, params, z0 = PIPELINES[name]()
    blk = hessinv.blocks(layers, params, z0)
    rows = [jnp.einsum("nap,na->np", s.B, s.b) for s in blk.segments]
    grad = hessinv._pipeline.from_rows(blk.pipe, rows)
    ref = jax.grad(lambda p: ref_loss(layers, p, z0))(list(params))
    assert rel_err(flat(grad), flat(ref)) < 1e-13
    np.testing.assert_allclose(blk.loss, ref_loss(layers, params, z0), rtol=1e-14)


def test_backprop_vector_and_shapes():
    """b_l = ∂z_L/∂z_l: perturb the activation after layer l and differentiate the loss."""
    layers, params, z0 = PIPELINES["mlp"]()
    blk = hessinv.blocks(layers, params, z0)
    for j, (seg, s) in enumerate(zip(blk.pipe.segments, blk.segments)):
        m = seg.a_in + seg.p
        assert s.A.shape == (seg.n, seg.a_out, seg.a_in) and s.B.shape == (seg.n, seg.a_out, seg.p)
        assert s.K.shape == (seg.n, m, m)
        np.testing.assert_allclose(s.K, jnp.swapaxes(s.K, 1, 2), atol=1e-13)
    l = 1  # b after layer 1 (a dense 5 -> 2 layer on a batch of 8)

    def tail(h):
        z = {"h": h, "y": z0["y"]}
        for f, x in zip(layers[l + 1 :], params[l + 1 :]):
            z = f(z, x)
        return z

    z = z0
    for f, x in zip(layers[: l + 1], params[: l + 1]):
        z = f(z, x)
    b_ref = jax.grad(tail)(z["h"]).ravel()
    np.testing.assert_allclose(blk.segments[l].b[0], b_ref, rtol=1e-12, atol=1e-14)


# -- Gauss-Newton -------------------------------------------------------------------------------


def linear(z, x):
    return {"h": z["h"] @ x["W"] + x["c"], "y": z["y"]}


def xent(z, x):
    """A parameter-free loss (params ``{}``)."""
    y = z["y"]
    return -jnp.mean(jax.nn.log_softmax(z["h"])[jnp.arange(y.shape[0]), y])


def ggn_pipeline():
    layers, params, z0 = PIPELINES["mlp"]()
    ks = jax.random.split(jax.random.PRNGKey(5), 2)
    layers = layers[:-1] + [linear, xent]
    params = params[:-1] + [{"W": jax.random.normal(ks[0], (4, 3)), "c": jnp.zeros(3)}, {}]
    return layers, params, z0


def dense_ggn(layers, params, z0):
    return np.asarray(ref_ggn(layers, params, z0))


def test_ggn_matches_dense_and_solves():
    layers, params, z0 = ggn_pipeline()
    G = dense_ggn(layers, params, z0)
    v = like(params, seed=4)
    blk = hessinv.blocks(layers, params, z0, curvature="ggn")
    assert rel_err(flat(blk.matvec(v, 0.0)), G @ flat(v)) < 1e-12
    lam = 1e-2
    x = ihvp(layers, params, z0, v, damping=lam, curvature="ggn")
    Gd = G + lam * np.eye(len(G))
    assert rel_err(flat(x), np.linalg.solve(Gd, flat(v))) < 1e-10
    F = blk.factorize(lam)
    assert tuple(int(c) for c in F.inertia()) == (len(G), 0, 0)  # G + λI ≻ 0
    np.testing.assert_allclose(F.logdet()[1], np.linalg.slogdet(Gd)[1], rtol=1e-10)


def test_ggn_needs_parameter_free_loss():
    layers, params, z0 = PIPELINES["mlp"]()
    with pytest.raises(hessinv.PipelineError, match=r"curvature='ggn' needs a parameter-free loss.*layer 3"):
        hessinv.blocks(layers, params, z0, curvature="ggn")


def test_unknown_curvature():
    layers, params, z0 = PIPELINES["mlp"]()
    with pytest.raises(ValueError, match="curvature must be"):
        hessinv.blocks(layers, params, z0, curvature="fisher")
