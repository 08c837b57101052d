"""SignedBatchPerturbation: one forward of the doubled batch equals the two perturbed models."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from coreopt.sampling import SignedBatchPerturbation, UnsupportedModuleError


def perturbed_copy(model: nn.Module, grad: dict, scale: float) -> nn.Module:
    """An independent reference: a float64 copy with θ + scale·g."""
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in clone.named_parameters():
            p.add_(scale * grad[name])
    return clone


class OnePlusRMSNorm(nn.Module):
    """A Gemma-style norm, ``(1 + w)·n(x)``: affine but not homogeneous in ``w``."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d) * 0.1)
        self.variance_epsilon = 1e-6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return (1 + self.weight) * n


class LlamaStyleRMSNorm(OnePlusRMSNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * n


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Embedding(11, 8),
        nn.LayerNorm(8),
        nn.Linear(8, 8),
        OnePlusRMSNorm(8),
        nn.Linear(8, 8, bias=False),
        LlamaStyleRMSNorm(8),
        nn.Linear(8, 11),
    ).double()


def test_doubled_batch_equals_two_perturbed_copies() -> None:
    model = _model()
    # match_gradient keeps g in float32: draw it there so the float64 reference uses the same g
    grad = {n: torch.randn_like(p).float().double() for n, p in model.named_parameters()}
    pert = SignedBatchPerturbation(model, grad)
    kinds = [k for _, k, _ in pert._table]
    # (1 + w)·n(x) and w·n(x) have the same direction term g·n(x): both take the closed form.
    assert kinds == ["embedding", "layernorm", "linear", "rms", "linear", "rms", "linear"]
    ids = torch.randint(11, (3, 5))
    eps = 1e-2
    signs = torch.tensor([eps] * 3 + [-eps] * 3, dtype=torch.float64)
    out = pert.run(signs, lambda: model(torch.cat([ids, ids])))
    plus = perturbed_copy(model, grad, eps)(ids)
    minus = perturbed_copy(model, grad, -eps)(ids)
    torch.testing.assert_close(out[:3], plus, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out[3:], minus, rtol=1e-10, atol=1e-10)
    # The model is untouched and the hooks are gone.
    torch.testing.assert_close(model(ids), perturbed_copy(model, grad, 0.0)(ids))


def test_unsupported_module_is_refused_by_name() -> None:
    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Parameter(torch.zeros(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.sigmoid(self.a)

    model = nn.Sequential(nn.Linear(3, 3), Gate())
    grad = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    with pytest.raises(UnsupportedModuleError, match="Gate"):
        SignedBatchPerturbation(model, grad)
