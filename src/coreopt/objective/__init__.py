"""The shared objective layer: devices, objectives, a minimizer, finite differences.

It knows torch, devices and optimization, and nothing of games, quantization or models.
"""

from coreopt.objective.device import (
    DEVICE_ENV_VAR,
    init_linalg,
    resolve_device,
    resolve_dtype,
    synchronize,
)
from coreopt.objective.finite_diff import central_difference, directional_derivative, perturbed
from coreopt.objective.minimize import MinimizeConfig, MinimizeResult, minimize
from coreopt.objective.protocol import Objective, Parametrization, Params, vmap_objective

__all__ = [
    "DEVICE_ENV_VAR",
    "MinimizeConfig",
    "MinimizeResult",
    "Objective",
    "Parametrization",
    "Params",
    "central_difference",
    "directional_derivative",
    "init_linalg",
    "minimize",
    "perturbed",
    "resolve_device",
    "resolve_dtype",
    "synchronize",
    "vmap_objective",
]
