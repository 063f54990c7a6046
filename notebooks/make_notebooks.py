"""Generate the example notebooks (outputs cleared). Run from the repository root:

    python notebooks/make_notebooks.py

The notebooks are the source of truth for readers; this script is the source of truth for edits.
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent


def nb(cells):
    out = []
    for kind, text in cells:
        text = text.strip("\n")
        out.append(new_markdown_cell(text) if kind == "md" else new_code_cell(text))
    for i, cell in enumerate(out):
        cell["id"] = f"cell-{i:02d}"  # deterministic ids: regenerating does not churn the diff
    book = new_notebook(cells=out)
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    book.metadata["language_info"] = {"name": "python"}
    return book


QUICKSTART = [
    (
        "md",
        """
# hessinv quickstart

`hessinv` computes exact inverse-Hessian-vector products `(H + λI)^{-1} g` for deep networks in
time linear in depth (Rahimi 2026, arXiv:2601.06096). This notebook builds a small network as a
list of layers, then checks every result against the dense Hessian:

1. `hvp` (`H v`) against `jax.hessian(...) @ v`;
2. `ihvp` (`(H + λI)^{-1} g`) against a dense solve, with and without damping;
3. `factorize` once, solve many right-hand sides, read off `logdet` and `inertia`.

It runs in a few seconds on a laptop CPU; raise `DEPTH` for a bigger run (the dense checks are
skipped above `DENSE_MAX_N` parameters).
""",
    ),
    (
        "code",
        """
DEPTH = 16          # tanh layers in the middle; try 1024 (the dense checks switch off)
BATCH, WIDTH, CLASSES = 4, 4, 3
DENSE_MAX_N = 4000  # dense reference only up to this many parameters
""",
    ),
    (
        "code",
        """
import jax
jax.config.update("jax_enable_x64", True)   # float64: residuals near 1e-12
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import hessinv
""",
    ),
    (
        "md",
        """
## A network is a list of layers

A layer is a pure function `f(z, x) -> z_next` of the activations `z` and its parameters `x`
(any pytrees). The last layer returns the scalar loss. The batch `z0` is the input of the first
layer; integer leaves (the labels here) are carried along as constants.

`hessinv.Stack(fn, depth)` is a run of `depth` copies of one layer whose parameters are stacked
on a leading axis: it compiles once, whatever the depth.
""",
    ),
    (
        "code",
        """
def embed(z, x):                      # inputs (BATCH, 2) -> (BATCH, WIDTH)
    return {"h": jnp.tanh(z["h"] @ x["W"] + x["c"]), "y": z["y"]}

def hidden(z, x):                     # (BATCH, WIDTH) -> (BATCH, WIDTH)
    return {"h": jnp.tanh(z["h"] @ x["W"] + x["c"]), "y": z["y"]}

def head(z, x):                       # softmax cross-entropy: the scalar loss
    logits = z["h"] @ x["W"] + x["c"]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), z["y"][:, None], axis=1))

def dense_init(key, m, k):
    kw, kc = jax.random.split(key)
    return {"W": jax.random.normal(kw, (m, k)) / np.sqrt(m), "c": 0.1 * jax.random.normal(kc, (k,))}

keys = jax.random.split(jax.random.PRNGKey(0), 6)
layers = [embed, hessinv.Stack(hidden, DEPTH), head]
params = [
    dense_init(keys[0], 2, WIDTH),
    jax.vmap(lambda k: dense_init(k, WIDTH, WIDTH))(jax.random.split(keys[1], DEPTH)),
    dense_init(keys[2], WIDTH, CLASSES),
]
z0 = {"h": jax.random.normal(keys[3], (BATCH, 2)), "y": jax.random.randint(keys[4], (BATCH,), 0, CLASSES)}

flat, unravel = ravel_pytree(params)
n = flat.size
print("loss", hessinv.loss(layers, params, z0), " parameters n =", n)
""",
    ),
    (
        "md",
        """
## Hessian-vector products

`hessinv.hvp` is Pearlmutter's `jax.jvp(jax.grad(loss))`. We compare it with the dense Hessian
(`hessinv.hessian`, whose rows follow `ravel_pytree(params)`).
""",
    ),
    (
        "code",
        """
v = unravel(jax.random.normal(keys[5], (n,)))
Hv = hessinv.hvp(layers, params, z0, v)

DENSE = n <= DENSE_MAX_N
if DENSE:
    H = jax.jit(lambda p: hessinv.hessian(layers, p, z0))(params)   # the dense reference
    err = jnp.linalg.norm(ravel_pytree(Hv)[0] - H @ ravel_pytree(v)[0]) / jnp.linalg.norm(H @ ravel_pytree(v)[0])
    print(f"hvp vs dense: relative error {err:.1e}")
    assert err < 1e-10
    eig = jnp.linalg.eigvalsh(H)
    print(f"eigenvalues of H: min {eig[0]:.3g}, max {eig[-1]:.3g}, negative {int(jnp.sum(eig < 0))} of {n}")
""",
    ),
    (
        "md",
        """
## Inverse-Hessian-vector products

`hessinv.ihvp(layers, params, z0, g, damping=λ)` returns `(H + λI)^{-1} g` exactly (to rounding),
by a backward and a forward pass over the layers. At a random initialisation `H` is indefinite:
that is fine, as long as no stage pivot is singular (under `jit`, ask for `return_info=True`).
""",
    ),
    (
        "code",
        """
g = jax.grad(lambda p: hessinv.loss(layers, p, z0))(params)   # e.g. a Newton step direction
g_flat = ravel_pytree(g)[0]

for lam in (1e-3, 1e-1, 1.0):
    x = hessinv.ihvp(layers, params, z0, g, damping=lam)
    x_flat = ravel_pytree(x)[0]
    # the residual, with an hvp: no dense matrix needed
    r = ravel_pytree(hessinv.hvp(layers, params, z0, x))[0] + lam * x_flat - g_flat
    relres = jnp.linalg.norm(r) / jnp.linalg.norm(g_flat)
    line = f"λ = {lam:<6g} relative residual {relres:.1e}"
    if DENSE:
        x_dense = jnp.linalg.solve(H + lam * jnp.eye(n), g_flat)
        err = jnp.linalg.norm(x_flat - x_dense) / jnp.linalg.norm(x_dense)
        line += f"   vs dense solve: relative error {err:.1e}"
        assert err < 1e-7, err
    assert relres < 1e-8, relres
    print(line)
""",
    ),
    (
        "md",
        """
## Why damping: this `H` is singular

Each tanh layer has `WIDTH² + WIDTH = 20` parameters but only `BATCH × WIDTH = 16`
pre-activations, so some parameter directions change nothing (and the softmax is invariant to
shifting all logits): `H` has exact zero eigenvalues, as the dense spectrum above shows. Without
damping there is no inverse, and `ihvp` says so instead of returning a wrong number.
""",
    ),
    (
        "code",
        """
try:
    hessinv.ihvp(layers, params, z0, g, damping=0.0)
except hessinv.SingularPivotError as e:
    print("SingularPivotError:", str(e)[:160], "...")
else:
    raise AssertionError("expected a SingularPivotError at λ = 0")
""",
    ),
    (
        "md",
        """
## Factorise once, solve many times

`hessinv.factorize` keeps the factorisation (a pytree, so it crosses `jit`). Each extra solve
costs about one hvp; `jax.vmap(F.solve)` handles a batch of right-hand sides. The pivots also
give `log|det(H + λI)|` and its sign, and the inertia (how many eigenvalues are positive,
negative, zero): Sylvester's law of inertia on `H + λI = Tᵀ blockdiag(Q_uu) T`.
""",
    ),
    (
        "code",
        """
lam = 1e-3
# Under jit, as in real use (an eager call runs op by op). `check()` raises, as `ihvp` would,
# if a pivot is singular or anything is not finite; it returns F.
F = jax.jit(lambda p, z, lam: hessinv.factorize(layers, p, z, damping=lam))(params, z0, lam).check()

G = jax.vmap(unravel)(jax.random.normal(jax.random.PRNGKey(1), (8, n)))   # 8 right-hand sides
X = jax.jit(jax.vmap(F.solve))(G)

(sign, logabs), (n_pos, n_neg, n_zero) = jax.jit(lambda F: (F.logdet(), F.inertia()))(F)
print(f"log|det(H + λI)| = {logabs:.6f}, sign {sign:+.0f}; inertia (+, -, 0) = ({n_pos}, {n_neg}, {n_zero})")
print("pivot health:", jax.jit(lambda F: F.info())(F))

if DENSE:
    M = H + lam * jnp.eye(n)
    X_dense = jnp.linalg.solve(M, jax.vmap(lambda t: ravel_pytree(t)[0])(G).T).T
    err = jnp.max(jnp.linalg.norm(jax.vmap(lambda t: ravel_pytree(t)[0])(X) - X_dense, axis=1) / jnp.linalg.norm(X_dense, axis=1))
    s_dense, l_dense = jnp.linalg.slogdet(M)
    eig = jnp.linalg.eigvalsh(M)
    print(f"dense: log|det| = {l_dense:.6f}, sign {s_dense:+.0f}; inertia ({int(jnp.sum(eig > 0))}, {int(jnp.sum(eig < 0))}, 0);"
          f" max relative error of the 8 solves {err:.1e}")
    assert err < 1e-7
    assert abs(logabs - l_dense) < 1e-8 * max(1.0, abs(l_dense)) and sign == s_dense
    assert (int(n_pos), int(n_neg)) == (int(jnp.sum(eig > 0)), int(jnp.sum(eig < 0)))
""",
    ),
    (
        "md",
        """
## Under `jit`

Everything composes with `jax.jit` (and `vmap`, `grad`). Inside `jit` nothing can raise, so
`return_info=True` hands back the pivot diagnostics as arrays.
""",
    ),
    (
        "code",
        """
@jax.jit
def newton_direction(params, z0, lam):
    g = jax.grad(lambda p: hessinv.loss(layers, p, z0))(params)
    return hessinv.ihvp(layers, params, z0, g, damping=lam, return_info=True)

step, info = newton_direction(params, z0, 1e-3)
print("ok:", bool(info.ok), " smallest pivot reciprocal condition:", float(info.min_rcond))
assert bool(info.ok)
""",
    ),
]


INFLUENCE = [
    (
        "md",
        """
# Influence functions with one factorisation

Koh & Liang (2017, "Understanding black-box predictions via influence functions", ICML) measure
how much a training point `z_i` matters to the loss at a test point `z_test`: up-weighting `z_i`
by `ε` moves the optimum by `−ε (H + λI)^{-1} ∇ℓ(z_i)`, so

    I(z_i, z_test) = − ∇ℓ(z_test)ᵀ (H + λI)^{-1} ∇ℓ(z_i),

with `H + λI` the Hessian of the training objective (mean loss plus `λ/2 |θ|²`, the weight decay
that also serves as the damping) at the trained parameters. They approximate
`(H + λI)^{-1}` with stochastic iterations or CG. With `hessinv` it is exact: **one
factorisation** of `H + λI`, then **one solve per training point** (`jax.vmap(F.solve)`), each
about the cost of an hvp. We check every influence against the dense Hessian on a small net.

Set `N_TRAIN`, `DEPTH` higher for a bigger run (the dense check switches off above `DENSE_MAX_N`).
""",
    ),
    (
        "code",
        """
N_TRAIN, N_TEST = 48, 8
DEPTH, WIDTH = 4, 6
TRAIN_STEPS = 1500   # Adam, then
NEWTON_STEPS = 60    # at most this many Levenberg-Marquardt / Newton steps with hessinv
DAMPING = 3e-2       # weight decay λ: the objective is mean loss + λ/2 |θ|²
DENSE_MAX_N = 3000
""",
    ),
    (
        "code",
        """
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from sklearn.datasets import make_moons

import hessinv
""",
    ),
    (
        "md",
        """
## Data and a deep narrow classifier

Two interleaved half-moons (generated, no download). The network is a list of layers; its
batch `z0` is the whole training set, so `hessinv.loss` is the mean training loss and `H` its
Hessian.
""",
    ),
    (
        "code",
        """
X, y = make_moons(N_TRAIN + N_TEST, noise=0.2, random_state=0)
X, y = jnp.asarray(X), jnp.asarray(y, jnp.int32)
train = {"h": X[:N_TRAIN], "y": y[:N_TRAIN]}
test = {"h": X[N_TRAIN:], "y": y[N_TRAIN:]}

def embed(z, x):
    return {"h": jnp.tanh(z["h"] @ x["W"] + x["c"]), "y": z["y"]}

def hidden(z, x):
    return {"h": jnp.tanh(z["h"] @ x["W"] + x["c"]), "y": z["y"]}

def head(z, x):
    logits = z["h"] @ x["W"] + x["c"]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), z["y"][:, None], axis=1))

def dense_init(key, m, k):
    kw, kc = jax.random.split(key)
    return {"W": jax.random.normal(kw, (m, k)) / np.sqrt(m), "c": jnp.zeros((k,))}

k = jax.random.split(jax.random.PRNGKey(0), 3)
layers = [embed, hessinv.Stack(hidden, DEPTH), head]
params = [dense_init(k[0], 2, WIDTH),
          jax.vmap(lambda kk: dense_init(kk, WIDTH, WIDTH))(jax.random.split(k[1], DEPTH)),
          dense_init(k[2], WIDTH, 2)]
loss = lambda p, z: hessinv.loss(layers, p, z)
# the training objective: mean loss + λ/2 |θ|², whose Hessian is exactly H + λI
objective = lambda p, z: loss(p, z) + 0.5 * DAMPING * sum(jnp.vdot(a, a) for a in jax.tree.leaves(p))
n = ravel_pytree(params)[0].size
print("parameters:", n)
""",
    ),
    (
        "code",
        """
opt = optax.adam(optax.exponential_decay(3e-2, TRAIN_STEPS, 1e-2))

@jax.jit
def train_step(params, state):
    l, g = jax.value_and_grad(objective)(params, train)
    upd, state = opt.update(g, state, params)
    return optax.apply_updates(params, upd), state, l

state = opt.init(params)
for t in range(TRAIN_STEPS):
    params, state, l = train_step(params, state)
def logits(p, z):
    h = embed(z, p[0])
    h, _ = jax.lax.scan(lambda h, x: (hidden(h, x), None), h, p[1])
    return h["h"] @ p[2]["W"] + p[2]["c"]

acc = lambda z: float(jnp.mean(jnp.argmax(logits(params, z), -1) == z["y"]))
grad_flat = ravel_pytree(jax.grad(objective)(params, train))[0]
print(f"after Adam: objective {l:.4f}, |grad| {jnp.linalg.norm(grad_flat):.2e}")
""",
    ),
    (
        "md",
        """
Influence functions assume an optimum, and Adam stops near one, often beside a saddle (`H + λI`
still has a few negative eigenvalues there). Exact Newton steps with `hessinv.ihvp` finish the
job. Plain Newton would head for the saddle, so we add a Levenberg-Marquardt shift `μ` (accept a
step and shrink `μ` when the objective falls, grow `μ` otherwise); near the minimum `μ → 0` and
the steps become exact Newton steps, converging quadratically. The damping `λ` is the weight decay,
so `H + λI` *is* the objective's Hessian. The inertia then confirms a minimum.
""",
    ),
    (
        "code",
        """
@jax.jit
def lm_step(params, mu):
    g = jax.grad(objective)(params, train)
    step, info = hessinv.ihvp(layers, params, train, g, damping=DAMPING + mu, return_info=True)
    return jax.tree.map(jnp.subtract, params, step), info

obj = jax.jit(lambda p: objective(p, train))
gradnorm = jax.jit(lambda p: jnp.linalg.norm(ravel_pytree(jax.grad(objective)(p, train))[0]))
mu, f = 0.1, float(obj(params))
for it in range(NEWTON_STEPS):
    trial, info = lm_step(params, mu)
    f_trial = float(obj(trial))
    if bool(info.ok) and f_trial <= f:
        params, f, mu = trial, f_trial, mu / 10
    else:
        mu *= 4
    if mu < 1e-12 or gradnorm(params) < 1e-10:
        break
gn = float(gradnorm(params))
print(f"after {it + 1} Levenberg-Marquardt/Newton steps: objective {f:.6f}, |grad| {gn:.1e}")
print(f"train accuracy {acc(train):.2f}, test accuracy {acc(test):.2f}")
assert gn < 1e-8, "not converged: raise NEWTON_STEPS"
""",
    ),
    (
        "md",
        """
## One factorisation, many solves

Per-example gradients `∇ℓ(z_i)` are the gradients of the same pipeline on a batch of one.
Then `jax.vmap(F.solve)` gives `(H + λI)^{-1} ∇ℓ(z_i)` for every training point at once.
""",
    ),
    (
        "code",
        """
def example_grad(p, xi, yi):
    return jax.grad(loss)(p, {"h": xi[None], "y": yi[None]})

train_grads = jax.vmap(example_grad, in_axes=(None, 0, 0))(params, train["h"], train["y"])
test_grads = jax.vmap(example_grad, in_axes=(None, 0, 0))(params, test["h"], test["y"])

F = jax.jit(lambda p, z, lam: hessinv.factorize(layers, p, z, damping=lam))(params, train, DAMPING).check()
inertia, info = jax.jit(lambda F: (F.inertia(), F.info()))(F)
print("inertia of H + λI (+, -, 0):", [int(c) for c in inertia], " pivots ok:", bool(info.ok))
assert int(inertia[1]) == 0, "not at a minimum: H + λI has negative eigenvalues"

solves = jax.jit(jax.vmap(F.solve))(train_grads)          # (H + λI)^{-1} ∇ℓ(z_i), one per training point
flat = jax.vmap(lambda t: ravel_pytree(t)[0])
influence = -flat(test_grads) @ flat(solves).T              # (N_TEST, N_TRAIN)
print("influence matrix", influence.shape)
""",
    ),
    (
        "md",
        """
## Check against the dense Hessian

Same quantities with `jax.hessian` and a dense solve. The influences must agree to rounding.
We also check the symmetric route of Koh & Liang (one solve per *test* point,
`s_test = (H + λI)^{-1} ∇ℓ(z_test)`, then dot products), which must give the same matrix.
""",
    ),
    (
        "code",
        """
s_test = jax.vmap(F.solve)(test_grads)
influence_via_s_test = -flat(s_test) @ flat(train_grads).T
err_sym = jnp.max(jnp.abs(influence_via_s_test - influence)) / jnp.max(jnp.abs(influence))
print(f"per-train-point solves vs s_test route: max relative difference {err_sym:.1e}")
assert err_sym < 1e-8

if n <= DENSE_MAX_N:
    H = jax.jit(lambda p: hessinv.hessian(layers, p, train))(params)
    M = H + DAMPING * jnp.eye(n)
    influence_dense = -flat(test_grads) @ jnp.linalg.solve(M, flat(train_grads).T)
    err = jnp.max(jnp.abs(influence_dense - influence)) / jnp.max(jnp.abs(influence_dense))
    eig = jnp.linalg.eigvalsh(M)
    print(f"dense eigenvalues of H + λI: min {eig[0]:.3g}, max {eig[-1]:.3g}")
    print(f"hessinv vs dense influence: max relative error {err:.1e}")
    assert err < 1e-8
""",
    ),
    (
        "md",
        """
## The most helpful and most harmful training points

A negative influence means up-weighting that training point lowers the test loss (it helps);
a positive one means it hurts.
""",
    ),
    (
        "code",
        """
j = 0   # a test point
order = jnp.argsort(influence[j])
print(f"test point {j}: x = {np.asarray(test['h'][j]).round(2)}, label {int(test['y'][j])}")
fmt = lambda i: f"#{int(i)} (label {int(train['y'][i])}, x = {np.asarray(train['h'][i]).round(2)}): {float(influence[j, i]):+.3g}"
print("most helpful:", *map(fmt, order[:3]), sep="\\n  ")
print("least helpful (harmful where positive):", *map(fmt, order[-3:][::-1]), sep="\\n  ")
""",
    ),
    (
        "code",
        """
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(5, 4))
sc = ax.scatter(train["h"][:, 0], train["h"][:, 1], c=np.asarray(influence[j]), cmap="coolwarm",
                marker="o", edgecolors=["k" if c else "none" for c in np.asarray(train["y"])])
ax.scatter(*np.asarray(test["h"][j]), marker="*", s=250, c="gold", edgecolors="k")
plt.colorbar(sc, label="influence on the test loss (blue: helps)")
ax.set_title("influence of each training point on the starred test point");
""",
    ),
]


def main():
    for name, cells in (("quickstart", QUICKSTART), ("influence", INFLUENCE)):
        path = HERE / f"{name}.ipynb"
        nbformat.write(nb(cells), path)
        print("wrote", path)


if __name__ == "__main__":
    main()
