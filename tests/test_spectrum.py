"""Exact eigenvalues by inertia bisection (``hessinv.eigenvalue``) and exact spectral histograms
(``hessinv.eigenvalue_counts``) against ``numpy.linalg.eigvalsh`` of the independent dense
Hessian / GGN of helpers.py: the extremes, interior eigenvalues, indefinite spectra, a shift
that lands exactly on a (multiple) eigenvalue, and bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import dense_curvature_case

import hessinv


@functools.cache
def spectrum(name, curvature="hessian"):
    layers, params, z0, C = dense_curvature_case(name, curvature)
    return layers, params, z0, np.linalg.eigvalsh(C)


@pytest.mark.parametrize("method", ["riccati", "dense"])
@pytest.mark.parametrize("name", ["mlp", "stacked", "pytree"])
def test_eigenvalues_match_eigvalsh(name, method):
    layers, params, z0, w = spectrum(name)
    n = w.size
    assert w[0] < 0 < w[-1]  # indefinite: the case Lanczos-based or Cholesky-based tools refuse
    idx = [0, 1, n // 3, n // 2, -2, -1]
    tol = 1e-9 * np.abs(w).max()
    got = np.asarray(hessinv.eigenvalue(layers, params, z0, idx, tol=tol, method=method))
    assert got.shape == (len(idx),)
    np.testing.assert_allclose(got, w[idx], rtol=0, atol=tol)


def test_default_tolerance_and_scalar_index():
    layers, params, z0, w = spectrum("stacked")
    lmin = hessinv.eigenvalue(layers, params, z0, 0)
    assert jnp.ndim(lmin) == 0
    # default tol: sqrt(eps)·‖C‖ with ‖C‖ from power iteration, widened until the counts enclose
    # the spectrum (so at most 2·‖C‖·sqrt(eps) and a bit)
    assert abs(float(lmin) - w[0]) < 4 * np.sqrt(np.finfo(np.float64).eps) * np.abs(w).max()


def test_ggn_spectrum():
    layers, params, z0, w = spectrum("stacked", "ggn")
    # The GGN of a softmax head is PSD and singular: a cluster of exact zeros.
    assert w[0] > -1e-10 and np.sum(np.abs(w) < 1e-10) >= 5
    tol = 1e-9 * w[-1]
    got = np.asarray(hessinv.eigenvalue(layers, params, z0, [0, -1], curvature="ggn", tol=tol, method="riccati"))
    np.testing.assert_allclose(got, w[[0, -1]], atol=tol)
    n_zero = int(np.sum(np.abs(w) < 1e-10))
    # The histogram splits the zero cluster off exactly (edges away from eigenvalues).
    edges = [-np.inf, -1e-6, 1e-6, np.inf]
    c = np.asarray(hessinv.eigenvalue_counts(layers, params, z0, edges, curvature="ggn", method="riccati"))
    assert c.tolist() == [0, n_zero, w.size - n_zero]


@pytest.mark.parametrize("method", ["riccati", "dense"])
def test_histogram_matches(method):
    layers, params, z0, w = spectrum("mlp")
    # edges well away from eigenvalues (the gaps between neighbours), plus the infinite ends
    gaps = np.flatnonzero(np.diff(w) > 1e-6 * np.abs(w).max())  # not inside a multiple eigenvalue
    mids = 0.5 * (w[gaps + 1] + w[gaps])[::7]
    assert mids.size >= 5
    edges = np.concatenate([[-np.inf], mids, [np.inf]])
    c = np.asarray(hessinv.eigenvalue_counts(layers, params, z0, edges, method=method))
    ref = np.histogram(w, bins=np.concatenate([[w[0] - 1], mids, [w[-1] + 1]]))[0]
    assert c.tolist() == ref.tolist()
    assert c.sum() == w.size
    assert c.dtype == jnp.int32


def test_shift_on_a_multiple_eigenvalue():
    """The weight decay 0.05·|W|² of the mlp's head makes 0.1 an exact eigenvalue of H (a few
    directions only the decay sees). A shift there makes C − σI singular; it is moved down by a
    fraction of the tolerance, so that eigenvalue counts in the interval that starts at it."""
    layers, params, z0, w = spectrum("mlp")
    at = np.abs(w - 0.1) < 1e-9
    assert at.sum() >= 2
    below = int(np.sum(w < 0.1 - 1e-9))
    c = np.asarray(hessinv.eigenvalue_counts(layers, params, z0, [-np.inf, 0.1, np.inf], method="riccati"))
    assert c.tolist() == [below, w.size - below]
    k = below  # the cluster's first eigenvalue, found by bisection through the singular shift
    got = float(hessinv.eigenvalue(layers, params, z0, k, tol=1e-10, method="riccati"))
    assert abs(got - 0.1) < 1e-9


def test_under_jit():
    layers, params, z0, w = spectrum("stacked")
    f = jax.jit(lambda p: hessinv.eigenvalue(layers, p, z0, [0, -1], tol=1e-8, method="riccati"))
    np.testing.assert_allclose(np.asarray(f(params)), w[[0, -1]], atol=1e-8)


def test_bad_input():
    layers, params, z0, w = spectrum("mlp")
    n = w.size
    with pytest.raises(IndexError, match="index"):
        hessinv.eigenvalue(layers, params, z0, n)
    with pytest.raises(IndexError, match="index"):
        hessinv.eigenvalue(layers, params, z0, [0, -n - 1])
    with pytest.raises(TypeError, match="index"):
        hessinv.eigenvalue(layers, params, z0, 0.5)
    with pytest.raises(ValueError, match="tol"):
        hessinv.eigenvalue(layers, params, z0, 0, tol=-1.0)
    with pytest.raises(ValueError, match="method"):
        hessinv.eigenvalue(layers, params, z0, 0, method="gauss_newton")
    with pytest.raises(ValueError, match="increasing"):
        hessinv.eigenvalue_counts(layers, params, z0, [1.0, 0.0])
    with pytest.raises(ValueError, match="edges"):
        hessinv.eigenvalue_counts(layers, params, z0, [1.0])
    bad = [dict(p) for p in params]
    bad[0] = {**bad[0], "W": bad[0]["W"].at[0, 0].set(jnp.nan)}
    with pytest.raises(hessinv.NonFiniteError, match="params"):
        hessinv.eigenvalue(layers, bad, z0, 0)
