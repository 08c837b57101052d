"""Reference architectures (consumers of the solvers; solvers never import this package).

* :class:`LipschitzConvNet`: a 1-Lipschitz KWLarge-style classifier of Cayley layers.
"""

from coreopt.models.lipschitz import LipschitzConvNet

__all__ = ["LipschitzConvNet"]
