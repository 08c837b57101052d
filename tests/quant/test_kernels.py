"""Runtime kernels of QuantizedLinear against the dequantized reference, at every bit width."""

from __future__ import annotations

import pytest
import torch

from coreopt.quant import QuantFormat, QuantizedLinear
from coreopt.quant.format import rtn
from coreopt.quant.kernels import int4_available, kernel_group, pack_int4
from coreopt.quant.linear import pad_columns
from coreopt.quant.runtime import runtime_report, set_runtime

needs_int4 = pytest.mark.skipif(
    not int4_available(torch.device("cpu")), reason="torch without the CPU int4 kernel"
)


def _layer(
    bits: int, group: int, *, out: int = 40, inp: int = 200, seed: int = 0
) -> QuantizedLinear:
    """A layer whose widths need padding (200 inputs, 40 outputs: not multiples of 16 or g)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out, inp, generator=g)
    fmt = QuantFormat(bits, group)
    codes, s, z = rtn(pad_columns(W, group), fmt)
    T = torch.linalg.qr(torch.randn(5, 40, 40, generator=g))[0]
    return QuantizedLinear.from_codes(
        codes, s, z, fmt, in_features=inp, bias=torch.randn(out, generator=g), transform=T
    )


def _reference(layer: QuantizedLinear, x: torch.Tensor) -> torch.Tensor:
    """Independent of every runtime path: the dense effective weight ``Ŵ T`` in float64."""
    W = layer.effective_weight(torch.float64)
    assert layer.bias is not None
    return (x.double() @ W.T + layer.bias.double()).float()


@needs_int4
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group", [32, 128])
def test_int4_kernel_matches_the_stored_weight(bits: int, group: int) -> None:
    layer = _layer(bits, group)
    x = torch.randn(3, 5, 200)
    ref = _reference(layer, x)
    layer.set_runtime("int4", torch.float32)  # float32 activations: exact up to float32 sums
    torch.testing.assert_close(layer(x), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    assert layer.runtime_bytes() > 0
    layer.set_runtime("int4")  # default: bfloat16 activations for float32 inputs
    y = layer(x)
    assert y.dtype == torch.float32
    assert float((y - ref).norm() / ref.norm()) < 1e-2


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_dense_and_reference_paths(bits: int) -> None:
    layer = _layer(bits, 64)
    x = torch.randn(4, 200)
    ref = _reference(layer, x)
    for kernel in ("dense", "dequant", "reference"):
        layer.set_runtime(kernel, torch.float32)
        torch.testing.assert_close(layer(x), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    assert layer.runtime_bytes() == 0  # the reference path builds nothing
    layer.set_runtime("dequant")  # bfloat16 activations by default on CPU
    assert float((layer(x) - ref).norm() / ref.norm()) < 1e-2


@needs_int4
def test_auto_switches_from_the_int4_kernel_to_dequantization_on_large_batches() -> None:
    from coreopt.quant.linear import AUTO_INT4_ROWS

    layer = _layer(3, 64)
    small = torch.randn(2, AUTO_INT4_ROWS // 2, 200)  # 16 rows: the int4 kernel
    large = torch.randn(AUTO_INT4_ROWS + 1, 200)
    assert layer.resolve_kernel(small) == "int4"
    assert layer.resolve_kernel(large) == "dequant"
    for x in (small, large):
        ref = _reference(layer, x)
        assert float((layer(x) - ref).norm() / ref.norm()) < 1e-2
    assert set(runtime_report(torch.nn.Sequential(layer)).kernels) == {"int4", "dequant"}


@needs_int4
def test_int4_layout_holds_half_a_byte_per_weight() -> None:
    codes = torch.randint(0, 8, (48, 256), dtype=torch.uint8)
    s = torch.rand(48, 4) + 0.1
    z = torch.randint(0, 8, (48, 4)).float()
    lay = pack_int4(codes, s, z, 3, 64, torch.bfloat16)
    assert lay.packed.numel() == 48 * 256 // 2
    lay8 = pack_int4(codes, s, z, 8, 64, torch.bfloat16)  # two nibbles: twice the columns
    assert lay8.doubled
    assert lay8.packed.numel() == 48 * 256
    assert kernel_group(512) == 256
    assert kernel_group(96) == 32


@needs_int4
def test_runtime_rebuilt_after_the_stored_codes_change() -> None:
    layer = _layer(4, 64)
    other = _layer(4, 64, seed=1)
    x = torch.randn(2, 200)
    layer.set_runtime("int4", torch.float32)
    layer(x)  # builds the layout
    layer.load_state_dict(other.state_dict())
    torch.testing.assert_close(layer(x), _reference(other, x), rtol=1e-4, atol=1e-3)


def test_dtype_casts_keep_the_stored_metadata() -> None:
    layer = _layer(3, 64)
    scale, zero, T = layer.scale.clone(), layer.zero.clone(), layer.transform
    assert T is not None
    T = T.clone()
    x = torch.randn(2, 200)
    ref = _reference(layer, x)
    layer.to(torch.bfloat16)
    assert layer.scale.dtype == torch.float16
    assert torch.equal(layer.scale, scale)
    assert torch.equal(layer.zero, zero)
    assert layer.transform is not None
    assert torch.equal(layer.transform, T)
    assert layer.bias is not None
    assert layer.bias.dtype == torch.bfloat16
    y = layer(x.bfloat16())
    assert y.dtype == torch.bfloat16
    assert float((y.float() - ref).norm() / ref.norm()) < 2e-2
    layer.half().float()
    assert torch.equal(layer.scale, scale)
    layer.set_runtime("reference")
    torch.testing.assert_close(layer(x), ref, rtol=1e-2, atol=1e-2 * float(ref.abs().max()))


def test_gradient_inputs_take_the_differentiable_path() -> None:
    layer = _layer(4, 64)
    x = torch.randn(2, 200, requires_grad=True)
    assert layer.resolve_kernel(x) == "reference"
    layer(x).sum().backward()
    assert x.grad is not None
    with torch.no_grad():
        assert layer.resolve_kernel(x) != "reference" or not int4_available(x.device)


def test_set_runtime_report_and_validation() -> None:
    net = torch.nn.Sequential(_layer(4, 64), torch.nn.ReLU(), torch.nn.Linear(40, 3))
    rep = set_runtime(net, "dense", torch.bfloat16, example=torch.randn(1, 200))
    assert rep.kernels == {"dense": 1}
    assert rep.runtime_bytes >= 40 * 200 * 2  # the cached bfloat16 weight
    assert rep.total_bytes == rep.disk_bytes + rep.runtime_bytes
    assert runtime_report(net).disk_bytes == rep.disk_bytes
    with pytest.raises(ValueError, match="kernel"):
        set_runtime(net, "fast")
    with pytest.raises(ValueError, match="compute_dtype"):
        set_runtime(net, "dense", torch.int8)
    with pytest.raises(ValueError, match="no QuantizedLinear"):
        set_runtime(torch.nn.Linear(3, 3))
