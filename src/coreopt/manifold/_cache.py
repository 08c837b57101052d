"""A small eval-mode cache for weights derived from parameters (shared by the Cayley layers)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch


class DerivedWeightCache:
    """Caches tensors computed from parameters, invalidated whenever a parameter changes.

    The cache is keyed on each parameter's identity, ``data_ptr()`` and autograd ``_version``
    counter. Every in-place update (``optimizer.step()``, ``load_state_dict``, ``param.data.copy_``,
    ``with torch.no_grad(): param.mul_(...)``) bumps the version counter, and re-assigning a
    parameter changes its identity, so a stale entry is never returned. Entries are computed under
    ``torch.no_grad()`` and therefore hold no autograd graph.
    """

    def __init__(self) -> None:
        self._state: tuple[Hashable, ...] | None = None
        self._entries: dict[Hashable, torch.Tensor] = {}

    @staticmethod
    def _fingerprint(params: Sequence[torch.Tensor]) -> tuple[Hashable, ...]:
        return tuple((id(p), p.data_ptr(), p._version, p.device, p.dtype) for p in params)

    def get(
        self,
        key: Hashable,
        params: Sequence[torch.Tensor],
        compute: Callable[[], torch.Tensor],
    ) -> torch.Tensor:
        """The cached ``compute()`` for ``key`` if no parameter changed since, else a fresh one."""
        state = self._fingerprint(params)
        if state != self._state:
            self._entries.clear()
            self._state = state
        out = self._entries.get(key)
        if out is None:
            with torch.no_grad():
                out = compute()
            self._entries[key] = out
        return out

    def clear(self) -> None:
        """Drop every entry."""
        self._entries.clear()
        self._state = None

    def __len__(self) -> int:
        return len(self._entries)


def cache_usable(module: torch.nn.Module) -> bool:
    """Whether ``module`` may use its eval-time cache for this forward call.

    True in eval mode when autograd would not record the parameters anyway (inside
    ``torch.no_grad()``/``torch.inference_mode()``, or with every parameter frozen), and never while
    ``torch.compile`` traces (the compiled graph recomputes the weight; caches are Python state).
    """
    if module.training or torch.compiler.is_compiling():
        return False
    if not torch.is_grad_enabled():
        return True
    return not any(p.requires_grad for p in module.parameters(recurse=False))


def clear_cache_hook(module: torch.nn.Module, *args: Any, **kwargs: Any) -> None:
    """A ``load_state_dict`` pre-hook that drops ``module._cache`` (belt and braces: loading
    also bumps the parameters' version counters)."""
    cache = getattr(module, "_cache", None)
    if isinstance(cache, DerivedWeightCache):
        cache.clear()
