"""``coreopt.quantize`` end to end on small models: API, report, errors, save/load."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from _minilm import embed, minilm, needs_minilm
from torch import nn

import coreopt
from coreopt.quant import (
    InputMoments,
    MetaDeviceError,
    NonFiniteWeightError,
    QuantizeConfig,
    QuantizedLinear,
    UnsupportedFormatError,
    load_quantized,
    model_bytes,
    save_quantized,
    set_runtime,
)

FAST = {"steps": 5, "dual_steps": 5, "progress": False}


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(128, 96), nn.GELU(), nn.Linear(96, 64), nn.GELU(), nn.Linear(64, 10)
    )


@pytest.mark.parametrize("method", ["rtn", "hadamard", "cafeq"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_every_linear_is_replaced_and_outputs_stay_close(method: str, bits: int) -> None:
    net = mlp()
    x = torch.randn(16, 128)
    with torch.no_grad():
        ref = net(x)
    out = coreopt.quantize(net, bits=bits, group_size=32, method=method, **FAST)
    assert out is net
    assert all(isinstance(net[i], QuantizedLinear) for i in (0, 2, 4))
    rep = net.quantization_report
    assert [r.name for r in rep.layers] == ["0", "2", "4"]
    assert rep.memory_after < rep.memory_before
    with torch.no_grad():
        err = float((net(x) - ref).norm() / ref.norm())
    assert err < {2: 1.0, 3: 0.5, 4: 0.25, 8: 0.02}[bits]
    for r in rep.layers:
        assert r.rel_error == pytest.approx(
            float(
                (net.get_submodule(r.name).effective_weight() - mlp().get_submodule(r.name).weight)
                .norm()
                .div(mlp().get_submodule(r.name).weight.norm())
            ),
            rel=1e-4,
        )


def test_cafeq_never_loses_to_rtn_on_the_proxy() -> None:
    rep = coreopt.quantize(mlp(), bits=3, group_size=32, **FAST).quantization_report
    for r in rep.layers:
        assert r.proxy <= r.proxy_rtn * (1 + 1e-6)


def test_group_size_not_dividing_is_padded_and_block_not_dividing_skips_the_transform() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(100, 40))
    x = torch.randn(3, 100)
    ref = net(x)
    coreopt.quantize(net, bits=4, group_size=64, **FAST)
    layer = net[0]
    assert isinstance(layer, QuantizedLinear)
    assert layer.in_padded == 128
    assert layer.transform is None
    assert "does not divide" in net.quantization_report.layers[0].note
    torch.testing.assert_close(net(x), ref, atol=0.1, rtol=0.1)


@pytest.mark.parametrize("method", ["cafeq", "hadamard"])
def test_width_padded_for_groups_still_gets_a_transform_on_its_real_inputs(method: str) -> None:
    # 96 inputs: blocks of 32 divide it, groups of 64 do not (stored padded to 128). The transform
    # acts on the 96 real inputs and the zero columns are appended after it.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(96, 40))
    x = torch.randn(5, 96)
    W = net[0].weight.detach().clone()
    coreopt.quantize(net, bits=3, group_size=64, method=method, block_size=32, select=False, **FAST)
    layer = net[0]
    assert layer.in_padded == 128
    assert layer.transform is not None
    assert layer.transform.shape == (3, 32, 32)
    report = net.quantization_report.layers[0]
    assert report.note == ""
    W_eff = layer.effective_weight()
    # the float32 reference kernel applies exactly the reported effective weight (round-off only)
    set_runtime(net, "reference")
    torch.testing.assert_close(net(x), x @ W_eff.T + layer.bias, atol=1e-5, rtol=1e-5)
    rel = float((W - W_eff).norm() / W.norm())
    assert rel == pytest.approx(report.rel_error, rel=1e-5)


def test_bad_input_raises_clear_errors() -> None:
    with pytest.raises(UnsupportedFormatError, match="bits"):
        coreopt.quantize(mlp(), bits=5)
    with pytest.raises(UnsupportedFormatError, match="group_size"):
        coreopt.quantize(mlp(), bits=4, group_size=48)
    with pytest.raises(ValueError, match="method"):
        coreopt.quantize(mlp(), method="gptq-with-data")
    with pytest.raises(TypeError, match=r"nn\.Module"):
        coreopt.quantize(torch.randn(3, 3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"only nn\.Linear"):
        coreopt.quantize(nn.Conv2d(3, 8, 3))
    with pytest.raises(TypeError, match=r"only nn\.Linear"):
        coreopt.quantize(mlp(), targets=["1"])
    with torch.device("meta"):
        meta = mlp()
    with pytest.raises(MetaDeviceError, match="meta"):
        coreopt.quantize(meta)
    broken = mlp()
    with torch.no_grad():
        broken[2].weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteWeightError, match="'2'"):
        coreopt.quantize(broken)
    assert isinstance(broken[0], nn.Linear)  # nothing was replaced
    with pytest.raises(ValueError, match="steps"):
        QuantizeConfig(steps=-1)


def test_skip_and_targets_select_layers() -> None:
    net = coreopt.quantize(mlp(), bits=4, skip=("4",), **FAST)
    assert isinstance(net[4], nn.Linear)
    assert isinstance(net[0], QuantizedLinear)
    assert net.quantization_report.skipped == {"4": "matches skip"}
    net = coreopt.quantize(mlp(), bits=4, targets=["2"], **FAST)
    assert isinstance(net[0], nn.Linear)
    assert isinstance(net[2], QuantizedLinear)


@pytest.mark.parametrize("method", ["rtn", "cafeq"])
def test_save_load_round_trip(tmp_path: Path, method: str) -> None:
    net = coreopt.quantize(mlp(), bits=3, group_size=32, method=method, **FAST)
    path = tmp_path / "q.safetensors"
    save_quantized(net, path)
    fresh = load_quantized(mlp(seed=1), path)
    x = torch.randn(5, 128)
    torch.testing.assert_close(fresh(x), net(x), rtol=0, atol=0)
    for name in ("0", "2", "4"):
        a, b = net.get_submodule(name), fresh.get_submodule(name)
        assert isinstance(b, QuantizedLinear)
        assert torch.equal(a.qweight, b.qweight)
    dense = sum(p.numel() * 4 for p in mlp().parameters())
    if method == "rtn":  # 3-bit codes plus float16 metadata: far smaller than float32
        assert path.stat().st_size < 0.35 * dense + 4096
    else:  # plus the 64 x 64 float32 transform blocks, large next to layers this small
        assert path.stat().st_size < dense


def test_save_requires_a_quantized_model(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no QuantizedLinear"):
        save_quantized(mlp(), tmp_path / "x.safetensors")


@pytest.mark.gpu
def test_threads_on_cuda_in_a_fresh_process_do_not_race_the_linalg_init() -> None:
    # pytorch/pytorch#90613: the first torch.linalg call on CUDA, made by several threads at once,
    # fails with "lazy wrapper should be called at most once" (seen with the benchmark on an H100).
    # Only a fresh interpreter has not loaded the backend yet, hence the subprocess.
    code = (
        "import torch, coreopt\n"
        "net = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(16)]).cuda()\n"
        "coreopt.quantize(net, bits=3, steps=3, dual_steps=3, max_workers=16, progress=False)\n"
        "assert all(m.qweight.is_cuda for m in net)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]


# ----------------------------------------------------------------------------------------------
# The method, pinned through `quantize` against independent references (issue 14): each test
# names the break it catches.
# ----------------------------------------------------------------------------------------------


def hand_rtn(W: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """Round to nearest written out by hand (float64): per group of ``group`` columns the range
    ``[min(w, 0), max(w, 0)]`` over ``2^bits - 1`` steps, an integer zero point."""
    out, n = W.shape
    G = W.double().reshape(out, n // group, group)
    lo = G.amin(-1, keepdim=True).clamp(max=0)
    hi = G.amax(-1, keepdim=True).clamp(min=0)
    levels = {2: 3, 3: 7, 4: 15, 8: 255}[bits]
    s = ((hi - lo) / levels).clamp_min(1e-30)
    z = torch.round(-lo / s)
    q = torch.clamp(torch.round(G / s) + z, 0, levels)
    return ((q - z) * s).reshape(out, n).float()


def outlier_weight(out: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out, n, generator=g) * 0.02
    W[:, torch.randperm(n, generator=g)[:6]] *= 25.0  # a few heavy input channels
    return W


def linear_with(W: torch.Tensor) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(W.shape[1], W.shape[0], bias=False))
    with torch.no_grad():
        net[0].weight.copy_(W)
    return net


def rel_sq(W: torch.Tensor, W_hat: torch.Tensor, S: torch.Tensor | None = None) -> float:
    E = (W_hat - W).double()
    S = torch.eye(W.shape[1], dtype=torch.float64) if S is None else S.double()
    return float(torch.trace(E @ S @ E.T) / torch.trace(W.double() @ S @ W.double().T))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_rtn_equals_a_hand_written_rtn_using_every_code(bits: int) -> None:
    # catches: a grid using half its codes (qmax = 2^(b-1) - 1), a wrong zero point or range
    W = torch.randn(24, 128, generator=torch.Generator().manual_seed(bits))
    net = linear_with(W)
    coreopt.quantize(
        net, bits=bits, group_size=32, method="rtn", scale_dtype=torch.float32, progress=False
    )
    layer = net[0]
    torch.testing.assert_close(layer.effective_weight(), hand_rtn(W, bits, 32), rtol=0, atol=1e-5)
    codes = layer.codes()
    assert int(codes.max()) == 2**bits - 1
    assert int(codes.min()) == 0


def test_selection_keeps_the_lower_proxy_candidate_per_layer() -> None:
    # catches: selection keeping the worst candidate (min -> max). Layer "0" has heavy input
    # channels (a transform wins by far); layer "1" lies exactly on a 3-bit grid (plain rounding
    # is exact, any transform loses).
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 8, (32, 64), generator=g).float()
    codes[:, ::32] = 0.0
    codes[:, 1::32] = 7.0  # every group spans the full code range
    zero = torch.randint(0, 8, (32, 2, 1), generator=g).float()
    exact = ((codes.reshape(32, 2, 32) - zero) * 2.0**-6).reshape(32, 64)
    W0 = outlier_weight(64, 128, 1)
    net = nn.Sequential(nn.Linear(128, 64, bias=False), nn.Linear(64, 32, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(W0)
        net[1].weight.copy_(exact)
    coreopt.quantize(
        net, bits=3, group_size=32, block_size=32, prior="identity", dual=False, **FAST
    )
    torch.testing.assert_close(net[1].effective_weight(), exact, rtol=0, atol=1e-7)
    assert rel_sq(W0, net[0].effective_weight()) < 0.8 * rel_sq(W0, hand_rtn(W0, 3, 32))


def test_learned_transform_beats_its_hadamard_start() -> None:
    # catches: the transform never learned (steps=0): learning must beat the fixed random Hadamard
    # it starts from, on the hand-computed weight error
    W = outlier_weight(48, 128, 1)
    err = {}
    for transform in ("learned", "hadamard"):
        net = linear_with(W)
        coreopt.quantize(
            net,
            bits=3,
            group_size=32,
            block_size=32,
            transform=transform,
            steps=30,
            select=False,
            dual=False,
            prior="identity",
            progress=False,
        )
        assert net[0].transform is not None
        err[transform] = rel_sq(W, net[0].effective_weight())
    assert err["learned"] < 0.5 * err["hadamard"], err


def test_gptq_against_the_prior_beats_rtn_on_the_true_input_moment() -> None:
    # catches: GPTQ never run, and cafeq ignoring its priors: with strongly correlated inputs
    # (Σ = I + U Uᵀ given as the layer's moments) rounding against Σ must beat round-to-nearest on
    # the output error tr(E Σ Eᵀ), computed by hand.
    n = 64
    g = torch.Generator().manual_seed(3)
    U = torch.randn(n, 2, generator=g) * 3
    W = torch.randn(32, n, generator=g)
    S = torch.eye(n) + U @ U.T
    err = {}
    for prior in ("structure", "identity"):
        net = linear_with(W)
        coreopt.quantize(
            net,
            bits=3,
            group_size=32,
            transform="identity",
            dual=False,
            prior=prior,
            moments={"0": InputMoments(torch.ones(n), U)},
            progress=False,
        )
        err[prior] = rel_sq(W, net[0].effective_weight(), S)
    rtn_err = rel_sq(W, hand_rtn(W, 3, 32), S)
    assert err["structure"] < 0.5 * rtn_err, (err, rtn_err)
    assert err["structure"] < 0.5 * err["identity"], err
    assert net.quantization_report.layers[0].choice == "rtn+clip"  # identity prior: no GPTQ


def test_transform_candidate_rounds_against_the_prior() -> None:
    # catches: cafeq ignoring its priors on the transform path only (the stored W T⁻¹ rounded
    # against I instead of T Σ Tᵀ): the transform is kept (select=False) and the output error
    # tr(E Σ Eᵀ), by hand, must fall far below a hand-written RTN's. Measured: 0.06x RTN with
    # the prior, 0.48x with the transform path ignoring it.
    n = 128
    g = torch.Generator().manual_seed(0)
    d = torch.ones(n)
    d[torch.randperm(n, generator=g)[:8]] = 100.0  # a few loud input channels
    U = torch.randn(n, 2, generator=g) * 3  # and correlated inputs
    W = torch.randn(32, n, generator=g)
    S = torch.diag(d) + U @ U.T
    net = linear_with(W)
    coreopt.quantize(
        net,
        bits=3,
        group_size=32,
        block_size=32,
        steps=30,
        select=False,
        dual=False,
        prior="structure",
        moments={"0": InputMoments(d, U)},
        progress=False,
    )
    assert net[0].transform is not None
    assert net.quantization_report.layers[0].choice == "learned+gptq"
    err, rtn_err = rel_sq(W, net[0].effective_weight(), S), rel_sq(W, hand_rtn(W, 3, 32), S)
    assert err < 0.2 * rtn_err, (err, rtn_err)


def _vo_product_error(model: nn.Module, ref: dict[str, torch.Tensor], layer: int) -> float:
    """Σ_heads ||O_h V_g(h) − Ô_h V̂_g(h)||² / Σ_heads ||O_h V_g(h)||², by hand (4 heads of 16 over
    2 key/value heads)."""
    att = model.model.layers[layer].self_attn
    return _product_error(
        ref[f"{layer}.o"],
        ref[f"{layer}.v"],
        att.o_proj.effective_weight(),
        att.v_proj.effective_weight(),
    )


def _product_error(
    w_o: torch.Tensor, w_v: torch.Tensor, q_o: torch.Tensor, q_v: torch.Tensor
) -> float:
    num = den = 0.0
    for h in range(4):
        o, v = slice(16 * h, 16 * h + 16), slice(16 * (h // 2), 16 * (h // 2) + 16)
        P = w_o[:, o] @ w_v[v]
        num += float(((P - q_o[:, o] @ q_v[v]) ** 2).sum())
        den += float((P**2).sum())
    return num / den


def test_alternating_pair_rounding_lowers_the_product_error(
    tiny_hf_model: Callable[..., Any],
) -> None:
    # catches: alternating pair rounding doing nothing (range(rounds) -> range(0))
    model = tiny_hf_model("llama")
    ref = {}
    for i, lay in enumerate(model.model.layers):
        ref[f"{i}.v"] = lay.self_attn.v_proj.weight.detach().clone()
        ref[f"{i}.o"] = lay.self_attn.o_proj.weight.detach().clone()
    coreopt.quantize(
        model,
        bits=3,
        group_size=32,
        alternating=True,
        transform="identity",
        dual=False,
        prior="identity",
        progress=False,
    )
    choices = {r.name: r.choice for r in model.quantization_report.layers}
    assert choices["model.layers.0.self_attn.v_proj"] == "pair-vo+alternating"
    for i in range(2):
        w_o, w_v = ref[f"{i}.o"], ref[f"{i}.v"]
        rtn_err = _product_error(w_o, w_v, hand_rtn(w_o, 3, 32), hand_rtn(w_v, 3, 32))
        assert _vo_product_error(model, ref, i) < 0.85 * rtn_err


# ----------------------------------------------------------------------------------------------
# Byte accounting and the byte budget
# ----------------------------------------------------------------------------------------------


def _hand_bits(layer: QuantizedLinear) -> int:
    """Stored bits of a layer counted from its format by hand: codes over the padded width,
    float16 scale and zero per group, float16 transform blocks."""
    out, n, b, g = layer.out_features, layer.in_features, layer.fmt.bits, layer.fmt.group_size
    n_pad = -(-n // g) * g
    t = n * layer.transform_block * 16 if layer.transform is not None else 0
    return out * n_pad * b + 2 * 16 * out * (n_pad // g) + t


@pytest.mark.parametrize("method", ["rtn", "cafeq"])
def test_bits_per_weight_counts_every_stored_bit(method: str) -> None:
    net = nn.Sequential(nn.Linear(96, 64), nn.GELU(), nn.Linear(64, 40))
    coreopt.quantize(net, bits=3, group_size=64, method=method, block_size=32, **FAST)
    rep = net.quantization_report
    layers = [net[0], net[2]]
    bits = [_hand_bits(q) for q in layers]
    for r, q, b in zip(rep.layers, layers, bits, strict=True):
        assert 8 * r.stored_bytes == b
        assert r.bits_per_weight == pytest.approx(b / (q.out_features * q.in_features))
    assert rep.bits_per_weight == pytest.approx(sum(bits) / (96 * 64 + 64 * 40))
    if method == "rtn":  # 96 inputs padded to 128: more than the nominal 3.5
        assert rep.bits_per_weight > 3.5
    biases = sum(4 * q.out_features for q in layers)
    assert rep.memory_after == sum(bits) // 8 + biases


def test_budget_is_respected_and_beats_uniform_rtn_at_equal_bytes() -> None:
    # the summed relative Frobenius error (the budget's objective under prior="identity"),
    # computed by hand from the stored layers, against uniform RTN 3/64 at the same 3.5 bits
    torch.manual_seed(0)
    layers = [nn.Linear(128, 128) for _ in range(4)]
    with torch.no_grad():
        layers[1].weight[:, :4] *= 30  # one layer much harder than the others
    net = nn.Sequential(*layers)
    W = [m.weight.detach().clone() for m in layers]
    kw = {"prior": "identity", "dual": False, **FAST}
    rtn = coreopt.quantize(copy.deepcopy(net), bits=3, group_size=64, method="rtn", **kw)
    assert rtn.quantization_report.bits_per_weight == pytest.approx(3.5)
    e_rtn = sum(rel_sq(w, m.effective_weight()) for w, m in zip(W, rtn, strict=True))
    for method in ("cafeq", "rtn"):
        q = coreopt.quantize(copy.deepcopy(net), bits_per_weight=3.5, method=method, **kw)
        rep = q.quantization_report
        assert 3.3 < rep.bits_per_weight <= 3.5
        assert sum(_hand_bits(m) for m in q) <= 3.5 * 4 * 128 * 128
        assert len({(r.bits, r.group_size) for r in rep.layers}) > 1  # mixed precision
        e = sum(rel_sq(w, m.effective_weight()) for w, m in zip(W, q, strict=True))
        assert e < {"cafeq": 0.9, "rtn": 0.95}[method] * e_rtn, (method, e, e_rtn)


def test_choose_options_matches_enumeration() -> None:
    # the knapsack against brute force on small instances with convex loss-vs-bits curves
    import itertools

    from coreopt.quant.budget import Option, choose_options

    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        layers = []
        for _ in range(4):
            a = float(torch.rand(1, generator=g)) * 10 + 0.1
            size = int(torch.randint(1, 5, (1,), generator=g))
            layers.append([Option(b, 64, 0, a * 4.0**-b, size * (b * 8 + 4)) for b in (2, 3, 4, 8)])
        budget = float(sum(min(o.cost for o in opts) for opts in layers)) * (1.2 + 0.1 * trial)
        pick = choose_options(layers, budget)
        cost = sum(layers[i][j].cost for i, j in enumerate(pick))
        loss = sum(layers[i][j].loss for i, j in enumerate(pick))
        assert cost <= budget
        best = min(
            sum(layers[i][j].loss for i, j in enumerate(c))
            for c in itertools.product(range(4), repeat=4)
            if sum(layers[i][j].cost for i, j in enumerate(c)) <= budget
        )
        assert loss <= best * 1.01 + 1e-12, (trial, loss, best)
    with pytest.raises(ValueError, match="budget"):
        choose_options(layers, 1.0)


def test_budget_argument_errors() -> None:
    with pytest.raises(ValueError, match="bits_per_weight"):
        coreopt.quantize(mlp(), bits_per_weight=0.0)
    with pytest.raises(ValueError, match="bits_per_weight"):
        coreopt.quantize(mlp(), bits_per_weight=3.5, method="hadamard")
    with pytest.raises(ValueError, match="not both"):
        coreopt.quantize(mlp(), bits=3, bits_per_weight=3.5)
    with pytest.raises(ValueError, match="cheapest"):
        coreopt.quantize(mlp(), bits_per_weight=1.0, method="rtn", progress=False)


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------


def test_infinite_bias_is_refused() -> None:
    net = mlp()
    with torch.no_grad():
        net[2].bias[0] = float("inf")
    with pytest.raises(NonFiniteWeightError, match="bias"):
        coreopt.quantize(net, **FAST)


def test_group_wider_than_the_layer_is_capped_with_a_warning() -> None:
    net = nn.Sequential(nn.Linear(40, 16))
    with pytest.warns(UserWarning, match="capped to 64"):
        coreopt.quantize(net, bits=4, group_size=1024, method="rtn", progress=False)
    assert net[0].in_padded == 64
    assert "capped" in net.quantization_report.layers[0].note
    assert net.quantization_report.layers[0].group_size == 64


def test_quantizing_a_quantized_model_says_so() -> None:
    net = coreopt.quantize(mlp(), bits=4, method="rtn", progress=False)
    with pytest.raises(ValueError, match="already quantized"):
        coreopt.quantize(net, bits=4, method="rtn", progress=False)


def test_a_second_call_keeps_the_first_report() -> None:
    net = coreopt.quantize(mlp(), bits=4, method="rtn", targets=["0"], progress=False)
    first = net.quantization_report
    coreopt.quantize(net, bits=3, method="rtn", targets=["2"], progress=False)
    rep = net.quantization_report
    assert rep.previous is first
    assert [r.name for r in rep.layers] == ["0", "2"]
    assert [r.bits for r in rep.layers] == [4, 3]
    assert rep.memory_before == first.memory_before


def test_tied_head_is_not_duplicated(tiny_hf_model: Callable[..., Any]) -> None:
    model = tiny_hf_model("llama", tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    before = model_bytes(model)
    coreopt.quantize(model, bits=4, method="rtn", include_head=True, progress=False)
    assert isinstance(model.lm_head, nn.Linear)
    assert "tied" in model.quantization_report.skipped["lm_head"]
    assert model_bytes(model) < before


def test_tensor_subclass_weights_get_a_clear_error() -> None:
    class Wrapped(torch.Tensor):
        pass

    net = nn.Sequential(nn.Linear(64, 8))
    net[0].weight = nn.Parameter(net[0].weight.detach().as_subclass(Wrapped))
    with pytest.raises(TypeError, match="tensor subclass"):
        coreopt.quantize(net, bits=4, progress=False)
    assert model_bytes(net) == (64 * 8 + 8) * 4


def test_dtensor_weights_are_counted_and_refused() -> None:
    # a real DTensor (one process, world size 1): its __tensor_flatten__ lists the device mesh
    # next to the local shard; model_bytes used to crash on the mesh (AttributeError)
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    from torch.distributed.tensor import distribute_module, init_device_mesh

    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        net = nn.Sequential(nn.Linear(64, 32), nn.GELU(), nn.Linear(32, 8))
        distribute_module(net, init_device_mesh("cpu", (1,)))
        assert type(net[0].weight).__name__ == "DTensor"
        assert model_bytes(net) == (64 * 32 + 32 + 32 * 8 + 8) * 4
        with pytest.raises(TypeError, match=r"DTensor weight.*tensor subclass"):
            coreopt.quantize(net, bits=4, progress=False)
    finally:
        if owned:
            dist.destroy_process_group()


def test_torchao_weights_are_counted_and_refused() -> None:
    pytest.importorskip("torchao")
    from torchao.quantization import IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    net = nn.Sequential(nn.Linear(64, 32), nn.GELU(), nn.Linear(32, 8))
    quantize_(net, IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32)))
    kind = type(net[0].weight).__name__
    assert kind not in ("Tensor", "Parameter")
    # one byte per code (torchao keeps int4 codes unpacked in int8), and some scales on top
    assert model_bytes(net) > 64 * 32 + 32 * 8 + (32 + 8) * 4
    with pytest.raises(TypeError, match=rf"{kind} weight.*tensor subclass"):
        coreopt.quantize(net, bits=4, progress=False)


MINILM_SENTENCES = [
    "Return the number of items in a container.",
    "The pathlib module offers classes representing filesystem paths.",
    "Create a new thread pool with a bounded number of workers.",
    "Parse command-line options and arguments into a namespace.",
    "Compute the greatest common divisor of two integers.",
    "Serialize an object hierarchy to a byte stream with pickle.",
    "Decode a JSON document into Python objects.",
    "Schedule a coroutine to run on the event loop.",
    "The river rises in the hills and reaches the valley as a fast stream.",
    "The bakery opens at six and the first loaves are shaped before dawn.",
    "Late apples are stored on wooden racks in cool cellars through the winter.",
    "In fog the walk along the ridge can take much longer than planned.",
    "Cold air collects at the bottom of the valley on still winter mornings.",
    "The choir sings at weddings, funerals and the harvest festival.",
    "A strong colony holds tens of thousands of workers and a single queen.",
    "Volunteers repaired the mill wheel and replaced the paddles with oak.",
]


@pytest.mark.slow
@needs_minilm
def test_minilm_budget_beats_rtn_at_equal_bytes() -> None:
    # MiniLM (a true float model) at 3.5 stored bits per weight: the byte budget against RTN 3/64
    # (3.5 bits per weight too) on the embedding cosine of 16 sentences. On the benchmark's 128
    # sentences per text: budget 0.909, RTN 0.860 (benchmarks/RESULTS.md).
    from transformers import AutoModel

    path, tok = minilm()
    ref = embed(AutoModel.from_pretrained(path).eval(), tok, MINILM_SENTENCES)
    cos, bpw = {}, {}
    for name, kw in (
        ("rtn", {"method": "rtn", "bits": 3, "group_size": 64}),
        ("budget", {"bits_per_weight": 3.5, "steps": 30}),
    ):
        model = AutoModel.from_pretrained(path).eval()
        coreopt.quantize(model, progress=False, **kw)
        cos[name] = float((embed(model, tok, MINILM_SENTENCES) * ref).sum(-1).mean())
        bpw[name] = model.quantization_report.bits_per_weight
    assert bpw["budget"] <= bpw["rtn"] == pytest.approx(3.5)
    # measured margin: +0.028 to +0.05 depending on the machine's float summation order
    assert cos["budget"] > cos["rtn"] + 0.015, cos


@pytest.mark.slow
@needs_minilm
def test_minilm_budget_mechanisms_each_pay_on_real_activations() -> None:
    # The cosine above cannot tell a broken method from a working one: with selection keeping the
    # worst candidate, cafeq ignoring its priors, GPTQ never run or steps=0 it still clears its
    # threshold (margins +0.028 to +0.037 here against +0.039 unbroken, and CI measured +0.028
    # unbroken). This test sums each layer's relative output error on MiniLM's own activations
    # for the 16 sentences, ||X (W - Ŵ)ᵀ||² / ||X Wᵀ||², over the quantized layers, against a
    # hand-written RTN 3/64 (3.5 bits per weight too), with dual=False so that every layer keeps
    # its original weight to compare with. Measured (ratio to RTN): 0.427 unbroken; selection
    # min -> max 0.458, priors ignored 0.489, GPTQ never run 0.453, steps=0 0.448, qmax =
    # 2^(b-1) - 1 1.87. The same-run ablations equal the default exactly under the break they
    # stand for (GPTQ never run is rounding="nearest", the transform never learned is steps=0),
    # whatever the machine's float summation order.
    from transformers import AutoModel

    path, tok = minilm()
    batch = tok(MINILM_SENTENCES, padding=True, return_tensors="pt")
    mask = batch["attention_mask"].bool()
    fp = AutoModel.from_pretrained(path).eval()
    X: dict[str, torch.Tensor] = {}
    W: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, inp: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
            x = inp[0]
            X[name] = (x[mask] if x.dim() == 3 else x).detach().double()

        return hook

    hooks = []
    for name, m in fp.named_modules():
        if isinstance(m, nn.Linear):
            W[name] = m.weight.detach().clone()
            hooks.append(m.register_forward_hook(keep(name)))
    with torch.inference_mode():
        fp(**batch)
    for h in hooks:
        h.remove()

    def out_err(name: str, W_hat: torch.Tensor) -> float:
        x, w = X[name], W[name].double()
        return float(((x @ (w - W_hat.double()).T) ** 2).sum() / ((x @ w.T) ** 2).sum())

    def ratio(**kw: Any) -> float:
        model = AutoModel.from_pretrained(path).eval()
        kw = {"bits_per_weight": 3.5, "steps": 30, "dual": False, "progress": False, **kw}
        coreopt.quantize(model, **kw)
        assert model.quantization_report.bits_per_weight <= 3.5
        num = rtn = 0.0
        for r in model.quantization_report.layers:
            num += out_err(r.name, model.get_submodule(r.name).effective_weight())
            rtn += out_err(r.name, hand_rtn(W[r.name], 3, 64))
        return num / rtn

    got = {
        "default": ratio(),
        "nearest": ratio(rounding="nearest"),
        "steps0": ratio(steps=0),
        "identity": ratio(prior="identity"),
    }
    # measured 0.427 (ablations: nearest 0.453, steps=0 0.448, prior="identity" 0.525)
    assert got["default"] < 0.445, got  # selection min -> max: 0.458; half the codes: 1.87
    assert got["default"] < 0.99 * got["nearest"], got  # GPTQ never run: equal (0.453)
    assert got["default"] < 0.99 * got["steps0"], got  # the transform never learned: equal (0.448)
    assert got["default"] < 0.9 * got["identity"], got  # priors ignored: 0.489 against 0.525


def test_budget_model_with_mixed_formats_round_trips(tmp_path: Path) -> None:
    net = coreopt.quantize(mlp(), bits_per_weight=3.5, **FAST)
    formats = [(r.bits, r.group_size) for r in net.quantization_report.layers]
    assert len(set(formats)) > 1
    save_quantized(net, tmp_path / "q.safetensors")
    fresh = load_quantized(mlp(seed=1), tmp_path / "q.safetensors")
    assert [(fresh[i].bits, fresh[i].group_size) for i in (0, 2, 4)] == formats
    x = torch.randn(5, 128)
    torch.testing.assert_close(fresh(x), net(x), rtol=0, atol=0)
