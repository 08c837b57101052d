"""Directional finite differences of a function of (possibly huge) parameters.

Antidistillation sampling needs ``(z(θ + εg) - z(θ - εg)) / (2ε)`` where ``z`` is a model's logits
and ``θ`` its parameters; copying a billion-parameter model twice is what we avoid. The in-place
variant perturbs the tensors themselves and restores them afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch


def central_difference(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    direction: torch.Tensor,
    eps: float = 1e-3,
) -> torch.Tensor:
    """``(fn(x + eps·d) - fn(x - eps·d)) / (2·eps)``: the derivative of ``fn`` at ``x`` along ``d``.

    Error is O(eps²) for smooth ``fn`` (plus rounding error of order ulp(fn)/eps).

    Args:
        fn: any function of one tensor returning a tensor of any shape.
        x: the point, any shape.
        direction: same shape as ``x`` (not normalised: the result scales with it).
        eps: step; must be positive.

    Returns:
        A tensor shaped like ``fn(x)``.

    Examples:
        >>> import torch
        >>> from coreopt.objective import central_difference
        >>> d = central_difference(torch.sin, torch.tensor([0.0]), torch.tensor([1.0]))
        >>> torch.allclose(d, torch.tensor([1.0]), atol=1e-6)
        True
    """
    _check_eps(eps)
    if direction.shape != x.shape:
        raise ValueError(
            f"direction has shape {tuple(direction.shape)} but x has shape {tuple(x.shape)}"
        )
    return (fn(x + eps * direction) - fn(x - eps * direction)) / (2 * eps)


@contextmanager
def perturbed(
    params: Sequence[torch.Tensor],
    direction: Sequence[torch.Tensor],
    eps: float,
    *,
    restore: Literal["copy", "subtract"] = "copy",
) -> Iterator[None]:
    """Temporarily set ``params <- params + eps·direction`` in place (under ``no_grad``).

    Args:
        params: the tensors to perturb (e.g. ``list(model.parameters())``).
        direction: tensors of the same shapes (on the same devices).
        eps: scale of the perturbation (may be negative).
        restore: ``"copy"`` keeps a copy of ``params`` and restores them bit-exactly (one extra
            copy of memory); ``"subtract"`` subtracts the perturbation again (no extra memory,
            restores up to floating-point rounding: about one ulp of each entry).
    """
    if restore not in ("copy", "subtract"):
        raise ValueError(f"restore={restore!r}; expected 'copy' or 'subtract'")
    params, direction = list(params), list(direction)
    _check_pairs(params, direction)
    backup = [p.detach().clone() for p in params] if restore == "copy" else None
    with torch.no_grad():
        for p, d in zip(params, direction, strict=True):
            p.add_(d, alpha=eps)
    try:
        yield
    finally:
        with torch.no_grad():
            if backup is not None:
                for p, b in zip(params, backup, strict=True):
                    p.copy_(b)
            else:
                for p, d in zip(params, direction, strict=True):
                    p.sub_(d, alpha=eps)


def directional_derivative(
    fn: Callable[[], torch.Tensor],
    params: Sequence[torch.Tensor],
    direction: Sequence[torch.Tensor],
    eps: float = 1e-3,
    *,
    restore: Literal["copy", "subtract"] = "copy",
) -> torch.Tensor:
    """Central difference of ``fn()`` along ``direction`` in the space of ``params``, in place.

    ``fn`` takes no argument: it reads the parameters itself (typically a closure calling a model's
    forward). The parameters are perturbed to ``θ ± eps·d`` in place, ``fn`` is evaluated at both
    points without building a graph, and the parameters are restored (see :func:`perturbed`).

    Args:
        fn: closure evaluating the function at the current parameter values; any output shape.
        params: the tensors ``θ`` (e.g. ``list(model.parameters())``).
        direction: the direction ``d``, tensors shaped like ``params``.
        eps: finite-difference step (positive).
        restore: how parameters are restored: ``"copy"`` (bit-exact) or ``"subtract"``.

    Returns:
        ``(fn(θ + eps·d) - fn(θ - eps·d)) / (2·eps)``, shaped like ``fn()``.
    """
    _check_eps(eps)
    with torch.no_grad():
        with perturbed(params, direction, eps, restore=restore):
            plus = fn()
        with perturbed(params, direction, -eps, restore=restore):
            minus = fn()
    return (plus - minus) / (2 * eps)


def _check_eps(eps: float) -> None:
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps!r}")


def _check_pairs(params: list[torch.Tensor], direction: list[torch.Tensor]) -> None:
    if len(params) != len(direction):
        raise ValueError(f"{len(params)} params but {len(direction)} direction tensors")
    for i, (p, d) in enumerate(zip(params, direction, strict=True)):
        if p.shape != d.shape:
            raise ValueError(
                f"direction[{i}] has shape {tuple(d.shape)} but params[{i}] has {tuple(p.shape)}"
            )
        if p.device != d.device:
            raise ValueError(f"direction[{i}] is on {d.device} but params[{i}] is on {p.device}")
