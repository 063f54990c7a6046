"""The stage matrix ``Q_l = K_l + M_lᵀ S_l M_l`` with ``M_l = [A_l B_l]`` (MATH.md section 3),
dense, or exploiting a batch-block-diagonal ``A_l``.

A layer that acts on each example of a batch separately (a dense layer, an activation, a
per-example head) has ``A_l = ∂f_l/∂z`` block-diagonal: one ``w_out × w_in`` block per example.
Stored densely, ``A_l`` costs the recursion ``O(a³)`` per stage with ``a = batch × width``;
block by block, the products with ``A_l`` cost ``O(a² w)``, leaving ``S_l B_l`` and the ``S``
update (``O(a² p)``) as the dominant terms.

Whether a layer really acts per example is not something a shape can tell (a batch norm, a
pooling across examples, attention over the batch all keep the shapes). So the structured product
is used only where the numbers prove it exact: ``A_l``'s off-diagonal blocks are all exactly zero.
Each stage checks that (batched, before the sequential recursion) and takes the dense product
otherwise (``lax.cond``: only one branch runs). The answer never depends on the guess.

The blocks themselves are formed the same way (:mod:`hessinv._blocks`): for a candidate layer,
``A_l`` and the z-z part of ``K_l`` come from ``w_in`` tangents repeated in every example
instead of ``a_in`` one-hot ones, behind probes that prove the layer per-example at this point.
Where the probes pass, the one-pass ``ihvp`` never assembles them (:func:`Q_parts_per_example`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import _pipeline

#: Below this many entries of ``A_l`` (``a_out · a_in``) the dense products are cheaper than the
#: bookkeeping (measured: the batch-4 width-4 benchmark MLP, a = 16, is fastest dense).
MIN_STRUCTURED = 128 * 128


def is_large(seg: _pipeline.Segment) -> bool:
    """Is a layer of segment ``seg`` large (``a_out · a_in ≥`` :data:`MIN_STRUCTURED`)? Then the
    solves redo ``dz_l = A_l dz_{l-1} + B_l dx_l`` from the layer (one-pass ``ihvp``: a jvp) or
    from its blocks (:class:`~hessinv.Factorization`), instead of keeping the dense closed-loop
    map ``A_l − B_l G_l``: forming, allocating and writing that ``a_out × a_in`` matrix per layer
    (2 MB a layer for a batch-64 width-8 MLP) cost more than the recursion step itself. Small
    layers keep it: one matrix-vector product a step is the cheapest pass there is."""
    return seg.a_out * max(seg.a_in, 1) >= MIN_STRUCTURED


def batch_blocks(seg: _pipeline.Segment):
    """``(n_examples, w_out, w_in)`` if segment ``seg``'s ``A_l`` may be block-diagonal over a
    leading batch axis, else ``None``: the flat input and output example-major over the same
    ``n_examples ≥ 2``, and big enough to be worth it."""
    if seg.frozen_input or seg.a_in * seg.a_out < MIN_STRUCTURED:
        return None
    n = seg.in_spec.examples
    if n < 2 or seg.out_spec.examples != n:
        return None
    return n, seg.a_out // n, seg.a_in // n


def diagonal_blocks(seg: _pipeline.Segment, A):
    """For ``A`` ``(n, a_out, a_in)``: its diagonal blocks ``(n, n_examples, w_out, w_in)`` and
    whether every off-diagonal entry is exactly zero ``(n,)``; ``(None, None)`` when the segment
    has no batch structure to look for."""
    bb = batch_blocks(seg)
    if bb is None:
        return None, None
    e, wo, wi = bb
    A4 = A.reshape(A.shape[0], e, wo, e, wi)
    idx = np.arange(e)
    diag = jnp.moveaxis(A4[:, idx, :, idx, :], 0, 1)  # (n, e, wo, wi)
    off = ~np.eye(e, dtype=bool)[:, None, :, None]
    return diag, jnp.all(jnp.where(off, A4, 0) == 0, axis=(1, 2, 3, 4))


def Q_parts(S, M, K, a_in: int, blocks=None, is_block=None):
    """The blocks ``(Q_zz, Q_uz, Q_uu)`` of ``Q = K + Mᵀ S M``: dense, or (when ``is_block``)
    with ``A = M[:, :a_in]`` applied block by block from its diagonal ``blocks``
    ``(n_examples, w_out, w_in)``. ``K=None`` means zero; of a (symmetric) ``K`` only the lower
    blocks are read. ``Q`` itself is never assembled: the recursion uses its blocks separately,
    and assembling a large ``Q`` is a copy that costs as much as the structured products."""

    def split(Q):
        return Q[:a_in, :a_in], Q[a_in:, :a_in], Q[a_in:, a_in:]

    def dense(S, M, blocks):
        return split(M.T @ (S @ M))

    def structured(S, M, blocks):
        return block_products(S, blocks, M[:, a_in:])

    if blocks is None:
        parts = dense(S, M, None)
    else:
        parts = jax.lax.cond(is_block, structured, dense, S, M, blocks)
    return parts if K is None else tuple(q + k for q, k in zip(parts, split(K)))


def block_products(S, blocks, B):
    """``(Aᵀ S A, (Aᵀ S B)ᵀ, Bᵀ S B)`` with ``A`` block-diagonal, given by its diagonal
    ``blocks`` ``(n_examples, w_out, w_in)``: ``O(a² w + a² p)`` instead of ``O(a³)``."""
    e, wo, wi = blocks.shape
    a_out, a_in = e * wo, e * wi
    SA = jnp.einsum("xew,ewv->xev", S.reshape(a_out, e, wo), blocks).reshape(a_out, a_in)  # S A
    AtSA = jnp.einsum("ewv,ewy->evy", blocks, SA.reshape(e, wo, a_in)).reshape(a_in, a_in)
    SB = S @ B
    AtSB = jnp.einsum("ewv,ewp->evp", blocks, SB.reshape(e, wo, -1)).reshape(a_in, -1)
    return AtSA, AtSB.T, B.T @ SB


def Q_parts_per_example(S, blocks, B, K=None):
    """The blocks ``(Q_zz, Q_uz, Q_uu)`` of ``Q = K + Mᵀ S M`` for a layer proved per-example,
    from ``A``'s diagonal ``blocks`` and ``K`` as a :class:`hessinv._blocks.PerExampleK` of one
    layer (``None``: zero), so that no ``a × a`` matrix but ``S`` and ``Q_zz`` is ever written:
    ``K_zz``'s blocks are added where ``Aᵀ S A`` is written (one fused pass)."""
    AtSA, Q_uz, Q_uu = block_products(S, blocks, B)
    if K is None:
        return AtSA, Q_uz, Q_uu
    return AtSA + block_diagonal(K.zz), Q_uz + K.xz, Q_uu + K.xx


def block_diagonal(blocks):
    """The dense block-diagonal ``(e · w_out, e · w_in)`` matrix of ``blocks`` ``(e, w_out, w_in)``
    (a select on a broadcast: XLA fuses it into the pass that consumes it)."""
    e, wo, wi = blocks.shape
    eye = np.eye(e, dtype=bool)[:, None, :, None]
    return jnp.where(eye, blocks[:, :, None, :], 0).reshape(e * wo, e * wi)


def block_matvec(blocks, x, transpose: bool = False):
    """``A x`` (or ``Aᵀ x``) for a block-diagonal ``A`` given by its diagonal ``blocks``
    ``(n_examples, w_out, w_in)``, reading ``a·w`` numbers instead of ``a²``."""
    e = blocks.shape[0]
    if transpose:
        return jnp.einsum("ewv,ew->ev", blocks, x.reshape(e, -1)).reshape(-1)
    return jnp.einsum("ewv,ev->ew", blocks, x.reshape(e, -1)).reshape(-1)


def matvec(A, blocks, is_block, x, transpose: bool = False):
    """``A x`` (or ``Aᵀ x``) for one layer's ``A`` ``(a_out, a_in)``: from its diagonal ``blocks``
    ``(n_examples, w_out, w_in)`` when ``is_block`` (:func:`block_matvec`), else dense.
    ``blocks=None``: dense."""

    def dense(A, blocks, x):
        return A.T @ x if transpose else A @ x

    def structured(A, blocks, x):
        return block_matvec(blocks, x, transpose)

    if blocks is None:
        return dense(A, None, x)
    return jax.lax.cond(is_block, structured, dense, A, blocks, x)
