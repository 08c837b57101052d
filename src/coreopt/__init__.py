"""coreopt: optimization and mechanism design for machine learning.

``import coreopt`` is deliberately light: it imports neither torch, cvxpy, transformers nor ray,
and never initialises CUDA. Submodules and the public functions below are loaded on first use.

Public entry points (one per solver)::

    coreopt.minimize(objective, params, ...)     # the shared objective layer
    coreopt.resolve_device(...)                  # CUDA when present, CPU otherwise
    coreopt.cayley(A), coreopt.skew(W)           # orthogonal parametrization (manifold)
    coreopt.orthogonal(module, "weight")         # orthogonal parametrization of a weight
    coreopt.CayleyConv2d(64, 64, 3)              # exactly orthogonal convolution
    coreopt.least_core(value_fn, players, budget=500)  # least-core credit assignment
    coreopt.quantize(model, bits=3)              # calibration-free weight quantization
    coreopt.init.apply(model, recipe="mimetic")  # initialization recipes
    coreopt.sampling.AntidistillationLogitsProcessor(proxy, g, lam=0.1)  # antidistillation

Subpackages (each loaded on first attribute access): ``objective``, ``manifold``, ``game``,
``llm``, ``credit``, ``quant``, ``init``, ``sampling``, ``parallel``, ``models``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from coreopt._version import __version__

# name -> module that defines it; resolved lazily by __getattr__ (PEP 562).
_LAZY_ATTRS: dict[str, str] = {
    "minimize": "coreopt.objective",
    "MinimizeConfig": "coreopt.objective",
    "MinimizeResult": "coreopt.objective",
    "Objective": "coreopt.objective",
    "resolve_device": "coreopt.objective",
    "resolve_dtype": "coreopt.objective",
    "directional_derivative": "coreopt.objective",
    "parallel_map": "coreopt.parallel",
    "get_executor": "coreopt.parallel",
    "cayley": "coreopt.manifold",
    "skew": "coreopt.manifold",
    "orthogonal": "coreopt.manifold",
    "CayleyConv2d": "coreopt.manifold",
    "CayleyLinear": "coreopt.manifold",
    "least_core": "coreopt.game",
    "aleast_core": "coreopt.game",
    "LeastCoreConfig": "coreopt.game",
    "LeastCoreResult": "coreopt.game",
    "quantize": "coreopt.quant",
    "QuantizeConfig": "coreopt.quant",
    "QuantizeResult": "coreopt.quant",
    "Status": "coreopt.status",
}
_SUBMODULES = {
    "objective",
    "parallel",
    "manifold",
    "game",
    "models",
    "status",
    "errors",
    "cli",
    "init",
    "credit",
    "sampling",
    "quant",
    "llm",
}

__all__ = ["__version__", *sorted(_LAZY_ATTRS), *sorted(_SUBMODULES)]


def __getattr__(name: str) -> Any:
    if name in _LAZY_ATTRS:
        value = getattr(importlib.import_module(_LAZY_ATTRS[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        module = importlib.import_module(f"coreopt.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'coreopt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover - for static analysers only
    from coreopt import (
        credit,
        errors,
        game,
        init,
        llm,
        manifold,
        models,
        objective,
        parallel,
        quant,
        sampling,
        status,
    )
    from coreopt.manifold import cayley, skew
    from coreopt.objective import (
        MinimizeConfig,
        MinimizeResult,
        Objective,
        directional_derivative,
        minimize,
        resolve_device,
        resolve_dtype,
    )
    from coreopt.parallel import get_executor, parallel_map
    from coreopt.quant import QuantizeConfig, QuantizeResult, quantize
    from coreopt.status import Status
