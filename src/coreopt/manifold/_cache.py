"""A small eval-mode cache for weights derived from parameters (shared by the Cayley layers)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch

SUPPORTED_DTYPES = (torch.float32, torch.float64)


def check_param_dtype(dtype: torch.dtype, layer: str) -> None:
    """Raise ``TypeError`` unless ``dtype`` is float32 or float64 (the Cayley layers' LU solves
    and complex FFTs have no half-precision kernels)."""
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{layer} parameters must be float32 or float64, got {dtype}: the Cayley map needs "
            "an LU solve (and CayleyConv2d complex FFTs) that torch does not provide in "
            "half precision. Keep the layer in float32 and cast its input and output "
            "(y = layer(x.float()).to(x.dtype)), or run it outside torch.autocast."
        )


class DerivedWeightCache:
    """Caches tensors computed from parameters, invalidated whenever a parameter changes.

    An entry is reused only if every parameter has the same identity, ``data_ptr()``, shape,
    device, dtype and autograd ``_version`` counter as when it was computed **and** the same
    values: the cache keeps a copy of the parameters and compares it exactly (``torch.equal``, one
    pass over the parameters, far cheaper than the derived weight). The value check is needed
    because writes through ``param.data`` (``param.data.copy_(W)``, ``alpha.data.fill_(x)``, as
    EMA updates, weight clipping and older training loops do) bump a version counter of their own
    that the parameter's ``_version`` does not see. Entries are computed under
    ``torch.no_grad()`` and therefore hold no autograd graph.
    """

    def __init__(self) -> None:
        self._state: tuple[Hashable, ...] | None = None
        self._values: list[torch.Tensor] = []
        self._entries: dict[Hashable, torch.Tensor] = {}

    @staticmethod
    def _fingerprint(params: Sequence[torch.Tensor]) -> tuple[Hashable, ...]:
        return tuple(
            (id(p), p.data_ptr(), tuple(p.shape), p._version, p.device, p.dtype) for p in params
        )

    def _fresh(self, state: tuple[Hashable, ...], params: Sequence[torch.Tensor]) -> bool:
        if state != self._state or len(self._values) != len(params):
            return False
        return all(torch.equal(p.detach(), v) for p, v in zip(params, self._values, strict=True))

    def get(
        self,
        key: Hashable,
        params: Sequence[torch.Tensor],
        compute: Callable[[], torch.Tensor],
    ) -> torch.Tensor:
        """The cached ``compute()`` for ``key`` if no parameter changed since, else a fresh one."""
        state = self._fingerprint(params)
        if not self._fresh(state, params):
            self._entries.clear()
            self._state = state
            self._values = [p.detach().clone() for p in params]
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
        self._values = []

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
