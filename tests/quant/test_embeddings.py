"""16-bit embeddings and head: the whole model shrinks, ties survive, round trips are exact."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import coreopt
from coreopt.quant import compress_embeddings, load_quantized, model_bytes, save_quantized
from coreopt.quant.embeddings import HalfEmbedding, HalfLinear

IDS = torch.arange(3, 13).view(1, 10)


def _logits(model: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_tied_embedding_and_head_in_16_bits(
    tmp_path: Path, tiny_hf_model: Callable[..., Any], dtype: torch.dtype
) -> None:
    transformers = pytest.importorskip("transformers")
    model = tiny_hf_model("llama", tie_word_embeddings=True).eval()
    coreopt.quantize(model, bits=4, group_size=32, method="rtn", progress=False)
    ref = _logits(model)
    before = model_bytes(model)
    emb_bytes = model.model.embed_tokens.weight.numel() * 4
    assert compress_embeddings(model, dtype) == {
        "lm_head": "head",
        "model.embed_tokens": "embedding",
    }
    assert isinstance(model.model.embed_tokens, HalfEmbedding)
    assert isinstance(model.lm_head, HalfLinear)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied: stored once
    assert model_bytes(model) == before - emb_bytes // 2
    out = _logits(model)
    assert out.dtype == torch.float32
    assert float((out - ref).norm() / ref.norm()) < 0.02
    model.save_pretrained(tmp_path / "hf")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert loaded.model.embed_tokens.weight.dtype == dtype
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    torch.testing.assert_close(_logits(loaded), out, rtol=0, atol=0)
    save_quantized(model, tmp_path / "m.safetensors")
    fresh = load_quantized(
        tiny_hf_model("llama", seed=3, tie_word_embeddings=True).eval(), tmp_path / "m.safetensors"
    )
    torch.testing.assert_close(_logits(fresh), out, rtol=0, atol=0)


def test_untied_head_and_validation(tiny_hf_model: Callable[..., Any]) -> None:
    model = tiny_hf_model("llama", tie_word_embeddings=False).eval()
    ref = _logits(model)
    done = compress_embeddings(model)
    assert done == {"lm_head": "head", "model.embed_tokens": "embedding"}
    assert model.lm_head.weight.dtype == torch.bfloat16
    assert float((_logits(model) - ref).norm() / ref.norm()) < 0.02
    with pytest.raises(ValueError, match="dtype"):
        compress_embeddings(model, torch.int8)
