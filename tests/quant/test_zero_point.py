"""Float zero points: the ``d q + m`` grid of GGUF's Q4_1, which weights dequantized from such a
file fit exactly, and the byte budget offering it to the layers where 0 need not be exact."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import pytest
import torch

import coreopt
from coreopt.quant import QuantFormat
from coreopt.quant.format import dequantize_codes, rtn


def q4_1_grid(out: int, n: int, seed: int = 0, group: int = 32) -> torch.Tensor:
    """A weight that is exactly a 4-bit ``d q + m`` grid per group of ``group`` columns (every
    group holds codes 0 and 15, its minimum ``m`` is negative and not a multiple of ``d``),
    built by hand: the reference the quantizers must reproduce."""
    gen = torch.Generator().manual_seed(seed)
    ng = n // group
    d = (0.01 + 0.02 * torch.rand(out, ng, 1, generator=gen)).half().float()
    k = 0.5 + 14 * torch.rand(out, ng, 1, generator=gen)
    m = (-(k.floor() + 0.37) * d).half().float()
    q = torch.randint(0, 16, (out, ng, group), generator=gen).float()
    q[..., 0], q[..., 1] = 0, 15
    return (d * q + m).reshape(out, n)


def _rel(W: torch.Tensor, W_hat: torch.Tensor) -> float:
    return float((W - W_hat).norm() / W.norm())


def test_float_zero_point_reproduces_a_q4_1_grid_and_integer_does_not() -> None:
    W = q4_1_grid(64, 256)
    err = {}
    for zp in ("integer", "float"):
        fmt = QuantFormat(4, 32, zero_point=zp)
        q, s, z = rtn(W, fmt)
        err[zp] = _rel(W, dequantize_codes(q, s, z, 32))
    assert err["float"] < 2e-3  # float16 scale/zero storage only
    assert err["integer"] > 2e-2  # the zero point rounded to an integer shifts every level
    with pytest.raises(ValueError, match="zero_point"):
        QuantFormat(4, 32, zero_point="half")  # type: ignore[arg-type]


def _grid_llama(tiny_hf_model: Callable[..., Any]) -> tuple[torch.nn.Module, list[str]]:
    """The tiny Llama with every projection replaced by a Q4_1 grid."""
    model = tiny_hf_model("llama", seed=0, tie_word_embeddings=True).eval()
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    names = [n for n in names if "lm_head" not in n]
    with torch.no_grad():
        for i, n in enumerate(names):
            w = model.get_submodule(n).weight
            w.copy_(q4_1_grid(*w.shape, seed=i))
    return model, names


BUDGET = {"bits_per_weight": 5.0, "bits_options": (4,), "group_options": (32,), "steps": 2}


def test_budget_gives_float_zero_points_to_q_k_gate_up_and_to_exact_grids_only(
    tiny_hf_model: Callable[..., Any],
) -> None:
    # q and v of the first block are shifted float weights (not a grid), on which a float zero
    # point rounds better: q (an attention-score input) may use it, v (the attention value)
    # may not; every other layer is a grid, which a float-zero 4/32 option stores exactly, and
    # that option is offered to every layer (o and down included)
    model, names = _grid_llama(tiny_hf_model)
    gen = torch.Generator().manual_seed(1)
    shifted = {"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"}
    with torch.no_grad():
        for n in shifted:
            w = model.get_submodule(n).weight
            off = 0.05 * torch.rand(w.shape[0], w.shape[1] // 32, 1, generator=gen)
            noise = 0.02 * torch.randn(w.shape[0], w.shape[1] // 32, 32, generator=gen)
            w.copy_((off + noise).reshape(w.shape))
    ref = {n: model.get_submodule(n).weight.detach().clone() for n in names}
    coreopt.quantize(model, dual=False, progress=False, **BUDGET)
    rep = model.quantization_report
    assert rep.bits_per_weight == pytest.approx(5.0, abs=1e-3)
    floats = {r.name for r in rep.layers if "float zero" in r.note}
    assert floats == set(names) - {"model.layers.0.self_attn.v_proj"}
    for n in set(names) - shifted:
        assert _rel(ref[n], model.get_submodule(n).effective_weight()) < 2e-3, n


def test_budget_keeps_a_dual_transform_only_where_it_pays(
    tiny_hf_model: Callable[..., Any],
) -> None:
    # folding Q/K's dual transform would move q and k off the grid their float-zero 4/32
    # option stores exactly: at the budget's bit price it does not pay and is undone
    model, names = _grid_llama(tiny_hf_model)
    ref = {n: model.get_submodule(n).weight.detach().clone() for n in names}
    coreopt.quantize(model, progress=False, dual_steps=20, **BUDGET)
    rep = model.quantization_report
    for r in rep.layers:
        if r.name.rsplit(".", 1)[-1] in ("q_proj", "k_proj"):
            assert r.dual is None, r.name
            assert _rel(ref[r.name], model.get_submodule(r.name).effective_weight()) < 2e-3


def test_budget_leaves_the_dual_transforms_of_exactly_stored_layers_undone(
    tiny_hf_model: Callable[..., Any],
) -> None:
    # every layer is a grid some option stores as it is: no dual transform is kept, even where
    # the knapsack does not buy that option (a 4.5 budget cannot pay 5 bits everywhere)
    model, _ = _grid_llama(tiny_hf_model)
    coreopt.quantize(model, bits_per_weight=4.5, progress=False, steps=2, dual_steps=20)
    rep = model.quantization_report
    assert {r.dual for r in rep.layers} == {None}
    assert any(r.group_size > 32 for r in rep.layers)  # the exact option is not bought everywhere


def test_budget_does_not_learn_the_dual_transforms_of_exactly_stored_layers(
    tiny_hf_model: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # block 1 is a grid some option stores as it is, block 0 is the float model: only block 0's
    # V/O, Q/K and gated-MLP transforms are learned (block 1's would be undone, so they are
    # not even learned), and block 1 stores the same weights as without any dual transform
    qz = importlib.import_module("coreopt.quant.quantize")  # the package exports the function

    def build() -> torch.nn.Module:
        model, names = _grid_llama(tiny_hf_model)
        fresh = tiny_hf_model("llama", seed=0, tie_word_embeddings=True).eval()
        with torch.no_grad():
            for n in names:
                if ".layers.0." in n:
                    model.get_submodule(n).weight.copy_(fresh.get_submodule(n).weight)
        return model

    learned: list[str] = []
    pair, gated = qz.learn_pair_transform, qz.learn_gated_scaling

    def spy_pair(prob: Any, *a: Any, **k: Any) -> Any:
        learned.append(prob.kind)
        return pair(prob, *a, **k)

    def spy_gated(W: torch.Tensor, *a: Any, **k: Any) -> Any:
        learned.append("gated")
        return gated(W, *a, **k)

    monkeypatch.setattr(qz, "learn_pair_transform", spy_pair)
    monkeypatch.setattr(qz, "learn_gated_scaling", spy_gated)
    budget = {"bits_per_weight": 4.5, "steps": 2, "progress": False}
    model = build()
    coreopt.quantize(model, dual_steps=5, **budget)
    assert sorted(learned) == ["gated", "qk", "vo"]  # block 0's; none of block 1's
    ref = build()
    coreopt.quantize(ref, dual=False, **budget)
    for r in model.quantization_report.layers:
        if ".layers.1." in r.name:
            assert r.dual is None
            a = model.get_submodule(r.name).effective_weight()
            assert torch.equal(a, ref.get_submodule(r.name).effective_weight()), r.name


def test_budget_checks_exactness_by_min_max_rounding_as_the_range_search_would(
    tiny_hf_model: Callable[..., Any],
) -> None:
    # V/O/down get a float-zero option only where it stores the weights as they are; that is
    # now checked by one min-max pass before the range search prices the option: the options
    # must be those of pricing every float-zero option with the range search and keeping the
    # exact ones (the rule written out here), on grids and on float weights alike
    from coreopt.quant.methods import MatrixTask

    qz = importlib.import_module("coreopt.quant.quantize")
    model, names = _grid_llama(tiny_hf_model)
    fresh = tiny_hf_model("llama", seed=0, tie_word_embeddings=True).eval()
    with torch.no_grad():
        for n in names:
            if ".layers.0." in n:  # block 0: the float model, block 1: grids
                model.get_submodule(n).weight.copy_(fresh.get_submodule(n).weight)
    cfg = coreopt.quant.QuantizeConfig(bits_per_weight=4.5)
    float_zero = qz.float_zero_layers(qz.discover(model))
    tasks = [
        MatrixTask(n, model.get_submodule(n).weight.detach().float(), None, i)
        for i, n in enumerate(names)
    ]
    got = qz._price_formats(tasks, cfg, float_zero)
    every = [
        QuantFormat(b, g, cfg.scale_dtype, z)  # type: ignore[arg-type]
        for b in sorted(cfg.bits_options)
        for g in sorted(cfg.group_options)
        for z in ("integer", "float")
    ]
    n_exact = 0
    for t, opts in zip(tasks, got, strict=True):
        full = qz._layer_options(t, cfg, every)
        want = [
            o
            for o in full
            if o.zero_point == "integer" or t.name in float_zero or o.loss <= qz.EXACT_LOSS
        ]
        assert opts == want, t.name
        n_exact += t.name not in float_zero and any(o.zero_point == "float" for o in opts)
    assert n_exact == 3  # block 1's v, o and down: grids; block 0's: none
