"""Manifold parametrizations: the Cayley map to orthogonal/unitary matrices.

Planned (issue 6): ``orthogonal(module, "weight")``, ``CayleyConv2d``, ``CayleyLinear``, GroupSort,
certified-robustness helpers.
"""

from coreopt.manifold.cayley import cayley, skew

__all__ = ["cayley", "skew"]
