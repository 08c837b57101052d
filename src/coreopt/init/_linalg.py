"""Shared numerics of the init recipes: generators and the float64 SVD factorisation.

Conventions (used by every recipe in :mod:`coreopt.init`): matrices are written in the
*row-vector* convention of the papers, ``q = x W_q`` with ``W_q`` of shape ``(d_in, d_out)``.
``nn.Linear`` stores ``weight`` as ``(d_out, d_in)``, i.e. ``weight = W.T``; the adapters in
:mod:`coreopt.init.attention` do that transpose in one place.
"""

from __future__ import annotations

import math

import torch


def make_generator(
    seed: int | None = None, generator: torch.Generator | None = None
) -> torch.Generator | None:
    """The CPU generator a recipe draws from.

    ``generator`` wins when given; else a fresh generator seeded with ``seed``; else ``None``
    (torch's global RNG, like ``torch.nn.init``).
    """
    if generator is not None:
        if seed is not None:
            raise ValueError("pass either seed or generator, not both")
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != "cpu":
            raise ValueError("generator must be a CPU generator (recipes draw in float64 on CPU)")
        return generator
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return torch.Generator().manual_seed(seed)


def gaussian(
    rows: int, cols: int, generator: torch.Generator | None, *, std: float
) -> torch.Tensor:
    """``N(0, std^2)`` entries, float64 on CPU."""
    return torch.randn(rows, cols, generator=generator, dtype=torch.float64) * std


def mimetic_target(
    d: int, alpha: float, beta: float, generator: torch.Generator | None
) -> torch.Tensor:
    """``A = alpha Z + beta I`` with ``Z_ij ~ N(0, 1/d)`` (float64, ``d x d``).

    A negative ``beta`` gives the ``alpha Z - |beta| I`` form of the value/output recipe.
    """
    Z = gaussian(d, d, generator, std=1.0 / math.sqrt(d))
    return alpha * Z + beta * torch.eye(d, dtype=torch.float64)


def split_factor(A: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-``rank`` factorisation ``A ≈ L R^T`` with balanced factors.

    ``A = U S V^T`` (SVD, float64); ``L = U_r S_r^{1/2}``, ``R = V_r S_r^{1/2}``; both ``(d, r)``.
    ``L R^T`` is the Eckart-Young best rank-``r`` approximation of ``A``.
    """
    if A.dtype != torch.float64:
        raise TypeError("split_factor expects a float64 matrix")
    if not 1 <= rank <= min(A.shape):
        raise ValueError(f"rank must be in [1, {min(A.shape)}], got {rank}")
    U, S, Vh = torch.linalg.svd(A)
    root = S[:rank].sqrt()
    return U[:, :rank] * root, Vh[:rank].T * root
