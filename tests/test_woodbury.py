"""The paper's Woodbury route (method="woodbury", Rahimi 2026 section 6).

Each identity of section 6 is checked with dense matrices built from the per-layer blocks on
small square pipelines; then the structured solver is checked end to end against
``jnp.linalg.solve(hessian + λI, g)`` and against the default stage recursion.
"""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

import hessinv  # noqa: E402
from hessinv import _pipeline, _woodbury  # noqa: E402

# -- square pipelines: every layer has p_l = a_l -------------------------------------------------
# Elementwise layers keep ∇_x f_l diagonal and invertible; the "bias" layers are designed so that
# b_l neither vanishes nor explodes with depth (∇_z f ≈ 1) and K_xx keeps one sign, so that the
# paper's preconditions hold with margin and H is well conditioned at depth 200.


def first(z, c):
    return jnp.tanh(z + c)


def bias_sp(z, c):  # softplus
    return z + 0.1 * (jax.nn.softplus(z + c) - jax.nn.softplus(z))


def bias_tanh(z, c):
    return z + 0.1 * (jnp.tanh(z + c + 1) - jnp.tanh(z + 1))


def scale_sp(z, s):  # elementwise scale: (z + 2) · softplus(s + log(e − 1)) − 2
    return (z + 2) * jax.nn.softplus(s + 0.5413) - 2


def head_sp(z, x):  # a one-parameter loss head, nonlinear in its parameter (K_xx ≠ 0)
    return (1 + x[0] ** 2) * jnp.sum(jax.nn.softplus(z))


def head_exp(z, x):
    return (1 + x[0] ** 2) * jnp.sum(jnp.exp(0.3 * z))


STD = {bias_sp: 0.5, bias_tanh: 0.3, scale_sp: 0.1}


def make(fn, L, head=head_sp, w=4, seed=0):
    k0, k1, k2 = jax.random.split(jax.random.PRNGKey(seed), 3)
    z0 = jax.random.normal(k0, (w,))
    layers = [first, hessinv.Stack(fn, L), head]
    params = [0.5 * jax.random.normal(k1, (w,)), STD[fn] * jax.random.normal(k2, (L, w)), jnp.array([0.7])]
    return layers, params, z0


def make_hetero(L=5):
    """Widths 5 -> 3: a shrinking softplus layer with fixed mixing, then a Stack of width 3."""
    W = jax.random.normal(jax.random.PRNGKey(7), (3, 5)) / np.sqrt(5)

    def shrink(z, c):
        return jax.nn.softplus(W @ z + c) - 0.5

    z0 = jax.random.normal(jax.random.PRNGKey(8), (5,))
    layers = [first, shrink, hessinv.Stack(bias_tanh, L), head_exp]
    params = [
        0.5 * jax.random.normal(jax.random.PRNGKey(9), (5,)),
        0.3 * jax.random.normal(jax.random.PRNGKey(10), (3,)),
        0.3 * jax.random.normal(jax.random.PRNGKey(11), (L, 3)),
        jnp.array([0.4]),
    ]
    return layers, params, z0


def rel(x, y):
    return float(jnp.linalg.norm(x - y) / jnp.linalg.norm(y))


# -- dense matrices of section 5-6 from the blocks ---------------------------------------------


def dense(blk, lam=0.0):
    """M, D_x, P, the K blocks, U, Q (eq. 27), A, from the per-layer blocks."""
    As, Bs, Ks = [], [], []
    for seg, sb in zip(blk.pipe.segments, blk.segments):
        for i in range(seg.n):
            As.append(np.asarray(sb.A[i]))
            Bs.append(np.asarray(sb.B[i]))
            Ks.append(np.asarray(sb.K[i]))
    L = len(As)
    a = [B.shape[0] for B in Bs]  # a_l, l = 1..L
    p = [B.shape[1] for B in Bs]
    ain = [A.shape[1] for A in As]  # a_{l-1} (0 for the first layer: z_0 is data)
    oa, op, oi = (np.concatenate([[0], np.cumsum(v)]).astype(int) for v in (a, p, ain))
    na, n_p, ni = oa[-1], op[-1], oi[-1]
    M, Dx = np.eye(na), np.zeros((na, n_p))
    P = np.zeros((ni, na))
    Kzz, Kzx, Kxx = np.zeros((ni, ni)), np.zeros((ni, n_p)), np.zeros((n_p, n_p))
    for l in range(L):
        Dx[oa[l] : oa[l + 1], op[l] : op[l + 1]] = Bs[l]
        if l > 0:
            M[oa[l] : oa[l + 1], oa[l - 1] : oa[l]] = -As[l]
            P[oi[l] : oi[l + 1], oa[l - 1] : oa[l]] = np.eye(a[l - 1])
        k = ain[l]
        Kzz[oi[l] : oi[l + 1], oi[l] : oi[l + 1]] = Ks[l][:k, :k]
        Kzx[oi[l] : oi[l + 1], op[l] : op[l + 1]] = Ks[l][:k, k:]
        Kxx[op[l] : op[l + 1], op[l] : op[l + 1]] = Ks[l][k:, k:]
    Minv = np.linalg.inv(M)
    U = np.vstack([Minv @ Dx, np.eye(n_p)])
    Q26 = np.block([[P.T @ Kzz @ P, P.T @ Kzx], [Kzx.T @ P, Kxx]])
    Q = Q26 - np.block([[np.eye(na), np.zeros((na, n_p))], [np.zeros((n_p, na)), -lam * np.eye(n_p)]])
    A = Dx.T @ Minv.T @ Minv @ Dx
    return dict(
        M=M, Minv=Minv, Dx=Dx, P=P, Kzz=Kzz, Kzx=Kzx, Kxx=Kxx, U=U, Q26=Q26, Q=Q, A=A, na=na, n_p=n_p, a=a, oa=oa
    )


SMALL = [(bias_sp, 0.0), (bias_tanh, 0.1), (scale_sp, 0.3)]


@pytest.fixture(scope="module", params=SMALL, ids=lambda c: f"{c[0].__name__}-lam{c[1]}")
def small(request):
    fn, lam = request.param
    layers, params, z0 = make(fn, 4, w=3)
    blk = jax.jit(hessinv.blocks, static_argnums=0)(tuple(layers), params, z0)
    H = np.asarray(hessinv.hessian(layers, params, z0))
    F = _woodbury.factorize_blocks(blk, lam)
    return dict(blk=blk, H=H, lam=lam, F=F, d=dense(blk, lam))


def test_eq24_hessian(small):
    d = small["d"]
    Z = d["P"] @ d["Minv"] @ d["Dx"]
    H24 = d["Kxx"] + d["Kzx"].T @ Z + Z.T @ d["Kzx"] + Z.T @ d["Kzz"] @ Z
    np.testing.assert_allclose(H24, small["H"], atol=1e-12 * np.abs(small["H"]).max())


def test_eq26_27_lift(small):
    d, H, lam = small["d"], small["H"], small["lam"]
    tol = 1e-12 * np.abs(H).max()
    np.testing.assert_allclose(d["U"].T @ d["Q26"] @ d["U"], H, atol=tol)  # eq. 26
    np.testing.assert_allclose(d["A"] + d["U"].T @ d["Q"] @ d["U"], H + lam * np.eye(len(H)), atol=tol)  # eq. 27


def _Qt_dense(F, d):
    """Q^{-1} assembled from the factorisation's per-layer blocks (eq. 29)."""
    na, n_p, oa = d["na"], d["n_p"], d["oa"]
    Qt = np.zeros((na + n_p, na + n_p))
    rows = []
    for seg, f in zip(F.pipe.segments, F.layers):
        for i in range(seg.n):
            rows.append((np.asarray(f.Qt11[i]), np.asarray(f.Qt12[i]), np.asarray(f.Qt22[i])))
    op = np.concatenate([[0], np.cumsum([r[2].shape[0] for r in rows])]).astype(int)
    for l, (q11, q12, q22) in enumerate(rows):
        Qt[na + op[l] : na + op[l + 1], na + op[l] : na + op[l + 1]] = q22
        if l > 0:  # blocks of dz_{l-1}
            y = slice(oa[l - 1], oa[l])
            Qt[y, y] = q11
            Qt[y, na + op[l] : na + op[l + 1]] = q12
            Qt[na + op[l] : na + op[l + 1], y] = q12.T
    Qt[na - 1, na - 1] = -1.0  # nothing reads z_L: Q_11,L = −1
    return Qt


def test_eq29_Q_inverse(small):
    d, F = small["d"], small["F"]
    Q, na = d["Q"], d["na"]
    Qinv = np.linalg.inv(Q)
    # eq. 29-34 with dense blocks
    Q11, Q12, Q21, Q22 = Q[:na, :na], Q[:na, na:], Q[na:, :na], Q[na:, na:]
    Q22i = np.linalg.inv(Q22)
    Sq = Q11 - Q12 @ Q22i @ Q21  # eq. 34
    Sqi = np.linalg.inv(Sq)
    Q29 = np.block([[Sqi, -Sqi @ Q12 @ Q22i], [-Q22i @ Q21 @ Sqi, Q22i + Q22i @ Q21 @ Sqi @ Q12 @ Q22i]])
    scale = np.abs(Qinv).max()
    np.testing.assert_allclose(Q29, Qinv, atol=1e-10 * scale)
    # the structured per-layer blocks of the factorisation
    np.testing.assert_allclose(_Qt_dense(F, d), Qinv, atol=1e-10 * scale)


def test_eq37_U_Ainv_Ut(small):
    d = small["d"]
    M, Dx, U, A = d["M"], d["Dx"], d["U"], d["A"]
    Dxi = np.linalg.inv(Dx)
    Ainv = Dxi @ M @ M.T @ Dxi.T  # step 1
    np.testing.assert_allclose(Ainv, np.linalg.inv(A), rtol=1e-9, atol=1e-9 * np.abs(Ainv).max())
    block = np.block([[np.eye(d["na"]), M.T @ Dxi.T], [Dxi @ M, Dxi @ M @ M.T @ Dxi.T]])
    np.testing.assert_allclose(U @ Ainv @ U.T, block, atol=1e-9 * np.abs(block).max())


def test_structured_operators(small):
    """Steps 1, 2 and the transpose of U, as passes over the blocks, against dense matrices."""
    d, F = small["d"], small["F"]
    pipe = F.pipe
    rng = np.random.default_rng(0)
    g = rng.standard_normal(d["n_p"])
    rows = lambda v: _pipeline.to_rows(pipe, _pipeline.from_rows(pipe, _split(pipe, v)))  # noqa: E731
    flat = lambda rs: np.concatenate([np.asarray(r).ravel() for r in rs])  # noqa: E731
    v = flat(_woodbury._apply_A_inv(F, rows(g)))
    np.testing.assert_allclose(v, np.linalg.solve(d["A"], g), rtol=1e-10, atol=1e-10 * np.abs(v).max())
    y, w = _woodbury._apply_U(F, rows(g))
    np.testing.assert_allclose(np.concatenate([flat(y), flat(w)]), d["U"] @ g, atol=1e-12 * np.abs(d["U"] @ g).max())
    r = rng.standard_normal(d["na"] + d["n_p"])
    ut = flat(_woodbury._apply_UT(F, _split_a(pipe, r[: d["na"]]), rows(r[d["na"] :])))
    np.testing.assert_allclose(ut, d["U"].T @ r, atol=1e-12 * np.abs(d["U"].T @ r).max())


def _split(pipe, v, width=lambda seg: seg.p):
    """A flat vector as per-segment ``(n, width)`` rows (parameters by default)."""
    out, i = [], 0
    for seg in pipe.segments:
        w = width(seg)
        out.append(jnp.asarray(v[i : i + seg.n * w]).reshape(seg.n, w))
        i += seg.n * w
    return out


def _split_a(pipe, v):
    return _split(pipe, v, lambda seg: seg.a_out)


def _SH(d):
    return np.linalg.inv(d["Q"]) + d["U"] @ np.linalg.solve(d["A"], d["U"].T)


def test_eq35_38_sign_slip(small):
    """S_H = Q^{-1} + U A^{-1} Uᵀ (eq. 35); eq. 36-38 as printed give exactly −S_H."""
    d = small["d"]
    SH = _SH(d)
    M, Dxi = d["M"], np.linalg.inv(d["Dx"])
    Qt = np.linalg.inv(d["Q"])
    na = d["na"]
    printed = -np.block(  # eq. 38 as printed
        [
            [Qt[:na, :na] + np.eye(na), Qt[:na, na:] + M.T @ Dxi.T],
            [Qt[na:, :na] + Dxi @ M, Qt[na:, na:] + Dxi @ M @ M.T @ Dxi.T],
        ]
    )
    np.testing.assert_allclose(printed, -SH, atol=1e-9 * np.abs(SH).max())


def test_S_H11_is_singular_at_z_L(small):
    """Why eq. 40-43 cannot be applied as printed: S_H11's block of the scalar z_L is 0."""
    d = small["d"]
    SH = _SH(d)
    na = d["na"]
    assert abs(SH[na - 1, na - 1]) < 1e-10 * np.abs(SH).max()
    assert np.allclose(SH[na - 1, : na - 1], 0, atol=1e-10 * np.abs(SH).max())


def test_eq40_43_partitioned_inverse(small):
    """Eq. 40-43 hold once z_L's zero block is moved to the second partition (where S_H11 is
    invertible), and the structured block-LDLᵀ solve (step 6) applies S_H^{-1} exactly."""
    d, F = small["d"], small["F"]
    SH = _SH(d)
    SHinv = np.linalg.inv(SH)
    na = d["na"]
    one = np.arange(na - 1)
    two = np.arange(na - 1, SH.shape[0])
    S11, S12, S21, S22 = SH[np.ix_(one, one)], SH[np.ix_(one, two)], SH[np.ix_(two, one)], SH[np.ix_(two, two)]
    if np.linalg.cond(S11) < 1e8:  # bias layers at λ = 0 have S_H11 = 0 everywhere
        S11i = np.linalg.inv(S11)
        T22 = np.linalg.inv(S22 - S21 @ S11i @ S12)  # eq. 40
        T21 = -T22 @ S21 @ S11i  # eq. 41
        T12 = T21.T  # eq. 42
        T11 = S11i - S11i @ S12 @ T21  # eq. 43
        perm = np.concatenate([one, two])
        got = np.empty_like(SH)
        got[np.ix_(perm, perm)] = np.block([[T11, T12], [T21, T22]])
        np.testing.assert_allclose(got, SHinv, atol=1e-8 * np.abs(SHinv).max())
    else:
        assert small["lam"] == 0.0
    rng = np.random.default_rng(1)
    r = rng.standard_normal(SH.shape[0])
    uy, uw = _woodbury._apply_SH_inv(F, _split_a(F.pipe, r[:na]), _split(F.pipe, r[na:]))
    u = np.concatenate([np.asarray(x).ravel() for x in uy + uw])
    np.testing.assert_allclose(u, SHinv @ r, atol=1e-9 * np.abs(SHinv @ r).max())


def test_eq28_woodbury(small):
    d, H, lam = small["d"], small["H"], small["lam"]
    Ainv = np.linalg.inv(d["A"])
    U = d["U"]
    Hinv = Ainv - Ainv @ U.T @ np.linalg.inv(_SH(d)) @ U @ Ainv
    ref = np.linalg.inv(H + lam * np.eye(len(H)))
    np.testing.assert_allclose(Hinv, ref, atol=1e-8 * np.abs(ref).max())


# -- end to end ----------------------------------------------------------------------------------

E2E = [(bias_sp, head_sp), (bias_tanh, head_exp), (scale_sp, head_sp)]


@pytest.mark.parametrize("fn,head", E2E, ids=lambda v: v.__name__)
def test_end_to_end_depth_200(fn, head):
    layers, params, z0 = make(fn, 200, head)
    flat, unravel = ravel_pytree(params)
    g = unravel(jax.random.normal(jax.random.PRNGKey(3), flat.shape))
    H = hessinv.hessian(layers, params, z0)
    for lam in [0.0, 0.1]:  # damping is traced: one compilation for both
        x_dense = jnp.linalg.solve(H + lam * jnp.eye(H.shape[0]), ravel_pytree(g)[0])
        x_w, info = hessinv.ihvp(layers, params, z0, g, damping=lam, method="woodbury", return_info=True)
        x_r = hessinv.ihvp(layers, params, z0, g, damping=lam)
        assert bool(info.ok) and 0 <= int(info.worst_layer) < 202
        assert rel(ravel_pytree(x_w)[0], x_dense) < 1e-10
        assert rel(ravel_pytree(x_w)[0], ravel_pytree(x_r)[0]) < 1e-10
        # the eager path (checks, then raises or returns) gives the same answer
        x_e = hessinv.ihvp(layers, params, z0, g, damping=lam, method="woodbury")
        assert rel(ravel_pytree(x_e)[0], x_dense) < 1e-10


def test_end_to_end_small(small):
    """Depth 4 (6 layers), and the factorisation's own solve."""
    H, lam, F = small["H"], small["lam"], small["F"]
    g = np.random.default_rng(2).standard_normal(len(H))
    x = _pipeline.to_rows(F.pipe, F.solve(_pipeline.from_rows(F.pipe, _split(F.pipe, g))))
    x = np.concatenate([np.asarray(r).ravel() for r in x])
    assert rel(x, np.linalg.solve(H + lam * np.eye(len(H)), g)) < 1e-10


def test_heterogeneous_widths_factorize_jit_vmap():
    layers, params, z0 = make_hetero()
    flat, unravel = ravel_pytree(params)
    H = hessinv.hessian(layers, params, z0)
    gs = jax.random.normal(jax.random.PRNGKey(4), (3, flat.shape[0]))
    ref = jnp.linalg.solve(H + 0.05 * jnp.eye(H.shape[0]), gs.T).T
    # jitted: an eager factorize() would build the blocks op by op
    F = jax.jit(lambda p: hessinv.factorize(layers, p, z0, damping=0.05, method="woodbury"))(params)
    assert isinstance(F, _woodbury.WoodburyFactorization)
    xs = jax.jit(jax.vmap(lambda F, g: ravel_pytree(F.solve(unravel(g)))[0], in_axes=(None, 0)))(F, gs)
    assert rel(xs, ref) < 1e-10


# -- preconditions -------------------------------------------------------------------------------


def test_non_square_layer_raises():
    def dense_layer(z, W):
        return jnp.tanh(W @ z)

    w = 3
    layers = [first, dense_layer, head_sp]
    params = [jnp.zeros(w), 0.3 * jnp.eye(w), jnp.array([0.5])]
    z0 = jnp.ones(w)
    g = [jnp.ones_like(p) for p in params]
    with pytest.raises(hessinv.PipelineError, match=r"layer 1 = layers\[1\].*p = 9.*a = 3.*method='riccati'"):
        hessinv.ihvp(layers, params, z0, g, method="woodbury")
    with pytest.raises(hessinv.PipelineError, match="square"):
        hessinv.factorize(layers, params, z0, method="woodbury")
    with pytest.raises(hessinv.PipelineError, match="square"):  # the check is at trace time
        jax.jit(lambda p: hessinv.ihvp(layers, p, z0, g, method="woodbury"))(params)


@pytest.mark.parametrize("head_params", [(), jnp.array([0.5, 0.2])])
def test_last_layer_needs_one_parameter(head_params):
    def loss_head(z, x):
        return jnp.sum(z**2) * (1 + jnp.sum(jnp.asarray(x) ** 2))

    w = 3
    layers = [first, loss_head]
    params = [jnp.zeros(w), head_params]
    g = [jnp.ones(w), jax.tree.map(jnp.ones_like, head_params)]
    with pytest.raises(hessinv.PipelineError, match=r"layer 1 .*exactly one parameter.*method='riccati'"):
        hessinv.ihvp(layers, params, jnp.ones(w), g, method="woodbury")


def _linear_in_params():
    def shift(z, c):  # linear in c: K_xx = 0, so Q_22 = 0 without damping
        return jnp.tanh(z) + c

    w = 3
    layers = [first, shift, head_sp]
    params = [0.3 * jnp.ones(w), 0.1 * jnp.ones(w), jnp.array([0.5])]
    return layers, params, jnp.linspace(-1, 1, w)


def test_singular_Q22_raises():
    layers, params, z0 = _linear_in_params()
    g = [jnp.ones_like(p) for p in params]
    msg = r"Q_22 block .* of layer 1 = layers\[1\], function 'shift' is singular.*method='riccati'"
    with pytest.raises(hessinv.SingularPivotError, match=msg):
        hessinv.ihvp(layers, params, z0, g, method="woodbury")
    with pytest.raises(hessinv.SingularPivotError, match=msg):
        hessinv.factorize(layers, params, z0, method="woodbury")
    # under jit, where nothing can be raised, info reports it
    _, info = hessinv.ihvp(layers, params, z0, g, method="woodbury", return_info=True)  # runs under jit
    assert not bool(info.ok) and int(info.worst_layer) == 1
    # the default method solves it, and so does Woodbury once damping makes Q_22 invertible
    H = hessinv.hessian(layers, params, z0)
    ref = jnp.linalg.solve(H + 0.5 * jnp.eye(H.shape[0]), ravel_pytree(g)[0])
    x = hessinv.ihvp(layers, params, z0, g, damping=0.5, method="woodbury")
    assert rel(ravel_pytree(x)[0], ref) < 1e-10
