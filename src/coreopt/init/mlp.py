"""Mimetic initialisation of an MLP's first layer (Trockman & Kolter, 2026)."""

from __future__ import annotations

import torch
from torch import nn

from coreopt.init._linalg import make_generator
from coreopt.init.attention import record_init
from coreopt.init.config import MimeticMLPConfig

FIRST_LAYER_NAMES = (
    "fc1",
    "up_proj",
    "gate_proj",
    "up",
    "gate",
    "w1",
    "w3",
    "c_fc",
    "lin1",
    "linear1",
)
"""Child names taken as an MLP's first (input-side) layers by :func:`find_mlp_first_layers`."""


def find_mlp_first_layers(module: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The input-side ``nn.Linear`` children of an MLP block (``fc1``; ``up_proj`` and
    ``gate_proj`` of a gated MLP; ...), as ``(name, layer)``; empty when there are none."""
    found = []
    for name in FIRST_LAYER_NAMES:
        child = getattr(module, name, None)
        if isinstance(child, nn.Linear):
            found.append((name, child))
    return found


@torch.no_grad()
def mimetic_mlp_(
    layer: nn.Module,
    config: MimeticMLPConfig | None = None,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Draw the first MLP layer's weights i.i.d. ``N(mean, std²)`` with a small nonzero mean.

    The paper reports that a small positive mean in the first MLP layer speeds up small-scale
    vision training (additive with spatial-mixing inits, strongest in short training). The
    exact constant was not recoverable *(reconstructed)*: by default ``std`` is PyTorch's
    ``nn.Linear`` default (``1/sqrt(3 fan_in)``) and ``mean = 0.25 std``
    (:class:`MimeticMLPConfig`). coreopt's benchmark (a tiny ViT on digits) measured no effect
    of the mean itself against a zero-mean control with the same ``std``; measure it on your task.

    Args:
        layer: an ``nn.Linear`` (the first layer), or an MLP block whose first layers
            :func:`find_mlp_first_layers` finds (``fc1``, ``up_proj``/``gate_proj``, ...).
        config: mean and std (:class:`MimeticMLPConfig`).
        seed, generator: randomness (one of them; neither uses torch's global RNG).

    Returns:
        ``layer``, initialised.

    Examples:
        >>> import torch
        >>> fc = mimetic_mlp_(torch.nn.Linear(64, 256), seed=0)
        >>> bool(fc.weight.mean() > 0)
        True
    """
    cfg = MimeticMLPConfig() if config is None else config
    if not isinstance(cfg, MimeticMLPConfig):
        raise TypeError(f"config must be a MimeticMLPConfig, got {type(cfg).__name__}")
    gen = make_generator(seed, generator)
    targets = (
        [layer] if isinstance(layer, nn.Linear) else [m for _, m in find_mlp_first_layers(layer)]
    )
    if not targets:
        raise ValueError(
            f"{type(layer).__name__} is neither an nn.Linear nor an MLP with a first layer named "
            f"one of {FIRST_LAYER_NAMES}"
        )
    for lin in targets:
        mean, std = cfg.resolve(lin.in_features)
        w = torch.randn(lin.weight.shape, generator=gen, dtype=torch.float64) * std + mean
        lin.weight.copy_(w)
        if cfg.zero_bias and lin.bias is not None:
            lin.bias.zero_()
        record_init(lin, "mlp", cfg)
    return layer
