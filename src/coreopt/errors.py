"""Named exceptions. Each subclasses the builtin a caller would catch anyway."""

from __future__ import annotations

from typing import Any


class CoreoptError(Exception):
    """Base class of every exception coreopt raises on purpose."""


class DeviceError(CoreoptError, ValueError):
    """A requested device is unknown or not available on this machine."""


class NonFiniteError(CoreoptError, FloatingPointError):
    """An objective or value function returned NaN or infinity.

    Attributes:
        result: the partial result computed before the failure (for example the best finite
            iterate of :func:`coreopt.minimize`), so no finished work is lost. ``None`` when
            nothing was computed yet.
    """

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


class BackendNotInstalledError(CoreoptError, ImportError):
    """An optional backend was requested but its package is not installed."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"this feature needs the optional package {package!r}; "
            f"install it with: pip install 'coreopt[{extra}]'"
        )
        self.package = package
        self.extra = extra


class BudgetExhaustedError(CoreoptError, RuntimeError):
    """A call or token budget ran out (for example an LLM client's).

    A value function may raise it: :func:`coreopt.least_core` then stops gracefully and returns
    the partial result over every value paid for, with ``status=Status.BUDGET_EXHAUSTED``.

    Attributes:
        values: every value paid for so far, ``{frozenset: float}``, when the solver re-raises it
            (too few values for any LP); pass it back as ``known_values=`` to resume.
    """

    def __init__(self, message: str, values: dict[Any, float] | None = None) -> None:
        super().__init__(message)
        self.values: dict[Any, float] = dict(values or {})
