"""Small dense linear algebra shared by the routes: symmetrising, and triangular solves with
LU and Cholesky factors."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sym(M):
    """``½ (M + Mᵀ)``: the symmetric part (rounding makes computed symmetric products drift)."""
    return 0.5 * (M + M.T)


def lu_solve(lu, perm, b, trans: bool = False):
    """Solve ``Q x = b`` (or ``Qᵀ x = b``) with an LU factorisation ``Q[perm] = L U`` given as the
    permutation ``perm``, not LAPACK's pivots: converting those to a permutation is a
    sequential loop, which would then run inside every stage of a scan."""
    vec = b.ndim == 1
    b = b[:, None] if vec else b
    tri = jax.lax.linalg.triangular_solve
    if not trans:
        y = tri(lu, b[perm], left_side=True, lower=True, unit_diagonal=True)
        x = tri(lu, y, left_side=True, lower=False)
    else:  # Qᵀ = Uᵀ Lᵀ P
        y = tri(lu, b, left_side=True, lower=False, transpose_a=True)
        w = tri(lu, y, left_side=True, lower=True, unit_diagonal=True, transpose_a=True)
        x = jnp.zeros_like(w).at[perm].set(w)
    return x[:, 0] if vec else x


def pivot_solve(Q, X):
    """``Q^{-1} X`` by LU with partial pivoting of the wide matrix ``[Q X]``: LAPACK's ``getrf``
    applies the row interchanges and ``L^{-1}`` to ``X`` as it factorises, leaving
    ``[U  L^{-1} P X]``, so one triangular solve finishes the job. Inside a scan this is cheaper
    than factorising ``Q`` and then permuting ``X``: turning pivots into a permutation is a loop
    (do it afterwards, batched over all layers, if later solves need it).

    Returns ``(lu, pivots, Q^{-1} X)`` with ``lu`` the ``(p, p)`` LU factors of ``Q``."""
    p = Q.shape[0]
    lu, piv, _ = jax.lax.linalg.lu(jnp.concatenate([Q, X], axis=1))  # the unused permutation is dead code
    return lu[:, :p], piv, jax.lax.linalg.triangular_solve(lu[:, :p], lu[:, p:], left_side=True, lower=False)


def cho_solve(L, b):
    """``M^{-1} b`` from ``M = L Lᵀ``."""
    tri = jax.lax.linalg.triangular_solve
    y = tri(L, b[:, None], left_side=True, lower=True)
    return tri(L, y, left_side=True, lower=True, transpose_a=True)[:, 0]
