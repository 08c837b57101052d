import pytest
import torch
from init_layouts import Block, GQAttention
from torch import nn

from coreopt.init import MimeticAttentionConfig, NothingInitialisedError, apply, find_attention


def test_apply_walks_a_model_and_lists_what_it_does_not_know() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(Block(32, 4), Block(32, 4), nn.Linear(32, 10))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = apply(model, seed=0)
    assert report.count("attention") == 2
    assert report.count("mlp") == 2
    unknown = {e.name for e in report.unrecognised}
    assert {"0.norm1", "0.mlp.fc2", "1.norm1", "1.mlp.fc2", "2"} <= unknown
    after = model.state_dict()
    assert torch.equal(after["2.weight"], before["2.weight"])
    assert torch.equal(after["0.mlp.fc2.weight"], before["0.mlp.fc2.weight"])
    assert not torch.equal(after["0.attn.qkv.weight"], before["0.attn.qkv.weight"])
    assert after["0.mlp.fc1.weight"].mean() > 0
    assert "unrecognised" in str(report)


def test_dry_run_changes_nothing_and_seed_is_deterministic() -> None:
    model = nn.Sequential(Block(16, 2), nn.MultiheadAttention(16, 2), GQAttention(16, 4, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = apply(model, dry_run=True)
    assert report.count("attention") == 3
    assert all(e.action == "would initialise" for e in report.changed)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    apply(model, seed=5)
    first = {k: v.clone() for k, v in model.state_dict().items()}
    apply(model, seed=5)
    for k, v in model.state_dict().items():
        assert torch.equal(v, first[k])


def test_presets_and_parts() -> None:
    model = nn.Sequential(Block(16, 2), nn.Conv2d(4, 4, 3, groups=4))
    report = apply(model, recipe="language", dry_run=True)
    skipped = {(e.name, e.part) for e in report.entries if e.action == "skipped"}
    assert ("0.mlp", "mlp") in skipped
    assert ("1", "conv") in skipped
    report = apply(model, parts=("conv",), seed=0)
    assert [e.name for e in report.changed] == ["1"]
    report = apply(
        model, recipe="all", config={"attention": MimeticAttentionConfig(vo=False)}, seed=0
    )
    assert report.count("conv") == 1
    assert report.count("attention") == 1
    with pytest.raises(ValueError, match="recipe"):
        apply(model, recipe="nope")
    with pytest.raises(ValueError, match="parts"):
        apply(model, parts=("attn",))
    with pytest.raises(TypeError, match="per_layer"):
        apply(model, per_layer=lambda part, name, i: MimeticAttentionConfig())
    with pytest.raises(TypeError, match=r"config\['mlp'\]"):
        apply(model, config={"mlp": MimeticAttentionConfig()})


def test_inconsistent_attention_is_reported_as_error_not_skipped() -> None:
    bad = GQAttention(16, 4, 2)
    bad.num_heads = 3  # 16 rows do not split into 3 heads
    # Nothing initialised: apply raises, with the error in its message and the report attached.
    with pytest.raises(NothingInitialisedError, match="num_heads") as info:
        apply(nn.Sequential(bad), seed=0)
    report = info.value.report
    assert [e.action for e in report.entries] == ["error"]
    assert "num_heads" in report.entries[0].detail


def test_transformer_encoder_layer() -> None:
    layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, batch_first=True)
    report = apply(layer, seed=0)
    assert {e.part for e in report.changed} == {"attention", "mlp"}
    p = find_attention(layer.self_attn)
    assert p is not None
    assert p.qk_product(0).diagonal().mean() > 0.2
    assert torch.isfinite(layer(torch.randn(2, 5, 32))).all()


def test_a_bare_attention_module_as_the_root() -> None:
    report = apply(nn.MultiheadAttention(16, 2), seed=0)
    assert [(e.name, e.action) for e in report.entries] == [("", "initialised")]
