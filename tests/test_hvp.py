"""hvp (Pearlmutter) and the structured matvec from blocks, against jax.jvp(jax.grad) and jax.hessian."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import PIPELINES, dense_case, flat, like, ref_hvp, rel_err

import hessinv


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_hvp_matches_forward_over_reverse(name):
    layers, params, z0 = PIPELINES[name]()
    v = like(params, seed=1)
    got = hessinv.hvp(layers, params, z0, v)
    assert jax.tree.structure(got) == jax.tree.structure(list(params))
    assert rel_err(flat(got), flat(ref_hvp(layers, params, z0, v))) < 1e-12


@pytest.mark.parametrize("name", sorted(PIPELINES))
@pytest.mark.parametrize("damping", [0.0, 0.3])
def test_structured_matvec_matches_dense(name, damping):
    layers, params, z0, H = dense_case(name)
    v = like(params, seed=2)
    want = (H + damping * jnp.eye(H.shape[0])) @ flat(v)
    got = hessinv.blocks(layers, params, z0).matvec(v, damping)
    assert rel_err(flat(got), want) < 1e-12


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_dense_hessian_matches_reference(name):
    layers, params, z0, R = dense_case(name)
    H = jax.jit(lambda p: hessinv.hessian(layers, p, z0))(params)
    np.testing.assert_allclose(H, R, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(H, H.T, atol=1e-12)


def test_loss_matches_reference():
    from helpers import ref_loss

    layers, params, z0 = PIPELINES["stacked"]()
    np.testing.assert_allclose(hessinv.loss(layers, params, z0), ref_loss(layers, params, z0), rtol=1e-13)


def test_hvp_float32():
    layers, params, z0 = PIPELINES["mlp"](dtype=jnp.float32)
    v = like(params, seed=3)
    got = hessinv.hvp(layers, params, z0, v)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(got))
    assert rel_err(flat(got), flat(ref_hvp(layers, params, z0, v))) < 1e-5


def test_hvp_under_jit_and_vmap():
    layers, params, z0 = PIPELINES["stacked"]()
    vs = jax.tree.map(lambda *a: jnp.stack(a), *[like(params, seed=s) for s in range(3)])
    f = jax.jit(jax.vmap(lambda v: hessinv.hvp(layers, params, z0, v)))
    got = f(vs)
    for i in range(3):
        vi = jax.tree.map(lambda a: a[i], vs)
        assert rel_err(flat(jax.tree.map(lambda a: a[i], got)), flat(ref_hvp(layers, params, z0, vi))) < 1e-12
