"""Input transforms stored as int8 codes with a float16 scale per block row
(``transform_dtype="int8"``): the rounding against a hand-written reference, the weights fitted
to the rounded blocks, the forward against a dense hand-written reference, the bytes, the
knapsack's price, and the save/load round trips."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _gated_llama import BUDGET, gated_llama

import coreopt
from coreopt.quant import QuantFormat, QuantizeConfig, QuantizedLinear, model_bytes
from coreopt.quant.budget import SharedChoice, shared_transform_bits, stored_bits
from coreopt.quant.format import rtn
from coreopt.quant.io import load_quantized, save_quantized
from coreopt.quant.linear import share_transform
from coreopt.quant.methods import MatrixTask, estimate_loss, transform_candidate
from coreopt.quant.transforms import (
    dequantize_int8_blocks,
    int8_blocks,
    random_block_orthogonal,
    store_transform,
)

QUANTIZE = sys.modules["coreopt.quant.quantize"]


def _reference_int8(T: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """By hand, row by row: the float16 scale absmax / 127 rounded up, codes round(T / s)."""
    A = T.double().numpy()
    k, b, _ = A.shape
    codes = np.zeros((k, b, b), dtype=np.int8)
    scales = np.zeros((k, b), dtype=np.float16)
    for j in range(k):
        for r in range(b):
            row = A[j, r].astype(np.float32)
            raw = np.float32(np.abs(row).max()) / np.float32(127)
            s = np.float16(raw)
            if np.float32(s) < raw:
                s = np.nextafter(s, np.float16(np.inf))
            if s == 0:
                s = np.float16(1)
            scales[j, r] = s
            codes[j, r] = np.clip(np.rint(row / np.float32(s)), -127, 127).astype(np.int8)
    return codes, scales


def _blocks(k: int = 4, b: int = 16, seed: int = 0) -> torch.Tensor:
    """Invertible blocks with entries of every size: a random block Hadamard plus noise."""
    g = torch.Generator().manual_seed(seed)
    H = random_block_orthogonal(k, b, generator=g)
    return H + 0.3 * torch.randn(k, b, b, generator=g) / b**0.5


def _dense(T: torch.Tensor) -> torch.Tensor:
    return torch.block_diag(*T.unbind(0))


# ----------------------------------------------------------------------------------------------
# the rounding
# ----------------------------------------------------------------------------------------------


def test_int8_blocks_match_a_hand_written_reference() -> None:
    T = _blocks()
    T[1, 3] = 0.0  # an all-zero row: scale 1, codes 0
    q, s = int8_blocks(T)
    ref_q, ref_s = _reference_int8(T)
    assert q.dtype == torch.int8
    assert q.shape == (4, 16, 16)
    assert s.dtype == torch.float16
    assert s.shape == (4, 16)
    assert np.array_equal(q.numpy(), ref_q)
    assert np.array_equal(s.numpy(), ref_s)
    # the error bound: half a step of the row, and every row uses its range
    Tq = dequantize_int8_blocks(q, s)
    step = s.float().unsqueeze(-1)
    assert bool(((T - Tq).abs() <= step / 2).all())
    live = T.abs().amax(-1) > 0
    assert bool((q.abs().amax(-1)[live] >= 126).all())
    # store_transform returns exactly those blocks and scales
    Ts, ss = store_transform(T, "int8")
    assert ss is not None
    assert torch.equal(Ts, Tq)
    assert torch.equal(ss, s)
    # float16 storage: the blocks rounded to float16, no scale
    T16, none = store_transform(T, "float16")
    assert none is None
    assert torch.equal(T16, T.half().float())


def test_transform_dtype_is_validated() -> None:
    with pytest.raises(ValueError, match="transform_dtype"):
        QuantizeConfig(transform_dtype="int4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="transform_dtype"):
        QuantizedLinear(64, 8, QuantFormat(4, 32), transform_block=16, transform_dtype="int4")


# ----------------------------------------------------------------------------------------------
# the weights are fitted to the stored blocks
# ----------------------------------------------------------------------------------------------


def test_weight_is_rounded_against_the_stored_int8_blocks() -> None:
    """``W' = W T_q⁻¹`` with the int8 ``T_q``, not the learned ``T``: with nearest rounding and no
    range search the codes are min-max RTN of that product, computed here by hand."""
    torch.manual_seed(0)
    W = torch.randn(32, 64)
    T = _blocks()
    fmt = QuantFormat(3, 32)
    cfg = QuantizeConfig(
        bits=3, group_size=32, rounding="nearest", clip_search=False, transform_dtype="int8"
    )
    loss, _label, c, Tq, s = transform_candidate(W, T, None, None, fmt, cfg)
    ref_q, ref_s = _reference_int8(T)
    Tq_ref = torch.from_numpy(ref_q).float() * torch.from_numpy(ref_s).float().unsqueeze(-1)
    assert torch.equal(Tq, Tq_ref)
    assert s is not None
    assert torch.equal(s, torch.from_numpy(ref_s))
    Wt = W @ torch.linalg.inv(_dense(Tq_ref).double()).float()
    codes, scale, zero = rtn(Wt, fmt)
    assert torch.equal(c[0], codes)
    # the unrounded T would give other codes: the test sees the difference
    assert not torch.equal(rtn(W @ torch.linalg.inv(_dense(T)), fmt)[0], codes)
    # the proxy is that of the stored layer, W_q T_q
    Wq = ((codes.float().view(32, 2, 32) - zero.unsqueeze(-1)) * scale.unsqueeze(-1)).view(32, 64)
    E = W - Wq @ _dense(Tq_ref)
    assert loss == pytest.approx(float((E**2).sum() / (W**2).sum()), rel=1e-5)


def test_estimated_loss_is_that_of_the_stored_blocks() -> None:
    """The knapsack's loss estimate of a transform option uses ``T_q``: with float32 metadata
    (so that ``q s`` is stored exactly by the float path) int8 ``T`` prices as ``T_q`` does."""
    torch.manual_seed(1)
    W = torch.randn(48, 64)
    T = _blocks(seed=2)
    fmt = QuantFormat(3, 32, torch.float32)
    i8 = QuantizeConfig(bits=3, group_size=32, scale_dtype=torch.float32, transform_dtype="int8")
    f32 = dataclasses.replace(i8, transform_dtype="float16")  # the format's float32 here
    Tq, _ = store_transform(T, "int8", torch.float32)
    assert not torch.equal(Tq, T)
    got = estimate_loss(W, T, None, fmt, i8)
    assert got == estimate_loss(W, Tq, None, fmt, f32)
    assert got != estimate_loss(W, T, None, fmt, f32)


# ----------------------------------------------------------------------------------------------
# the layer: forward, bytes, casts, sharing, save / load
# ----------------------------------------------------------------------------------------------


def _net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(96, 64), torch.nn.GELU(), torch.nn.Linear(64, 40))


def _quantized(**kw: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    net = _net()
    with torch.no_grad():
        net[0].weight[:, :3] *= 20  # outlier inputs: the transform is kept
        net[2].weight[:, :3] *= 20
    opts: dict[str, Any] = {
        "bits": 3,
        "group_size": 32,
        "block_size": 16,
        "steps": 10,
        "progress": False,
        "max_workers": 1,
        "transform_dtype": "int8",
    }
    return coreopt.quantize(net, **{**opts, **kw})


def _hand_forward(layer: QuantizedLinear, x: torch.Tensor) -> torch.Tensor:
    """``x (W_q blockdiag(T_q))ᵀ + b`` from the stored buffers, in float64, written out here."""
    out, g = layer.out_features, layer.group_size
    codes = layer.codes().double()
    Wq = (codes.view(out, -1, g) - layer.zero.double().unsqueeze(-1)) * layer.scale.double()[
        ..., None
    ]
    Wq = Wq.reshape(out, -1)[:, : layer.in_features]
    assert layer.transform is not None
    assert layer.transform_scale is not None
    Tq = layer.transform.double() * layer.transform_scale.double().unsqueeze(-1)
    y = x.double() @ (Wq @ _dense(Tq)).T
    return y if layer.bias is None else y + layer.bias.double()


def test_int8_layer_matches_a_dense_hand_written_forward() -> None:
    model = _quantized()
    layers = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    assert all(m.transform is not None and m.transform.dtype == torch.int8 for m in layers)
    x = torch.randn(5, 96)
    h = x
    for i, m in enumerate(model):
        if isinstance(m, QuantizedLinear):
            ref = _hand_forward(m, h)
            m.set_runtime("reference")
            torch.testing.assert_close(m(h).double(), ref, rtol=1e-5, atol=1e-5)
            m.set_runtime("dense", torch.float32)  # the cached transposed blocks
            torch.testing.assert_close(m(h).double(), ref, rtol=1e-5, atol=1e-5)
            m.set_runtime("auto")  # bfloat16 activations: within their rounding
            torch.testing.assert_close(m(h).double(), ref, rtol=0.05, atol=0.05 * ref.abs().max())
            torch.testing.assert_close(
                m.effective_weight().double() @ h.double().T,
                ref.T - (0 if m.bias is None else m.bias.double()[:, None]),
                rtol=1e-5,
                atol=1e-5,
            )
        h = model[i](h)


def test_int8_bytes_by_hand() -> None:
    """codes (3 bits) + float16 scale and zero per 32 inputs + int8 blocks (in · 16 bytes) and
    a float16 row scale per input (in · 2 bytes); the bias counts in the model, not the layer."""
    model = _quantized()
    rep = model.quantization_report
    own = {96: 64 * 96 * 3 // 8 + 2 * 64 * 3 * 2, 64: 40 * 64 * 3 // 8 + 2 * 40 * 2 * 2}
    for r, m in zip(rep.layers, [model[0], model[2]], strict=True):
        n = r.shape[1]
        assert r.transform_block == 16
        want = own[n] + n * 16 + n * 2
        assert r.stored_bytes == want
        assert m.memory_bytes() == want + 4 * r.shape[0]  # + the float32 bias
        assert 8 * want == stored_bits(*r.shape, 3, 32, 16, 16, "int8")
    assert rep.stored_bytes == sum(own.values()) + 96 * 18 + 64 * 18
    assert rep.bits_per_weight == 8 * rep.stored_bytes / (64 * 96 + 40 * 64)
    assert model_bytes(model) == rep.stored_bytes + 4 * (64 + 40)
    # float16 storage, the same transform width: in · 16 · 2 bytes
    half = _quantized(transform_dtype="float16").quantization_report
    assert [r.stored_bytes for r in half.layers] == [own[96] + 96 * 32, own[64] + 64 * 32]


def test_casts_keep_the_int8_blocks() -> None:
    model = _quantized()
    m = model[0]
    q, s = m.transform.clone(), m.transform_scale.clone()
    W = m.effective_weight()
    for cast in (lambda: model.half(), lambda: model.to(torch.bfloat16), lambda: model.float()):
        cast()
        assert m.transform.dtype == torch.int8
        assert torch.equal(m.transform, q)
        assert m.transform_scale.dtype == torch.float16
        assert torch.equal(m.transform_scale, s)
        assert torch.equal(m.effective_weight(), W)  # the bias alone is cast


def test_save_load_round_trip_is_bit_exact(tmp_path: Path) -> None:
    model = _quantized()
    path = tmp_path / "m.safetensors"
    save_quantized(model, path)
    fresh = load_quantized(_net(), path)
    a, b = model.state_dict(), fresh.state_dict()
    assert a.keys() == b.keys()
    assert "0.transform_scale" in a
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k
    x = torch.randn(4, 96)
    assert torch.equal(fresh(x), model(x))
    assert fresh[0].transform_dtype == "int8"


def _int8_group() -> list[QuantizedLinear]:
    fmt = QuantFormat(4, 32)
    Tq, s = store_transform(_blocks(), "int8")
    out = []
    for rows in (48, 16, 16):
        codes = torch.randint(0, 16, (rows, 64))
        scale, zero = torch.rand(rows, 2) + 0.1, torch.full((rows, 2), 7.0)
        out.append(
            QuantizedLinear.from_codes(codes, scale, zero, fmt, transform=Tq, transform_scale=s)
        )
    return out


def test_a_shared_int8_transform_is_stored_and_saved_once(tmp_path: Path) -> None:
    layers = _int8_group()
    model = torch.nn.ModuleList(layers)
    own = [rows * 64 * 4 // 8 + 2 * rows * 2 * 2 for rows in (48, 16, 16)]
    blocks = 64 * 16 + 64 * 2  # int8 codes + a float16 scale per row
    assert model_bytes(model) == sum(own) + 3 * blocks
    share_transform(layers)
    assert model_bytes(model) == sum(own) + blocks
    assert [QUANTIZE._stored_bytes(m) for m in layers] == [own[0] + blocks, own[1], own[2]]
    assert layers[1].transform_scale is layers[0].transform_scale
    keys = model.state_dict().keys()
    assert "0.transform_scale" in keys
    assert "1.transform_scale" not in keys
    model._apply(lambda t: t.clone())  # a device move keeps one tensor for the group
    assert layers[2].transform_scale is layers[0].transform_scale
    assert layers[2].transform is layers[0].transform
    # save / load: once in the file, tied again, the outputs reproduced
    path = tmp_path / "g.safetensors"
    save_quantized(model, path)
    fresh = torch.nn.ModuleList(torch.nn.Linear(64, r) for r in (48, 16, 16))
    load_quantized(fresh, path)
    assert fresh[1].transform_scale is fresh[0].transform_scale
    x = torch.randn(2, 64)
    for a, b in zip(layers, fresh, strict=True):
        assert torch.equal(a(x), b(x))
    # a member whose row scales differ is refused
    other = _int8_group()
    with torch.no_grad():
        other[2].transform_scale.mul_(2)  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="differ"):
        share_transform(other)


def test_from_codes_refuses_scales_that_do_not_reproduce_the_blocks() -> None:
    Tq, s = store_transform(_blocks(), "int8")
    assert s is not None
    codes, scale, zero = torch.zeros(8, 64, dtype=torch.uint8), torch.ones(8, 2), torch.zeros(8, 2)
    with pytest.raises(ValueError, match="reproduce"):
        QuantizedLinear.from_codes(
            codes, scale, zero, QuantFormat(4, 32), transform=Tq * 1.001, transform_scale=s
        )


# ----------------------------------------------------------------------------------------------
# the knapsack's price
# ----------------------------------------------------------------------------------------------


def test_budget_prices_transform_options_in_int8(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every transform option the knapsack sees costs ``out · in_pad · b + 2 · 16 · out · groups
    + in · k · 8 + in · 16`` bits, computed here by hand."""
    seen: list[Any] = []
    real = QUANTIZE.choose_options

    def spy(layers: Any, budget: float, shared: Any = ()) -> Any:
        seen.append([list(o) for o in layers])
        return real(layers, budget, shared)

    monkeypatch.setattr(QUANTIZE, "choose_options", spy)
    cfg = QuantizeConfig(
        bits=3,
        bits_per_weight=3.5,
        steps=20,
        block_options=(16,),
        max_workers=1,
        transform_dtype="int8",
    )
    tasks = []
    for i, name in enumerate("ab"):
        g = torch.Generator().manual_seed(i)
        W = torch.randn(1024, 64, generator=g)
        W[:, :3] *= 20  # outlier inputs: a transform pays
        tasks.append(MatrixTask(name, W, seed=i))
    jobs = QUANTIZE._budget_plan(tasks, cfg, {})
    shapes = [(1024, 64), (1024, 64)]
    with_t = [(s, o) for s, layer in zip(shapes, seen[-1], strict=True) for o in layer if o.block]
    assert with_t, "no transform option was priced"
    assert any(c.transform != "identity" for _, c in jobs)  # and one was bought
    for (out, n), o in with_t:
        groups = -(-n // o.group_size)
        want = out * groups * o.group_size * o.bits + 2 * 16 * out * groups + n * 16 * 8 + n * 16
        assert o.cost == want


def test_shared_int8_transform_through_quantize(
    tiny_hf_model: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A shared int8 transform is priced once for the group (``in · k · 8 + in · 16`` bits),
    stored once (codes and row scales), survives ``save_pretrained``/``from_pretrained``
    exactly, and GGUF export still refuses it."""
    transformers = pytest.importorskip("transformers")
    assert shared_transform_bits(64, 16, 16, "int8") == 64 * 16 * 8 + 64 * 16
    seen: list[SharedChoice] = []
    real = QUANTIZE.choose_options

    def spy(layers: Any, budget: float, shared: Any = ()) -> Any:
        seen.extend(shared)
        return real(layers, budget, shared)

    monkeypatch.setattr(QUANTIZE, "choose_options", spy)
    model = gated_llama(tiny_hf_model)
    coreopt.quantize(model, **BUDGET, transform_dtype="int8")
    assert seen, "no shared transform option was priced"
    assert {ch.cost for ch in seen} == {64 * 16 * 8 + 64 * 16}
    mlp = model.model.layers[0].mlp
    assert mlp.up_proj.transform_shared  # bought: one tensor of codes and one of scales
    assert mlp.up_proj.transform is mlp.gate_proj.transform
    assert mlp.up_proj.transform_scale is mlp.gate_proj.transform_scale
    assert mlp.gate_proj.transform is not None
    assert mlp.gate_proj.transform.dtype == torch.int8
    rep = model.quantization_report
    by = {r.name.rsplit(".", 1)[-1]: r for r in rep.layers}
    gate, up = by["gate_proj"], by["up_proj"]
    codes = [
        r.shape[0] * r.shape[1] * r.bits // 8 + 2 * r.shape[0] * (64 // r.group_size) * 2
        for r in (gate, up)
    ]
    assert gate.stored_bytes == codes[0] + 64 * 16 + 64 * 2
    assert up.stored_bytes == codes[1]
    x = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        y = model(x).logits
    model.save_pretrained(tmp_path)
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    mlp2 = back.model.layers[0].mlp
    assert mlp2.up_proj.transform_scale is mlp2.gate_proj.transform_scale
    assert mlp2.gate_proj.transform.dtype == torch.int8
    with torch.no_grad():
        torch.testing.assert_close(back(x).logits, y, rtol=0, atol=0)
    from coreopt.quant import export_gguf

    with pytest.raises(ValueError, match="transform"):
        export_gguf(model, tmp_path / "m.gguf")
