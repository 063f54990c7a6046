"""Selected inversion and sampling: ``F.inverse_diagonal()``, ``F.inverse_blocks()`` and
``F.sample(key)`` against the dense inverse of an independent ``jax.hessian`` (helpers.py), on
every route, for indefinite and definite matrices, the Hessian and the GGN.

The blocks are compared layer by layer: a layer's parameters sit at indices of the
``ravel_pytree`` flattening of params that the test computes itself (unravelling ``arange(n)``),
so a Stack's leaf-by-leaf ordering cannot hide a mix-up.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import PIPELINES, dense_curvature_case, flat, rel_err, separate_loss
from jax.flatten_util import ravel_pytree

import hessinv
from hessinv import _pipeline


@functools.cache
def case(name, damping, curvature="hessian"):
    """(layers, params, z0, (C + λI)^{-1} as float64 numpy, C + λI)."""
    layers, params, z0, C = dense_curvature_case(name, curvature)
    M = C + damping * np.eye(C.shape[0])
    return layers, params, z0, np.linalg.inv(M), M


def check_blocks(blocks, params, layers, Minv, tol):
    idx = ravel_pytree(list(params))[1](jnp.arange(Minv.shape[0], dtype=jnp.float64))
    checked = 0
    for b, it, fn in zip(blocks, idx, layers):
        if isinstance(fn, hessinv.Stack):
            assert b.shape[0] == fn.depth
            for i in range(fn.depth):
                ii = np.asarray(ravel_pytree(jax.tree.map(lambda a: a[i], it))[0]).astype(int)
                assert rel_err(b[i], Minv[np.ix_(ii, ii)]) < tol
                checked += 1
        else:
            ii = np.asarray(ravel_pytree(it)[0]).astype(int)
            assert b.shape == (ii.size, ii.size)
            if ii.size:
                assert rel_err(b, Minv[np.ix_(ii, ii)]) < tol
                checked += 1
    assert checked >= 3


# λ = 0.05 leaves these Hessians indefinite; λ = 3 makes them definite.
CASES = [("mlp", 0.05), ("stacked", 0.05), ("mixed", 0.05), ("pytree", 0.05), ("stacked", 3.0)]


@pytest.mark.parametrize("method", ["riccati", "dense"])
@pytest.mark.parametrize("name,damping", CASES)
def test_inverse_diagonal_and_blocks_hessian(name, damping, method):
    layers, params, z0, Minv, M = case(name, damping)
    if damping < 1:
        assert np.linalg.eigvalsh(M)[0] < 0  # the indefinite case is really indefinite
    F = hessinv.factorize(layers, params, z0, damping=damping, method=method)
    d = F.inverse_diagonal()
    assert jax.tree.structure(d) == jax.tree.structure(list(params))
    # cond(M) ≲ 1e4 here: a backward-stable inverse is accurate to ~cond·eps.
    assert rel_err(flat(d), np.diag(Minv)) < 1e-10
    check_blocks(F.inverse_blocks(), params, layers, Minv, 1e-10)
    assert abs(float(sum(jnp.sum(x) for x in jax.tree.leaves(d))) - np.trace(Minv)) < 1e-10 * np.abs(Minv).sum()


@pytest.mark.parametrize("method", ["riccati", "dense", "gauss_newton"])
def test_inverse_diagonal_and_blocks_ggn(method):
    layers, params, z0, Minv, _ = case("stacked", 0.1, "ggn")
    F = hessinv.factorize(layers, params, z0, damping=0.1, curvature="ggn", method=method)
    assert F.route == method
    assert rel_err(flat(F.inverse_diagonal()), np.diag(Minv)) < 1e-10
    check_blocks(F.inverse_blocks(), params, layers, Minv, 1e-10)


def test_inverse_diagonal_generic_route():
    """The Woodbury route has no selected inversion of its own: the generic one (one solve per
    parameter) must agree with the dense inverse too."""
    import test_woodbury as tw

    layers, params, z0 = tw.make(tw.bias_tanh, 3, w=3)
    H = np.asarray(hessinv.hessian(layers, params, z0))
    Minv = np.linalg.inv(H + 0.1 * np.eye(H.shape[0]))
    F = hessinv.factorize(layers, params, z0, damping=0.1, method="woodbury")
    assert rel_err(flat(F.inverse_diagonal()), np.diag(Minv)) < 1e-9
    blocks = F.inverse_blocks()
    assert blocks[1].shape == (3, 3, 3)
    check_blocks(blocks, params, layers, Minv, 1e-9)


def test_inverse_diagonal_float32():
    layers, params, z0 = PIPELINES["stacked"](dtype=jnp.float32)
    _, _, _, Minv, _ = case("stacked", 3.0)
    F = hessinv.factorize(layers, params, z0, damping=3.0, method="riccati")
    d = F.inverse_diagonal()
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(d))
    assert rel_err(flat(d), np.diag(Minv)) < 1e-5


def test_inverse_diagonal_under_jit_and_singular():
    layers, params, z0, Minv, _ = case("mlp", 0.05)
    d = jax.jit(lambda p: hessinv.factorize(layers, p, z0, damping=0.05, method="riccati").inverse_diagonal())(params)
    assert rel_err(flat(d), np.diag(Minv)) < 1e-10
    # A singular matrix: the eager call refuses instead of returning inf/NaN.
    sing = hessinv.factorize(*separate_loss(layers, params), z0, curvature="ggn", method="dense")
    with pytest.raises(hessinv.SingularPivotError):
        sing.inverse_diagonal()


# -- samples --------------------------------------------------------------------------------------


def sample_map(F):
    """The (linear) map from the standard normal draw to the sample, as a matrix into the
    ravel_pytree order: the samples' covariance is exactly R Rᵀ."""
    pipe = F.pipe
    n = _pipeline.n_params(pipe)

    def draw(e):
        return flat(_pipeline.from_rows(pipe, F._sample_rows(_pipeline.vector_to_rows(pipe, e))))

    return np.asarray(jax.jacfwd(draw)(jnp.zeros(n, pipe.dtype)))


@pytest.mark.parametrize(
    "name,curvature,method",
    [
        ("stacked", "hessian", "riccati"),
        ("pytree", "hessian", "riccati"),
        ("mixed", "hessian", "riccati"),
        ("stacked", "hessian", "dense"),
        ("stacked", "ggn", "riccati"),
        ("stacked", "ggn", "gauss_newton"),
    ],
)
def test_sample_covariance_is_exact(name, curvature, method):
    damping = 3.0 if curvature == "hessian" else 0.1
    layers, params, z0, Minv, _ = case(name, damping, curvature)
    F = hessinv.factorize(layers, params, z0, damping=damping, curvature=curvature, method=method)
    R = sample_map(F)
    assert rel_err(R @ R.T, Minv) < 1e-10


def test_sample_statistics():
    """Many draws with a fixed key: each ``xᵀ M x`` is χ² with n degrees of freedom (mean n,
    variance 2n), so their mean over N draws is within 5 standard deviations ``5 sqrt(2n/N)`` of
    n except with probability < 1e-6; the sample mean of each coordinate, scaled by its exact
    standard deviation, is within 5/sqrt(N) of 0 in the same way (n tests: a union bound keeps
    the false-alarm probability below 1e-4)."""
    layers, params, z0, Minv, M = case("stacked", 3.0)
    F = hessinv.factorize(layers, params, z0, damping=3.0, method="riccati")
    N = 4000
    xs = F.sample(jax.random.key(0), (N,))
    assert all(x.shape[0] == N for x in jax.tree.leaves(xs))
    X = np.asarray(jax.vmap(lambda t: ravel_pytree(t)[0])(xs))
    n = X.shape[1]
    q = np.einsum("si,ij,sj->s", X, M, X)
    assert abs(q.mean() - n) < 5 * np.sqrt(2 * n / N)
    assert np.max(np.abs(X.mean(0) / np.sqrt(np.diag(Minv)))) < 5 / np.sqrt(N)


def test_sample_shape_and_errors():
    layers, params, z0, _, _ = case("mlp", 3.0)
    F = hessinv.factorize(layers, params, z0, damping=3.0, method="riccati")
    xs = F.sample(jax.random.key(1), (2, 3))
    assert jax.tree.structure(xs) == jax.tree.structure(list(params))
    for x, p in zip(jax.tree.leaves(xs), jax.tree.leaves(list(params))):
        assert x.shape == (2, 3) + p.shape
    one = F.sample(jax.random.key(1))
    assert all(x.shape == p.shape for x, p in zip(jax.tree.leaves(one), jax.tree.leaves(list(params))))
    # an indefinite matrix has no Gaussian: eagerly an error, under jit NaN
    F = hessinv.factorize(layers, params, z0, damping=0.05, method="riccati")
    with pytest.raises(hessinv.SingularPivotError, match="positive definite"):
        F.sample(jax.random.key(0))
    x = jax.jit(lambda F: F.sample(jax.random.key(0)))(F)
    assert np.all(np.isnan(flat(x)))
    F = hessinv.factorize(layers, params, z0, damping=0.05, method="dense")
    with pytest.raises(hessinv.SingularPivotError, match="positive definite"):
        F.sample(jax.random.key(0))
