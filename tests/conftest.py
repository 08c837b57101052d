"""Shared fixtures: GPU tests are skipped without CUDA; `devices` lists what this machine has;
`tiny_hf_model` builds tiny random transformers models offline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import settings

# Property tests draw the same examples on every run: CI must not depend on a lucky draw.
settings.register_profile("coreopt", derandomize=True, deadline=None)
settings.load_profile("coreopt")


def _available_devices() -> list[str]:
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=_available_devices())
def device(request: pytest.FixtureRequest) -> torch.device:
    """Every device of this machine (cpu, and cuda when present)."""
    return torch.device(request.param)


# Tiny random transformers models: (config class, model class, config defaults), by name.
_TINY_HF: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": (  # grouped-query attention, RoPE, gated MLP; head dim 16
        "LlamaConfig",
        "LlamaForCausalLM",
        {
            "vocab_size": 97,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 64,
        },
    ),
    "bert": (  # absolute positions, GELU, post-LN; head dim 16
        "BertConfig",
        "BertModel",
        {
            "vocab_size": 97,
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 128,
            "max_position_embeddings": 64,
        },
    ),
    "gpt2": (  # Conv1D layers (weight stored (in, out)), tied head; head dim 16
        "GPT2Config",
        "GPT2LMHeadModel",
        {
            "vocab_size": 97,
            "n_positions": 32,
            "n_embd": 64,
            "n_layer": 2,
            "n_head": 4,
            "bos_token_id": 0,
            "eos_token_id": 0,
        },
    ),
}


@pytest.fixture
def tiny_hf_model() -> Callable[..., Any]:
    """Factory of tiny randomly initialised transformers models, built from a config (no download).

    ``tiny_hf_model(arch, seed=0, **config)``: ``arch`` is ``"llama"`` (``LlamaForCausalLM``),
    ``"bert"`` (``BertModel``) or ``"gpt2"`` (``GPT2LMHeadModel``), all 2 layers of width 64 with
    4 heads; keyword arguments override
    the config; the weights are drawn after ``torch.manual_seed(seed)``. The model is returned as
    built (float32, train mode). Skips the test without transformers.
    """
    transformers = pytest.importorskip("transformers")

    def build(arch: str, *, seed: int = 0, **config: Any) -> Any:
        config_cls, model_cls, defaults = _TINY_HF[arch]
        cfg = getattr(transformers, config_cls)(**{**defaults, **config})
        torch.manual_seed(seed)
        return getattr(transformers, model_cls)(cfg)

    return build
