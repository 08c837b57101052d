"""Argument checks and the optional ``transformers`` import of :mod:`coreopt.sampling`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from coreopt.errors import BackendNotInstalledError


def require_transformers() -> Any:
    """Import ``transformers`` or raise :class:`~coreopt.errors.BackendNotInstalledError`."""
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - transformers is part of the hf extra
        raise BackendNotInstalledError("transformers", "hf") from exc
    return transformers


def check_real(
    name: str, value: object, *, low: float | None = None, strict: bool = False
) -> float:
    """``value`` as a finite float, optionally ``>= low`` (``> low`` when ``strict``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if low is not None and (v < low or (strict and v == low)):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low:g}, got {value!r}")
    return v


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name}={value!r}; expected one of {', '.join(map(repr, choices))}")
    return str(value)
