"""hessinv: exact inverse-Hessian-vector products for deep networks, in time linear in depth.

A network is a list of pure layers ``z_l = f_l(z_{l-1}, x_l)`` whose last layer returns the
scalar loss. ``hvp`` gives ``H v``; ``ihvp`` gives ``(H + λI)^{-1} g`` exactly by the stage
(Riccati) recursion on the Hessian's block structure (Rahimi 2026, arXiv:2601.06096);
``factorize`` keeps the factorisation for many right-hand sides, log-determinants and inertia.
Both take the cheapest exact route for the shapes at hand (``method="auto"``, see
:mod:`hessinv.cost`): the stage recursion, the dense matrix, or Gauss-Newton in the output space.
"""

from . import adapters as adapters
from . import cost as cost
from . import laplace as laplace
from . import optax as optax
from ._api import blocks as blocks
from ._api import factorize as factorize
from ._api import hvp as hvp
from ._api import ihvp as ihvp
from ._api import loss as loss
from ._api import route as route
from ._blocks import Blocks as Blocks
from ._dense import DenseFactorization as DenseFactorization
from ._dense import hessian as hessian
from ._diagnostics import Info as Info
from ._errors import MixedPrecisionWarning as MixedPrecisionWarning
from ._errors import NonFiniteError as NonFiniteError
from ._errors import PipelineError as PipelineError
from ._errors import SingularPivotError as SingularPivotError
from ._factorization import Factorization as Factorization
from ._gauss_newton import GaussNewtonFactorization as GaussNewtonFactorization
from ._pipeline import Stack as Stack
from ._riccati import RiccatiFactorization as RiccatiFactorization
from ._spectrum import eigenvalue as eigenvalue
from ._spectrum import eigenvalue_counts as eigenvalue_counts
from ._woodbury import WoodburyFactorization as WoodburyFactorization

__version__ = "0.1.0"
