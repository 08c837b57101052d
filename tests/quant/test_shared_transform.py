"""One input transform shared by the layers that read the same input (q/k/v, gate/up): learned on
their summed proxies, chosen by the knapsack for the whole group, stored and counted once."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from _gated_llama import BUDGET, LLAMA, gated_llama
from _minilm import minilm, needs_minilm

import coreopt
from coreopt.quant import QuantFormat, QuantizeConfig, QuantizedLinear, model_bytes
from coreopt.quant.budget import (
    Option,
    SharedChoice,
    choose_options,
    chosen_cost,
    shared_transform_bits,
    stored_bits,
)
from coreopt.quant.io import load_quantized, save_quantized
from coreopt.quant.linear import share_transform
from coreopt.quant.methods import MatrixTask
from coreopt.quant.single import (
    TransformPart,
    learn_shared_transform,
    learn_transform,
    transform_loss,
)

QUANTIZE = sys.modules["coreopt.quant.quantize"]

# ----------------------------------------------------------------------------------------------
# the knapsack
# ----------------------------------------------------------------------------------------------


def _three_layers() -> tuple[list[list[Option]], list[SharedChoice]]:
    """Three layers of 100 bits each; a transform of 60 bits brings a layer's loss from 1.0 to
    0.1, either its own (60 bits each) or one shared by the three (60 bits once)."""
    layers = [
        [Option(3, 64, 0, 1.0, 100), Option(3, 64, 16, 0.1, 160), Option(3, 64, 16, 0.1, 100)]
        for _ in range(3)
    ]
    return layers, [SharedChoice(((0, 2), (1, 2), (2, 2)), 60)]


def test_knapsack_takes_the_shared_transform_when_only_it_fits() -> None:
    layers, shared = _three_layers()
    # 420 bits: three own transforms (480) do not fit, two do (loss 1.2); the shared one fits
    # with all three layers transformed (loss 0.3): its 60 bits counted once
    for budget in (360, 420, 479):
        pick = choose_options(layers, budget, shared)
        assert pick == [2, 2, 2]
        assert chosen_cost(layers, pick, shared) == 360  # 3 x 100 + 60 once
    # a bit less and nothing with a transform fits
    pick = choose_options(layers, 359, shared)
    assert pick == [0, 0, 0]


def test_knapsack_never_takes_part_of_a_shared_choice() -> None:
    layers, shared = _three_layers()
    # the shared options alone (100 bits, loss 0.1) would be the best per layer if their shared
    # 60 bits could be skipped: 320 bits must not buy them for only some of the layers
    for budget in (300, 320, 340, 359):
        pick = choose_options(layers, budget, shared)
        assert pick.count(2) in (0, 3)
        assert chosen_cost(layers, pick, shared) <= budget


def test_knapsack_with_shared_choices_matches_enumeration() -> None:
    import itertools
    import random

    rng = random.Random(0)
    for _ in range(40):
        layers = [
            [Option(0, 0, 0, rng.random(), rng.randint(10, 100)) for _ in range(3)]
            for _ in range(4)
        ]
        for i in range(3):
            layers[i].append(Option(0, 0, 0, rng.random() * 0.3, rng.randint(10, 60)))
        shared = [SharedChoice(((0, 3), (1, 3), (2, 3)), rng.randint(0, 60))]
        budget = rng.randint(60, 300)
        best = None
        for p in itertools.product(*[range(len(o)) for o in layers]):
            if len({p[i] == 3 for i in range(3)}) > 1 or chosen_cost(layers, p, shared) > budget:
                continue
            loss = sum(layers[i][j].loss for i, j in enumerate(p))
            best = loss if best is None else min(best, loss)
        if best is None:
            with pytest.raises(ValueError, match="below the cheapest"):
                choose_options(layers, budget, shared)
            continue
        pick = choose_options(layers, budget, shared)
        assert chosen_cost(layers, pick, shared) <= budget
        assert sum(layers[i][j].loss for i, j in enumerate(pick)) == pytest.approx(best)


def test_shared_choice_errors() -> None:
    layers, _ = _three_layers()
    with pytest.raises(ValueError, match="missing option"):
        choose_options(layers, 400, [SharedChoice(((0, 7),), 1)])
    with pytest.raises(ValueError, match="once"):
        choose_options(layers, 400, [SharedChoice(((0, 2), (0, 1)), 1)])
    with pytest.raises(ValueError, match="two shared choices"):
        choose_options(
            layers, 400, [SharedChoice(((0, 2), (1, 2)), 1), SharedChoice(((0, 2), (2, 2)), 1)]
        )


def test_shared_transform_bits_by_hand() -> None:
    # MiniLM q/k/v: 384 inputs, 16 x 16 float16 blocks: 384 * 16 numbers of 16 bits, once
    assert shared_transform_bits(384, 16) == 384 * 16 * 16
    per_layer = stored_bits(384, 384, 3, 64, 16) - stored_bits(384, 384, 3, 64)
    assert 3 * per_layer == 3 * shared_transform_bits(384, 16)  # three times if not shared


# ----------------------------------------------------------------------------------------------
# learning
# ----------------------------------------------------------------------------------------------


def _outlier_weight(out: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out, n, generator=g, dtype=torch.float64)
    W[:, :3] *= 20
    return W


def _summed(parts: list[TransformPart], T: torch.Tensor) -> float:
    Tinv = torch.linalg.inv(T)
    return sum(
        float(transform_loss(p.weight, T, Tinv, p.fmt, None)) / float((p.weight**2).sum())
        for p in parts
    )


def test_shared_learning_is_the_row_stacked_learning() -> None:
    """The proxy is a sum over output rows: with parts of equal norm, the summed relative proxies
    are twice the relative proxy of the row-stacked weight at every ``T``, and the shared fit
    minimises that sum (each part in its own format), better than a transform learned for
    either part alone."""
    f1, f2 = QuantFormat(3, 32), QuantFormat(2, 64)
    W1, W2 = _outlier_weight(24, 64, 1), _outlier_weight(40, 64, 2)
    W2 = W2 * (W1.norm() / W2.norm())
    parts = [TransformPart(W1, f1), TransformPart(W2, f1)]
    kw: dict[str, Any] = {"block": 16, "steps": 30, "lr": 0.01}
    shared = learn_shared_transform(parts, generator=torch.Generator().manual_seed(5), **kw)
    stacked = learn_transform(
        torch.cat([W1, W2]), f1, generator=torch.Generator().manual_seed(5), steps=0, block=16
    )
    for T in (shared.transform, stacked.transform):
        assert _summed(parts, T) == pytest.approx(
            2
            * float(transform_loss(torch.cat([W1, W2]), T, torch.linalg.inv(T), f1, None))
            / float((torch.cat([W1, W2]) ** 2).sum()),
            rel=1e-9,
        )
    assert shared.loss == pytest.approx(_summed(parts, shared.transform), rel=1e-9)
    # each part in its own format; the sum is what is learned
    parts = [TransformPart(W1, f1), TransformPart(W2, f2)]
    shared = learn_shared_transform(parts, generator=torch.Generator().manual_seed(5), **kw)
    assert shared.loss == pytest.approx(_summed(parts, shared.transform), rel=1e-9)
    for p in parts:
        own = learn_transform(
            p.weight, p.fmt, generator=torch.Generator().manual_seed(5), **kw
        ).transform
        assert shared.loss < _summed(parts, own)


def test_one_part_is_the_per_layer_learning() -> None:
    fmt = QuantFormat(3, 32)
    W = _outlier_weight(32, 64, 3)
    a = learn_shared_transform(
        [TransformPart(W, fmt)], block=16, steps=6, generator=torch.Generator().manual_seed(1)
    )
    b = learn_transform(W, fmt, block=16, steps=6, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.transform, b.transform)
    assert a.loss == b.loss


def test_shared_learning_errors() -> None:
    fmt = QuantFormat(3, 32)
    with pytest.raises(ValueError, match="at least one"):
        learn_shared_transform([])
    with pytest.raises(ValueError, match="same input"):
        learn_shared_transform(
            [TransformPart(torch.randn(4, 64), fmt), TransformPart(torch.randn(4, 32), fmt)]
        )


# ----------------------------------------------------------------------------------------------
# storage
# ----------------------------------------------------------------------------------------------


def _layers_with_one_transform() -> list[QuantizedLinear]:
    fmt = QuantFormat(4, 32)
    T = torch.randn(4, 16, 16)
    out = []
    for rows in (48, 16, 16):
        codes = torch.randint(0, 16, (rows, 64))
        scale, zero = torch.rand(rows, 2) + 0.1, torch.full((rows, 2), 7.0)
        out.append(QuantizedLinear.from_codes(codes, scale, zero, fmt, transform=T))
    return out


def test_shared_transform_is_counted_once_by_hand() -> None:
    layers = _layers_with_one_transform()
    model = torch.nn.ModuleList(layers)
    # codes (4 bits), float16 scale and zero per 32 inputs, no bias; blocks 4 x 16 x 16 float16
    own = [rows * 64 * 4 // 8 + 2 * rows * 2 * 2 for rows in (48, 16, 16)]
    blocks = 4 * 16 * 16 * 2
    assert model_bytes(model) == sum(own) + 3 * blocks
    share_transform(layers)
    assert model_bytes(model) == sum(own) + blocks
    assert [m.memory_bytes() for m in layers] == [own[0] + blocks, own[1], own[2]]
    assert [QUANTIZE._stored_bytes(m) for m in layers] == [own[0] + blocks, own[1], own[2]]
    assert [m.transform_shared for m in layers] == [False, True, True]
    assert "1.transform" not in model.state_dict()
    assert "0.transform" in model.state_dict()


def test_share_transform_refuses_different_transforms() -> None:
    layers = _layers_with_one_transform()
    with torch.no_grad():
        layers[2].transform.add_(1)  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="differ"):
        share_transform(layers)
    with pytest.raises(ValueError, match="at least two"):
        share_transform(layers[:1])


def test_a_conversion_keeps_one_tensor_for_the_group() -> None:
    """torch converts buffers module by module (a device move): the group must still hold one
    tensor afterwards, not a copy per layer."""
    layers = _layers_with_one_transform()
    share_transform(layers)
    model = torch.nn.ModuleList(layers)
    before = model_bytes(model)
    model._apply(lambda t: t.clone())  # what .to(other device) does to every buffer
    assert layers[1].transform is layers[0].transform is layers[2].transform
    assert model_bytes(model) == before
    # and the model still pickles (torch.save of the module) with its layers tied
    import io
    import pickle

    back = pickle.loads(pickle.dumps(model))
    assert back[1].transform is back[0].transform is back[2].transform
    buf = io.BytesIO()
    torch.save(model, buf)


# ----------------------------------------------------------------------------------------------
# through quantize
# ----------------------------------------------------------------------------------------------


def test_quantize_shares_gate_up_transform_and_counts_it_once(
    tiny_hf_model: Callable[..., Any], tmp_path: Path
) -> None:
    model = gated_llama(tiny_hf_model)
    x = torch.randint(0, 64, (2, 9))
    coreopt.quantize(model, **BUDGET)
    rep = model.quantization_report
    mlp = model.model.layers[0].mlp
    gate, up = mlp.gate_proj, mlp.up_proj
    assert gate.transform is not None
    assert up.transform is gate.transform
    by = {r.name.rsplit(".", 1)[-1]: r for r in rep.layers}
    assert by["up_proj"].transform_shared_with == "model.layers.0.mlp.gate_proj"
    assert "shared by" in by["up_proj"].note
    # by hand: codes, float16 scale + zero per group, one set of 4 x 16 x 16 float16 blocks
    blocks = 64 * 16 * 2

    def own(r: Any) -> int:
        out, n = r.shape
        groups = -(-n // r.group_size)
        return out * groups * r.group_size * r.bits // 8 + 2 * out * groups * 2

    transformed = [r for r in rep.layers if r.transform_block]
    assert sorted(r.name.rsplit(".", 1)[-1] for r in transformed) == ["gate_proj", "up_proj"]
    assert rep.stored_bytes == sum(own(r) for r in rep.layers) + blocks
    assert rep.bits_per_weight <= 3.5
    # the model's bytes hold the blocks once
    n_buffers = sum(
        b.numel() * b.element_size()
        for m in model.modules()
        if isinstance(m, QuantizedLinear)
        for b in m.buffers(recurse=False)
    )
    assert n_buffers - rep.stored_bytes == blocks  # the second reference, not a second copy
    with torch.no_grad():
        y = model(x).logits
    # save / load: the blocks once in the file, the outputs reproduced
    path = tmp_path / "m.safetensors"
    save_quantized(model, path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = [k for k in f.keys() if k.endswith(".transform")]  # noqa: SIM118
    assert keys == ["model.layers.0.mlp.gate_proj.transform"]
    fresh = tiny_hf_model("llama", seed=1, **LLAMA).eval()
    load_quantized(fresh, path)
    mlp2 = fresh.model.layers[0].mlp
    assert mlp2.up_proj.transform is mlp2.gate_proj.transform
    with torch.no_grad():
        torch.testing.assert_close(fresh(x).logits, y, rtol=0, atol=0)
    assert model_bytes(fresh) == model_bytes(model)


def test_hf_round_trip_with_a_shared_transform(
    tiny_hf_model: Callable[..., Any], tmp_path: Path
) -> None:
    transformers = pytest.importorskip("transformers")
    model = gated_llama(tiny_hf_model)
    coreopt.quantize(model, **BUDGET)
    assert model.model.layers[0].mlp.up_proj.transform_shared
    x = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        y = model(x).logits
    model.save_pretrained(tmp_path)
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    mlp = back.model.layers[0].mlp
    assert mlp.up_proj.transform is mlp.gate_proj.transform
    with torch.no_grad():
        torch.testing.assert_close(back(x).logits, y, rtol=0, atol=0)


def test_without_sharing_each_layer_pays_for_its_own(tiny_hf_model: Callable[..., Any]) -> None:
    model = gated_llama(tiny_hf_model)
    coreopt.quantize(model, **{**BUDGET, "share_transforms": False})
    assert not any(isinstance(m, QuantizedLinear) and m.transform_shared for m in model.modules())


def test_budget_plan_gives_the_group_one_transform() -> None:
    """The knapsack's shared choice reaches the jobs: every member of the group (three layers
    with outlier inputs, where a transform pays) gets the same tensor."""
    cfg = QuantizeConfig(
        bits_per_weight=3.5, steps=20, block_options=(16,), max_workers=1, share_transforms=True
    )
    cfg = dataclasses.replace(cfg, bits=3)
    tasks = [
        MatrixTask(n, _outlier_weight(1024, 64, i).float(), seed=i) for i, n in enumerate("qkv")
    ]
    notes: dict[str, str] = {}
    shared: dict[str, tuple[str, ...]] = {}
    jobs = QUANTIZE._budget_plan(tasks, cfg, notes, groups=[("q", "k", "v")], shared_out=shared)
    assert shared == dict.fromkeys("qkv", ("q", "k", "v"))
    ts = [t for t, _ in jobs]
    assert all(isinstance(t, MatrixTask) and t.transform is ts[0].transform for t in ts)
    assert ts[0].transform is not None
    assert all(c.block_size == 16 and c.transform == "learned" for _, c in jobs)
    assert "shared by q, k, v" in notes["v"]


def test_share_transforms_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="share_transforms"):
        QuantizeConfig(share_transforms="yes")  # type: ignore[arg-type]


def test_gguf_export_still_refuses_a_shared_transform(
    tiny_hf_model: Callable[..., Any], tmp_path: Path
) -> None:
    from coreopt.quant import export_gguf

    model = gated_llama(tiny_hf_model)
    coreopt.quantize(model, **BUDGET)
    with pytest.raises(ValueError, match="transform"):
        export_gguf(model, tmp_path / "m.gguf")


@pytest.mark.slow
@needs_minilm
def test_minilm_shared_transforms_at_4_5_bits(tmp_path: Path) -> None:
    """On MiniLM at 4.5 bits per weight the knapsack buys shared q/k/v transforms (3 of 6 groups
    when measured, docs/quant.md); every byte counted once, and the saved model reproduces the
    outputs."""
    from transformers import AutoModel

    path, _ = minilm()
    model = AutoModel.from_pretrained(path).eval()
    coreopt.quantize(model, bits_per_weight=4.5, share_transforms=True, progress=False)
    rep = model.quantization_report
    owners = {r.transform_shared_with for r in rep.layers if r.transform_shared_with}
    assert owners, "no shared transform bought"
    assert all(o.endswith("attention.self.query") for o in owners)
    assert rep.bits_per_weight <= 4.5
    quantized = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    assert rep.stored_bytes == sum(m.memory_bytes() - 4 * m.out_features for m in quantized)
    x = {"input_ids": torch.randint(0, 1000, (2, 12))}
    with torch.inference_mode():
        y = model(**x).last_hidden_state
    save_quantized(model, tmp_path / "m.safetensors")
    fresh = load_quantized(AutoModel.from_pretrained(path).eval(), tmp_path / "m.safetensors")
    with torch.inference_mode():
        torch.testing.assert_close(fresh(**x).last_hidden_state, y, rtol=0, atol=0)
    assert model_bytes(fresh) == model_bytes(model)
