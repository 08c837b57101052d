"""coreopt.init on HF BERT and GPT-2 (built offline from configs) and on cross-attention.

The per-head checks read the weights straight from the HF modules (their own storage
conventions: ``nn.Linear`` (out, in), GPT-2's ``Conv1D`` (in, out)), independently of
:func:`find_attention`'s views.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from coreopt.init import (
    MimeticAttentionConfig,
    NothingInitialisedError,
    apply,
    verify,
)

transformers = pytest.importorskip("transformers")

D, H = 32, 4
K = D // H


def _bert() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=50,
        hidden_size=D,
        num_hidden_layers=2,
        num_attention_heads=H,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    return transformers.BertModel(cfg)


def _gpt2(cross: bool = False) -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=50, n_embd=D, n_layer=2, n_head=H, n_positions=32, add_cross_attention=cross
    )
    return transformers.GPT2Model(cfg)


def _per_head_signs(Wq: torch.Tensor, Wk: torch.Tensor, Wv: torch.Tensor, Wo: torch.Tensor):
    """Row-vector convention: W_q, W_k, W_v (d, H k), W_o (H k, d). Returns the per-head diagonal
    means of W_q^h W_k^hT and the diagonal mean of W_v W_o."""
    Wq, Wk, Wv, Wo = (w.detach() for w in (Wq, Wk, Wv, Wo))
    qk = [
        float((Wq[:, h * K : (h + 1) * K] @ Wk[:, h * K : (h + 1) * K].T).diagonal().mean())
        for h in range(H)
    ]
    vo = float((Wv @ Wo).diagonal().mean())
    return qk, vo


def test_bert_is_recognised_and_each_head_has_the_mimetic_signs() -> None:
    model = _bert()
    report = apply(model, seed=0)
    assert report.count("attention") == 2
    assert {e.name for e in report.changed if e.part == "attention"} == {
        "encoder.layer.0.attention",
        "encoder.layer.1.attention",
    }
    for layer in model.encoder.layer:
        att = layer.attention
        # nn.Linear stores W^T: W_q = query.weight.T (d, Hk), W_o = output.dense.weight.T (Hk, d)
        qk, vo = _per_head_signs(
            att.self.query.weight.T,
            att.self.key.weight.T,
            att.self.value.weight.T,
            att.output.dense.weight.T,
        )
        assert min(qk) > 0.15, qk
        assert vo < -0.2, vo
    assert verify(model).ok
    out = model(torch.randint(50, (1, 5))).last_hidden_state
    assert torch.isfinite(out).all()


def test_gpt2_conv1d_is_recognised_and_each_head_has_the_mimetic_signs() -> None:
    model = _gpt2()
    before = model.h[0].attn.c_attn.weight.clone()
    report = apply(model, seed=0)
    assert report.count("attention") == 2
    assert not torch.equal(model.h[0].attn.c_attn.weight, before)
    for block in model.h:
        # Conv1D stores (in, out) = the row-vector W itself: c_attn.weight = [W_q | W_k | W_v]
        w = block.attn.c_attn.weight
        qk, vo = _per_head_signs(w[:, :D], w[:, D : 2 * D], w[:, 2 * D :], block.attn.c_proj.weight)
        assert min(qk) > 0.15, qk
        assert vo < -0.2, vo
    assert verify(model).ok
    out = model(torch.randint(50, (1, 5))).last_hidden_state
    assert torch.isfinite(out).all()


def test_verify_fails_on_default_initialised_bert_and_gpt2() -> None:
    assert not verify(_bert()).ok
    assert not verify(_gpt2()).ok


def test_cross_attention_is_skipped_with_its_reason() -> None:
    layer = nn.TransformerDecoderLayer(D, H, dim_feedforward=64)
    cross_before = layer.multihead_attn.in_proj_weight.clone()
    report = apply(layer, seed=0)
    by_name = {e.name: e for e in report.entries if e.part == "attention"}
    assert by_name["self_attn"].action == "initialised"
    assert by_name["multihead_attn"].action == "skipped"
    assert "self-attention only" in by_name["multihead_attn"].detail
    assert torch.equal(layer.multihead_attn.in_proj_weight, cross_before)
    assert verify(layer).ok  # the skipped layer is not held against the recipe
    # Opt in: the same recipe on cross-attention too (a reconstruction).
    cross = MimeticAttentionConfig(cross_attention=True)
    report = apply(layer, seed=0, config={"attention": cross})
    assert report.count("attention") == 2
    assert verify(layer).ok


def test_gpt2_and_t5_cross_attention_are_skipped() -> None:
    model = _gpt2(cross=True)
    report = apply(model, seed=0)
    skipped = {e.name for e in report.entries if e.action == "skipped" and e.part == "attention"}
    assert skipped == {"h.0.crossattention", "h.1.crossattention"}
    assert report.count("attention") == 2
    cfg = transformers.T5Config(
        vocab_size=50, d_model=D, d_kv=K, d_ff=64, num_layers=1, num_heads=H
    )
    t5 = transformers.T5Model(cfg)
    report = apply(t5, seed=0)
    skipped = {e.name for e in report.entries if e.action == "skipped" and e.part == "attention"}
    assert skipped == {"decoder.block.0.layer.1.EncDecAttention"}
    assert report.count("attention") == 2  # encoder and decoder self-attention


def test_apply_that_changes_nothing_is_never_silent() -> None:
    class Unknown(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.LayerNorm(4)

    with pytest.raises(NothingInitialisedError, match="Linear") as info:
        apply(Unknown(), seed=0)
    assert info.value.report.unrecognised
    # Recognised layers all skipped on purpose: a loud warning, not an error.
    with pytest.warns(UserWarning, match="initialised no layer"):
        apply(nn.TransformerEncoderLayer(D, H), parts=("conv",), seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply(Unknown(), dry_run=True)  # a dry run only logs
