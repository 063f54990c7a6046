"""The dense route (``method="dense"``): solve, matvec, logdet, inertia and info against the
independent dense references of helpers.py, for the Hessian and the GGN.

Built through the public ``hessinv.factorize(..., method="dense")``. Factorisations are cached
per case, so each pipeline compiles once.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import PIPELINES, dense_case, dense_curvature_case, flat, like, ref_hessian, rel_err

import hessinv
from hessinv import _diagnostics


def dense_factorize(layers, params, z0, damping, curvature="hessian"):
    return hessinv.factorize(layers, params, z0, damping=damping, curvature=curvature, method="dense")


@functools.cache
def case(name, damping, curvature="hessian"):
    """(layers, params, z0, C + λI as float64 numpy, F)."""
    layers, params, z0, C = dense_curvature_case(name, curvature)
    Cd = C + damping * np.eye(C.shape[0])
    return layers, params, z0, Cd, dense_factorize(layers, params, z0, damping, curvature)


# λ = 0.05 leaves these Hessians indefinite (the LU branch); λ = 2 makes pytree's definite.
HESSIAN_CASES = [("mlp", 0.05), ("stacked", 0.05), ("pytree", 0.05), ("pytree", 2.0)]
GGN_CASES = [("mlp", 0.1), ("stacked", 0.1)]


@pytest.mark.parametrize("name,damping", HESSIAN_CASES)
def test_solve_hessian(name, damping):
    layers, params, z0, Cd, F = case(name, damping)
    # Moderately conditioned, so a backward-stable solve is accurate to ~cond·eps ≲ 1e-11.
    assert np.linalg.cond(Cd) < 1e5
    g = like(params)
    x = F.solve(g)
    assert jax.tree.structure(x) == jax.tree.structure(list(params))
    assert rel_err(flat(x), np.linalg.solve(Cd, flat(g))) < 1e-9


@pytest.mark.parametrize("name,damping", GGN_CASES)
def test_solve_ggn(name, damping):
    layers, params, z0, Cd, F = case(name, damping, "ggn")
    assert bool(F.is_pd)  # G + λI is positive definite: the Cholesky branch
    g = like(params)
    assert rel_err(flat(F.solve(g)), np.linalg.solve(Cd, flat(g))) < 1e-9


@pytest.mark.parametrize("name,damping", HESSIAN_CASES)
def test_branch_matches_definiteness(name, damping):
    """Indefinite ``H + λI`` takes the LU branch, definite the Cholesky; both occur above."""
    *_, Cd, F = case(name, damping)
    ev = np.linalg.eigvalsh(Cd)
    assert bool(F.is_pd) == (ev.min() > 0) == (damping == 2.0)


@pytest.mark.parametrize(
    "name,damping,curvature", [(n, d, "hessian") for n, d in HESSIAN_CASES] + [(*GGN_CASES[0], "ggn")]
)
def test_logdet_inertia_matvec(name, damping, curvature):
    layers, params, z0, Cd, F = case(name, damping, curvature)
    sign, logabs = F.logdet()
    s_ref, l_ref = np.linalg.slogdet(Cd)
    assert float(sign) == s_ref
    np.testing.assert_allclose(logabs, l_ref, rtol=1e-10, atol=1e-9)
    ev = np.linalg.eigvalsh(Cd)
    assert tuple(int(c) for c in F.inertia()) == (int((ev > 0).sum()), int((ev < 0).sum()), 0)
    v = like(params, seed=1)
    assert rel_err(flat(F.matvec(v)), Cd @ flat(v)) < 1e-12


def test_solve_float32():
    layers, params, z0 = PIPELINES["mlp"](dtype=jnp.float32)
    F = dense_factorize(layers, params, z0, 2.0)
    assert F.C.dtype == jnp.float32
    # The exact reference at the same point, in float64.
    up = jax.tree.map(lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a, (params, z0))
    Hd = np.asarray(jax.jit(lambda p, z: ref_hessian(layers, p, z))(*up)) + 2.0 * np.eye(F.n)
    assert np.linalg.cond(Hd) < 1e2
    g = like(params)
    x = F.solve(g)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(x))
    # float32 (eps ≈ 1.2e-7): C is formed to a few eps relative, the Cholesky solve is backward
    # stable, and cond < 1e2 (≈ 4 here) amplifies that to at most ~1e-5; measured ≈ 1.3e-7.
    assert rel_err(flat(x), np.linalg.solve(Hd, flat(g).astype(np.float64))) < 1e-5


def test_vmap_solve_many_rhs():
    layers, params, z0, Cd, F = case("stacked", 0.05)
    gs = [like(params, seed=s) for s in range(3)]
    X = jax.vmap(F.solve)(jax.tree.map(lambda *a: jnp.stack(a), *gs))
    for i, g in enumerate(gs):
        xi = jax.tree.map(lambda a: a[i], X)
        assert rel_err(flat(xi), np.linalg.solve(Cd, flat(g))) < 1e-9


def test_jit_with_traced_damping_and_vmap_over_damping():
    """Under ``jit`` (damping traced) and ``vmap`` over damping, where one λ gives an indefinite
    matrix (LU) and the other a definite one (Cholesky): the branch is chosen per element."""
    layers, params, z0, H = dense_case("pytree")
    g = like(params)

    @jax.jit
    def solve(params, lam, g):
        return dense_factorize(layers, params, z0, lam, "hessian").solve(g)

    lams = jnp.array([0.05, 2.0])
    assert np.linalg.eigvalsh(H + 0.05 * np.eye(len(H))).min() < 0 < np.linalg.eigvalsh(H + 2 * np.eye(len(H))).min()
    X = jax.vmap(solve, in_axes=(None, 0, None))(params, lams, g)
    for i, lam in enumerate(np.asarray(lams)):
        ref = np.linalg.solve(H + lam * np.eye(len(H)), flat(g))
        assert rel_err(flat(jax.tree.map(lambda a: a[i], X)), ref) < 1e-9
        assert rel_err(flat(solve(params, lam, g)), ref) < 1e-9


def test_factorization_is_a_pytree_crossing_jit():
    *_, Cd, F = case("pytree", 0.05)
    params = case("pytree", 0.05)[1]
    g = like(params)
    x = jax.jit(lambda F, g: F.solve(g))(F, g)
    assert rel_err(flat(x), np.linalg.solve(Cd, flat(g))) < 1e-9
    leaves, treedef = jax.tree.flatten(F)
    assert jax.tree.unflatten(treedef, leaves).pipe == F.pipe


def test_info():
    *_, Cd, F = case("mlp", 0.05)
    info = F.info()
    assert info.route_name == "dense" and _diagnostics.ROUTES[int(info.route)] == "dense"
    assert bool(info.ok) and bool(info.factor_ok) and bool(info.finite)
    ev = np.abs(np.linalg.eigvalsh(Cd))
    np.testing.assert_allclose(info.min_rcond, ev.min() / ev.max(), rtol=1e-8)
    assert float(info.rcond_tol) == F.n * np.finfo(np.float64).eps
    assert int(info.worst_layer) == int(info.first_nonfinite_layer) == -1
    assert info.first_nonfinite_layer.dtype == jnp.int32


def test_singular_ggn_raises():
    """Softmax cross-entropy is invariant to shifting all logits, so its GGN is singular at λ = 0."""
    layers, params, z0, Cd, F = case("mlp", 0.0, "ggn")
    ev = np.linalg.eigvalsh(Cd)
    assert np.abs(ev).min() < 1e-12 * np.abs(ev).max()
    info = F.info()
    assert not bool(info.ok) and bool(info.factor_ok)
    with pytest.raises(hessinv.SingularPivotError, match="method='dense'.*damping"):
        F.solve(like(params))
    n_pos, n_neg, n_zero = (int(c) for c in F.inertia())  # allowed: inertia is exact when singular
    assert n_zero >= 1 and n_pos + n_neg + n_zero == F.n
    assert n_pos == int((ev > F.rcond_tol() * np.abs(ev).max()).sum())


def test_nearly_singular_cholesky_is_not_trusted():
    """A PSD GGN plus a damping far below the tolerance still factorises by Cholesky (rounding
    leaves its tiny pivots positive), but it is numerically singular: ``info`` says so, ``solve``
    raises and ``inertia`` counts the zeros instead of claiming ``(n, 0, 0)``. A damping above the
    tolerance is certified positive definite."""
    layers, params, z0, C, _ = case("mlp", 0.0, "ggn")
    ev = np.linalg.eigvalsh(C)
    F = dense_factorize(layers, params, z0, 1e-15 * ev.max(), "ggn")
    assert bool(F.is_pd) and not bool(F.info().ok)
    with pytest.raises(hessinv.SingularPivotError):
        F.solve(like(params))
    n_zero_ref = int((np.abs(ev) <= float(F.rcond_tol()) * ev.max()).sum())
    assert n_zero_ref > 0 and int(F.inertia()[2]) == n_zero_ref
    F = dense_factorize(layers, params, z0, 1e-12 * ev.max(), "ggn")
    assert bool(F.info().ok) and tuple(int(c) for c in F.inertia()) == (F.n, 0, 0)


def test_ggn_needs_a_parameter_free_loss():
    layers, params, z0 = PIPELINES["mlp"]()  # xent_head has parameters
    with pytest.raises(hessinv.PipelineError, match="parameter-free"):
        dense_factorize(layers, params, z0, 0.1, "ggn")


def test_nonfinite_raises():
    layers, params, z0, *_ = case("mlp", 0.05)
    bad = jax.tree.map(lambda a: a, params)
    bad[0]["W"] = bad[0]["W"].at[0, 0].set(jnp.nan)
    with pytest.raises(hessinv.NonFiniteError, match=r"params\[0\]\['W'\]"):  # the public entry checks inputs
        dense_factorize(layers, bad, z0, 0.05)
    # under jit nothing can raise: info() reports it, and an eager solve with it refuses
    F = jax.jit(lambda p: dense_factorize(layers, p, z0, 0.05))(bad)
    assert not bool(F.info().finite)
    with pytest.raises(hessinv.NonFiniteError, match="method='dense'"):
        F.solve(like(params))
