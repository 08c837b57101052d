"""Manifold parametrizations: the Cayley map, orthogonal layers and certified Lipschitz networks.

* :func:`cayley`, :func:`skew`: the Cayley map of batched real/complex, square/rectangular
  matrices.
* :func:`orthogonal`: constrain a module's parameter to orthogonal matrices (a torch
  parametrization).
* :class:`CayleyConv2d`, :class:`CayleyLinear`: operator-level orthogonal convolution and linear
  layers (Trockman & Kolter, ICLR 2021).
* :class:`GroupSort`, :class:`MaxMin`, :class:`L2NormPool2d`, :class:`SpaceToDepth`:
  1-Lipschitz, norm-preserving building blocks.
* :func:`certified_radius`, :func:`certified_accuracy`: certified L2 robustness from margins.
"""

from coreopt.manifold.cayley import cayley, skew
from coreopt.manifold.certify import certified_accuracy, certified_radius
from coreopt.manifold.conv import CayleyConv2d, kernel_spectrum
from coreopt.manifold.layers import GroupSort, L2NormPool2d, MaxMin, SpaceToDepth
from coreopt.manifold.linear import CayleyLinear
from coreopt.manifold.parametrize import Orthogonal, UnknownMapError, orthogonal

__all__ = [
    "CayleyConv2d",
    "CayleyLinear",
    "GroupSort",
    "L2NormPool2d",
    "MaxMin",
    "Orthogonal",
    "SpaceToDepth",
    "UnknownMapError",
    "cayley",
    "certified_accuracy",
    "certified_radius",
    "kernel_spectrum",
    "orthogonal",
    "skew",
]
