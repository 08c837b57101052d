"""Formats and packing: exact round trips, RTN error bounds, storage cost."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from coreopt.quant.format import (
    QuantFormat,
    UnsupportedFormatError,
    dequantize_codes,
    fake_quantize,
    minmax_params,
    rtn,
)
from coreopt.quant.linear import QuantizedLinear
from coreopt.quant.packing import pack_bits, unpack_bits


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("shape", [(8,), (3, 64), (2, 5, 96)])
def test_pack_unpack_round_trip_is_exact(
    bits: int, shape: tuple[int, ...], device: torch.device
) -> None:
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 1 << bits, shape, generator=g, dtype=torch.uint8).to(device)
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() * 8 == codes.numel() * bits  # exactly `bits` bits per code
    assert torch.equal(unpack_bits(packed, bits), codes)


@given(
    bits=st.sampled_from([2, 3, 4, 8]),
    rows=st.integers(1, 5),
    chunks=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_pack_round_trip_property(bits: int, rows: int, chunks: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1 << bits, (rows, 8 * chunks), generator=g).to(torch.int64)
    assert torch.equal(unpack_bits(pack_bits(codes, bits), bits, torch.int64), codes)


def test_pack_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        pack_bits(torch.zeros(3, 12, dtype=torch.uint8), 3)
    with pytest.raises(ValueError, match=r"\[0, 7\]"):
        pack_bits(torch.full((1, 8), 8, dtype=torch.uint8), 3)
    with pytest.raises(TypeError, match="integer"):
        pack_bits(torch.zeros(1, 8), 3)
    with pytest.raises(ValueError, match="bits"):
        pack_bits(torch.zeros(1, 8, dtype=torch.uint8), 9)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rtn_error_is_at_most_half_a_step(bits: int, group: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    W = (torch.randn(16, 256, generator=g) * torch.rand(16, 1, generator=g) * 0.1).to(dtype)
    W[0, 5] = 3.0  # an outlier widens its group's range, nothing else
    fmt = QuantFormat(bits, group)
    codes, scale, zero = rtn(W, fmt)
    assert int(codes.max()) <= fmt.qmax
    err = (W - dequantize_codes(codes, scale, zero, group, dtype)).abs()
    bound = scale.repeat_interleave(group, dim=1) / 2
    assert bool((err <= bound * (1 + 1e-6) + 1e-12).all())
    # zero is exactly representable, and the stored scales are exactly float16 numbers
    assert torch.equal(scale, scale.half().to(dtype))
    assert torch.equal(zero, zero.round())
    assert torch.equal(
        dequantize_codes(
            rtn(torch.zeros(2, group, dtype=dtype), fmt)[0],
            *rtn(torch.zeros(2, group, dtype=dtype), fmt)[1:],
            group,
            dtype,
        ),
        torch.zeros(2, group, dtype=dtype),
    )


def test_fake_quantize_matches_rtn_and_its_ste_has_a_gradient() -> None:
    W = torch.randn(8, 128, dtype=torch.float64)
    fmt = QuantFormat(3, 64)
    codes, scale, zero = rtn(W, fmt)
    torch.testing.assert_close(
        fake_quantize(W, fmt), dequantize_codes(codes, scale, zero, 64, W.dtype)
    )
    Wr = W.clone().requires_grad_(True)
    out = fake_quantize(Wr, fmt, ste=True)
    torch.testing.assert_close(out.detach(), fake_quantize(W, fmt))
    out.sum().backward()
    assert Wr.grad is not None
    assert torch.isfinite(Wr.grad).all()


def test_shrink_clips_the_range() -> None:
    W = torch.linspace(-1, 1, 64).repeat(2, 1)
    s1, _ = minmax_params(W, QuantFormat(4, 64))
    s2, _ = minmax_params(W, QuantFormat(4, 64), shrink=0.5)
    torch.testing.assert_close(s2, s1 / 2, rtol=1e-3, atol=0)


@pytest.mark.parametrize("bad", [1, 5, 16, 0, True, 3.0])
def test_unsupported_bits_raise(bad: object) -> None:
    with pytest.raises(UnsupportedFormatError, match="bits"):
        QuantFormat(bits=bad, group_size=64)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, 16, 48, 100, -64])
def test_unsupported_group_sizes_raise(bad: int) -> None:
    with pytest.raises(UnsupportedFormatError, match="group_size"):
        QuantFormat(bits=4, group_size=bad)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_quantized_linear_forward_matches_its_effective_weight(
    bits: int, device: torch.device
) -> None:
    torch.manual_seed(bits)
    lin = torch.nn.Linear(100, 24).to(device)  # 100 is not a multiple of 32: stored padded
    q = QuantizedLinear.from_linear(lin, QuantFormat(bits, 32))
    assert q.in_padded == 128
    assert q.qweight.shape == (24, 16, bits)
    x = torch.randn(5, 100, device=device)
    expected = x @ q.effective_weight().T + lin.bias
    q.set_runtime(compute_dtype=torch.float32)  # the default computes float32 inputs in bf16
    torch.testing.assert_close(q(x), expected, rtol=1e-5, atol=1e-5)
    q.set_runtime()
    # storage: bits per weight plus two float16 numbers per group, plus the float32 bias
    assert q.memory_bytes() == 24 * 128 * bits // 8 + 2 * 2 * 24 * 4 + 24 * 4
    # bf16 inputs work and give a close answer
    out16 = q(x.bfloat16())
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.float(), expected, rtol=0.05, atol=0.05)
