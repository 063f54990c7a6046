"""The errors hessinv raises. Each names the layer and the shapes involved."""


class PipelineError(ValueError):
    """The layers, parameters, batch or vector do not form a valid pipeline."""


class SingularPivotError(ArithmeticError):
    """A stage pivot ``Q_uu`` is singular or numerically singular: ``H + λI`` cannot be solved
    reliably by the stage recursion. Raise the damping, or inspect ``Factorization.pivot_rcond``."""


class NonFiniteError(ArithmeticError):
    """NaN or inf in the parameters, the batch, the right-hand side, or a per-layer block."""


class MixedPrecisionWarning(UserWarning):
    """The parameters and the batch hold floating leaves of different precisions: the layers then
    compute (and their second derivatives are accurate) only to the lowest of them."""
