"""The stage recursion: ihvp, factorize, solve, logdet, inertia, against dense references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import PIPELINES, dense_case, flat, like, rel_err

import hessinv

# These tests are about the stage recursion: pin it (method="auto" may pick another route).
ihvp = functools.partial(hessinv.ihvp, method="riccati")
factorize = functools.partial(hessinv.factorize, method="riccati")


def dense(name, damping, dtype=jnp.float64):
    layers, params, z0, H = dense_case(name, dtype)
    return layers, params, z0, H + damping * np.eye(H.shape[0])


@pytest.mark.parametrize("name", sorted(PIPELINES))
@pytest.mark.parametrize("damping", [0.0, 0.05, 0.5])
def test_ihvp_float64(name, damping):
    layers, params, z0, Hd = dense(name, damping)
    # These pipelines are indefinite and moderately conditioned: a backward-stable solve is
    # then accurate to ~cond·eps ≲ 1e-11, so 1e-10 is a real check.
    assert np.linalg.cond(Hd) < 1e5
    g = like(params)
    x = ihvp(layers, params, z0, g, damping=damping)
    assert jax.tree.structure(x) == jax.tree.structure(list(params))
    assert rel_err(flat(x), np.linalg.solve(Hd, flat(g))) < 1e-10


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_hessians_are_indefinite(name):
    """The pipelines above are not convex: they exercise the indefinite case."""
    *_, Hd = dense(name, 0.0)
    ev = np.linalg.eigvalsh(Hd)
    assert ev.min() < 0 < ev.max()


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_ihvp_float32(name):
    layers, params, z0, Hd = dense(name, 2.0, dtype=jnp.float32)
    assert np.linalg.cond(Hd) < 1e2  # well-conditioned thanks to the damping
    g = like(params)
    x = ihvp(layers, params, z0, g, damping=2.0)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(x))
    assert rel_err(flat(x), np.linalg.solve(Hd, flat(g).astype(np.float64))) < 1e-4


@pytest.mark.parametrize("name", sorted(PIPELINES))
@pytest.mark.parametrize("damping", [0.0, 0.05, 2.0])
def test_logdet_and_inertia(name, damping):
    layers, params, z0, Hd = dense(name, damping)
    F = factorize(layers, params, z0, damping=damping)
    sign, logabs = F.logdet()
    s_ref, l_ref = np.linalg.slogdet(Hd)
    assert float(sign) == s_ref
    np.testing.assert_allclose(logabs, l_ref, rtol=1e-10, atol=1e-9)
    ev = np.linalg.eigvalsh(Hd)
    assert tuple(int(c) for c in F.inertia()) == (int((ev > 0).sum()), int((ev < 0).sum()), 0)


def test_large_damping_is_positive_definite():
    layers, params, z0, Hd = dense("mixed", 10.0)
    F = factorize(layers, params, z0, damping=10.0)
    n = Hd.shape[0]
    assert tuple(int(c) for c in F.inertia()) == (n, 0, 0)
    assert float(F.logdet()[0]) == 1.0


def test_solve_many_rhs_with_vmap_and_jit():
    layers, params, z0, Hd = dense("stacked", 1e-2)
    F = factorize(layers, params, z0, damping=1e-2)
    gs = [like(params, seed=s) for s in range(4)]
    G = jax.tree.map(lambda *a: jnp.stack(a), *gs)
    X = jax.jit(jax.vmap(F.solve))(G)
    for i, g in enumerate(gs):
        xi = jax.tree.map(lambda a: a[i], X)
        assert rel_err(flat(xi), np.linalg.solve(Hd, flat(g))) < 1e-10


def test_factorization_is_a_pytree_crossing_jit():
    layers, params, z0, Hd = dense("mlp", 0.1)
    make = jax.jit(lambda p, z: factorize(layers, p, z, damping=0.1))
    F = make(params, z0)
    g = like(params)
    x = jax.jit(lambda F, g: F.solve(g))(F, g)
    assert rel_err(flat(x), np.linalg.solve(Hd, flat(g))) < 1e-10
    leaves, treedef = jax.tree.flatten(F)
    F2 = jax.tree.unflatten(treedef, leaves)
    assert rel_err(flat(F2.solve(g)), flat(x)) < 1e-14


def test_ihvp_under_jit_with_traced_damping():
    layers, params, z0, H = dense_case("pytree")
    g = like(params)
    f = jax.jit(lambda p, z, g, lam: ihvp(layers, p, z, g, damping=lam))
    for lam in (0.0, 0.2):
        x = f(params, z0, g, lam)
        assert rel_err(flat(x), np.linalg.solve(H + lam * np.eye(len(H)), flat(g))) < 1e-10


def test_grad_through_ihvp_wrt_g():
    """x = (H+λI)^{-1} g is linear in g with a symmetric matrix: ∇_g (cᵀx) = (H+λI)^{-1} c."""
    layers, params, z0, Hd = dense("mixed", 0.1)
    c = flat(like(params, seed=7))

    def objective(g):
        return jnp.dot(c, flat(ihvp(layers, params, z0, g, damping=0.1)))

    grad = jax.grad(objective)(like(params))
    assert rel_err(flat(grad), np.linalg.solve(Hd, c)) < 1e-10


@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
def test_grad_through_ihvp_wrt_params(curvature):
    """Implicit differentiation: ∇_θ cᵀ(C(θ) + λI)^{-1} g goes through the matrix-vector product
    (third derivatives of the loss), against autodiff of the dense solve."""
    from helpers import mlp, ref_ggn, ref_hessian, separate_loss

    layers, params, z0 = mlp()
    if curvature == "ggn":  # the GGN needs the loss as its own parameter-free layer
        layers, params = separate_loss(layers, params)
    g, c = like(params, seed=3), flat(like(params, seed=7))

    def ours(p):
        return jnp.dot(c, flat(ihvp(layers, p, z0, g, damping=0.5, curvature=curvature)))

    def ref(p):
        if curvature == "hessian":
            C = ref_hessian(layers, p, z0)
        else:  # Jᵀ ∇²ℓ J, densely, from the plain composition
            C = ref_ggn(layers, p, z0)
        return jnp.dot(c, jnp.linalg.solve(C + 0.5 * jnp.eye(C.shape[0]), flat(g)))

    got, want = jax.jit(jax.grad(ours))(params), jax.jit(jax.grad(ref))(params)
    assert rel_err(flat(got), flat(want)) < 1e-9


def test_residual_via_matvec():
    layers, params, z0, _ = dense("stacked", 1e-3)
    F = factorize(layers, params, z0, damping=1e-3)
    g = like(params)
    r = flat(F.matvec(F.solve(g))) - flat(g)
    assert np.linalg.norm(r) / np.linalg.norm(flat(g)) < 1e-11


def test_blocks_reused_for_many_dampings():
    layers, params, z0, H = dense_case("mlp")
    blk = hessinv.blocks(layers, params, z0)
    g = like(params)
    solve = jax.jit(lambda blk, lam, g: blk.factorize(lam).solve(g))
    for lam in (0.01, 0.1, 1.0):
        assert rel_err(flat(solve(blk, lam, g)), np.linalg.solve(H + lam * np.eye(len(H)), flat(g))) < 1e-10


def test_stage_data_reachable():
    """Per-stage data stays on the factorisation for later additions (selected inversion, ...)."""
    layers, params, z0 = PIPELINES["stacked"]()
    F = factorize(layers, params, z0, damping=0.1)
    seg = F.pipe.segments[1]
    st = F.stages[1]
    assert st.Q_uu.shape == (seg.n, seg.p, seg.p)
    assert st.G.shape == (seg.n, seg.p, seg.a_in)
    assert st.S.shape == (seg.n, seg.a_out, seg.a_out)
    np.testing.assert_allclose(st.S, jnp.swapaxes(st.S, 1, 2), atol=1e-13)


def test_single_layer_pipeline():
    """L = 1: the only layer is both first and last; H = K_xx."""

    def quad(z, x):
        return 0.5 * jnp.sum((z @ x["W"]) ** 2) + jnp.sum(jnp.sin(x["W"]))

    W = jax.random.normal(jax.random.PRNGKey(0), (3, 2))
    z0 = jax.random.normal(jax.random.PRNGKey(1), (5, 3))
    params = [{"W": W}]
    H = np.asarray(jax.hessian(lambda w: quad(z0, {"W": w.reshape(3, 2)}))(W.ravel()))
    g = like(params)
    x = ihvp([quad], params, z0, g, damping=0.3)
    assert rel_err(flat(x), np.linalg.solve(H + 0.3 * np.eye(6), flat(g))) < 1e-12


def test_info_reports_healthy_factorisation():
    layers, params, z0 = PIPELINES["mlp"]()
    info = factorize(layers, params, z0, damping=0.1).info()
    assert bool(info.ok) and bool(info.factor_ok) and bool(info.finite)
    assert float(info.min_rcond) > 1e-6
    assert int(info.first_nonfinite_layer) == -1
