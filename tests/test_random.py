"""Property-based: random pipelines (depth, widths, batch changes, activations, heads, dtype of
damping) against the dense reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from helpers import flat, like, ref_hessian, rel_err
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import hessinv

# These tests are about the stage recursion: pin it (method="auto" may pick another route).
ihvp = functools.partial(hessinv.ihvp, method="riccati")
factorize = functools.partial(hessinv.factorize, method="riccati")

ACTIVATIONS = {
    "tanh": jnp.tanh,
    "sin": jnp.sin,
    "softplus": jax.nn.softplus,
    "cubic": lambda u: u + 0.1 * u**3,
}


def make_layer(act, residual):
    def layer(z, x):
        u = act(z @ x["W"] + x["c"])
        return z + u if residual else u

    layer.__name__ = f"{'res_' if residual else ''}{act.__name__ if hasattr(act, '__name__') else 'act'}"
    return layer


def squared_head(z, x):
    return 0.5 * jnp.sum((z @ x["w"] - 1.0) ** 2) + 0.1 * jnp.sum(x["w"] ** 2)


@st.composite
def pipelines(draw):
    depth = draw(st.integers(1, 5))
    widths = [draw(st.integers(1, 4)) for _ in range(depth + 1)]
    batch = max(widths) + 1 + draw(st.integers(0, 3))  # p_l ≤ a_l: undamped pivots can be regular
    acts = [draw(st.sampled_from(sorted(ACTIVATIONS))) for _ in range(depth)]
    seed = draw(st.integers(0, 2**16))
    damping = draw(st.sampled_from([0.0, 0.1, 1.0]))
    keys = jax.random.split(jax.random.PRNGKey(seed), depth + 2)
    layers, params = [], []
    for i in range(depth):
        res = widths[i] == widths[i + 1] and draw(st.booleans())
        layers.append(make_layer(ACTIVATIONS[acts[i]], res))
        k1, k2 = jax.random.split(keys[i])
        params.append(
            {
                "W": jax.random.normal(k1, (widths[i], widths[i + 1])) / np.sqrt(widths[i]),
                "c": 0.1 * jax.random.normal(k2, (widths[i + 1],)),
            }
        )
    layers.append(squared_head)
    params.append({"w": jax.random.normal(keys[-2], (widths[-1],))})
    z0 = jax.random.normal(keys[-1], (batch, widths[0]))
    return layers, params, z0, damping


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pipelines())
def test_random_pipelines_match_dense(case):
    layers, params, z0, lam = case
    H = np.asarray(jax.jit(lambda p: ref_hessian(layers, p, z0))(params))
    Hd = H + lam * np.eye(len(H))
    F = factorize(layers, params, z0, damping=lam)
    info = F.info()
    # Exactness is checked where the problem is well posed for the stage recursion: a regular,
    # moderately conditioned H + λI with healthy pivots (the singular cases have their own tests).
    assume(np.linalg.cond(Hd) < 1e6 and bool(info.ok) and float(info.min_rcond) > 1e-7)
    g = like(params, seed=len(H))
    assert rel_err(flat(F.solve(g)), np.linalg.solve(Hd, flat(g))) < 1e-9
    sign, logabs = F.logdet()
    s_ref, l_ref = np.linalg.slogdet(Hd)
    assert float(sign) == s_ref
    np.testing.assert_allclose(logabs, l_ref, rtol=1e-9, atol=1e-9)
    ev = np.linalg.eigvalsh(Hd)
    assert tuple(int(c) for c in F.inertia()) == (int((ev > 0).sum()), int((ev < 0).sum()), 0)
