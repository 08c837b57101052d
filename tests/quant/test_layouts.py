"""Layouts other than nn.Linear: GPT-2's Conv1D, torch's MultiheadAttention and transformer
layers, quantized and run against the float model."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import coreopt
from coreopt.quant import QuantizedLinear, load_quantized, save_quantized
from coreopt.quant.layouts import TensorReadQuantizedLinear, conv1d_as_linear

FAST = {"steps": 3, "dual_steps": 3, "progress": False}


def _report(m: nn.Module) -> Any:
    return getattr(m, "quantization_report")  # noqa: B009


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_conv1d_as_linear_is_exact() -> None:
    transformers = pytest.importorskip("transformers")
    conv = transformers.pytorch_utils.Conv1D(48, 64)  # nf=48 outputs, nx=64 inputs
    nn.init.normal_(conv.weight)
    nn.init.normal_(conv.bias)
    x = torch.randn(3, 5, 64)
    torch.testing.assert_close(conv1d_as_linear(conv)(x), conv(x))


def test_gpt2_conv1d_layers_are_quantized_like_linear(
    tmp_path: Path, tiny_hf_model: Callable[..., Any]
) -> None:
    model = tiny_hf_model("gpt2").eval()
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    coreopt.quantize(model, bits=8, group_size=32, method="rtn", progress=False)
    rep = _report(model)
    names = {r.name for r in rep.layers}
    assert names == {
        f"transformer.h.{i}.{m}"
        for i in range(2)
        for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    }
    assert "lm_head" in rep.skipped
    c_attn = model.transformer.h[0].attn.c_attn
    assert isinstance(c_attn, QuantizedLinear)
    assert (c_attn.out_features, c_attn.in_features) == (192, 64)  # (in, out) read transposed
    with torch.no_grad():
        out = model(input_ids=ids).logits
    assert _rel(out, ref) < 0.02  # 8 bits: close to the float model
    # the float model at 4 bits: still the same function up to 4-bit noise, through the kernel
    path = tmp_path / "gpt2.safetensors"
    save_quantized(model, path)
    fresh = load_quantized(tiny_hf_model("gpt2", seed=1).eval(), path)
    with torch.no_grad():
        torch.testing.assert_close(fresh(input_ids=ids).logits, out, rtol=0, atol=0)


def test_gpt2_skipped_conv1d_keeps_its_layout(tiny_hf_model: Callable[..., Any]) -> None:
    model = tiny_hf_model("gpt2").eval()
    coreopt.quantize(
        model, bits=4, group_size=32, method="rtn", skip=("*.mlp.c_proj",), progress=False
    )
    rep = _report(model)
    assert rep.skipped["transformer.h.0.mlp.c_proj"] == "matches skip"
    assert type(model.transformer.h[0].mlp.c_proj).__name__ == "Conv1D"


def test_multihead_attention_out_proj_is_skipped_with_its_reason() -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(64, 4, batch_first=True).eval()
    net = nn.ModuleDict({"attn": mha, "ff": nn.Linear(64, 64)})
    x = torch.randn(2, 7, 64)
    coreopt.quantize(net, bits=4, group_size=32, method="rtn", progress=False)
    assert "attn.out_proj" in _report(net).skipped
    assert "MultiheadAttention" in _report(net).skipped["attn.out_proj"]
    assert isinstance(net["ff"], QuantizedLinear)
    out, _ = net["attn"](x, x, x)  # runs: out_proj is still a float nn.Linear
    assert torch.isfinite(out).all()
    alone = nn.MultiheadAttention(64, 4)
    with pytest.raises(ValueError, match="nothing to quantize"):  # refused before any work
        coreopt.quantize(alone, bits=4, progress=False)
    with pytest.raises(ValueError, match="out_proj"):
        coreopt.quantize(copy.deepcopy(net), bits=4, targets=["attn.out_proj"], progress=False)


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_layers_run_after_quantization(kind: str, batch_first: bool) -> None:
    torch.manual_seed(0)
    cls = nn.TransformerEncoderLayer if kind == "encoder" else nn.TransformerDecoderLayer
    layer = cls(64, 4, dim_feedforward=128, dropout=0.0, batch_first=batch_first).eval()
    x = torch.randn(2, 6, 64) if batch_first else torch.randn(6, 2, 64)
    args = (x,) if kind == "encoder" else (x, x)
    with torch.no_grad():
        ref = layer(*args)
    coreopt.quantize(layer, bits=8, group_size=32, method="rtn", progress=False)
    assert isinstance(layer.linear1, TensorReadQuantizedLinear)
    assert any(k.endswith("out_proj") for k in _report(layer).skipped)
    with torch.no_grad():  # eval + batch_first takes torch's fused path, which reads .weight
        out = layer(*args)
    assert _rel(out, ref) < 0.02
    torch.testing.assert_close(
        layer.linear1.weight, layer.linear1.effective_weight(), rtol=0, atol=0
    )


def test_transformer_encoder_stack_with_padding_mask() -> None:
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True), 2
    ).eval()
    x = torch.randn(2, 5, 64)
    mask = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    with torch.no_grad():
        ref = enc(x, src_key_padding_mask=mask)
    coreopt.quantize(enc, bits=8, group_size=32, method="rtn", progress=False)
    with torch.no_grad():
        out = enc(x, src_key_padding_mask=mask)
    keep = ~mask
    assert _rel(out[keep], ref[keep]) < 0.02
