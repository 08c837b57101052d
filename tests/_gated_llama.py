"""A tiny gated Llama on which a shared gate/up input transform pays, and the byte budget the
quant tests give it (shared by tests/quant/test_shared_transform.py and test_int8_transform.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

LLAMA: dict[str, Any] = {
    "num_hidden_layers": 1,
    "hidden_size": 64,
    "intermediate_size": 1024,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "vocab_size": 64,
}


def gated_llama(tiny_hf_model: Callable[..., Any]) -> Any:
    """A one-layer Llama whose gate/up read four outlier input channels (an input transform
    pays there) and are wide enough (1024 x 64) for a shared 16 x 16 transform to be cheap."""
    model = tiny_hf_model("llama", **LLAMA).eval()
    with torch.no_grad():
        for proj in (model.model.layers[0].mlp.gate_proj, model.model.layers[0].mlp.up_proj):
            proj.weight[:, :4] *= 25
    return model


BUDGET: dict[str, Any] = {
    "bits_per_weight": 3.5,
    "steps": 20,
    "block_options": (16,),
    "progress": False,
    "max_workers": 1,
    "share_transforms": True,
}
