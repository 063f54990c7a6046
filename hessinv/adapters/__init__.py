"""Models from Equinox and Flax as hessinv pipelines, and answers back as model parameters.

``from_equinox(model, loss, x, y)`` and ``from_flax(model, loss, x, y)`` cut a sequential model
into hessinv's layers ``f(z, x) -> z_next`` (the batch and its targets ride in ``z``, the loss is
the last layer), with runs of identical layers as one :class:`hessinv.Stack`, and return a
:class:`Converted` whose ``to_model`` and ``to_updates`` put any params-shaped answer (a
gradient, ``hessinv.ihvp``'s Newton step) back into the model's own containers.

Neither framework is a dependency of hessinv: each is imported when its function is first
called (install them with the ``equinox`` and ``flax`` extras).
"""

from ._converted import Converted as Converted
from ._equinox import from_equinox as from_equinox
from ._flax import from_flax as from_flax
