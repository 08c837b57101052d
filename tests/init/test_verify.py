import pytest
import torch
from init_layouts import Block, FusedAttention, GQAttention
from torch import nn

from coreopt.init import MimeticAttentionConfig, apply, mimetic_attention_, verify


@pytest.mark.parametrize(
    "make", [lambda: nn.MultiheadAttention(64, 4), lambda: FusedAttention(64, 4)]
)
def test_verify_passes_after_the_recipe_and_fails_at_default_init(make) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    m = make()
    assert not verify(m).ok
    mimetic_attention_(m, seed=0)
    report = verify(m)
    assert report.ok, str(report)
    qk = report.get("", "qk_diag_mean[min over heads]")
    assert 0.28 < qk.measured < 0.35
    assert 0.28 < qk.expected < 0.35
    vo = report.get("", "vo_diag_mean")
    assert -0.45 < vo.measured < -0.36
    assert -0.45 < vo.expected < -0.36


def _bad_copy(kind: str) -> FusedAttention:
    m = mimetic_attention_(FusedAttention(64, 4), seed=0)
    w = m.qkv.weight
    with torch.no_grad():
        if kind == "k_sign":
            w[64:128].neg_()
        elif kind == "q_transposed":
            w[:64] = w[:64].clone().T
        elif kind == "vo_sign":  # the sign bug of third-party snippets: V·O ≈ +I
            m.proj.weight.neg_()
        elif kind == "o_transposed":
            m.proj.weight.copy_(m.proj.weight.clone().T)
        elif kind == "swapped_qk_and_vo":  # Q·K ≈ -I and V·O ≈ +I
            w[64:128].neg_()
            m.proj.weight.neg_()
    return m


@pytest.mark.parametrize(
    ("kind", "stat"),
    [
        ("k_sign", "qk_diag_mean[max over heads]"),
        ("q_transposed", "qk_cos_I[max over heads]"),
        ("vo_sign", "vo_diag_mean"),
        ("o_transposed", "vo_cos_I"),
        ("swapped_qk_and_vo", "vo_diag_mean"),
    ],
)
def test_verify_catches_sign_and_transpose_bugs(kind: str, stat: str) -> None:
    report = verify(_bad_copy(kind))
    assert not report.ok
    assert stat in {c.statistic for c in report.failures}, str(report)


def test_verify_respects_the_recorded_config_and_per_layer_overrides() -> None:
    model = nn.Sequential(FusedAttention(32, 4), FusedAttention(32, 4))

    def per_layer(part: str, name: str, index: int) -> MimeticAttentionConfig:
        # per-layer signs and scales: flip the V·O sign in the second layer on purpose
        return MimeticAttentionConfig(beta_vo=0.4 if index == 0 else -0.2)

    apply(model, parts=("attention",), per_layer=per_layer, seed=0)
    report = verify(model)
    assert report.ok, str(report)
    assert report.get("1", "vo_diag_mean").measured > 0.1


def test_verify_gqa_and_model_walk() -> None:
    model = nn.ModuleDict({"a": GQAttention(32, 4, 2), "b": Block(32, 4)})
    apply(model, seed=1)
    report = verify(model)
    assert report.ok, str(report)
    assert {c.layer for c in report.checks} == {"a", "b.attn", "b.mlp.fc1"}
