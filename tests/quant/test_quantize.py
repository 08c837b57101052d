"""``coreopt.quantize`` end to end on small models: API, report, errors, save/load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import coreopt
from coreopt.quant import (
    MetaDeviceError,
    NonFiniteWeightError,
    QuantizeConfig,
    QuantizedLinear,
    UnsupportedFormatError,
    load_quantized,
    save_quantized,
)

FAST = {"steps": 5, "dual_steps": 5, "progress": False}


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(128, 96), nn.GELU(), nn.Linear(96, 64), nn.GELU(), nn.Linear(64, 10)
    )


@pytest.mark.parametrize("method", ["rtn", "hadamard", "cafeq"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_every_linear_is_replaced_and_outputs_stay_close(method: str, bits: int) -> None:
    net = mlp()
    x = torch.randn(16, 128)
    with torch.no_grad():
        ref = net(x)
    out = coreopt.quantize(net, bits=bits, group_size=32, method=method, **FAST)
    assert out is net
    assert all(isinstance(net[i], QuantizedLinear) for i in (0, 2, 4))
    rep = net.quantization_report
    assert [r.name for r in rep.layers] == ["0", "2", "4"]
    assert rep.memory_after < rep.memory_before
    with torch.no_grad():
        err = float((net(x) - ref).norm() / ref.norm())
    assert err < {2: 1.0, 3: 0.5, 4: 0.25, 8: 0.02}[bits]
    for r in rep.layers:
        assert r.rel_error == pytest.approx(
            float(
                (net.get_submodule(r.name).effective_weight() - mlp().get_submodule(r.name).weight)
                .norm()
                .div(mlp().get_submodule(r.name).weight.norm())
            ),
            rel=1e-4,
        )


def test_cafeq_never_loses_to_rtn_on_the_proxy() -> None:
    rep = coreopt.quantize(mlp(), bits=3, group_size=32, **FAST).quantization_report
    for r in rep.layers:
        assert r.proxy <= r.proxy_rtn * (1 + 1e-6)


def test_group_size_not_dividing_is_padded_and_block_not_dividing_skips_the_transform() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(100, 40))
    x = torch.randn(3, 100)
    ref = net(x)
    coreopt.quantize(net, bits=4, group_size=64, **FAST)
    layer = net[0]
    assert isinstance(layer, QuantizedLinear)
    assert layer.in_padded == 128
    assert layer.transform is None
    assert "does not divide" in net.quantization_report.layers[0].note
    torch.testing.assert_close(net(x), ref, atol=0.1, rtol=0.1)


@pytest.mark.parametrize("method", ["cafeq", "hadamard"])
def test_width_padded_for_groups_still_gets_a_transform_on_its_real_inputs(method: str) -> None:
    # 96 inputs: blocks of 32 divide it, groups of 64 do not (stored padded to 128). The transform
    # acts on the 96 real inputs and the zero columns are appended after it.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(96, 40))
    x = torch.randn(5, 96)
    W = net[0].weight.detach().clone()
    coreopt.quantize(net, bits=3, group_size=64, method=method, block_size=32, select=False, **FAST)
    layer = net[0]
    assert layer.in_padded == 128
    assert layer.transform is not None
    assert layer.transform.shape == (3, 32, 32)
    report = net.quantization_report.layers[0]
    assert report.note == ""
    W_eff = layer.effective_weight()
    # the forward applies exactly the reported effective weight (float32 round-off only)
    torch.testing.assert_close(net(x), x @ W_eff.T + layer.bias, atol=1e-5, rtol=1e-5)
    rel = float((W - W_eff).norm() / W.norm())
    assert rel == pytest.approx(report.rel_error, rel=1e-5)


def test_bad_input_raises_clear_errors() -> None:
    with pytest.raises(UnsupportedFormatError, match="bits"):
        coreopt.quantize(mlp(), bits=5)
    with pytest.raises(UnsupportedFormatError, match="group_size"):
        coreopt.quantize(mlp(), bits=4, group_size=48)
    with pytest.raises(ValueError, match="method"):
        coreopt.quantize(mlp(), method="gptq-with-data")
    with pytest.raises(TypeError, match=r"nn\.Module"):
        coreopt.quantize(torch.randn(3, 3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"only nn\.Linear"):
        coreopt.quantize(nn.Conv2d(3, 8, 3))
    with pytest.raises(TypeError, match=r"only nn\.Linear"):
        coreopt.quantize(mlp(), targets=["1"])
    with torch.device("meta"):
        meta = mlp()
    with pytest.raises(MetaDeviceError, match="meta"):
        coreopt.quantize(meta)
    broken = mlp()
    with torch.no_grad():
        broken[2].weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteWeightError, match="'2'"):
        coreopt.quantize(broken)
    assert isinstance(broken[0], nn.Linear)  # nothing was replaced
    with pytest.raises(ValueError, match="steps"):
        QuantizeConfig(steps=-1)


def test_skip_and_targets_select_layers() -> None:
    net = coreopt.quantize(mlp(), bits=4, skip=("4",), **FAST)
    assert isinstance(net[4], nn.Linear)
    assert isinstance(net[0], QuantizedLinear)
    assert net.quantization_report.skipped == {"4": "matches skip"}
    net = coreopt.quantize(mlp(), bits=4, targets=["2"], **FAST)
    assert isinstance(net[0], nn.Linear)
    assert isinstance(net[2], QuantizedLinear)


@pytest.mark.parametrize("method", ["rtn", "cafeq"])
def test_save_load_round_trip(tmp_path: Path, method: str) -> None:
    net = coreopt.quantize(mlp(), bits=3, group_size=32, method=method, **FAST)
    path = tmp_path / "q.safetensors"
    save_quantized(net, path)
    fresh = load_quantized(mlp(seed=1), path)
    x = torch.randn(5, 128)
    torch.testing.assert_close(fresh(x), net(x), rtol=0, atol=0)
    for name in ("0", "2", "4"):
        a, b = net.get_submodule(name), fresh.get_submodule(name)
        assert isinstance(b, QuantizedLinear)
        assert torch.equal(a.qweight, b.qweight)
    dense = sum(p.numel() * 4 for p in mlp().parameters())
    if method == "rtn":  # 3-bit codes plus float16 metadata: far smaller than float32
        assert path.stat().st_size < 0.35 * dense + 4096
    else:  # plus the 64 x 64 float32 transform blocks, large next to layers this small
        assert path.stat().st_size < dense


def test_save_requires_a_quantized_model(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no QuantizedLinear"):
        save_quantized(mlp(), tmp_path / "x.safetensors")


@pytest.mark.gpu
def test_threads_on_cuda_in_a_fresh_process_do_not_race_the_linalg_init() -> None:
    # pytorch/pytorch#90613: the first torch.linalg call on CUDA, made by several threads at once,
    # fails with "lazy wrapper should be called at most once" (seen with the benchmark on an H100).
    # Only a fresh interpreter has not loaded the backend yet, hence the subprocess.
    code = (
        "import torch, coreopt\n"
        "net = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(16)]).cuda()\n"
        "coreopt.quantize(net, bits=3, steps=3, dual_steps=3, max_workers=16, progress=False)\n"
        "assert all(m.qweight.is_cuda for m in net)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
