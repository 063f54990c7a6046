"""The dense route: form ``C`` as an ``n × n`` matrix and factorise ``C + λI`` once.

Two things live here.

* :func:`hessian`, the dense reference: ``jax.hessian`` of the loss in the flattened
  parameters (``ravel_pytree`` order), for tests and checks.
* ``method="dense"`` (:func:`factorize`, :class:`DenseFactorization`): ``C`` (the Hessian or the
  generalised Gauss-Newton matrix) formed exactly by autodiff, then one Cholesky factorisation of
  ``C + λI``, or, when that fails (``C + λI`` indefinite, the normal case for a Hessian away from
  a minimum), one LU factorisation with partial pivoting. Every solve is then two triangular
  solves, ``O(n²)``; ``logdet`` is read off the factor's diagonal, and ``inertia`` is exact
  (eigenvalues of the stored matrix when the Cholesky factor cannot certify it).

The flat ordering is that of :func:`hessinv._pipeline.to_rows`: the per-segment row matrices
``(n_seg, p)``, row-major, concatenated (:func:`hessinv._pipeline.rows_to_vector`, :func:`hessinv._pipeline.vector_to_rows`). That is
layer by layer, which differs from ``ravel_pytree`` for a :class:`~hessinv.Stack` (leaf by leaf),
but a factorisation never exposes the flat vector: ``solve`` and ``matvec`` take and return
params-shaped trees, and ``logdet``/``inertia`` do not depend on the ordering.

Cost (see :func:`flops`, :func:`bytes`): forming ``C`` is about ``n`` Hessian-vector products
(for the GGN, ``min(n, m)`` Jacobian-vector products of the body, ``m`` the width of the loss's
input), the factorisation ``n³/3`` (Cholesky) or ``2n³/3`` more (LU), and ``3n²`` numbers are
stored. Cubic in the number of parameters ``n`` where the per-layer routes are linear in depth:
the cheapest route for a small ``n`` with wide activations or many layers of few parameters,
hopeless for a large ``n``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from . import _blocks, _gauss_newton, _pipeline
from ._diagnostics import Info, route_code
from ._diagnostics import rcond as _rcond
from ._errors import NonFiniteError, SingularPivotError
from ._factorization import Factorization
from ._linalg import cho_solve, lu_solve, pivoted_lu_factor, sym

# -- the dense reference ----------------------------------------------------------------------


def hessian(layers, params, z0):
    """The dense Hessian ``∇²_x z_L``, an ``(n, n)`` matrix.

    Rows and columns follow ``jax.flatten_util.ravel_pytree(params)``: entry by entry, leaf by
    leaf (for a :class:`~hessinv.Stack`, each stacked leaf is one leaf).
    """
    _pipeline.build(layers, params, z0)
    return _hessian(tuple(layers), list(params), z0)


@functools.partial(jax.jit, static_argnames=("layers",))
def _hessian(layers, params, z0):
    flat, unravel = ravel_pytree(params)
    return jax.hessian(lambda t: _pipeline.loss(layers, unravel(t), z0))(flat)


# -- forming C ------------------------------------------------------------------------------------


def _hessian_matrix(pipe, t, z0):
    """``∇²`` of the loss in the flat vector ``t``: forward-over-reverse (``n`` hvps, vmapped)."""
    dt = pipe.dtype

    def loss(t):
        return _pipeline.forward(pipe, _pipeline.vector_to_rows(pipe, t), z0)[0].astype(dt)

    return jax.jacfwd(jax.grad(loss))(t)


def _ggn_matrix(pipe, t, z0):
    """``Jᵀ Hℓ J`` (MATH.md section 5), with ``J`` and ``Hℓ`` from the output-space route's own
    :func:`hessinv._gauss_newton.jacobian` and :func:`~hessinv._gauss_newton.loss_hessian`."""
    f, J, z = _gauss_newton.jacobian(pipe, t, z0)
    return J.T @ (_gauss_newton.loss_hessian(pipe, f, z) @ J)


# -- factorising ------------------------------------------------------------------------------------


def factorize(pipe, seg_rows, z0, damping, curvature: str) -> DenseFactorization:
    """``method="dense"``: form ``C`` and factorise ``C + λI`` once.

    ``pipe = _pipeline.build(layers, params, z0)``, ``seg_rows`` the params as per-segment rows
    (:func:`hessinv._pipeline.rows`); ``curvature`` is ``"hessian"`` or ``"ggn"`` (then the last
    layer must be parameter-free). Traceable (``jit``, ``vmap``, traced ``damping``); called on
    concrete values it runs one cached compilation. A singular ``C + λI`` is not an error here
    (see :meth:`DenseFactorization._info`).
    """
    _blocks.check_curvature(pipe, curvature)
    if _pipeline.is_concrete(seg_rows, z0, damping):
        return _factorize_jit(pipe, seg_rows, z0, damping, curvature)
    return _factorize_impl(pipe, seg_rows, z0, damping, curvature)


def _factorize_impl(pipe, seg_rows, z0, damping, curvature):
    return factor(pipe, matrix(pipe, seg_rows, z0, curvature), damping)


def matrix(pipe, seg_rows, z0, curvature) -> jax.Array:
    """``C`` itself, symmetrised: the λ-independent part, formed once for many dampings."""
    t = _pipeline.rows_to_vector(seg_rows, pipe.dtype)
    C = _hessian_matrix(pipe, t, z0) if curvature == "hessian" else _ggn_matrix(pipe, t, z0)
    return sym(C.astype(pipe.dtype))


def factor(pipe, C, damping) -> DenseFactorization:
    """Factorise ``C + λI``: Cholesky, and LU with partial pivoting where that fails."""
    dt, n = pipe.dtype, C.shape[0]
    lam = jnp.asarray(damping, dt)
    M = C + lam * jnp.eye(n, dtype=dt)
    # Cholesky fills its factor with NaN when M is not (numerically) positive definite.
    L = jnp.linalg.cholesky(M)
    is_pd = ~jnp.any(jnp.isnan(L))
    eye_idx = jnp.arange(n, dtype=jnp.int32)

    def skip_lu(M):
        return jnp.zeros_like(M), eye_idx, eye_idx

    # Only an indefinite (or singular, or non-finite) M pays for the LU (under vmap with a
    # batched predicate both branches run: that is jax's cond, still exact).
    lu, piv, perm = jax.lax.cond(is_pd, skip_lu, pivoted_lu_factor, M)
    return DenseFactorization(pipe, C, lam, L, lu, piv, perm, is_pd)


_factorize_jit = jax.jit(_factorize_impl, static_argnames=("pipe", "curvature"))


@jax.tree_util.register_pytree_node_class
class DenseFactorization(Factorization):
    """A factorisation of ``C + λI`` as a dense ``n × n`` matrix (``method="dense"``). A pytree.

    Build it with ``hessinv.factorize(..., method="dense")``. ``solve`` is two triangular
    solves (``O(n²)``) per right-hand side; ``logdet`` comes from the factor's diagonal.

    Attributes:
      C: ``(n, n)`` the Hessian or GGN, symmetrised, in the flat order of :func:`hessinv._pipeline.rows_to_vector`.
      damping: ``λ``.
      chol: ``(n, n)`` lower Cholesky factor of ``C + λI`` (NaN-filled when ``is_pd`` is false).
      lu, piv, perm: LU with partial pivoting of ``C + λI``, ``(C + λI)[perm] = L U`` (LAPACK
        row swaps ``piv``); computed only when ``is_pd`` is false (zeros / identity otherwise).
      is_pd: the Cholesky factorisation succeeded (``C + λI`` numerically positive definite).
    """

    route = "dense"

    def __init__(self, pipe, C, damping, chol, lu, piv, perm, is_pd):
        self._pipe = pipe
        self.C, self.damping, self.chol = C, damping, chol
        self.lu, self.piv, self.perm, self.is_pd = lu, piv, perm, is_pd

    @property
    def pipe(self):
        return self._pipe

    def tree_flatten(self):
        return (self.C, self.damping, self.chol, self.lu, self.piv, self.perm, self.is_pd), self._pipe

    @classmethod
    def tree_unflatten(cls, pipe, children):
        return cls(pipe, *children)

    @property
    def n(self) -> int:
        return self.C.shape[-1]

    def matrix(self):
        """``C + λI``, ``(n, n)``."""
        return self.C + self.damping * jnp.eye(self.n, dtype=self.C.dtype)

    def rcond_tol(self):
        """Below this reciprocal condition ``C + λI`` counts as singular: ``n · eps(dtype)``."""
        return jnp.asarray(max(self.n, 1) * jnp.finfo(self.pipe.dtype).eps, self.pipe.dtype)

    # -- solves ---------------------------------------------------------------------------------

    def solve_rows(self, g_rows):
        """:meth:`solve` on per-segment row matrices: Cholesky solve when ``C + λI`` is positive
        definite, LU solve otherwise (a ``lax.cond``: only one of them runs)."""
        dt = self.pipe.dtype
        g = _pipeline.rows_to_vector(g_rows, dt)
        x = jax.lax.cond(
            self.is_pd,
            lambda g: cho_solve(self.chol, g),
            lambda g: lu_solve(self.lu, self.perm, g),
            g,
        )
        return _pipeline.vector_to_rows(self.pipe, x)

    def _inverse_blocks_rows(self, diagonal: bool):
        """The diagonal blocks of ``(C + λI)^{-1}`` from the factor: ``n`` solves against the
        identity (``O(n³)``, the cost of the factorisation)."""
        dt, n = self.pipe.dtype, self.n
        inv = sym(
            jax.lax.cond(
                self.is_pd,
                lambda eye: jax.vmap(lambda e: cho_solve(self.chol, e), out_axes=1)(eye),
                lambda eye: jax.vmap(lambda e: lu_solve(self.lu, self.perm, e), out_axes=1)(eye),
                jnp.eye(n, dtype=dt),
            )
        )
        out, i = [], 0
        for seg in self.pipe.segments:
            k = seg.n * seg.p
            X = jnp.reshape(inv[i : i + k, i : i + k], (seg.n, seg.p, seg.n, seg.p))
            idx = jnp.arange(seg.n)
            B = X[idx, :, idx, :]  # (n_seg, p, p): layer t's own block
            out.append(jnp.diagonal(B, axis1=1, axis2=2) if diagonal else B)
            i += k
        return out

    def _sample_rows(self, eps_rows):
        """``x = L^{-T} ε`` with ``C + λI = L Lᵀ``: ``Cov(x) = (L Lᵀ)^{-1}``. NaN unless ``C + λI``
        is positive definite (the Cholesky factor is NaN-filled then)."""
        eps = _pipeline.rows_to_vector(eps_rows, self.pipe.dtype)
        tri = jax.lax.linalg.triangular_solve
        x = tri(self.chol, eps[:, None], left_side=True, lower=True, transpose_a=True)[:, 0]
        return _pipeline.vector_to_rows(self.pipe, x)

    def matvec_rows(self, v_rows):
        """``(C + λI) v`` from the stored ``C``, on per-segment rows."""
        x = _pipeline.rows_to_vector(v_rows, self.pipe.dtype)
        return _pipeline.vector_to_rows(self.pipe, self.C @ x + self.damping * x)

    # -- what the factor tells ------------------------------------------------------------------

    def _logdet(self):
        """``(sign, log|det|)``: ``2 Σ log L_ii`` from Cholesky; from LU, ``Σ log|U_ii|`` with
        the sign of ``Π U_ii`` times the parity of the row swaps (``-inf`` when singular)."""
        dt = self.pipe.dtype

        def from_chol(_):
            return jnp.ones((), dt), 2 * jnp.sum(jnp.log(jnp.diagonal(self.chol)))

        def from_lu(_):
            d = jnp.diagonal(self.lu)
            swaps = jnp.sum(self.piv != jnp.arange(self.n, dtype=self.piv.dtype))
            parity = jnp.where(swaps % 2 == 1, -1, 1).astype(dt)
            return jnp.prod(jnp.sign(d)) * parity, jnp.sum(jnp.log(jnp.abs(d)))

        return jax.lax.cond(self.is_pd, from_chol, from_lu, None)

    def _inertia(self):
        """``(n_pos, n_neg, n_zero)`` of ``C + λI``; an eigenvalue counts as zero when
        ``|w| <= rcond_tol · max|w|`` (the rule behind ``info().ok``).

        A successful Cholesky factorisation alone does not rule out eigenvalues below that
        threshold (a PSD Gauss-Newton matrix at ``λ = 0`` often factorises with tiny pivots), so
        positive definiteness is certified by a second Cholesky, of ``C + λI − τI`` with
        ``τ = rcond_tol · ‖C + λI‖_∞ ≥ rcond_tol · λ_max``: when it succeeds every eigenvalue
        exceeds the threshold and the answer is ``(n, 0, 0)`` at ``n³/3`` flops. Otherwise
        (indefinite, or nearly singular) the eigenvalues are computed (``eigvalsh``)."""
        n, M, tol = self.n, self.matrix(), self.rcond_tol()
        if n == 0:
            zero = jnp.zeros((), jnp.int32)
            return zero, zero, zero

        def certified(M):
            tau = tol * jnp.max(jnp.sum(jnp.abs(M), axis=1))
            return ~jnp.any(jnp.isnan(jnp.linalg.cholesky(M - tau * jnp.eye(n, dtype=M.dtype))))

        def all_positive(M):
            return jnp.array(n, jnp.int32), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32)

        def counts(M):
            w = jnp.linalg.eigvalsh(M)
            z = jnp.abs(w) <= tol * jnp.max(jnp.abs(w))
            count = functools.partial(jnp.sum, dtype=jnp.int32)
            return count((w > 0) & ~z), count((w < 0) & ~z), count(z)

        pd = jax.lax.cond(self.is_pd, certified, lambda M: jnp.array(False), M)
        return jax.lax.cond(pd, all_positive, counts, M)

    def _info(self) -> Info:
        """:class:`Info` for the one "pivot" of this route, ``C + λI`` itself.

        ``min_rcond`` is the honest reciprocal condition ``min|eig| / max|eig|`` from
        ``eigvalsh`` of the stored matrix (about ``4n³/3`` more flops than the factorisation;
        ``info()`` is a separate, lazily called computation, so a jitted solve never pays it).
        The Cholesky diagonal would be cheaper, but ``(min L_ii / max L_ii)²`` only bounds the
        reciprocal condition from above, so it could call a singular matrix healthy.
        ``ok``: finite and ``min_rcond > rcond_tol`` (``n · eps``). ``factor_ok``: finite; the
        LU factors then give ``logdet`` (``-inf`` when exactly singular) and ``eigvalsh`` the
        inertia even when ``C + λI`` is singular. No layer is singled out
        (``worst_layer = first_nonfinite_layer = -1``): the matrix couples all of them."""
        dt, tol, M = self.pipe.dtype, self.rcond_tol(), self.matrix()
        finite = jnp.all(jnp.isfinite(M))
        if self.n == 0:
            min_rc = jnp.asarray(jnp.inf, dt)
        else:
            w = jnp.linalg.eigvalsh(jnp.where(finite, M, 0))
            min_rc = jnp.where(finite, _rcond(w), jnp.nan)
        none = jnp.array(-1, jnp.int32)
        return Info(finite & (min_rc > tol), finite, finite, min_rc, none, none, tol, route_code("dense"))

    def _raise_for(self, info: Info, need: str) -> None:
        """Turn a concrete ``info`` into :class:`NonFiniteError` or :class:`SingularPivotError`
        (under a trace there is nothing concrete to check: return)."""
        if not _pipeline.is_concrete(info):
            return
        info = jax.tree.map(np.asarray, info)
        if not bool(info.finite):
            raise NonFiniteError(
                "NaN or inf in the dense matrix C + λI (method='dense'): the loss or its second "
                "derivatives are not finite at these params and z0, or the damping is not finite"
            )
        if not bool(info.ok if need == "solve" else info.factor_ok):
            raise SingularPivotError(
                f"method='dense': C + λI ({self.n} × {self.n}) is singular or numerically singular "
                f"(reciprocal condition {float(info.min_rcond):.3g} <= {float(info.rcond_tol):.3g}), so it cannot "
                "be solved reliably. Add damping (λ > 0); a Gauss-Newton matrix with a softmax "
                "cross-entropy, or any model with more parameters than the batch constrains, is "
                "singular without it."
            )
