"""Objectives as torch callables, and the parameter structures they receive.

An objective maps parameters to a scalar torch loss (0-dim tensor, differentiable). Parameters are
a single tensor, a sequence of tensors, or a mapping from names to tensors; the objective receives
the same structure it was given, so user code reads naturally::

    def loss(p):                       # p is {"Q": Tensor(n, n)}
        return ((p["Q"] @ A - B) ** 2).sum()

A *batched* objective takes parameters with a leading batch dimension of size B and returns
a loss of shape ``(B,)``; :func:`vmap_objective` builds one from a plain objective with
``torch.func.vmap``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, TypeAlias, runtime_checkable

import torch

Params: TypeAlias = torch.Tensor | Sequence[torch.Tensor] | Mapping[str, torch.Tensor]
"""A tensor, a sequence of tensors, or a name -> tensor mapping."""

Parametrization: TypeAlias = Callable[[torch.Tensor], torch.Tensor]
"""Maps an unconstrained tensor to a constrained one (e.g. a Cayley map to orthogonal matrices)."""


@runtime_checkable
class Objective(Protocol):
    """A callable from parameters (see :data:`Params`) to a scalar loss tensor.

    Any function or ``nn.Module`` with this call signature is an objective; nothing needs to
    subclass this protocol. It exists for type checkers and for ``isinstance`` checks.
    """

    def __call__(self, params: Params, /) -> torch.Tensor: ...


def flatten_params(
    params: Params,
) -> tuple[list[torch.Tensor], Callable[[list[torch.Tensor]], Params]]:
    """Split ``params`` into a flat list of tensors and a function rebuilding the structure.

    Raises:
        TypeError: ``params`` is not a tensor, a sequence of tensors or a mapping to tensors.
        ValueError: ``params`` is empty.
    """
    if isinstance(params, torch.Tensor):
        return [params], lambda flat: flat[0]
    if isinstance(params, Mapping):
        keys = list(params)
        values = [params[k] for k in keys]
        _check_tensors(values, [repr(k) for k in keys])
        return values, lambda flat: dict(zip(keys, flat, strict=True))
    if isinstance(params, Sequence) and not isinstance(params, str | bytes):
        values = list(params)
        _check_tensors(values, [str(i) for i in range(len(values))])
        kind = tuple if isinstance(params, tuple) else list
        return values, lambda flat: kind(flat)
    raise TypeError(
        f"params must be a tensor, a sequence of tensors or a mapping of names to tensors; "
        f"got {type(params).__name__}"
    )


def match_structure(spec: object, params: Params, what: str) -> list[object | None]:
    """Broadcast a per-parameter option (``spec``) over the flat parameter list.

    ``spec`` may be ``None`` (none for every tensor), a single value (the same for every tensor),
    a sequence aligned with a sequence of params, or a mapping keyed like a mapping of params
    (missing keys mean ``None``).
    """
    flat, _ = flatten_params(params)
    if spec is None:
        return [None] * len(flat)
    if isinstance(params, Mapping) and isinstance(spec, Mapping):
        unknown = set(spec) - set(params)
        if unknown:
            raise ValueError(f"{what} names unknown parameters {sorted(map(str, unknown))}")
        return [spec.get(k) for k in params]
    if (
        isinstance(spec, Sequence)
        and not isinstance(spec, str | bytes)
        and not isinstance(params, torch.Tensor | Mapping)
    ):
        if len(spec) != len(flat):
            raise ValueError(f"{what} has {len(spec)} entries but there are {len(flat)} parameters")
        return list(spec)
    return [spec] * len(flat)


def scalar_loss(value: object, where: str = "objective") -> torch.Tensor:
    """Check that ``value`` is a real scalar tensor and return it (not yet checked for finiteness).

    Raises:
        TypeError: not a tensor, or complex.
        ValueError: not a scalar (one element).
    """
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"the {where} must return a torch.Tensor, got {type(value).__name__}")
    if value.numel() != 1:
        raise ValueError(
            f"the {where} must return a scalar loss, got a tensor of shape {tuple(value.shape)}; "
            "reduce it (e.g. .sum() or .mean())"
        )
    if value.is_complex():
        raise TypeError(f"the {where} returned a complex loss; return a real scalar")
    return value.reshape(())


def is_finite(value: float) -> bool:
    """``True`` when a Python float is neither NaN nor infinite."""
    return math.isfinite(value)


def vmap_objective(objective: Objective) -> Callable[[Params], torch.Tensor]:
    """Evaluate ``objective`` on a batch of parameter sets at once.

    Args:
        objective: a plain objective (scalar loss per parameter set) written with batchable torch
            operations (no ``.item()``, no data-dependent Python control flow).

    Returns:
        A function taking parameters whose tensors all carry a leading batch dimension ``B`` and
        returning the losses as a tensor of shape ``(B,)``.

    Examples:
        >>> import torch
        >>> from coreopt.objective import vmap_objective
        >>> f = vmap_objective(lambda x: (x**2).sum())
        >>> f(torch.tensor([[1.0, 2.0], [3.0, 0.0]]))
        tensor([5., 9.])
    """
    return torch.func.vmap(objective)


def _check_tensors(values: Sequence[object], names: list[str]) -> None:
    if not values:
        raise ValueError("params is empty: give at least one tensor to optimize")
    for name, value in zip(names, values, strict=True):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"params[{name}] must be a torch.Tensor, got {type(value).__name__}")
        if not value.is_floating_point() and not value.is_complex():
            raise TypeError(
                f"params[{name}] has dtype {value.dtype}; only floating or complex tensors "
                "can be optimized"
            )
