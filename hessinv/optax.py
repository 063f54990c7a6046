"""Exact Newton and Gauss-Newton steps for optax (see :mod:`hessinv._optax`).

``hessinv.optax.newton(layers)`` is an ``optax.GradientTransformationExtraArgs``; pass the batch
to ``update`` as the keyword ``z0``. ``hessinv.optax.stochastic_gauss_newton(layers, batch)``
is the mini-batch variant that reuses one factorisation over several updates.
"""

from ._optax import NewtonInfo as NewtonInfo
from ._optax import ScaleByNewtonState as ScaleByNewtonState
from ._optax import ScaleByStochasticNewtonState as ScaleByStochasticNewtonState
from ._optax import gauss_newton as gauss_newton
from ._optax import newton as newton
from ._optax import scale_by_newton as scale_by_newton
from ._optax import scale_by_stochastic_newton as scale_by_stochastic_newton
from ._optax import stochastic_gauss_newton as stochastic_gauss_newton
