"""The Gauss-Newton output-space route (method="gauss_newton") against dense GGN algebra.

References are independent of hessinv's pipeline machinery: ``ref_ggn`` (helpers) for
``{"h", "y"}`` activations and ``dense_ggn`` below for any pytree, both ``Jᵀ ∇²ℓ J`` from
``jax.jacobian`` / ``jax.hessian`` of the plain composition in ``ravel_pytree`` order.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    _dense_params,
    dense_tanh,
    flat,
    like,
    logits_layer,
    mlp,
    pytree_pipeline,
    ref_ggn,
    ref_loss,
    rel_err,
    separate_loss,
    stacked,
    xent_loss,
)
from jax.flatten_util import ravel_pytree

import hessinv
from hessinv import _gauss_newton as gn
from hessinv import _pipeline
from hessinv._diagnostics import ROUTES

# -- parameter-free losses and pipelines -------------------------------------------------------


def cos_loss(z, x):
    """Nonconvex: ``Hℓ = diag(−4 cos(2h))`` on the first two logits (both signs), and exactly 0 on
    the third (a zero row of ``Hℓ`` next to negative eigenvalues: ``D`` takes all of −1, 0, +1)."""
    return jnp.sum(jnp.cos(2.0 * z["h"][:, :2]))


def coupled_loss(z, x):
    """Cross-entropy plus a penalty on the batch-mean logits: ``Hℓ`` couples every example (no
    diagonal blocks), convex."""
    return xent_loss(z, x) + 0.3 * jnp.sum(jnp.mean(z["h"], axis=0) ** 2)


def stream_pred(z, x):
    return {"p": z["a"] @ x["w"] + jnp.sum(z["b"], axis=-1) * x["v"], "t": z["t"]}


def mse_loss(z, x):
    """Float targets ``t`` from z0 in the loss input: constants for the route (carried leaves),
    outputs with zero Jacobian rows for ``dense_ggn``; the same G either way."""
    return 0.5 * jnp.mean((z["p"] - z["t"]) ** 2)


_X = jax.random.normal(jax.random.PRNGKey(7), (6, 1))
_T = jnp.sin(3.0 * _X[:, 0])


def regression_loss(z, x):
    return 0.5 * jnp.mean((z["h"][:, 0] - _T) ** 2)


def regression():
    """1-D tanh MLP, MSE on closed-over targets: m = 6 outputs, n = 321 parameters."""
    ks = jax.random.split(jax.random.PRNGKey(8), 3)
    layers = [dense_tanh, dense_tanh, logits_layer, regression_loss]
    params = [
        _dense_params(ks[0], 1, 16, jnp.float64, 2.0),
        _dense_params(ks[1], 16, 16, jnp.float64, 1.5),
        _dense_params(ks[2], 16, 1, jnp.float64),
        {},
    ]
    return layers, params, {"h": _X, "y": jnp.zeros(6, jnp.int32)}


def case(name, dtype=jnp.float64):
    if name == "xent":  # softmax cross-entropy: singular Hℓ
        layers, params, z0 = mlp(dtype=dtype)
        return (*separate_loss(layers, params), z0)
    if name == "coupled":
        layers, params, z0 = mlp(dtype=dtype)
        return list(layers[:-1]) + [logits_layer, coupled_loss], list(params) + [{}], z0
    if name == "stacked":
        layers, params, z0 = stacked()
        return (*separate_loss(layers, params), z0)
    if name == "wide_batch":  # m = 48 >= n = 15: the jvp path, and n < m in logdet/inertia
        layers, params, z0 = mlp(widths=(2, 2), B=16)
        return (*separate_loss(layers, params), z0)
    if name == "cosine":
        layers, params, z0 = mlp()
        return list(layers[:-1]) + [logits_layer, cos_loss], list(params) + [{}], z0
    if name == "pytree":
        layers, params, z0 = pytree_pipeline()
        return list(layers[:-1]) + [stream_pred, mse_loss], list(params) + [{}], z0
    if name == "regression":
        return regression()
    raise KeyError(name)


def dense_outputs(layers, params, z0):
    """``(outputs, flat0)``: the float leaves of the loss input, raveled and concatenated, as a
    function of the ``ravel_pytree`` parameter vector, and that vector."""
    flat0, unravel = ravel_pytree(list(params))
    is_f = [jnp.issubdtype(a.dtype, jnp.inexact) for a in jax.tree.leaves(ref_loss(layers[:-1], params[:-1], z0))]

    def outputs(t):
        zl = jax.tree.leaves(ref_loss(layers[:-1], unravel(t)[:-1], z0))
        return jnp.concatenate([a.ravel() for a, f in zip(zl, is_f) if f])

    return outputs, flat0


def dense_ggn(layers, params, z0):
    """``Jᵀ ∇²ℓ J`` for any pytree activations (float leaves of the loss input are outputs)."""
    flat0, unravel = ravel_pytree(list(params))
    z = ref_loss(layers[:-1], unravel(flat0)[:-1], z0)
    leaves, treedef = jax.tree.flatten(z)
    is_f = [jnp.issubdtype(a.dtype, jnp.inexact) for a in leaves]
    outputs, _ = dense_outputs(layers, params, z0)

    def ell(u):
        out, i = [], 0
        for a, f in zip(leaves, is_f):
            out.append(u[i : i + a.size].reshape(a.shape) if f else a)
            i += a.size if f else 0
        return layers[-1](jax.tree.unflatten(treedef, out), params[-1])

    J = jax.jacobian(outputs)(flat0)
    return J.T @ jax.hessian(ell)(outputs(flat0)) @ J


@functools.cache
def dense(name):
    layers, params, z0 = case(name)
    ref = dense_ggn if name == "pytree" else ref_ggn
    return layers, params, z0, np.asarray(jax.jit(lambda p: ref(layers, p, z0))(params))


def factorize(layers, params, z0, damping, **kw):
    return hessinv.factorize(layers, params, z0, damping=damping, **{"curvature": "ggn", **kw}, method="gauss_newton")


# -- the identities ----------------------------------------------------------------------------


def test_push_through_identity_with_zero_and_negative_signs():
    """(λI + ZᵀDZ)^{-1} = (I − Zᵀ(λI + DZZᵀ)^{-1}DZ)/λ for any diagonal D, and with zero rows of
    Z where D = 0 the symmetric form (I − Zᵀ(λE + ZZᵀ)^{-1}Z)/λ; the determinant lemma too."""
    rng = np.random.default_rng(0)
    m, n, lam = 6, 10, 0.7
    D = np.array([1.0, -1.0, 0.0, 1.0, 0.0, -1.0])
    Z = rng.standard_normal((m, n))
    want = np.linalg.inv(lam * np.eye(n) + Z.T @ np.diag(D) @ Z)
    got = (np.eye(n) - Z.T @ np.linalg.solve(lam * np.eye(m) + np.diag(D) @ Z @ Z.T, np.diag(D) @ Z)) / lam
    assert rel_err(got, want) < 1e-13
    Z[D == 0] = 0.0
    E = np.where(D < 0, -1.0, 1.0)
    A = lam * np.eye(n) + Z.T @ np.diag(D) @ Z
    K = lam * np.diag(E) + Z @ Z.T
    assert rel_err((np.eye(n) - Z.T @ np.linalg.solve(K, Z)) / lam, np.linalg.inv(A)) < 1e-13
    s, ld = np.linalg.slogdet(A)
    sK, ldK = np.linalg.slogdet(K)
    assert s == sK * np.prod(E)
    np.testing.assert_allclose(ld, (n - m) * np.log(lam) + ldK, rtol=1e-13)


# -- against dense -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, damping",
    [
        ("xent", 0.1),
        ("coupled", 0.1),
        ("stacked", 0.05),
        ("pytree", 0.2),
        ("regression", 1e-2),
        ("wide_batch", 0.1),
        ("cosine", 0.3),
    ],
)
def test_matches_dense(name, damping):
    """solve, matvec, logdet, inertia against the dense G + λI (float64)."""
    layers, params, z0, G = dense(name)
    A = G + damping * np.eye(len(G))
    ev = np.linalg.eigvalsh(A)
    # backward-stable solves are accurate to ~cond·eps; these are moderately conditioned
    assert np.abs(ev).max() / np.abs(ev).min() < 1e5
    F = factorize(layers, params, z0, damping)
    g = like(params)
    x = F.solve(g)
    assert jax.tree.structure(x) == jax.tree.structure(list(params))
    assert rel_err(flat(x), np.linalg.solve(A, flat(g))) < 1e-9
    assert rel_err(flat(F.matvec(g)), A @ flat(g)) < 1e-12
    sign, logabs = F.logdet()
    s_ref, l_ref = np.linalg.slogdet(A)
    assert float(sign) == s_ref
    np.testing.assert_allclose(logabs, l_ref, rtol=1e-10, atol=1e-9)
    assert tuple(int(c) for c in F.inertia()) == (int((ev > 0).sum()), int((ev < 0).sum()), 0)
    m, n = F.Z.shape
    assert m == F.pipe.segments[-1].a_in and n == len(G)
    if name == "xent":  # softmax: a zero eigenvalue of Hℓ per example, dropped exactly
        assert int(jnp.sum(F.D == 0)) == z0["y"].shape[0] and bool(jnp.all(F.D >= 0))
    if name == "cosine":  # indefinite Hℓ with zeros, and an indefinite G + λI
        assert {float(d) for d in F.D} == {-1.0, 0.0, 1.0}
        assert ev.min() < 0 < ev.max()
    if name == "regression":
        assert (m, n) == (6, 321)


@pytest.mark.parametrize("name, blocks", [("regression", 1), ("cosine", 1), ("xent", 3), ("coupled", None)])
def test_loss_hessian_blocks_are_found_and_every_branch_is_exact(name, blocks):
    """The finest exact diagonal blocks of Hℓ are found (1: one output per example, or no
    coupling; C = 3: softmax cross-entropy per example; None: a loss coupling the examples), and
    every factorisation Hℓ = Rᵀ diag(D) R valid for that Hℓ gives G = Zᵀ diag(D) Z, Z = R J,
    equal to the independent dense Jᵀ ∇²ℓ J."""
    layers, params, z0, G = dense(name)
    pipe = _pipeline.build(layers, params, z0)
    x = _pipeline.rows_to_vector(_pipeline.to_rows(pipe, list(params)), pipe.dtype)
    f, J, z = gn.jacobian(pipe, x, z0)
    H = gn.loss_hessian(pipe, f, z)
    sizes = gn.block_sizes(pipe) + (None,)
    assert sizes[int(gn.structure(pipe, H))] == blocks
    valid = sizes[sizes.index(blocks) :] if blocks == 1 else (blocks, None)
    for b in valid:
        D, Z = gn._root_times(H, J, b)
        assert rel_err(np.asarray(Z.T @ (D[:, None] * Z)), G) < 1e-12, b
    D, Z = gn.signed_factor(pipe, H, J)
    assert rel_err(np.asarray(Z.T @ (D[:, None] * Z)), G) < 1e-12


def test_structure_reads_finer_blocks_only_inside_coarser_ones():
    """``structure`` on synthetic ``Hℓ`` of the softmax layout (``C = 3`` outputs per example):
    diagonal -> 1; block-diagonal with coupling inside a block -> 3; a matrix whose ``3 × 3``
    diagonal blocks are diagonal but which couples two examples -> the whole matrix, never the
    diagonal (the finer check runs inside the coarser blocks only, so it must inherit their
    failure); one nonzero entry anywhere off the blocks -> the whole matrix."""
    layers, params, z0, _ = dense("xent")
    pipe = _pipeline.build(layers, params, z0)
    sizes = gn.block_sizes(pipe) + (None,)
    m = pipe.segments[-1].a_in
    assert sizes == (1, 3, None) and m % 3 == 0
    rng = np.random.default_rng(0)

    def found(H):
        return sizes[int(gn.structure(pipe, jnp.asarray(H)))]

    diag = np.diag(rng.uniform(1, 2, m))
    assert found(diag) == 1
    blockwise = diag.copy()
    blockwise[0, 1] = blockwise[1, 0] = 0.5
    assert found(blockwise) == 3
    across = diag.copy()
    across[0, 3] = across[3, 0] = 0.5  # examples 0 and 1; their own blocks stay diagonal
    assert found(across) is None
    for i, j in [(0, m - 1), (m - 1, 0), (4, 2)]:
        H = blockwise.copy()
        H[i, j] = 1e-300  # the tiniest coupling counts: the check is exact
        assert found(H) is None, (i, j)


# -- the per-example Jacobian ---------------------------------------------------------------------


def _mean_coupled(weight):
    """``dense_tanh`` plus ``weight`` times the batch mean of its output: couples every example."""

    def layer(z, x):
        out = dense_tanh(z, x)
        return {**out, "h": out["h"] + weight * jnp.mean(out["h"], axis=0)}

    return layer


def _batch_scaled(z, x):
    """Per-example in its derivatives' pattern, but scaled by the batch size: a run on one
    example computes a different function."""
    out = dense_tanh(z, x)
    return {**out, "h": out["h"] * (z["h"].shape[0] / 8)}


def _fixed_batch(z, x):
    """Runs only on a batch of exactly 8 (a hard-coded reshape)."""
    out = dense_tanh(z, x)
    return {**out, "h": out["h"].reshape(8, -1)}


@pytest.mark.parametrize(
    "variant, per_example",
    [
        ("plain", True),
        ("plain_float32", True),
        ("stacked", True),
        ("batch_mean", False),
        ("weak_batch_mean", False),
        ("batch_scaled", False),
        ("fixed_batch", None),
    ],
)
def test_per_example_jacobian_is_used_only_where_the_numbers_confirm_it(variant, per_example):
    """The rows of J from one-example runs (C vjps per example) are taken only where they equal
    the batch's J: not for a layer coupling the examples (even by a weight of 1e-9), nor one
    whose function depends on the batch size, and not tried for layers that do not run on one
    example. Whichever path runs, J equals the independent ``jax.jacobian`` of the plain
    composition."""
    dtype = jnp.float32 if variant == "plain_float32" else jnp.float64
    if variant == "stacked":
        layers, params, z0 = stacked()
        layers, params = separate_loss(layers, params)
    else:
        layers, params, z0 = mlp(dtype=dtype)
        layers, params = separate_loss(layers, params)
        middle = {"batch_mean": _mean_coupled(0.3), "weak_batch_mean": _mean_coupled(1e-9)}
        middle |= {"batch_scaled": _batch_scaled, "fixed_batch": _fixed_batch}
        layers = list(layers)
        layers[1] = middle.get(variant, layers[1])
    pipe = _pipeline.build(layers, params, z0)
    x = _pipeline.rows_to_vector(_pipeline.to_rows(pipe, list(params)), pipe.dtype)
    outputs, flat0 = dense_outputs(layers, params, z0)
    J_ref = np.asarray(jax.jacobian(outputs)(flat0))
    assert gn._per_example_layout(pipe, x, z0) == (None if per_example is None else (z0["y"].shape[0], 3))
    if per_example is not None:
        J1, f1 = gn._per_example_jacobian(pipe, x, z0)
        t = jax.random.normal(jax.random.key(0), x.shape, dtype)
        f, Jt, _ = jax.jvp(gn._outputs(pipe, z0), (x,), (t,), has_aux=True)
        assert bool(gn._agrees(f, Jt, t, J1, f1, pipe.n_layers)) == per_example
    _, J, _ = jax.jit(lambda x: gn.jacobian(pipe, x, z0))(x)
    J = jax.vmap(lambda r: flat(_pipeline.from_rows(pipe, _pipeline.vector_to_rows(pipe, r))))(J)  # ravel_pytree order
    assert rel_err(np.asarray(J), J_ref) < (1e-6 if dtype == jnp.float32 else 1e-13)


def test_float32():
    """float32 throughout; against the float64 dense GGN at the same (float32-valued) point.
    cond(G + λI) < 1e2 and each step (J, eigh, LU) is backward stable, so the error is
    ≲ cond · (a few eps32 ≈ 1e-7) ≈ 1e-5: 1e-4 is a real check with headroom."""
    layers, params, z0 = case("xent", jnp.float32)
    up = lambda t: jax.tree.map(lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a, t)  # noqa: E731
    G = np.asarray(jax.jit(lambda p: ref_ggn(layers, p, up(z0)))(up(params)))
    A = G + 1.0 * np.eye(len(G))
    assert np.linalg.cond(A) < 1e2
    F = factorize(layers, params, z0, 1.0)
    g = like(params)
    x = F.solve(g)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(x))
    assert rel_err(flat(x), np.linalg.solve(A, flat(g).astype(np.float64))) < 1e-4
    np.testing.assert_allclose(F.logdet()[1], np.linalg.slogdet(A)[1], rtol=1e-5)


def test_singular_damped_matrix():
    """Hℓ = −I and J = I, λ = 1: G + λI = 0 exactly. K = 0, so a solve raises; logdet is −inf
    and every eigenvalue counts as zero."""

    def features(z, x):
        return {"h": x["w"] + 0.0 * z["h"]}

    def neg_loss(z, x):
        return -0.5 * jnp.sum(z["h"] ** 2)

    layers, params, z0 = [features, neg_loss], [{"w": jnp.array([1.0, 2.0])}, {}], {"h": jnp.zeros(2)}
    F = factorize(layers, params, z0, 1.0)
    info = F.info()
    assert not bool(info.ok) and bool(info.factor_ok) and float(info.min_rcond) == 0.0
    with pytest.raises(hessinv.SingularPivotError, match=r"method='gauss_newton' cannot solve"):
        F.solve(list(params))
    assert float(F.logdet()[1]) == -np.inf
    assert tuple(int(c) for c in F.inertia()) == (0, 0, 2)


# -- jit, vmap, damping ------------------------------------------------------------------------


def test_vmap_jit_and_traced_damping():
    layers, params, z0, G = dense("xent")
    gs = [like(params, seed=s) for s in range(3)]
    F = factorize(layers, params, z0, 0.1)
    X = jax.vmap(F.solve)(jax.tree.map(lambda *a: jnp.stack(a), *gs))
    A = G + 0.1 * np.eye(len(G))
    for i, g in enumerate(gs):
        assert rel_err(flat(jax.tree.map(lambda a: a[i], X)), np.linalg.solve(A, flat(g))) < 1e-9

    pipe, g = F.pipe, gs[0]
    solve = jax.jit(jax.vmap(lambda lam: gn.factorize(pipe, _pipeline.to_rows(pipe, params), z0, lam).solve(g)))
    lams = jnp.array([0.1, 0.5])
    X = solve(lams)
    for i, lam in enumerate(lams):
        A = G + float(lam) * np.eye(len(G))
        assert rel_err(flat(jax.tree.map(lambda a: a[i], X)), np.linalg.solve(A, flat(g))) < 1e-9


def test_info_route_and_damping_must_be_positive():
    layers, params, z0, _ = dense("xent")
    pipe = _pipeline.build(layers, params, z0)
    make = jax.jit(lambda lam: gn.factorize(pipe, _pipeline.to_rows(pipe, params), z0, lam))
    F = make(0.1)
    assert isinstance(F, gn.GaussNewtonFactorization) and isinstance(F, hessinv.Factorization)
    info = F.info()
    assert ROUTES[int(info.route)] == "gauss_newton" == info.route_name == F.route
    assert bool(info.ok) and int(info.worst_layer) == -1 and int(info.first_nonfinite_layer) == -1
    assert info.first_nonfinite_layer.dtype == jnp.int32
    F0 = make(0.0)  # traced λ = 0: reported, not raised
    info = F0.info()
    assert not bool(info.ok) and not bool(info.factor_ok)
    for call in (lambda: F0.solve(list(params)), F0.logdet, F0.inertia):
        with pytest.raises(hessinv.SingularPivotError, match=r"method='gauss_newton' needs damping λ > 0"):
            call()
    for lam in (0.0, -0.1):
        with pytest.raises(ValueError, match=r"method='gauss_newton' needs damping λ > 0"):
            gn.factorize(pipe, _pipeline.to_rows(pipe, params), z0, lam)


def test_curvature_and_loss_layer_errors():
    layers, params, z0 = case("xent")
    with pytest.raises(hessinv.PipelineError, match=r"solves the Gauss-Newton matrix only.*curvature='ggn'"):
        factorize(layers, params, z0, 0.1, curvature="hessian")
    layers, params, z0 = mlp()  # the loss carries weight decay: not parameter-free
    with pytest.raises(hessinv.PipelineError, match=r"parameter-free loss"):
        factorize(layers, params, z0, 0.1)


def test_flat_rows_round_trip():
    layers, params, z0 = case("stacked")
    pipe = _pipeline.build(layers, params, z0)
    assert (pipe.segments[-1].a_in, _pipeline.n_params(pipe)) == (15, len(flat(params)))
    rows = _pipeline.to_rows(pipe, like(params))
    back = _pipeline.vector_to_rows(pipe, _pipeline.rows_to_vector(rows, pipe.dtype))
    assert all(bool(jnp.array_equal(a, b)) for a, b in zip(rows, back))


def test_optimiser_health_ignores_rounding_negatives_of_a_confident_softmax():
    """Near a minimum of a softmax cross-entropy the loss Hessian's exact zeros (one per example)
    come out as ±1e-16, above the share of its tiny largest eigenvalue that counts as zero, so
    some ``D_i = −1``. ``G + λI`` is still positive definite (dense ``eigvalsh``), and the
    optimiser's health must say so: otherwise LM never lowers ``λ`` and stalls near the minimum."""
    from hessinv import _optax_health

    layers, params = separate_loss(*stacked(depth=3, w=4, B=24)[:2])
    z0 = stacked(depth=3, w=4, B=24)[2]
    # A confident classifier: the head's logits scaled up until the softmaxes are nearly one-hot.
    params[-2] = jax.tree.map(lambda a: 100.0 * a, params[-2])
    lam = 1e-6
    F = hessinv.factorize(layers, params, z0, damping=lam, curvature="ggn", method="gauss_newton")
    assert bool(jnp.any(F.D < 0))  # the case this test is about does occur here
    G = np.asarray(ref_ggn(layers, params, z0))
    assert np.linalg.eigvalsh(G + lam * np.eye(len(G))).min() > 0
    h = _optax_health.health(F, inertia=False)
    assert bool(h.positive_definite) and int(h.n_neg) == 0 and float(h.min_rcond) > 0
    assert bool(_optax_health.health(F, inertia=True).positive_definite)


@pytest.mark.parametrize("m", [5, 130, 641])
def test_gram_is_exactly_symmetric_and_equals_the_product(m):
    from hessinv._linalg import gram

    Z = jax.random.normal(jax.random.key(m), (m, 37), jnp.float64)
    P = np.asarray(gram(Z))
    ref = np.asarray(Z) @ np.asarray(Z).T
    assert np.array_equal(P, P.T)
    np.testing.assert_allclose(P, ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())


def test_spd_lu_factor_cholesky_branch_and_pivoted_fallback():
    from hessinv._linalg import lu_solve, spd_lu_factor

    A = jax.random.normal(jax.random.key(1), (40, 60), jnp.float64)
    b = jax.random.normal(jax.random.key(2), (40,), jnp.float64)
    spd = A @ A.T + 1e-3 * jnp.eye(40)
    lu, piv, perm = spd_lu_factor(spd)
    assert np.array_equal(np.asarray(piv), np.arange(40))  # from the Cholesky factor: no interchanges
    assert np.array_equal(np.asarray(perm), np.arange(40))
    x = lu_solve(lu, perm, b)
    np.testing.assert_allclose(np.asarray(spd @ x), np.asarray(b), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(np.asarray(x), np.linalg.solve(np.asarray(spd), np.asarray(b)), rtol=1e-7)
    B = jax.random.normal(jax.random.key(3), (40, 40), jnp.float64)
    indefinite = B + B.T  # symmetric, eigenvalues of both signs, not diagonally dominant
    lu, piv, perm = spd_lu_factor(indefinite)  # Cholesky fails: LU with partial pivoting
    ref_lu, ref_piv, ref_perm = jax.lax.linalg.lu(indefinite)
    np.testing.assert_array_equal(np.asarray(lu), np.asarray(ref_lu))
    np.testing.assert_array_equal(np.asarray(piv), np.asarray(ref_piv))
    np.testing.assert_array_equal(np.asarray(perm), np.asarray(ref_perm))
    assert not np.array_equal(np.asarray(perm), np.arange(40))  # the fallback did interchange rows
    x = lu_solve(lu, perm, b)
    np.testing.assert_allclose(np.asarray(x), np.linalg.solve(np.asarray(indefinite), np.asarray(b)), rtol=1e-9)
