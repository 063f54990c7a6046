"""The Gauss-Newton route in the output space (``method="gauss_newton"``, MATH.md section 7).

For ``curvature="ggn"`` the matrix is ``G = Jᵀ Hℓ J``: ``J`` the ``(m × n)`` Jacobian of the
network outputs (the active float leaves of the last layer's input, flattened; ``m = N·C``) in the flat
parameters, ``Hℓ`` the ``(m × m)`` Hessian of the parameter-free loss ``ℓ`` in those outputs.
``G`` has rank at most ``m``, so when ``m ≪ n`` everything about ``G + λI`` reduces to one
``m × m`` matrix. The identities, and why they hold:

* **A signed square root of Hℓ.** ``Hℓ = V diag(d) Vᵀ`` (``eigh``). A loss summed over examples
  has a block-diagonal ``Hℓ`` (one ``C × C`` block per example, or a diagonal): where its entries
  off those blocks are exactly zero, the blocks are decomposed one by one (the same ``d``, ``V``,
  at ``O(m C²)`` instead of ``O(m³)``), else the whole matrix. Eigenvalues with
  ``|d_i| ≤ m·eps·max|d|`` are rounding (softmax cross-entropy has an exact zero per example)
  and are set to exactly 0; shapes stay ``m``. With ``D = sign(d) ∈ {−1, 0, +1}`` and ``Z = diag(|d|^{1/2}) Vᵀ J`` (``m × n``),
  ``G = Zᵀ D Z``. A zero eigenvalue gives a zero row of ``Z``, so ``D Z = E Z`` with ``E = D``
  except ``E_i = +1`` where ``D_i = 0``: ``E ∈ {±1}``, ``E² = I`` and ``G = Zᵀ E Z`` too.

* **Solve** (push-through). ``(λI_n + ZᵀDZ) Zᵀ = Zᵀ (λI_m + DZZᵀ)``, hence for any diagonal
  ``D`` and ``λ ≠ 0``: ``(λI_n + ZᵀDZ)^{-1} = (1/λ)(I − Zᵀ (λI_m + DZZᵀ)^{-1} D Z)`` (multiply
  out). ``λI_m + DZZᵀ = E (λE + ZZᵀ)`` and ``E D Z = Z``, so with the symmetric ``m × m``

      K = λE + Z Zᵀ:        (G + λI)^{-1} g = (g − Zᵀ K^{-1} Z g) / λ.

  Zero eigenvalues of ``Hℓ`` contribute nothing (zero rows of ``Z``, entry ``λ`` on ``K``'s
  diagonal). For a PSD ``Hℓ`` (``E = I``) ``K = λI + ZZᵀ`` is SPD, MATH.md's form, factorised
  by Cholesky (kept as the equivalent LU factors); for an indefinite one ``K`` is indefinite, so
  it is factorised once by LU with partial pivoting.

* **Log-determinant** (Sylvester, ``det(I_n + AB) = det(I_m + BA)``):
  ``det(λI_n + ZᵀDZ) = λ^n det(I_m + DZZᵀ/λ) = λ^{n−m} det(E) det(K)``, so
  ``sign = (−1)^{#(d<0)} sign(det K)`` and ``log|det| = (n − m) log λ + log|det K|`` (from the LU).

* **Inertia.** ``P = ZZᵀ = U Σ² Uᵀ`` (``eigh``). The nonzero eigenvalues of ``ZᵀEZ`` (``n × n``)
  are those of ``E Z Zᵀ = (E U Σ)(Σ Uᵀ)`` and hence of ``S = Σ Uᵀ E U Σ`` (``AB`` and ``BA``
  share nonzero eigenvalues, twice), and ``S`` is symmetric ``m × m``. So the spectrum of
  ``G + λI`` is ``λ + eig(S)`` and ``λ`` for the other ``n − m`` directions (when ``n < m``,
  ``rank S ≤ n``: the ``m − n`` smallest ``|eig(S)|`` are the surplus zeros, dropped). The signs
  are counted like a dense ``eigvalsh``: zero below ``rcond_tol`` times the largest ``|eig|``.

Only ``λ > 0`` is supported: the route divides by ``λ`` and is exact only then (``G`` is
singular when ``m < n``). A concrete ``λ ≤ 0`` raises; a traced one is reported by ``info()``.

``J`` comes from one linearised forward pass through every layer but the loss (as in
:func:`hessinv._hvp.ggn_vp`): ``m`` vjps (its transpose, vmapped over the output cotangents) when
``m < n``, else ``n`` jvps; or, for a network that maps each example on its own (checked on the
numbers), from ``C`` vjps per example through the network run on that example alone. The outputs are the *active* leaves of the last layer's input
(its :class:`~hessinv._flat.Spec`); the others (integer labels, floating targets carried
unchanged from ``z0``) are constants of ``ℓ``: they never depend on the parameters, so this is
exact. The flat parameter vector is :func:`hessinv._pipeline.to_rows`' per-segment row matrices,
concatenated row-major.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import jax.scipy.linalg
import numpy as np

from . import _blocks, _flat, _pipeline
from ._diagnostics import Info, rcond, route_code
from ._errors import NonFiniteError, PipelineError, SingularPivotError
from ._factorization import Factorization
from ._linalg import gram, lu_solve, pivoted_lu_factor, spd_lu_factor, sym

# -- J and Hℓ -------------------------------------------------------------------------------------


def _loss_input(pipe: _pipeline.Pipeline, seg_rows, z):
    """The last layer's input: every layer but the loss applied to ``z`` (a batch, or one
    example of it), with the params as per-segment rows."""
    return _pipeline.run_segments(pipe.segments[:-1], seg_rows, z)[0]


def _outputs(pipe: _pipeline.Pipeline, z0):
    """``x ↦ (f, z)``: the active leaves ``f`` (length ``m``) of the last layer's input ``z`` as a
    function of the flat parameters ``x``, every layer but the loss applied."""

    def phi(x):
        z = _loss_input(pipe, _pipeline.vector_to_rows(pipe, x), z0)
        return _flat.ravel(pipe.segments[-1].in_spec, z, pipe.dtype), z

    return phi


def jacobian(pipe: _pipeline.Pipeline, x, z0):
    """``(f, J, z)``: the outputs, their ``(m × n)`` Jacobian in ``x`` and the last layer's input.
    One linearisation; then ``m`` vjps if ``m < n``, else ``n`` jvps, each vmapped. Where the
    network may act on each example separately, the per-example Jacobian
    (:func:`_per_example_jacobian`) is used instead wherever the numbers confirm it."""
    phi = _outputs(pipe, z0)

    def whole():
        f, jvp, z = jax.linearize(phi, x, has_aux=True)
        m, n, dt = f.shape[0], x.shape[0], pipe.dtype
        if m < n:
            vjp = jax.linear_transpose(jvp, x)
            return f, jax.vmap(lambda c: vjp(c)[0])(jnp.eye(m, dtype=dt)), z
        return f, jax.vmap(jvp, out_axes=1)(jnp.eye(n, dtype=dt)), z

    if _per_example_layout(pipe, x, z0) is None:
        return whole()
    J1, f1 = _per_example_jacobian(pipe, x, z0)
    t = jax.random.normal(jax.random.key(0), x.shape, pipe.dtype)
    f, Jt, z = jax.jvp(phi, (x,), (t,), has_aux=True)  # a separate pass: measured cheaper than a
    # linearisation shared with the fallback (XLA:CPU, digits MLP: 1.4 against 4.5 ms)
    ok = _agrees(f, Jt, t, J1, f1, pipe.n_layers)
    return f, jax.lax.cond(ok, lambda: J1, lambda: whole()[1]), z


# -- the per-example Jacobian ----------------------------------------------------------------------
#
# Most networks map each example on its own: example i's outputs f_i depend on its own input and
# the parameters only. Then J's rows for example i are the Jacobian of the network run on that
# example alone, and all of them together (a vmap over examples of C vjps each) cost about C
# reverse passes through the batch instead of m = e·C: e times fewer flops (measured, J with its
# check, float64 / float32: the benchmarks' regression, m = 128, 1.1-1.9 → 0.33-0.48 ms; the
# digits MLP, m = 640, 4.7-7.3 → 2.2-3.4 ms). Whether it holds is decided by the numbers at
# the point, not assumed: the outputs of the one-example runs must equal the batch's, and J's
# product with a random direction t (one jvp through the batch, the exact J) must equal the
# per-example rows' to rounding. A network that couples examples (a batch mean, batch
# normalisation) or depends on the batch size differs there by far more than rounding, and the
# exact m vjps are used instead (lax.cond: one branch runs).


def _per_example_layout(pipe: _pipeline.Pipeline, x, z0):
    """``(e, C)`` when the per-example Jacobian may apply (static): the outputs are laid out
    over ``e ≥ 2`` examples, ``C`` each with ``C < n``, every leaf of ``z0`` has the leading axis
    ``e``, and the layers run on a batch of one example with ``C`` outputs; else ``None``."""
    e = pipe.segments[-1].in_spec.examples
    leaves = jax.tree.leaves(z0)
    if e < 2 or any(jnp.ndim(a) == 0 or jnp.shape(a)[0] != e for a in leaves):
        return None
    C = pipe.segments[-1].a_in // e
    if C >= x.shape[0]:
        return None
    try:
        rows = _pipeline.vector_to_rows(pipe, x)
        out = jax.eval_shape(_example_outputs_rows(pipe), rows, jax.tree.map(lambda a: a[:1], z0))
    except Exception:  # the layers do not run on one example (a fixed batch size): not per-example
        return None
    return (e, C) if out.shape == (C,) else None


def _example_outputs_rows(pipe: _pipeline.Pipeline):
    """``(per-segment rows, z0 of one example) ↦`` that example's outputs, laid out as its rows of ``f``."""
    last = pipe.segments[-1]

    def phi(rows, z):
        leaves = jax.tree.leaves(_loss_input(pipe, rows, z))
        act = [a.reshape(1, -1).astype(pipe.dtype) for a, f in zip(leaves, last.in_spec.is_active) if f]
        return jnp.concatenate(act, axis=1).reshape(-1)

    return phi


def _per_example_jacobian(pipe: _pipeline.Pipeline, x, z0):
    """``(J1, f1)``: ``(m × n)`` and ``(m,)``, every example's rows from the network run on that
    example alone (``C`` vjps each, vmapped over the examples)."""
    phi, dt = _example_outputs_rows(pipe), pipe.dtype
    rows = _pipeline.vector_to_rows(pipe, x)

    # Differentiated in the per-segment rows, not in x: the cotangent of slicing x would be one
    # zero-padded (e, C, n) array per segment, summed (measured on the digits MLP: 7.6 of a 40 ms
    # step); the rows' cotangents are joined by one concatenation.
    def one(z):
        f, vjp = jax.vjp(lambda rows: phi(rows, jax.tree.map(lambda a: a[None], z)), rows)
        return jax.vmap(lambda c: vjp(c)[0])(jnp.eye(f.shape[0], dtype=dt)), f

    J_rows, f1 = jax.vmap(one)(z0)  # per segment (e, C, n_seg, p)
    e, C = f1.shape
    J1 = jnp.concatenate([jnp.reshape(r, (e, C, -1)) for r in J_rows], axis=2)
    return J1.reshape(e * C, x.shape[0]), f1.reshape(-1)


def _agrees(f, Jt, t, J1, f1, n_layers: int):
    """Whether the per-example ``(J1, f1)`` are the batch's ``J`` and ``f`` to rounding: the
    outputs, and ``J t`` (``Jt``, from a jvp through the batch) for the standard normal ``t``,
    for which ``E‖(J − J1) t‖² = ‖J − J1‖²_F``. The bound ``τ = 16 · L · eps`` relative (``L``
    layers) is far above the rounding of these products (2-3 eps measured on the benchmarks'
    regression and digits MLP, float32 and float64) and far below any coupling of examples."""
    dt = f.dtype
    tau = 16 * n_layers * float(jnp.finfo(dt).eps)
    same_f = jnp.linalg.norm(f - f1) <= tau * jnp.linalg.norm(f)
    norm_J1 = jnp.linalg.norm(J1)
    same_J = jnp.linalg.norm(Jt - J1 @ t) <= tau * norm_J1
    # An inf in J1 makes the bound inf; the norm being finite rules that out (and NaN) in the
    # pass that computes it. (A finite J1 whose squares overflow fails it too: then the exact
    # batch Jacobian is used, the same numbers.)
    return jnp.isfinite(norm_J1) & same_f & same_J


def loss_hessian(pipe: _pipeline.Pipeline, f, z):
    """``Hℓ``: the ``(m × m)`` Hessian of the parameter-free loss in the outputs ``f`` (the last
    layer's input ``z`` with its active leaves replaced by ``f``; other leaves are constants)."""
    last, dt = pipe.segments[-1], pipe.dtype
    consts = _flat.constants(last.in_spec, z)
    x_last = _flat.unravel(last.param_spec, jnp.zeros((0,), dt))

    def ell(f):
        return last.fn(_flat.unravel(last.in_spec, f, consts), x_last).astype(dt)

    H_ell = jax.hessian(ell)(f)
    return 0.5 * (H_ell + H_ell.T)


def block_sizes(pipe: _pipeline.Pipeline) -> tuple:
    """The sizes ``b`` of diagonal blocks that ``Hℓ`` may have, finest first (static): 1 (a loss
    with one output per example, or no coupling at all), and ``m / e`` when the outputs are laid
    out over ``e`` examples (a loss summed over examples couples each example's ``C`` outputs only)."""
    last = pipe.segments[-1]
    m, e = last.a_in, last.in_spec.examples
    return (1,) + ((m // e,) if e >= 2 and m // e > 1 else ())


def _is_block_diagonal(H, b: int):
    """Whether every entry of the matrices ``H`` (``(..., M, M)``) off their ``b × b`` diagonal
    blocks is exactly zero."""
    k = H.shape[-1] // b
    # iotas, not a constant mask: an m × m boolean constant would be embedded in the program
    i = jax.lax.broadcasted_iota(jnp.int32, (k, 1, k, 1), 0)
    j = jax.lax.broadcasted_iota(jnp.int32, (k, 1, k, 1), 2)
    return jnp.all((i == j) | (H.reshape(H.shape[:-2] + (k, b, k, b)) == 0))


def _diagonal_blocks(H, b: int):
    """The ``b × b`` diagonal blocks of the matrices ``H`` (``(B, M, M)``), as ``(B·M/b, b, b)``."""
    k, idx = H.shape[-1] // b, np.arange(H.shape[-1] // b)
    return H.reshape(H.shape[0], k, b, k, b)[:, idx, :, idx, :].reshape(-1, b, b)


def _root_times(H_ell, J, b: int | None):
    """``(D, Z = R J)`` with ``Hℓ = Rᵀ diag(D) R``, ``D = sign(d) ∈ {−1, 0, +1}`` and
    ``R = diag(|d|^{1/2}) Vᵀ`` from the eigendecompositions ``V diag(d) Vᵀ`` of ``Hℓ``'s
    ``b × b`` diagonal blocks (``b = None``: the whole matrix, one block); eigenvalues
    ``|d| ≤ m·eps·max|d|`` are set to exactly 0. With ``b`` given the caller has checked that
    every other entry is zero, so the blocks' eigenpairs are those of ``Hℓ``. (For ``b = 1`` the
    ``1 × 1`` eigendecompositions cost about what reading the diagonal does: 0.18 against 0.12 ms
    at ``m = 128``.)"""
    m, n = J.shape
    b = m if b is None else b
    k = m // b
    d, V = jnp.linalg.eigh(_diagonal_blocks(H_ell[None], b))  # (k, b), (k, b, b)
    d = jnp.where(jnp.abs(d) <= m * float(jnp.finfo(d.dtype).eps) * jnp.max(jnp.abs(d)), 0, d)
    R = jnp.sqrt(jnp.abs(d))[:, :, None] * jnp.swapaxes(V, 1, 2)
    return jnp.sign(d).reshape(m), jnp.einsum("kij,kjn->kin", R, J.reshape(k, b, n)).reshape(m, n)


def structure(pipe: _pipeline.Pipeline, H_ell):
    """The index into ``block_sizes(pipe) + (None,)`` of the finest diagonal blocks that ``Hℓ``
    has exactly (every other entry zero); the last, ``None``, is the whole matrix. An array."""
    sizes = block_sizes(pipe)
    # Coarsest first on the whole matrix, then each finer size (a divisor of the coarser one) only
    # inside the coarser diagonal blocks: the m × m matrix is read once (XLA recomputed Hℓ in each
    # whole-matrix check: 1.6 + 0.6 ms of the digits MLP's step, m = 640).
    found, blocks, inside = [], H_ell[None], jnp.array(True)
    for b in reversed(sizes):
        inside = inside & _is_block_diagonal(blocks, b)
        found.append(inside)
        blocks = _diagonal_blocks(blocks, b)
    found = jnp.array(found[::-1])
    return jnp.where(jnp.any(found), jnp.argmax(found), len(sizes))


def signed_factor(pipe: _pipeline.Pipeline, H_ell, J):
    """``(D, Z)`` with ``G = Jᵀ Hℓ J = Zᵀ diag(D) Z``, ``Z = R J`` (:func:`_root_times`), from the
    finest diagonal blocks that ``Hℓ`` has exactly (:func:`structure`, read off the numbers: a
    ``lax.switch``, only one branch runs). A loss summed over examples has a block-diagonal
    ``Hℓ``; its ``m × m`` eigendecomposition (``O(m³)``) and ``R J`` (``O(m² n)``) then cost
    ``O(m b²)`` and ``O(m b n)`` instead (measured on the digits MLP, ``m = 640``, ``b = 10``:
    the λ-independent part of a Gauss-Newton step 151 → 30-43 ms)."""
    sizes = block_sizes(pipe) + (None,)
    branches = [functools.partial(_root_times, b=b) for b in sizes]
    return jax.lax.switch(structure(pipe, H_ell), branches, H_ell, J)


def _E(D):
    """``E``: ``D`` with its zeros replaced by ``+1`` (``E² = I``, ``E Z = D Z``)."""
    return jnp.where(D < 0, -jnp.ones((), D.dtype), jnp.ones((), D.dtype))


# -- the factorisation -----------------------------------------------------------------------------


def _damping_message(pipe, lam) -> str:
    m, n = pipe.segments[-1].a_in, _pipeline.n_params(pipe)
    return (
        f"method='gauss_newton' needs damping λ > 0, got λ = {lam}: the output-space route divides by λ "
        f"and is exact only for λ > 0 (G = Jᵀ Hℓ J has rank at most m = {m} network outputs, n = {n} "
        "parameters). Use damping > 0, or method='riccati'."
    )


def check(pipe: _pipeline.Pipeline, curvature: str) -> None:
    """The route's preconditions that the shapes decide (at trace time): the Gauss-Newton
    matrix, a parameter-free loss, and network outputs to work in."""
    if curvature != "ggn":
        raise PipelineError(
            f"method='gauss_newton' solves the Gauss-Newton matrix only (got curvature={curvature!r}); "
            "use curvature='ggn' or another method"
        )
    _blocks.check_curvature(pipe, "ggn")
    if pipe.segments[-1].a_in == 0:
        raise PipelineError(
            f"method='gauss_newton': the input of {pipe.layer_name(pipe.n_layers - 1)} has no floating entries, "
            "so the loss does not depend on the parameters"
        )


def factorize(pipe: _pipeline.Pipeline, seg_rows, z0, damping, curvature: str = "ggn") -> GaussNewtonFactorization:
    """Factorise ``G + λI`` (``G`` the generalised Gauss-Newton matrix) in the output space.

    Args:
      pipe: ``_pipeline.build(layers, params, z0)`` (static).
      seg_rows, z0: the point of expansion, the params as per-segment rows
        (:func:`hessinv._pipeline.rows`).
      damping: ``λ > 0``, a scalar; may be traced (``jit``, ``vmap``), then ``info()`` reports
        ``λ ≤ 0`` as ``ok = False``.
      curvature: must be ``"ggn"``.

    Raises:
      PipelineError: ``curvature != "ggn"``, the last layer has parameters, or the network has
        no float outputs.
      ValueError: a concrete ``λ ≤ 0``.
    """
    check(pipe, curvature)
    if _pipeline.is_concrete(damping) and not np.all(np.asarray(damping) > 0):
        raise ValueError(_damping_message(pipe, damping))
    return _factorize_jit(pipe, seg_rows, z0, damping)


@functools.partial(jax.jit, static_argnums=0)
def _factorize_jit(pipe, seg_rows, z0, damping):
    return factor(pipe, outputs_factor(pipe, seg_rows, z0), damping)


def outputs_factor(pipe, seg_rows, z0):
    """``(Z, D, P = Z Zᵀ)`` with ``G = Zᵀ diag(D) Z``, the params as per-segment rows: the
    λ-independent part, formed once for many dampings."""
    x = _pipeline.rows_to_vector(seg_rows, pipe.dtype)
    f, J, z = jacobian(pipe, x, z0)
    D, Z = signed_factor(pipe, loss_hessian(pipe, f, z), J)
    return Z, D, gram(Z)


def factor(pipe, ZDP, damping) -> GaussNewtonFactorization:
    """Factorise the ``m × m`` matrix ``K = λE + Z Zᵀ`` of ``G + λI`` (one LU). For a convex loss
    (``D ≥ 0``, so ``E = I`` and ``K ≻ 0`` for ``λ > 0``) the LU factors come from a Cholesky
    factorisation at half the flops (:func:`hessinv._linalg.spd_lu_factor`), else, and wherever
    that Cholesky fails (``λ ≤ 0``), from LU with partial pivoting."""
    Z, D, P = ZDP
    lam = jnp.asarray(damping, pipe.dtype)
    K = P + jnp.diag(lam * _E(D))
    lu, piv, perm = jax.lax.cond(jnp.all(D >= 0), spd_lu_factor, pivoted_lu_factor, K)
    return GaussNewtonFactorization(pipe, lam, Z, D, P, lu, piv, perm)


@jax.tree_util.register_pytree_node_class
class GaussNewtonFactorization(Factorization):
    """A reusable factorisation of ``G + λI`` in the output space (``method="gauss_newton"``). A pytree.

    ``solve`` costs two ``m × n`` products and one ``m × m`` LU solve per right-hand side.

    Attributes:
      damping: ``λ``.
      Z: ``(m, n)``, ``diag(|d|^{1/2}) Vᵀ J`` (``G = Zᵀ diag(D) Z``).
      D: ``(m,)``, the signs of ``Hℓ``'s eigenvalues, ``−1, 0, +1``.
      P: ``(m, m)``, ``Z Zᵀ``.
      lu, piv, perm: LU factors of ``K = λE + Z Zᵀ``, ``K[perm] = L U``, with LAPACK-style
        pivots ``piv``: from its Cholesky factor (no interchanges) for a convex loss, else with
        partial pivoting.
    """

    route = "gauss_newton"
    _sample_needs = " and, on this route, a convex loss (Hℓ ⪰ 0; method='dense' or 'riccati' have no such limit)"

    def __init__(self, pipe, damping, Z, D, P, lu, piv, perm):
        self._pipe = pipe
        self.damping, self.Z, self.D, self.P = damping, Z, D, P
        self.lu, self.piv, self.perm = lu, piv, perm

    @property
    def pipe(self):
        return self._pipe

    def tree_flatten(self):
        return (self.damping, self.Z, self.D, self.P, self.lu, self.piv, self.perm), self._pipe

    @classmethod
    def tree_unflatten(cls, pipe, children):
        return cls(pipe, *children)

    @property
    def K(self):
        """``λE + Z Zᵀ``, the ``m × m`` matrix the route inverts."""
        return self.P + jnp.diag(self.damping * _E(self.D))

    # -- solves and products ----------------------------------------------------------------------

    def solve_rows(self, g_rows):
        """:meth:`solve` on per-segment row matrices: ``(g − Zᵀ K^{-1} Z g) / λ``."""
        g = _pipeline.rows_to_vector(g_rows, self.pipe.dtype)
        t = lu_solve(self.lu, self.perm, self.Z @ g)
        # t @ Z, not Z.T @ t: XLA:CPU materialised Z.T (1762 × 640 on the digits MLP) for the latter
        return _pipeline.vector_to_rows(self.pipe, (g - t @ self.Z) / self.damping)

    def matvec_rows(self, v_rows):
        """``(G + λI) v = λv + Zᵀ D Z v``, on per-segment rows."""
        x = _pipeline.rows_to_vector(v_rows, self.pipe.dtype)
        return _pipeline.vector_to_rows(self.pipe, self.damping * x + (self.D * (self.Z @ x)) @ self.Z)

    # -- selected inversion and sampling ---------------------------------------------------------

    def _inverse_blocks_rows(self, diagonal: bool):
        """Blocks of ``(G + λI)^{-1} = (I − Zᵀ K^{-1} Z) / λ``: with ``W = K^{-1} Z`` (``m`` LU
        solves, ``m² n``), layer ``t``'s block is ``(I − Z_tᵀ W_t) / λ`` (``m p²`` each)."""
        dt = self.pipe.dtype
        W = lu_solve(self.lu, self.perm, self.Z)
        out, i = [], 0
        for seg in self.pipe.segments:
            k = seg.n * seg.p
            m = self.Z.shape[0]
            Zs = jnp.reshape(self.Z[:, i : i + k], (m, seg.n, seg.p))
            Ws = jnp.reshape(W[:, i : i + k], (m, seg.n, seg.p))
            if diagonal:
                out.append((1 - jnp.einsum("mia,mia->ia", Zs, Ws)) / self.damping)
            else:
                ZW = jnp.einsum("mia,mib->iab", Zs, Ws)
                out.append(jax.vmap(sym)(jnp.eye(seg.p, dtype=dt) - ZW) / self.damping)
            i += k
        return out

    def _sample_rows(self, eps_rows):
        """``x = (G + λI)^{-1/2} ε`` for a convex loss (``Hℓ ⪰ 0``, so ``G + λI = λI + ZᵀZ``).

        With ``ZZᵀ = U diag(s²) Uᵀ`` the symmetric root is
        ``(G + λI)^{-1/2} = λ^{-1/2} I + Zᵀ U diag(h) Uᵀ Z`` with
        ``h = ((λ + s²)^{-1/2} − λ^{-1/2}) / s² = −1 / (√λ √(λ+s²) (√λ + √(λ+s²)))``, which needs
        no division by ``s`` (zero singular values are fine). NaN where ``Hℓ`` has a negative
        eigenvalue or ``λ ≤ 0`` (this route then has no real root to offer)."""
        dt = self.pipe.dtype
        eps = _pipeline.rows_to_vector(eps_rows, dt)
        s2, U = jnp.linalg.eigh(self.P)
        r, rs = jnp.sqrt(self.damping), jnp.sqrt(self.damping + jnp.maximum(s2, 0))
        h = -1 / (r * rs * (r + rs))
        x = eps / r + (U @ (h * (U.T @ (self.Z @ eps)))) @ self.Z
        bad = jnp.any(self.D < 0) | ~(self.damping > 0)
        return _pipeline.vector_to_rows(self.pipe, jnp.where(bad, jnp.nan, x))

    def _is_positive_definite(self):
        """``G + λI`` positive definite and ``Hℓ ⪰ 0`` (what :meth:`_sample_rows` needs)."""
        pos, _, _ = self._inertia()
        return (pos == _pipeline.n_params(self.pipe)) & ~jnp.any(self.D < 0)

    # -- what the m × m matrices tell --------------------------------------------------------------

    def rcond_tol(self):
        """``max(m, 1)·eps(dtype)``."""
        return jnp.asarray(max(self.pipe.segments[-1].a_in, 1) * float(jnp.finfo(self.pipe.dtype).eps), self.pipe.dtype)

    def _logdet(self):
        """``(−1)^{#(d<0)} sign(det K)`` and ``(n − m) log λ + log|det K|``."""
        dt = self.pipe.dtype
        m, n = self.Z.shape
        u = jnp.diagonal(self.lu)
        swaps = jnp.sum(self.piv != jnp.arange(m, dtype=self.piv.dtype)) + jnp.sum(self.D < 0)
        sign = jnp.prod(jnp.sign(u)) * jnp.where(swaps % 2 == 1, -jnp.ones((), dt), jnp.ones((), dt))
        return sign, (n - m) * jnp.log(self.damping) + jnp.sum(jnp.log(jnp.abs(u)))

    def output_eigvalsh(self):
        """The eigenvalues ``λ + eig(S)`` of ``G + λI`` off the ``n − m`` directions where it is
        ``λ`` (``min(m, n)`` of them, ascending; see the module docstring)."""
        m, n = self.Z.shape
        s2, U = jnp.linalg.eigh(self.P)
        s = jnp.sqrt(jnp.maximum(s2, 0))
        S = s[:, None] * ((U.T * _E(self.D)[None, :]) @ U) * s[None, :]
        mu = jnp.linalg.eigvalsh(sym(S))
        if n < m:  # rank S ≤ n: drop the m − n surplus zeros
            mu = jnp.sort(mu[jnp.argsort(jnp.abs(mu))[m - n :]])
        return self.damping + mu

    def _inertia(self):
        m, n = self.Z.shape
        ev, extra = self.output_eigvalsh(), max(n - m, 0)
        lam = self.damping
        top = jnp.max(jnp.abs(ev))
        if extra:
            top = jnp.maximum(top, jnp.abs(lam))
        thr = self.rcond_tol() * top
        zero = jnp.abs(ev) <= thr
        lam_zero = jnp.abs(lam) <= thr
        pos = jnp.sum((ev > 0) & ~zero, dtype=jnp.int32) + jnp.where((lam > 0) & ~lam_zero, extra, 0).astype(jnp.int32)
        neg = jnp.sum((ev < 0) & ~zero, dtype=jnp.int32) + jnp.where((lam < 0) & ~lam_zero, extra, 0).astype(jnp.int32)
        n_zero = jnp.sum(zero, dtype=jnp.int32) + jnp.where(lam_zero, extra, 0).astype(jnp.int32)
        return pos, neg, n_zero

    def _info(self) -> Info:
        """``min_rcond`` is ``min|eig K| / max|eig K|`` of ``K = λE + Z Zᵀ``, the ``m × m`` matrix
        the route inverts; ``rcond_tol = max(m, 1)·eps``. ``ok`` also needs ``λ > 0``;
        ``factor_ok`` (``logdet``, ``inertia``) needs only ``λ > 0`` and finite factors (a
        singular ``K`` gives ``log|det| = −inf`` and zero eigenvalues). There are no per-layer
        pivots: ``worst_layer`` and ``first_nonfinite_layer`` are -1."""
        tol = self.rcond_tol()
        min_rc = rcond(jnp.linalg.eigvalsh(self.K))
        lam_ok = self.damping > 0
        finite = jnp.isfinite(self.damping)
        for a in (self.Z, self.D, self.lu):
            finite &= jnp.all(jnp.isfinite(a))
        none = jnp.array(-1, jnp.int32)
        ok = finite & (min_rc > tol) & lam_ok
        return Info(ok, finite & lam_ok, finite, min_rc, none, none, tol, route_code(self.route))

    def _raise_for(self, info: Info, need: str) -> None:
        """Raise ``SingularPivotError`` (``λ ≤ 0``, or a singular ``K`` for a solve) or
        ``NonFiniteError``, naming the route; silent under a trace."""
        if not _pipeline.is_concrete(info, self.damping):
            return
        info = jax.tree.map(np.asarray, info)
        if not np.all(np.asarray(self.damping) > 0):
            raise SingularPivotError(_damping_message(self.pipe, np.asarray(self.damping)))
        rc = np.asarray(info.min_rcond)
        where = f"the input of {self.pipe.layer_name(self.pipe.n_layers - 1)}"
        if not np.all(info.finite) and np.any(np.isnan(rc)):
            raise NonFiniteError(
                f"method='gauss_newton': NaN or inf in the Jacobian J of the network outputs ({where}) or in the "
                "loss Hessian Hℓ"
            )
        if need == "solve" and np.any(rc <= np.asarray(info.rcond_tol)):
            m = self.pipe.segments[-1].a_in
            raise SingularPivotError(
                f"method='gauss_newton' cannot solve: the m × m output-space matrix K = λE + Z Zᵀ (m = {m}) is "
                f"singular or numerically singular (reciprocal condition {float(np.min(rc)):.3g} <= "
                f"{float(np.max(info.rcond_tol)):.3g}), so G + λI is (numerically) singular: λ is negligible next "
                "to G, or cancels one of its negative eigenvalues (indefinite Hℓ). Change the damping."
            )
        if not np.all(info.finite):
            raise NonFiniteError("method='gauss_newton': NaN or inf in the factorisation of G + λI")
