"""coreopt.init on a Hugging Face model built offline from a config (no download)."""

from collections.abc import Callable
from typing import Any

import pytest
import torch

from coreopt.init import apply, find_attention, verify

pytest.importorskip("transformers")


@pytest.mark.slow  # importing transformers takes seconds
def test_llama_gqa_is_found_initialised_and_survives_post_init(
    tiny_hf_model: Callable[..., Any],
) -> None:
    model = tiny_hf_model("llama", vocab_size=32, hidden_size=32, intermediate_size=64)
    report = apply(model, recipe="language", seed=0)
    assert report.count("attention") == 2
    p = find_attention(model.model.layers[0].self_attn)
    assert p is not None
    assert (p.num_heads, p.num_kv_heads, p.head_dim) == (4, 2, 8)
    assert verify(model, recipe="language").ok
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.post_init()
    model.init_weights()
    after = model.state_dict()
    for k in before:
        if ".self_attn." in k:
            torch.testing.assert_close(after[k], before[k], rtol=0, atol=0, msg=k)
    assert verify(model, recipe="language").ok
    out = model(torch.randint(32, (1, 6))).logits
    assert out.shape == (1, 6, 32)
