import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from init_layouts import FusedAttention, GQAttention
from torch import nn

from coreopt.init import (
    MimeticAttentionConfig,
    find_attention,
    mimetic_attention_,
    verify,
)
from coreopt.init._linalg import mimetic_target, split_factor


def _reference_qk(d: int, heads: int, seed: int, a: float = 0.7, b: float = 0.7):
    """The recipe written out independently: per head the rank-k truncation of a Z + b I."""
    g = torch.Generator().manual_seed(seed)
    k = d // heads
    out = []
    for _ in range(heads):
        A = mimetic_target(d, a, b, g)
        U, S, Vh = torch.linalg.svd(A)
        out.append((A, (U[:, :k] * S[:k]) @ Vh[:k]))
    return out, g


@pytest.mark.parametrize("layout", ["mha", "fused", "separate"])
def test_qk_and_vo_identities_row_vector_convention(layout: str) -> None:
    d, H = 32, 4
    k = d // H
    m: nn.Module
    if layout == "mha":
        m = nn.MultiheadAttention(d, H)
    elif layout == "fused":
        m = FusedAttention(d, H)
    else:
        m = GQAttention(d, H, H)
    mimetic_attention_(m, seed=3)
    refs, g = _reference_qk(d, H, seed=3)
    A_vo = mimetic_target(d, 0.4, -0.4, g)  # drawn after the per-head QK targets
    p = find_attention(m)
    assert p is not None
    for h, (A, trunc) in enumerate(refs):
        # q = x W_q with W_q = weight.T: head h is rows h*k:(h+1)*k of the weight.
        Wq_h = p.q_w[h * k : (h + 1) * k].detach().double().T
        Wk_h = p.k_w[h * k : (h + 1) * k].detach().double().T
        prod = Wq_h @ Wk_h.T
        torch.testing.assert_close(prod, trunc, rtol=0, atol=1e-5)
        assert prod.diagonal().mean() > 0.2  # positive diagonal (the sign of the recipe)
        # Eckart-Young: the error is the tail of the spectrum.
        tail = torch.linalg.svdvals(A)[k:]
        torch.testing.assert_close((A - prod).norm(), tail.norm(), rtol=1e-5, atol=1e-5)
    Wv = p.v_w.detach().double().T
    Wo = p.o_w.detach().double().T
    torch.testing.assert_close(Wv @ Wo, A_vo, rtol=0, atol=1e-5)
    assert (Wv @ Wo).diagonal().mean() < -0.3
    for b in (p.q_b, p.k_b, p.v_b, p.o_b):
        if b is not None:
            assert b.abs().max() == 0


def test_defaults_at_d64_h4_match_the_papers_numbers() -> None:
    m = mimetic_attention_(nn.MultiheadAttention(64, 4), seed=0)
    p = find_attention(m)
    assert p is not None
    diags = [float(p.qk_product(h).diagonal().mean()) for h in range(4)]
    assert all(0.28 < x < 0.35 for x in diags), diags  # ≈ 0.32, not 0.7 (rank-16 truncation)
    assert -0.45 < float(p.vo_product().diagonal().mean()) < -0.36  # ≈ -0.4


def test_the_layer_computes_the_intended_logits() -> None:
    """The bilinear form of head 0 seen through the module's own forward matches W_q W_k^T."""
    d, H = 16, 2
    m = mimetic_attention_(FusedAttention(d, H), seed=1)
    p = find_attention(m)
    assert p is not None
    x = torch.randn(5, d, dtype=torch.float64)
    qkv = nn.functional.linear(x, m.qkv.weight.double())
    q, kk = qkv[:, : d // H], qkv[:, d : d + d // H]
    torch.testing.assert_close(q @ kk.T, x @ p.qk_product(0) @ x.T)


def test_grouped_query_attention() -> None:
    d, H, Hkv = 32, 4, 2
    m = mimetic_attention_(GQAttention(d, H, Hkv), seed=0)
    p = find_attention(m)
    assert p is not None
    assert (p.num_heads, p.num_kv_heads, p.head_dim) == (4, 2, 8)
    for h in range(H):
        assert p.qk_product(h).diagonal().mean() > 0.1
    vo = p.vo_product()
    assert torch.linalg.matrix_rank(vo) == Hkv * p.head_dim
    assert vo.diagonal().mean() < -0.1
    assert verify(m).ok


def test_mha_output_is_usable_and_determinism_by_seed() -> None:
    a = mimetic_attention_(nn.MultiheadAttention(16, 2), seed=7)
    b = mimetic_attention_(nn.MultiheadAttention(16, 2), seed=7)
    c = mimetic_attention_(nn.MultiheadAttention(16, 2), generator=torch.Generator().manual_seed(7))
    d = mimetic_attention_(nn.MultiheadAttention(16, 2), seed=8)
    for x, y in ((a, b), (a, c)):
        for p, q in zip(x.parameters(), y.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert not torch.equal(a.in_proj_weight, d.in_proj_weight)
    out, _ = a(torch.randn(3, 2, 16), torch.randn(3, 2, 16), torch.randn(3, 2, 16))
    assert torch.isfinite(out).all()


def test_switches_leave_the_other_pair_alone() -> None:
    torch.manual_seed(0)
    m = nn.MultiheadAttention(16, 2)
    before = m.in_proj_weight.detach().clone()
    mimetic_attention_(m, MimeticAttentionConfig(qk=False), seed=0)
    torch.testing.assert_close(m.in_proj_weight[:32], before[:32], rtol=0, atol=0)
    assert not torch.equal(m.in_proj_weight[32:], before[32:])


def test_float32_params_and_split_factor_in_float64() -> None:
    m = mimetic_attention_(FusedAttention(16, 2).to(torch.float32), seed=0)
    assert m.qkv.weight.dtype == torch.float32
    with pytest.raises(TypeError, match="float64"):
        split_factor(torch.eye(3), 2)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="not a recognised attention layer"):
        mimetic_attention_(nn.Linear(4, 4))
    headless = FusedAttention(8, 2)
    del headless.num_heads
    with pytest.raises(ValueError, match="head count"):
        mimetic_attention_(headless)
    with pytest.raises(ValueError, match="either seed or generator"):
        mimetic_attention_(nn.MultiheadAttention(8, 2), seed=1, generator=torch.Generator())
    with pytest.raises(TypeError, match="MimeticAttentionConfig"):
        mimetic_attention_(nn.MultiheadAttention(8, 2), config={"qk": True})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="alpha_qk"):
        MimeticAttentionConfig(alpha_qk=-1.0)
    with pytest.raises(ValueError, match="beta_vo"):
        MimeticAttentionConfig(beta_vo=float("nan"))
    with pytest.raises(TypeError, match="qk"):
        MimeticAttentionConfig(qk=1)  # type: ignore[arg-type]


# derandomize: CI must not depend on which examples Hypothesis happens to draw
@settings(max_examples=15, deadline=None, derandomize=True)
@given(
    head_dim=st.sampled_from([4, 8, 16]),
    heads=st.sampled_from([1, 2, 4]),
    group=st.sampled_from([1, 2]),
    seed=st.integers(0, 1000),
)
def test_any_head_layout_passes_verify_and_keeps_the_factor_identities(
    head_dim: int, heads: int, group: int, seed: int
) -> None:
    d = head_dim * heads
    kv = max(heads // group, 1)
    m = mimetic_attention_(GQAttention(d, heads, kv), seed=seed)
    p = find_attention(m)
    assert p is not None
    for h in range(heads):
        prod = p.qk_product(h)
        assert torch.linalg.matrix_rank(prod) <= head_dim
        assert prod.diagonal().mean() > 0
    vo = p.vo_product()
    assert torch.linalg.matrix_rank(vo) == min(d, kv * head_dim)
    assert vo.diagonal().mean() < 0
    if d >= 16:
        # verify() compares random-matrix statistics whose spread shrinks like 1/sqrt(d); at
        # d = 8 a per-head diagonal mean is a 3-sigma outlier often enough to fail (seen in CI:
        # 0.67 vs 0.51 +- 0.15 at head_dim=4, heads=2), so only the exact identities above are
        # asserted there
        report = verify(m)
        assert report.ok, str(report)
