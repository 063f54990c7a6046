"""Hessian-vector products: Pearlmutter's trick on the pipeline, and the structured form.

* :func:`pearlmutter_hvp`: ``H v = d/dε ∇L(x + εv)``, forward-over-reverse autodiff of the
  pipeline loss (Pearlmutter 1994). The cheapest way to get one ``H v``.
* :func:`ggn_vp`: the generalised Gauss-Newton matrix's ``G v``, the same way.
* :func:`structured_hvp`: ``(H + λI) v`` from the per-layer blocks (the paper's appendix A,
  eq. 52-54): a forward pass ``dz_l = A_l dz_{l-1} + B_l v_l``, then a backward pass
  ``c_{l-1} = A_lᵀ c_l + [K_l (dz_{l-1}, v_l)]_z``, ``(Hv)_l = B_lᵀ c_l + [K_l (dz_{l-1}, v_l)]_x``.
  Once blocks exist (e.g. in a :class:`~hessinv.Factorization`) this is the matching operator,
  used for residuals and iterative refinement.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from . import _pipeline


@functools.partial(jax.jit, static_argnames=("layers",))
def pearlmutter_hvp(layers, params, z0, v):
    grad = jax.grad(lambda p: _pipeline.loss(layers, p, z0))
    return jax.jvp(grad, (params,), (v,))[1]


def ggn_vp(layers, params, z0, v, active=None):
    """``G v = Jᵀ ∇²ℓ J v`` (MATH.md section 5): ``J`` the Jacobian of the last layer's input
    in the parameters, ``ℓ`` the parameter-free last layer. One linearised forward pass (its jvp
    and, transposed, its vjp) and one hvp of ``ℓ``.
    ``active`` (per leaf of the last layer's input; default: the floating ones) marks the
    network's outputs; the other leaves (labels, carried targets) are constants."""
    body = list(layers[:-1])

    def is_out(i, x):
        return active[i] if active is not None else jnp.issubdtype(x.dtype, jnp.inexact)

    def features(p):  # the outputs among the last layer's input leaves, and that input itself
        z = _pipeline.loss(body, p, z0)  # every layer but the last
        return [x for i, x in enumerate(jax.tree.leaves(z)) if is_out(i, x)], z

    # One forward pass, linearised: its jvp gives J v and its transpose the vjp.
    p_body = list(params[:-1])
    fl, jvp, z = jax.linearize(features, p_body, has_aux=True)
    vjp = jax.linear_transpose(jvp, p_body)
    leaves, treedef = jax.tree.flatten(z)
    is_f = [is_out(i, x) for i, x in enumerate(leaves)]

    def ell(float_leaves):
        it = iter(float_leaves)
        zz = jax.tree.unflatten(treedef, [next(it) if f else x for x, f in zip(leaves, is_f)])
        return _pipeline.loss(layers[-1:], params[-1:], zz)

    HJv = jax.jvp(jax.grad(ell), (fl,), (jvp(list(v[:-1])),))[1]
    return vjp(HJv)[0] + [jax.tree.map(jnp.zeros_like, v[-1])]


def structured_hvp_rows(blocks, v_rows, damping=0.0):
    pipe, dt = blocks.pipe, blocks.pipe.dtype
    # Forward: dz_l = A_l dz_{l-1} + B_l v_l, and w_l = K_l (dz_{l-1}, v_l).
    ws, dz = [], jnp.zeros((0,), dt)
    for seg, blk, v in zip(pipe.segments, blocks.segments, v_rows):

        def fwd(dz, xs):
            A, B, K, v = xs
            return A @ dz + B @ v, K @ jnp.concatenate([dz, v])

        dz, w = _pipeline.scan(fwd, dz, (blk.A, blk.B, blk.K, v.astype(dt)), seg.n)
        ws.append(w)
    # Backward: c_L = 0.
    out, c = [None] * len(ws), jnp.zeros((1,), dt)
    for j in range(len(ws) - 1, -1, -1):
        a_in = pipe.segments[j].a_in
        blk = blocks.segments[j]

        def back(c, xs, a_in=a_in):
            A, B, w = xs
            return A.T @ c + w[:a_in], B.T @ c + w[a_in:]

        c, out[j] = _pipeline.scan(back, c, (blk.A, blk.B, ws[j]), pipe.segments[j].n, reverse=True)
    return [h + damping * v.astype(dt) for h, v in zip(out, v_rows)]


@jax.jit
def structured_hvp(blocks, v, damping=0.0):
    pipe = blocks.pipe
    return _pipeline.from_rows(pipe, structured_hvp_rows(blocks, _pipeline.to_rows(pipe, v), damping))
