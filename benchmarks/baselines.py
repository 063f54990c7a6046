"""The alternatives hessinv is measured against, all on the same pipeline and damping.

* the dense route: ``jax.hessian`` of the flattened loss, then ``jnp.linalg.solve``;
* Krylov solvers from ``jax.scipy.sparse.linalg`` (CG, GMRES) on Pearlmutter's hvp;
* a CG with the same recurrences as ``jax.scipy.sparse.linalg.cg`` that also reports its
  iteration count and whether it stopped on the tolerance (jax's ``cg`` returns ``info=None``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

import hessinv

from .common import tree_norm


def damped_hvp(layers, params, z0, damping):
    """``v ↦ (H + λI) v`` by Pearlmutter's hvp, on params-shaped pytrees."""
    return lambda v: jax.tree.map(lambda h, u: h + damping * u, hessinv.hvp(layers, params, z0, v), v)


def dense_ihvp(layers, params, z0, g, damping):
    """Everything from parameters to answer the dense way: build ``H``, solve ``(H + λI) x = g``."""
    H = hessinv.hessian(layers, params, z0)
    gf, unravel = ravel_pytree(list(g))
    return unravel(jnp.linalg.solve(H + damping * jnp.eye(H.shape[0], dtype=H.dtype), gf))


def dense_solve(H, gf, damping):
    """The dense solve alone, on a prebuilt ``H``."""
    return jnp.linalg.solve(H + damping * jnp.eye(H.shape[0], dtype=H.dtype), gf)


def jax_cg(layers, params, z0, g, damping, *, tol=1e-8, maxiter=1000):
    """``jax.scipy.sparse.linalg.cg`` on the damped hvp (relative tolerance ``tol``)."""
    x, _ = jax.scipy.sparse.linalg.cg(damped_hvp(layers, params, z0, damping), g, tol=tol, atol=0.0, maxiter=maxiter)
    return x


def jax_gmres(layers, params, z0, g, damping, *, tol=1e-8, maxiter=20, restart=50):
    """``jax.scipy.sparse.linalg.gmres`` on the damped hvp (valid for indefinite systems).

    ``maxiter`` counts restarts; at most ``maxiter * restart`` hvps."""
    x, _ = jax.scipy.sparse.linalg.gmres(
        damped_hvp(layers, params, z0, damping),
        g,
        tol=tol,
        atol=0.0,
        restart=restart,
        maxiter=maxiter,
        solve_method="batched",
    )
    return x


def counting_cg(layers, params, z0, g, damping, *, tol=1e-8, maxiter=1000):
    """Conjugate gradients with jax's recurrences, returning ``(x, iterations, recursive residual)``.

    It stops when ``||r|| <= tol ||g||`` or after ``maxiter`` iterations. On an indefinite
    ``H + λI``, ``pᵀ(H + λI)p`` can be ≤ 0 and CG has no convergence guarantee.
    """
    A = damped_hvp(layers, params, z0, damping)
    dot = lambda a, b: sum(jnp.vdot(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    axpy = lambda a, x, y: jax.tree.map(lambda u, v: a * u + v, x, y)
    bnorm = tree_norm(g)
    x0 = jax.tree.map(jnp.zeros_like, g)

    def cond(s):
        _, _, _, gamma, k = s
        return (jnp.sqrt(gamma) > tol * bnorm) & (k < maxiter)

    def body(s):
        x, r, p, gamma, k = s
        Ap = A(p)
        alpha = gamma / dot(p, Ap)
        x = axpy(alpha, p, x)
        r = axpy(-alpha, Ap, r)
        gamma_new = dot(r, r)
        p = axpy(gamma_new / gamma, p, r)
        return x, r, p, gamma_new, k + 1

    x, _, _, gamma, k = jax.lax.while_loop(cond, body, (x0, g, g, dot(g, g), 0))
    return x, k, jnp.sqrt(gamma) / bnorm
