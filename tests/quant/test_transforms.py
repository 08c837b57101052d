"""Transforms, the straight-through gradient, GPTQ against a proxy Hessian, priors."""

from __future__ import annotations

import pytest
import torch

from coreopt.quant import InputMoments, QuantFormat, fake_quantize, gptq, learn_transform, rtn
from coreopt.quant.format import dequantize_codes
from coreopt.quant.proxy import balance_moments, combine_moments, weighted_sq_error
from coreopt.quant.transforms import (
    apply_blocks,
    block_diag,
    hadamard,
    random_block_orthogonal,
    right_blocks,
)


def outlier_matrix(out: int = 64, n: int = 256, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out, n, generator=g, dtype=torch.float64) * 0.02
    cols = torch.randperm(n, generator=g)[:6]
    W[:, cols] *= 25.0  # a few heavy input channels, as in real LLM weights
    return W


@pytest.mark.parametrize("kind", ["hadamard", "haar", "identity"])
def test_random_blocks_are_orthogonal_and_apply_consistently(kind: str) -> None:
    T = random_block_orthogonal(
        3, 16, kind=kind, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    eye = torch.eye(16, dtype=torch.float64).expand(3, 16, 16)
    torch.testing.assert_close(T @ T.mT, eye)
    x = torch.randn(5, 48, dtype=torch.float64)
    W = torch.randn(7, 48, dtype=torch.float64)
    dense = block_diag(T)
    torch.testing.assert_close(apply_blocks(x, T), x @ dense.T)
    torch.testing.assert_close(right_blocks(W, T), W @ dense)
    # the layer identity the runtime relies on: (W T⁻¹)(T x) = W x
    torch.testing.assert_close(right_blocks(W, T.mT) @ apply_blocks(x, T).T, W @ x.T)


def test_hadamard_rejects_non_powers_of_two() -> None:
    with pytest.raises(ValueError, match="power of two"):
        hadamard(12)


def test_closed_form_straight_through_gradient_matches_autograd() -> None:
    fmt = QuantFormat(3, 32)
    X = torch.randn(16, 128, dtype=torch.float64)
    target = torch.randn(16, 128, dtype=torch.float64)
    grads = []
    for shrink in (None, 1.0):  # None: the one-node closed form; 1.0: plain autograd ops
        Xr = X.clone().requires_grad_(True)
        out = fake_quantize(Xr, fmt, ste=True, shrink=shrink)
        ((out - target) ** 2).sum().backward()
        grads.append(Xr.grad)
        torch.testing.assert_close(out.detach(), fake_quantize(X, fmt))
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("family", ["invertible", "orthogonal"])
def test_learned_transform_beats_rtn_and_hadamard_on_outliers(family: str) -> None:
    W = outlier_matrix().float()
    fmt = QuantFormat(3, 64)
    rtn_loss = float(((W - fake_quantize(W, fmt)) ** 2).sum() / (W**2).sum())
    fit = learn_transform(
        W,
        fmt,
        block=64,
        family=family,
        steps=60,
        lr=0.003 if family == "invertible" else 0.01,
        generator=torch.Generator().manual_seed(0),
    )
    assert fit.loss < fit.initial_loss  # better than its random-Hadamard start
    assert fit.loss < 0.7 * rtn_loss
    # the reported loss is the true (not straight-through) proxy of Q(W T⁻¹) T
    W_eff = right_blocks(fake_quantize(right_blocks(W, fit.inverse), fmt), fit.transform)
    assert fit.loss == pytest.approx(float(((W - W_eff) ** 2).sum() / (W**2).sum()), rel=1e-4)
    torch.testing.assert_close(
        fit.transform @ fit.inverse, torch.eye(64).expand(4, 64, 64), atol=1e-4, rtol=0
    )


def test_gptq_with_identity_hessian_is_round_to_nearest() -> None:
    W = torch.randn(8, 128, dtype=torch.float64)
    fmt = QuantFormat(4, 32)
    codes, scale, _zero = gptq(W, torch.eye(128, dtype=torch.float64), fmt, grid=None, damp=0.0)
    ref = rtn(W, fmt)
    assert torch.equal(codes, ref[0])
    torch.testing.assert_close(scale, ref[1])


def test_gptq_lowers_the_weighted_loss_of_a_correlated_hessian() -> None:
    g = torch.Generator().manual_seed(0)
    W = torch.randn(32, 128, generator=g, dtype=torch.float64)
    X = torch.randn(128, 512, generator=g, dtype=torch.float64)
    X = X + 0.9 * X.roll(1, 0)  # correlated inputs
    H = X @ X.T / 512
    fmt = QuantFormat(3, 64)
    q, s, z = gptq(W, H, fmt, grid=None)
    E = W - dequantize_codes(q, s, z, 64)
    q0, s0, z0 = rtn(W, fmt)
    E0 = W - dequantize_codes(q0, s0, z0, 64)
    loss_gptq, loss_rtn = torch.trace(E @ H @ E.T), torch.trace(E0 @ H @ E0.T)
    # the same loss through InputMoments: Σ = diag(0) + U Uᵀ with U = X / sqrt(n)
    moments = InputMoments(torch.zeros(128, dtype=torch.float64), X / 512**0.5)
    torch.testing.assert_close(weighted_sq_error(E, moments), loss_gptq)
    assert float(loss_gptq) < 0.8 * float(loss_rtn)


def test_balance_prior_flags_barely_read_channels() -> None:
    W = torch.randn(32, 64)
    W[:, 5] *= 0.1  # a channel the layer barely reads: presumably a large one
    d = balance_moments(W).diag
    assert d is not None
    assert int(torch.argmax(d)) == 5
    assert float(d[5]) > 20 * float(d.median())
    mix = combine_moments(balance_moments(W), None)
    assert mix is not None
    assert mix.diag is not None
    assert float(mix.diag.mean()) == pytest.approx(1.0, rel=1e-5)  # normalised
