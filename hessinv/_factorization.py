"""The factorisation protocol: what every exact route of ``(C + λI)^{-1}`` offers.

``C`` is the Hessian or the generalised Gauss-Newton matrix of the pipeline loss. Every route
(the stage recursion, the paper's Woodbury route, the dense matrix, Gauss-Newton in the output
space) returns a :class:`Factorization`: a pytree, so it crosses ``jit`` and ``vmap`` and can be
closed over, with the same methods everywhere. The routes differ only in cost (MATH.md section 7)
and in which pivots can fail, which :meth:`Factorization.info` reports in one :class:`Info`.

A subclass implements ``pipe``, ``damping``, :meth:`solve_rows`, :meth:`matvec_rows`, ``_info``
and, where the route supports them, ``_logdet``, ``_inertia``, ``_sample_rows`` and a faster
``_inverse_blocks_rows`` than the generic one here (one solve per parameter). The public methods here add
what every route shares: ``g`` is validated against the parameters, eager calls raise instead of
returning a wrong number, and every query runs jitted (keyed on the static pipeline), so the
eager convenience path compiles once instead of dispatching op by op.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from . import _diagnostics, _pipeline
from ._diagnostics import Info
from ._errors import SingularPivotError


class Factorization:
    """A reusable factorisation of ``C + λI`` (``C`` the Hessian or the Gauss-Newton matrix).

    Build one with :func:`hessinv.factorize`. ``F.solve(g)`` is ``(C + λI)^{-1} g`` and
    ``jax.vmap(F.solve)(gs)`` solves many right-hand sides; ``F.logdet()`` gives
    ``(sign, log|det|)``, ``F.inertia()`` the eigenvalue sign counts ``(n_pos, n_neg, n_zero)``,
    ``F.info()`` the pivot health (which also names the route that ran), ``F.matvec(v)`` the
    matrix itself applied to ``v``.
    """

    #: the route's name, one of :data:`hessinv._diagnostics.ROUTES`
    route: str = ""
    #: what else :meth:`sample` needs on this route (appended to its error message)
    _sample_needs: str = ""

    @property
    def pipe(self) -> _pipeline.Pipeline:
        raise NotImplementedError

    # -- what each route implements -------------------------------------------------------------

    def solve_rows(self, g_rows) -> list:
        """:meth:`solve` on per-segment row matrices (the flat form of a params-shaped tree)."""
        raise NotImplementedError

    def matvec_rows(self, v_rows) -> list:
        """:meth:`matvec` on per-segment row matrices."""
        raise NotImplementedError

    def _info(self) -> Info:
        raise NotImplementedError

    def _logdet(self):
        raise NotImplementedError(f"method={self.route!r} does not compute log-determinants")

    def _inertia(self):
        raise NotImplementedError(f"method={self.route!r} does not compute the inertia")

    def _inverse_blocks_rows(self, diagonal: bool) -> list:
        """The diagonal blocks of ``(C + λI)^{-1}``, one ``(n_seg, p, p)`` array per segment (only
        their diagonals, ``(n_seg, p)``, with ``diagonal``).

        Generic and exact: one solve per parameter, against the unit vectors of each layer's
        block (``n`` solves in all). Routes with a cheaper selected inversion override it."""
        pipe, dt = self.pipe, self.pipe.dtype
        zeros = [jnp.zeros((seg.n, seg.p), dt) for seg in pipe.segments]
        out = []
        for j, seg in enumerate(pipe.segments):

            def column(i, c, j=j):
                e = list(zeros)
                e[j] = zeros[j].at[i, c].set(1)
                return self.solve_rows(e)[j][i]  # row c of block i (the inverse is symmetric)

            idx_i, idx_c = jnp.divmod(jnp.arange(seg.n * seg.p), max(seg.p, 1))
            rows = jax.lax.map(lambda ic: column(*ic), (idx_i, idx_c)) if seg.n * seg.p else jnp.zeros((0, seg.p), dt)
            B = jnp.reshape(rows, (seg.n, seg.p, seg.p))
            out.append(jnp.diagonal(B, axis1=1, axis2=2) if diagonal else B)
        return out

    def _sample_rows(self, eps_rows) -> list:
        """``x`` with ``Cov(x) = (C + λI)^{-1}`` when ``eps`` (rows shaped like params) is standard
        normal; NaN when ``C + λI`` is not positive definite."""
        raise NotImplementedError(f"method={self.route!r} does not draw samples; use method='riccati' or 'dense'")

    def _is_positive_definite(self):
        """Whether ``C + λI`` is (numerically) positive definite, as a boolean array."""
        pos, _, _ = self._inertia()
        return pos == _pipeline.n_params(self.pipe)

    def _raise_for(self, info: Info, need: str) -> None:
        """Turn a concrete ``info`` into an exception (the stage recursion's wording by default)."""
        _diagnostics.raise_for(self.pipe, info, need=need)

    # -- shared ---------------------------------------------------------------------------------

    def _eager_check(self, need: str) -> None:
        """Outside ``jit``, refuse to return a wrong number: raise if the factorisation does not
        allow ``need`` (``"solve"``, or ``"factor"`` for ``logdet``/``inertia``)."""
        if not _pipeline.is_concrete(self):
            return
        if getattr(self, "_info_cache", None) is None:
            self._info_cache = self.info()
        self._raise_for(self._info_cache, need)
        if not _pipeline.is_concrete(self._info_cache):
            self._info_cache = None  # called under an outer trace: nothing concrete to keep

    def solve(self, g):
        """``(C + λI)^{-1} g``; ``g`` (and the result) shaped like params.

        Outside ``jit`` this raises :class:`~hessinv.NonFiniteError` for NaN/inf in ``g`` and
        :class:`~hessinv.SingularPivotError` when the factorisation cannot solve; under ``jit``
        check :meth:`info` yourself."""
        _pipeline.check_like_params(self.pipe, g, "g")
        if _pipeline.is_concrete(g):
            _diagnostics.check_finite(list(g), "g")
        self._eager_check("solve")
        return _on_rows(self, _solve_rows, list(g))

    def matvec(self, v):
        """``(C + λI) v`` from what the factorisation stores; ``v`` shaped like params."""
        return _on_rows(self, _matvec_rows, list(v))

    def logdet(self):
        """``(sign, log|det(C + λI)|)``."""
        self._eager_check("factor")
        return _logdet(self)

    def inertia(self):
        """``(n_pos, n_neg, n_zero)``: the eigenvalue sign counts of ``C + λI`` (an eigenvalue
        counts as zero below the route's ``rcond_tol``, relative to its pivot)."""
        self._eager_check("factor")
        return _inertia(self)

    def inverse_diagonal(self):
        """The diagonal of ``(C + λI)^{-1}``, shaped like params: exact marginal variances when
        ``C + λI`` is positive definite (a Laplace posterior), and valid for any nonsingular
        ``C + λI``, indefinite included. Its sum is the exact trace of the inverse.

        The stage recursion computes it by selected inversion (one extra pass over the layers,
        MATH.md section 3), the dense and output-space routes from their factors; no route forms
        the inverse.

        Examples:
          >>> import jax, jax.numpy as jnp, numpy as np, hessinv
          >>> from jax.flatten_util import ravel_pytree
          >>> jax.config.update("jax_enable_x64", True)
          >>> def layer(z, x):
          ...     return jnp.tanh(z @ x["W"] + x["c"])
          >>> def mse(z, x):
          ...     return jnp.mean((z @ x["w"] - 1.0) ** 2)
          >>> init = lambda k: {"W": jax.random.normal(k, (3, 3)), "c": jnp.zeros(3)}
          >>> layers = [layer, hessinv.Stack(layer, 3), mse]
          >>> params = [init(jax.random.key(0)), jax.vmap(init)(jax.random.split(jax.random.key(1), 3)),
          ...           {"w": jnp.ones(3)}]
          >>> z0 = jax.random.normal(jax.random.key(2), (4, 3))
          >>> F = hessinv.factorize(layers, params, z0, damping=0.1)   # indefinite H + 0.1 I
          >>> d = F.inverse_diagonal()                                  # shaped like params
          >>> M = hessinv.hessian(layers, params, z0) + 0.1 * np.eye(51)
          >>> bool(np.allclose(ravel_pytree(d)[0], np.diag(np.linalg.inv(M))))
          True
        """
        self._eager_check("solve")
        return _pipeline.from_rows(self.pipe, _inverse_blocks(self, True))

    def inverse_blocks(self) -> list:
        """Each layer's diagonal block of ``(C + λI)^{-1}``: a list with one entry per entry of
        ``params``, ``(p, p)`` for a layer and ``(n, p, p)`` for a :class:`~hessinv.Stack` of
        ``n`` layers, where ``p`` is the layer's parameter count in the order of
        ``jax.flatten_util.ravel_pytree`` of its params (float64 or the pipeline's dtype)."""
        self._eager_check("solve")
        return _entries(self.pipe, _inverse_blocks(self, False))

    def sample(self, key, shape=()):
        """Draws from ``N(0, (C + λI)^{-1})``, shaped like params with ``shape`` prepended to every
        leaf: exact covariance, through the route's factor (the stage pivots' Cholesky factors
        and the unit block-triangular ``T`` of ``C + λI = Tᵀ blockdiag(Q_uu) T``).

        ``C + λI`` must be positive definite: eagerly a :class:`~hessinv.SingularPivotError` says
        so otherwise; under ``jit`` the samples are NaN. Add ``mean`` yourself (a Laplace
        posterior is ``params + F.sample(key)``)."""
        shape = (int(shape),) if np.ndim(shape) == 0 else tuple(int(s) for s in shape)
        if _pipeline.is_concrete(self):
            self._eager_check("solve")
            if not bool(_positive_definite(self)):
                raise SingularPivotError(
                    f"sample needs C + λI positive definite{self._sample_needs} (method={self.route!r}); "
                    f"C + λI has inertia (n_pos, n_neg, n_zero) = {tuple(int(c) for c in self.inertia())}. "
                    "A Laplace posterior uses the Gauss-Newton matrix (curvature='ggn'), or more damping "
                    "where the Hessian is indefinite."
                )
        return _sample(self, key, shape)

    def info(self) -> Info:
        """Health and finiteness, as arrays (usable under ``jit``)."""
        return _info(self)

    def check(self, need: str = "solve") -> Factorization:
        """Raise :class:`~hessinv.SingularPivotError` / :class:`~hessinv.NonFiniteError` unless
        the factorisation is usable for ``need``: ``"solve"`` or ``"factor"`` (``logdet`` and
        ``inertia``). Needs concrete values (outside ``jit``); returns ``self`` for chaining."""
        self._raise_for(self.info(), need)
        return self


def _compiled_unless_runs(f, **jit_kwargs):
    """``f(F, ...)`` as one compiled program, except for a pipeline with runs of identical plain
    entries: there ``f`` runs op by op around the programs it calls, so that the arrays of the
    list's entries (one per leaf and entry) never become a program's arguments, whose number
    would drive its compile time."""
    compiled = jax.jit(f, **jit_kwargs)
    return lambda F, *args: (f if _pipeline.has_runs(F.pipe) else compiled)(F, *args)


def _through_rows(F, fn, tree):
    """``fn(F, rows)`` for a params-shaped ``tree``: converted to the per-segment rows and back."""
    return _pipeline.from_rows(F.pipe, fn(F, _pipeline.to_rows(F.pipe, tree)))


_on_rows = _compiled_unless_runs(_through_rows, static_argnums=1)
_solve_rows = jax.jit(lambda F, rows: F.solve_rows(rows))
_matvec_rows = jax.jit(lambda F, rows: F.matvec_rows(rows))
_logdet = jax.jit(lambda F: F._logdet())
_inertia = jax.jit(lambda F: F._inertia())
_info = jax.jit(lambda F: F._info())
_inverse_blocks = jax.jit(lambda F, diagonal: F._inverse_blocks_rows(diagonal), static_argnums=1)
_positive_definite = jax.jit(lambda F: F._is_positive_definite())


@functools.partial(jax.jit, static_argnums=2)
def _sample_rows(F, key, shape):
    """Per-segment rows ``(*shape, n_seg, p)`` of ``shape`` draws."""
    pipe = F.pipe
    eps = jax.random.normal(key, shape + (_pipeline.n_params(pipe),), pipe.dtype)
    one = lambda e: F._sample_rows(_pipeline.vector_to_rows(pipe, e))  # noqa: E731
    for _ in shape:
        one = jax.vmap(one)
    return one(eps)


def _sample_tree(F, key, shape):
    one = functools.partial(_pipeline.from_rows, F.pipe)
    for _ in shape:
        one = jax.vmap(one)
    return one(_sample_rows(F, key, shape))


_sample = _compiled_unless_runs(_sample_tree, static_argnums=2)


def _entries(pipe, seg_blocks) -> list:
    """Per-segment ``(n_seg, ...)`` arrays (one item per layer) regrouped per entry of ``params``:
    ``(n, ...)`` for a Stack entry, the single item for a plain layer."""
    parts = [[] for _ in pipe.entries]
    for seg, arr in zip(pipe.segments, seg_blocks):
        i = 0
        for p in seg.pieces:
            parts[p.entry].append(arr[i : i + p.hi - p.lo])
            i += p.hi - p.lo
    out = []
    for ps, (_, _, is_stack) in zip(parts, pipe.entries):
        arr = ps[0] if len(ps) == 1 else jnp.concatenate(ps)
        out.append(arr if is_stack else arr[0])
    return out
