"""The factorisation protocol: what every exact route of ``(C + λI)^{-1}`` offers.

``C`` is the Hessian or the generalised Gauss-Newton matrix of the pipeline loss. Every route
(the stage recursion, the paper's Woodbury route, the dense matrix, Gauss-Newton in the output
space) returns a :class:`Factorization`: a pytree, so it crosses ``jit`` and ``vmap`` and can be
closed over, with the same methods everywhere. The routes differ only in cost (MATH.md section 7)
and in which pivots can fail, which :meth:`Factorization.info` reports in one :class:`Info`.

A subclass implements ``pipe``, ``damping``, :meth:`solve_rows`, :meth:`matvec_rows`, ``_info``
and, where the route supports them, ``_logdet`` and ``_inertia``. The public methods here add
what every route shares: ``g`` is validated against the parameters, eager calls raise instead of
returning a wrong number, and every query runs jitted (keyed on the static pipeline), so the
eager convenience path compiles once instead of dispatching op by op.
"""

from __future__ import annotations

import jax

from . import _diagnostics, _pipeline
from ._diagnostics import Info


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
        return _solve(self, list(g))

    def matvec(self, v):
        """``(C + λI) v`` from what the factorisation stores; ``v`` shaped like params."""
        return _matvec(self, list(v))

    def logdet(self):
        """``(sign, log|det(C + λI)|)``."""
        self._eager_check("factor")
        return _logdet(self)

    def inertia(self):
        """``(n_pos, n_neg, n_zero)``: the eigenvalue sign counts of ``C + λI`` (an eigenvalue
        counts as zero below the route's ``rcond_tol``, relative to its pivot)."""
        self._eager_check("factor")
        return _inertia(self)

    def info(self) -> Info:
        """Health and finiteness, as arrays (usable under ``jit``)."""
        return _info(self)

    def check(self, need: str = "solve") -> Factorization:
        """Raise :class:`~hessinv.SingularPivotError` / :class:`~hessinv.NonFiniteError` unless
        the factorisation is usable for ``need``: ``"solve"`` or ``"factor"`` (``logdet`` and
        ``inertia``). Needs concrete values (outside ``jit``); returns ``self`` for chaining."""
        self._raise_for(self.info(), need)
        return self


_solve = jax.jit(lambda F, g: _pipeline.from_rows(F.pipe, F.solve_rows(_pipeline.to_rows(F.pipe, g))))
_matvec = jax.jit(lambda F, v: _pipeline.from_rows(F.pipe, F.matvec_rows(_pipeline.to_rows(F.pipe, v))))
_logdet = jax.jit(lambda F: F._logdet())
_inertia = jax.jit(lambda F: F._inertia())
_info = jax.jit(lambda F: F._info())
