"""Certified L2 robustness of Lipschitz classifiers from their logit margins.

If every logit is a ``L``-Lipschitz function of the input (in the L2 norm), the logit vector is
``L``-Lipschitz, and a perturbation ``δ`` changes the difference of two logits by at most
``√2 · L · ‖δ‖`` (the difference ``e_i − e_j`` has norm ``√2``). The prediction therefore cannot
change while ``‖δ‖ < (top1 − top2) / (√2 · L)`` (Tsuzuku, Sato & Sugiyama, NeurIPS 2018; used by
Trockman & Kolter, ICLR 2021, with ``L = 1``).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def certified_radius(logits: torch.Tensor, lipschitz: float = 1.0) -> torch.Tensor:
    """The L2 radius within which each prediction provably cannot change.

    Args:
        logits: ``(B, K)`` outputs of a classifier that is ``lipschitz``-Lipschitz in L2
            (``K >= 2``).
        lipschitz: an upper bound ``L`` on the network's Lipschitz constant (1 for networks
            built from :mod:`coreopt.manifold` layers).

    Returns:
        ``(B,)`` radii ``(top1 − top2) / (√2 · L)`` (0 for ties), in the logits' dtype.

    Examples:
        >>> import torch
        >>> certified_radius(torch.tensor([[3.0, 1.0, 0.0]]))  # margin 2 -> radius √2
        tensor([1.4142])
    """
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must have shape (B, K) with K >= 2, got {tuple(logits.shape)}")
    if not (isinstance(lipschitz, int | float) and math.isfinite(lipschitz) and lipschitz > 0):
        raise ValueError(f"lipschitz must be a positive finite number, got {lipschitz!r}")
    top2 = logits.topk(2, dim=1).values
    return (top2[:, 0] - top2[:, 1]) / (math.sqrt(2) * lipschitz)


@torch.no_grad()
def certified_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    lipschitz: float = 1.0,
    batch_size: int = 512,
) -> tuple[float, float]:
    """Clean accuracy and certified accuracy at L2 radius ``eps`` of a Lipschitz classifier.

    A sample counts as certified when it is classified correctly and its margin exceeds
    ``√2 · L · eps`` (:func:`certified_radius` ``> eps``). The model is evaluated as given
    (call ``model.eval()`` first), under ``torch.no_grad()`` in batches.

    Args:
        model: maps ``(B, ...)`` inputs to ``(B, K)`` logits; ``lipschitz``-Lipschitz in L2.
        x: ``(N, ...)`` inputs, on the model's device.
        y: ``(N,)`` integer labels.
        eps: the L2 radius (>= 0), in the units of ``x``.
        lipschitz: an upper bound on the model's Lipschitz constant.
        batch_size: samples per forward pass.

    Returns:
        ``(clean_accuracy, certified_accuracy)``, fractions in ``[0, 1]``.
    """
    if x.shape[0] != y.shape[0] or y.ndim != 1:
        raise ValueError(
            f"x and y must have the same length N and y shape (N,), got {tuple(x.shape)} and "
            f"{tuple(y.shape)}"
        )
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = x.shape[0]
    if n == 0:
        raise ValueError("x is empty")
    correct = certified = 0
    for start in range(0, n, batch_size):
        logits = model(x[start : start + batch_size])
        labels = y[start : start + batch_size]
        ok = logits.argmax(dim=1) == labels
        correct += int(ok.sum())
        certified += int((ok & (certified_radius(logits, lipschitz) > eps)).sum())
    return correct / n, certified / n
