"""Dual transforms on paired weights: structure discovery and exact invariance of the fp network.

Tiny random transformers models (no download), in float64 so that "unchanged" means 1e-5 or
better: a Llama (grouped-query attention, RoPE, gated MLP) and a BERT (absolute positions, GELU).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from coreopt.quant import discover, fold_dual_transforms, fold_gated, fold_qk, fold_vo
from coreopt.quant.pairs import rotary_commuting

pytest.importorskip("transformers")

TinyModel = Callable[[str], torch.nn.Module]


@pytest.fixture
def tiny_model(tiny_hf_model: Callable[..., Any]) -> TinyModel:
    """``tiny_model("llama")`` or ``tiny_model("bert")``, in float64 and eval mode."""

    def build(which: str) -> torch.nn.Module:
        if which == "bert":
            return (
                tiny_hf_model("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
                .double()
                .eval()
            )
        model = tiny_hf_model("llama", intermediate_size=96).double().eval()
        with torch.no_grad():  # random norms and biases-free weights with some spread
            for m in model.modules():
                if type(m).__name__.endswith("RMSNorm"):
                    m.weight.uniform_(0.5, 1.5)
        return model

    return build


def _out(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def test_discover_finds_the_llama_layout(tiny_model: TinyModel) -> None:
    st = discover(tiny_model("llama"))
    assert len(st.attention) == 2
    assert len(st.mlp) == 2
    a = st.attention[0]
    assert (a.q, a.o) == ("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.o_proj")
    assert (a.n_heads, a.n_kv_heads, a.head_dim, a.rope) == (4, 2, 16, True)
    assert a.norm == "model.layers.0.input_layernorm"
    m = st.mlp[1]
    assert m.gate == "model.layers.1.mlp.gate_proj"
    assert m.act == "silu"
    assert m.norm == "model.layers.1.post_attention_layernorm"
    assert st.input_norm("model.layers.1.mlp.up_proj") == m.norm
    names = [
        n for n, mod in tiny_model("llama").named_modules() if isinstance(mod, torch.nn.Linear)
    ]
    comps = st.components([n for n in names if "lm_head" not in n])
    assert ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"] in comps
    assert ["model.layers.0.self_attn.v_proj", "model.layers.0.self_attn.o_proj"] in comps


def test_discover_finds_the_bert_layout(tiny_model: TinyModel) -> None:
    st = discover(tiny_model("bert"))
    assert len(st.attention) == 2
    assert len(st.mlp) == 2
    a = st.attention[1]
    assert a.v == "encoder.layer.1.attention.self.value"
    assert a.o == "encoder.layer.1.attention.output.dense"
    assert a.rope is False
    assert a.n_heads == 4
    assert a.head_dim == 16
    assert a.norm == "encoder.layer.0.output.LayerNorm"  # post-LN: the previous layer's output
    assert st.attention[0].norm == "embeddings.LayerNorm"
    m = st.mlp[0]
    assert (m.up, m.down, m.gate) == (
        "encoder.layer.0.intermediate.dense",
        "encoder.layer.0.output.dense",
        None,
    )
    assert m.norm == "encoder.layer.0.attention.output.LayerNorm"


def _random_invertible(k: int, d: int, g: torch.Generator) -> torch.Tensor:
    return torch.randn(k, d, d, generator=g, dtype=torch.float64) / d**0.5 + torch.eye(
        d, dtype=torch.float64
    )


@pytest.mark.parametrize("which", ["llama", "bert"])
def test_random_dual_transforms_leave_the_network_unchanged(
    which: str, tiny_model: TinyModel
) -> None:
    model = tiny_model(which)
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(1))
    ref = _out(model, ids)
    st = discover(model)
    mods = dict(model.named_modules())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for a in st.attention:
            q, k, v, o = (mods[n] for n in (a.q, a.k, a.v, a.o))
            M = _random_invertible(a.n_kv_heads, a.head_dim, g)
            Wv, bv, Wo = fold_vo(v.weight, v.bias, o.weight, M, a.n_heads)
            v.weight.copy_(Wv)
            o.weight.copy_(Wo)
            if bv is not None:
                v.bias.copy_(bv)
            if a.rope:
                p = torch.randn(a.n_kv_heads, 2, a.head_dim // 2, generator=g, dtype=torch.float64)
                M = rotary_commuting(p + torch.tensor([1.0, 0.0]).view(1, 2, 1).double())
            else:
                M = _random_invertible(a.n_kv_heads, a.head_dim, g)
            Wq, bq, Wk, bk = fold_qk(q.weight, q.bias, k.weight, k.bias, M, a.n_heads)
            q.weight.copy_(Wq)
            k.weight.copy_(Wk)
            if bq is not None:
                q.bias.copy_(bq)
                k.bias.copy_(bk)
        for m in st.mlp:
            if m.gate:
                up, down = mods[m.up], mods[m.down]
                s = torch.rand(up.out_features, generator=g, dtype=torch.float64) * 3 + 0.2
                Wu, _bu, Wd = fold_gated(up.weight, up.bias, down.weight, s)
                up.weight.copy_(Wu)
                down.weight.copy_(Wd)
    torch.testing.assert_close(_out(model, ids), ref, rtol=1e-5, atol=1e-5)


def test_a_generic_qk_map_breaks_rope_invariance(tiny_model: TinyModel) -> None:
    """The reason RoPE models only get rotary-commuting Q/K maps."""
    model = tiny_model("llama")
    ids = torch.randint(0, 97, (1, 10), generator=torch.Generator().manual_seed(1))
    ref = _out(model, ids)
    a = discover(model).attention[0]
    mods = dict(model.named_modules())
    q, k = mods[a.q], mods[a.k]
    M = _random_invertible(a.n_kv_heads, a.head_dim, torch.Generator().manual_seed(3))
    with torch.no_grad():
        Wq, _, Wk, _ = fold_qk(q.weight, None, k.weight, None, M, a.n_heads)
        q.weight.copy_(Wq)
        k.weight.copy_(Wk)
    assert not torch.allclose(_out(model, ids), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("which", ["llama", "bert"])
def test_learned_dual_transforms_fold_exactly(which: str, tiny_model: TinyModel) -> None:
    model = tiny_model(which)
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(2))
    ref = _out(model, ids)
    before = {n: p.clone() for n, p in model.named_parameters()}
    folded = fold_dual_transforms(model, bits=3, group_size=32, dual_steps=15)
    assert set(folded.values()) <= {"vo", "qk", "gated"}
    assert folded
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert changed  # the weights moved ...
    torch.testing.assert_close(_out(model, ids), ref, rtol=1e-5, atol=1e-5)  # ... the function not


@pytest.mark.parametrize("kind", ["vo", "qk"])
def test_pair_proxy_from_gram_matrices_matches_the_direct_product(kind: str) -> None:
    from coreopt.quant import InputMoments
    from coreopt.quant.pairs import PairProblem

    g = torch.Generator().manual_seed(0)
    h, kv, d, n, o = 4, 2, 8, 24, 20
    P = torch.randn(kv * d, n, generator=g, dtype=torch.float64)
    R = (
        torch.randn(o, h * d, generator=g, dtype=torch.float64)
        if kind == "vo"
        else (torch.randn(h * d, n, generator=g, dtype=torch.float64))
    )
    Rh = R + 0.1 * torch.randn(R.shape, generator=g, dtype=torch.float64)
    Ph = P + 0.1 * torch.randn(P.shape, generator=g, dtype=torch.float64)
    m = InputMoments(
        torch.rand(n, generator=g, dtype=torch.float64),
        torch.randn(n, 1, generator=g, dtype=torch.float64),
    )
    S = m.dense()
    L = torch.linalg.cholesky(S)
    expected = torch.zeros((), dtype=torch.float64)
    for j in range(h):
        k = j // (h // kv)
        Yj, Yhj = P[k * d : (k + 1) * d], Ph[k * d : (k + 1) * d]
        if kind == "vo":
            Xj, Xhj = R[:, j * d : (j + 1) * d], Rh[:, j * d : (j + 1) * d]
            E = (Xj @ Yj - Xhj @ Yhj) @ L
        else:
            Xj, Xhj = R[j * d : (j + 1) * d], Rh[j * d : (j + 1) * d]
            E = L.T @ (Xj.T @ Yj - Xhj.T @ Yhj) @ L
        expected = expected + (E**2).sum()
    prob = PairProblem(kind, R, P, h, kv, d, m)
    torch.testing.assert_close(prob.loss(Rh, Ph), expected)


def test_hidden_moments_reused_after_the_gated_fold_equal_a_recomputation(
    tiny_hf_model: Callable[..., Any],
) -> None:
    # quantize computes the MLP hidden moments once, before the gated scaling is folded, and
    # rescales them (Σ' = diag(s) Σ diag(s)); a recomputation on the folded model must agree
    from coreopt.quant import QuantizeConfig
    from coreopt.quant.quantize import _fold_all, structure_moments

    model = tiny_hf_model("llama")
    st = discover(model)
    names = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    duals, hidden = _fold_all(model, st, QuantizeConfig(bits=3, group_size=32), names, None)
    assert "gated" in duals.values()
    fresh = structure_moments(model, st)
    for down, h in hidden.items():
        torch.testing.assert_close(h.diag, fresh[down].diag, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(h.low_rank, fresh[down].low_rank, rtol=1e-4, atol=1e-6)
