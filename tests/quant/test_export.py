"""GGUF export: blocks read back by the gguf package and the model by transformers' GGUF loader
(independent readers) match the quantized model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import coreopt
from coreopt.quant import set_runtime
from coreopt.quant.export import export_gguf

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

IDS = torch.arange(3, 13).view(1, 10)


def _quantized(tiny_hf_model: Callable[..., Any], bits: int, **kw: Any) -> Any:
    model = tiny_hf_model("llama", tie_word_embeddings=True).eval()
    coreopt.quantize(model, bits=bits, group_size=64, progress=False, **kw)
    set_runtime(model, "reference")  # float32 dequantization: the weights as stored
    return model


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_gguf_blocks_hold_the_stored_weights(
    tmp_path: Path, tiny_hf_model: Callable[..., Any], bits: int
) -> None:
    model = _quantized(tiny_hf_model, bits, method="rtn")
    out = export_gguf(model, tmp_path / "m.gguf")
    assert out.tensors["blk.0.ffn_down.weight"] == "Q4_1"
    assert "output.weight" not in out.tensors  # tied head: llama.cpp reads token_embd
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    tensors = {t.name: t for t in reader.tensors}
    for layer, name in [("mlp.down_proj", "ffn_down"), ("self_attn.v_proj", "attn_v")]:
        t = tensors[f"blk.1.{name}.weight"]
        W = gguf.quants.dequantize(t.data, t.tensor_type)
        ref = model.get_submodule(f"model.layers.1.{layer}").stored_weight().numpy()
        assert np.abs(W - ref).max() <= 1e-3 * np.abs(ref).max()  # fp16 block offsets only


def test_transformers_reads_the_gguf_back_to_the_same_model(
    tmp_path: Path, tiny_hf_model: Callable[..., Any]
) -> None:
    # dual transforms folded and data-free GPTQ rounding kept, no runtime transform
    model = _quantized(tiny_hf_model, 3, transform="identity", steps=3, dual_steps=3)
    assert all(r.transform_block == 0 for r in model.quantization_report.layers)
    export_gguf(model, tmp_path / "m.gguf")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf")
    with torch.no_grad():
        ref = model(input_ids=IDS).logits
        got = back(input_ids=IDS).logits
    assert float((got - ref).abs().max()) < 1e-3 * float(ref.abs().max())
    # q/k rows were permuted to ggml's rotary layout and back by transformers' reader
    q = model.model.layers[0].self_attn.q_proj.stored_weight()
    torch.testing.assert_close(back.model.layers[0].self_attn.q_proj.weight, q, atol=1e-3, rtol=0)


def test_export_refuses_transforms_and_writes_8_bit_as_f16(
    tmp_path: Path, tiny_hf_model: Callable[..., Any]
) -> None:
    model = _quantized(tiny_hf_model, 3, method="hadamard")
    with pytest.raises(ValueError, match="runtime input transforms"):
        export_gguf(model, tmp_path / "t.gguf")
    eight = _quantized(tiny_hf_model, 8, method="rtn")
    out = export_gguf(eight, tmp_path / "e.gguf")
    assert out.tensors["blk.0.attn_q.weight"] == "F16"
    assert "Q8_0" in next(iter(out.notes.values()))
    with pytest.raises(ValueError, match="LlamaForCausalLM"):
        export_gguf(torch.nn.Linear(4, 4), tmp_path / "x.gguf")
