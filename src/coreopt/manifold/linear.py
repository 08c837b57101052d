"""An orthogonal linear layer through the Cayley map, with a learnable scale and an eval cache."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from coreopt.manifold._cache import (
    DerivedWeightCache,
    cache_usable,
    check_param_dtype,
    clear_cache_hook,
)
from coreopt.manifold.cayley import cayley


class CayleyLinear(nn.Module):
    """``y = x Qᵀ + b`` with ``Q`` orthogonal (square), an isometry or a co-isometry (rectangular).

    ``Q = cayley(V − Vᵀ)`` when ``in_features == out_features`` and ``cayley(V)`` otherwise
    (Schur-complement form, only a ``min(in, out)`` system is solved), with
    ``V = alpha · weight / ‖weight‖_F``. ``Q`` has orthonormal columns when
    ``out_features >= in_features`` (``‖y − b‖ = ‖x‖``) and orthonormal rows otherwise
    (1-Lipschitz), following Trockman & Kolter (ICLR 2021).

    ``alpha`` is created in ``__init__`` and initialised in :meth:`reset_parameters` to
    ``‖weight‖_F`` of the freshly initialised weight (so optimizers see it and a fresh layer loads
    checkpoints). In eval mode, when autograd does not record the parameters (``torch.no_grad()``,
    inference mode or frozen parameters), ``Q`` is cached; the cache is keyed on the parameters'
    version counters and a copy of their values, so an optimizer step, ``load_state_dict`` or a
    write through ``.data`` (EMA, weight clipping) invalidates it, and ``train()``
    clears it (the reference implementation kept a stale weight in eval mode).

    Reconstructed detail (not in the paper): the weight initialisation (``nn.Linear``'s
    Kaiming-uniform).

    Args:
        in_features, out_features: sizes of the input and output.
        bias: add a learnable bias.
        device, dtype: of the parameters (float32 or float64).

    Shape:
        ``(*, in_features)`` -> ``(*, out_features)``.

    Examples:
        >>> import torch
        >>> layer = CayleyLinear(6, 9, bias=False).double()
        >>> Q = layer.orthogonal_weight()                  # (9, 6), orthonormal columns
        >>> torch.allclose(Q.T @ Q, torch.eye(6, dtype=torch.float64))
        True
    """

    weight: torch.Tensor
    alpha: torch.Tensor
    bias: torch.Tensor | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        check_param_dtype(self.weight.dtype, "CayleyLinear")
        self.alpha = nn.Parameter(torch.empty((), **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self._cache = DerivedWeightCache()
        self.reset_parameters()
        self.register_load_state_dict_pre_hook(clear_cache_hook)

    def reset_parameters(self) -> None:
        """Kaiming-uniform weight (as ``nn.Linear``), ``alpha = ‖weight‖_F``, uniform bias."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        with torch.no_grad():
            self.alpha.copy_(self.weight.norm())
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)
        self._cache.clear()

    def train(self, mode: bool = True) -> CayleyLinear:
        """Switch mode like ``nn.Module.train``; also drops the eval-time cache."""
        self._cache.clear()
        return super().train(mode)

    def _compute_weight(self) -> torch.Tensor:
        scale = self.alpha / self.weight.norm().clamp_min(torch.finfo(self.weight.dtype).tiny)
        V = self.weight * scale
        return cayley(V - V.T) if self.in_features == self.out_features else cayley(V)

    def orthogonal_weight(self) -> torch.Tensor:
        """``Q`` of shape ``(out_features, in_features)`` (cached in eval mode, see the class)."""
        if cache_usable(self):
            return self._cache.get("Q", [self.weight, self.alpha], self._compute_weight)
        return self._compute_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer to ``x`` of shape ``(*, in_features)``."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must have shape (*, {self.in_features}), got {tuple(x.shape)}")
        check_param_dtype(self.weight.dtype, "CayleyLinear")  # e.g. after .bfloat16()
        return F.linear(x, self.orthogonal_weight(), self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )
