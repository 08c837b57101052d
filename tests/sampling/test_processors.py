"""Processors: ADS finite differences vs the exact JVP, orders, proxy modes, errors, KGW, ADFP."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import EOS, PAD, VOCAB, random_traces, tiny_gpt2, tiny_llama
from torch.func import functional_call, jvp

from coreopt.errors import NonFiniteError
from coreopt.sampling import (
    AntidistillationConfig,
    AntidistillationLogitsProcessor,
    FingerprintLogitsProcessor,
    KGWLogitsProcessor,
    TemperatureProcessor,
    VocabularyMismatchError,
    downstream_gradient,
    generate,
    save_gradient,
)

transformers = pytest.importorskip("transformers")


def _exact_delta(proxy: torch.nn.Module, grad: dict, ids: torch.Tensor) -> torch.Tensor:
    """d/dε log softmax(z(θ + εg)) at ε = 0, by forward-mode AD over the full prefix."""
    params = {k: v.detach() for k, v in proxy.named_parameters()}
    tangents = {k: grad[k].to(v.dtype) for k, v in params.items()}

    def logp(p: dict) -> torch.Tensor:
        return functional_call(proxy, p, (ids,)).logits[:, -1].log_softmax(-1)

    return jvp(logp, (params,), (tangents,))[1]


@pytest.mark.parametrize(
    ("make", "eps", "rtol"),
    [(tiny_llama, 1e-2, 1e-2), (tiny_llama, 1e-3, 2e-3), (tiny_gpt2, 1e-3, 2e-3)],
    ids=["llama-eps1e-2", "llama-eps1e-3", "gpt2-eps1e-3"],
)
@pytest.mark.parametrize("proxy_mode", ["batched", "inplace", "copies"])
def test_finite_difference_matches_the_jvp_over_cached_steps(
    make: object, eps: float, rtol: float, proxy_mode: str
) -> None:
    proxy = make(1)  # type: ignore[operator]
    grad = downstream_gradient(proxy, random_traces(6), progress=False)
    proc = AntidistillationLogitsProcessor(proxy, grad, lam=0.1, eps=eps, proxy_mode=proxy_mode)
    ids = torch.tensor([[1, 5, 6, 7], [1, 8, 9, 10]])
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):  # prefill, then two steps through the KV caches
        delta = proc.delta(ids)
        exact = _exact_delta(proxy, grad, ids)
        scale = float(exact.abs().max())
        assert float((delta - exact).abs().max()) <= rtol * scale
        ids = torch.cat([ids, torch.randint(3, VOCAB, (2, 1), generator=gen)], dim=1)
    assert proc.proxy_mode == proxy_mode
    assert proc.proxy_forwards == (3 if proxy_mode == "batched" else 6)


def test_inplace_mode_restores_the_proxy_bit_exactly() -> None:
    proxy = tiny_llama(1, tie=True)
    before = {k: v.clone() for k, v in proxy.state_dict().items()}
    grad = downstream_gradient(proxy, random_traces(4), progress=False)
    for mode in ("inplace", "batched"):
        proc = AntidistillationLogitsProcessor(proxy, grad, lam=1.0, proxy_mode=mode)
        generate(tiny_llama(0), [[1, 5], [1, 6, 7]], processor=proc, max_new_tokens=6, seed=0)
        assert all(torch.equal(before[k], v) for k, v in proxy.state_dict().items())


def test_inplace_and_copies_give_the_same_delta() -> None:
    proxy = tiny_llama(1, tie=True)
    grad = downstream_gradient(proxy, random_traces(4), progress=False)
    ids = torch.tensor([[1, 5, 6, 7]])
    a = AntidistillationLogitsProcessor(proxy, grad, lam=0.1, proxy_mode="inplace").delta(ids)
    b = AntidistillationLogitsProcessor(proxy, grad, lam=0.1, proxy_mode="copies").delta(ids)
    c = AntidistillationLogitsProcessor(proxy, grad, lam=0.1, proxy_mode="batched").delta(ids)
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(c, a, rtol=1e-3, atol=1e-3)


def test_auto_mode_by_free_memory_and_supported_modules(monkeypatch) -> None:
    import coreopt.sampling.processors as procs

    proxy = tiny_llama(1)
    grad = downstream_gradient(proxy, random_traces(4), progress=False)
    size = sum(p.numel() * p.element_size() for p in proxy.parameters())
    monkeypatch.setattr(procs, "_free_memory_bytes", lambda device: 100 * size)
    assert AntidistillationLogitsProcessor(proxy, grad, lam=0.1).proxy_mode == "copies"
    monkeypatch.setattr(procs, "_free_memory_bytes", lambda device: 4 * size)  # copies don't fit
    assert AntidistillationLogitsProcessor(proxy, grad, lam=0.1).proxy_mode == "batched"

    class Scale(torch.nn.Module):  # a parameter used nonlinearly: not affine, not supported
        def __init__(self) -> None:
            super().__init__()
            self.log_s = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.log_s.exp()

    proxy.model.norm = torch.nn.Sequential(proxy.model.norm, Scale())
    grad = downstream_gradient(proxy, random_traces(4), progress=False)
    auto = AntidistillationLogitsProcessor(proxy, grad, lam=0.1)
    assert auto.proxy_mode == "inplace"
    with pytest.raises(TypeError, match="Scale"):
        AntidistillationLogitsProcessor(proxy, grad, lam=0.1, proxy_mode="batched")
    ids = torch.tensor([[1, 5, 6, 7]])
    exact = _exact_delta(proxy, grad, ids)
    assert float((auto.delta(ids) - exact).abs().max()) <= 1e-2 * float(exact.abs().max())


def test_paper_and_reference_orders() -> None:
    proxy = tiny_llama(1)
    grad = downstream_gradient(proxy, random_traces(4), progress=False)
    ids = torch.tensor([[1, 5, 6, 7]])
    scores = torch.randn(1, VOCAB)
    lam, tau = 0.3, 2.0
    paper = AntidistillationLogitsProcessor(proxy, grad, lam=lam, temperature=tau)
    ref = AntidistillationLogitsProcessor(proxy, grad, lam=lam, temperature=tau, order="reference")
    out_p, out_r = paper(ids, scores), ref(ids, scores)
    delta = paper.last_delta
    assert delta is not None
    want_p = torch.log_softmax(scores, -1) / tau + lam * delta
    want_r = (scores + lam * delta) / tau
    torch.testing.assert_close(out_p, want_p)
    torch.testing.assert_close(out_r, want_r)
    # λ = 0 is temperature sampling
    zero = AntidistillationLogitsProcessor(proxy, grad, lam=0.0, temperature=tau)
    torch.testing.assert_close(zero(ids, scores), TemperatureProcessor(tau)(ids, scores))


def test_transformers_generate_and_coreopt_generate_agree_greedily() -> None:
    teacher, proxy = tiny_llama(0), tiny_llama(1)
    grad = downstream_gradient(proxy, random_traces(4), progress=False)
    ids = torch.tensor([[PAD, 1, 5, 6], [1, 8, 9, 10]])
    mask = (ids != PAD).long()
    hf_proc = AntidistillationLogitsProcessor(proxy, grad, lam=2.0, pad_token_id=PAD)
    hf = teacher.generate(
        ids,
        attention_mask=mask,
        logits_processor=transformers.LogitsProcessorList([hf_proc]),
        do_sample=False,
        max_new_tokens=6,
        pad_token_id=PAD,
        eos_token_id=None,
    )
    ours = generate(
        teacher,
        ids,
        attention_mask=mask,
        processor=AntidistillationLogitsProcessor(proxy, grad, lam=2.0),
        max_new_tokens=6,
        do_sample=False,
        eos_token_id=[],
    )
    plain = generate(teacher, ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    assert hf[:, 4:].tolist() == [c[:6] for c in ours.completions]
    assert ours.completions != plain.completions  # λ = 2 changes the greedy path


def test_gradient_path_and_bad_inputs(tmp_path: Path) -> None:
    proxy = tiny_llama(1)
    grad = downstream_gradient(proxy, random_traces(4), progress=False)
    path = save_gradient(grad, tmp_path / "g.safetensors")
    proc = AntidistillationLogitsProcessor(proxy, path, lam=0.1)
    assert proc(torch.tensor([[1, 5]]), torch.randn(1, VOCAB)).shape == (1, VOCAB)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        AntidistillationLogitsProcessor(proxy, tmp_path / "nope.safetensors", lam=0.1)
    with pytest.raises(ValueError, match="lam must be >= 0"):
        AntidistillationLogitsProcessor(proxy, grad, lam=-0.1)
    with pytest.raises(ValueError, match="eps must be > 0"):
        AntidistillationConfig(lam=0.1, eps=0.0)
    with pytest.raises(ValueError, match="order"):
        AntidistillationConfig(lam=0.1, order="before")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="lam"):
        AntidistillationLogitsProcessor(proxy, grad)


def test_vocabulary_mismatch_is_an_error_or_an_explicit_shared_prefix() -> None:
    proxy = tiny_llama(1)
    grad = downstream_gradient(proxy, random_traces(4), progress=False)
    ids = torch.tensor([[1, 5, 6]])
    proc = AntidistillationLogitsProcessor(proxy, grad, lam=0.1)
    with pytest.raises(VocabularyMismatchError, match="vocab_size=N"):
        proc(ids, torch.randn(1, VOCAB + 8))
    padded = AntidistillationLogitsProcessor(proxy, grad, lam=0.1, vocab_size=VOCAB)
    out = padded(ids, torch.zeros(1, VOCAB + 8))
    assert out.shape == (1, VOCAB + 8)
    with pytest.raises(VocabularyMismatchError, match="embedding table"):
        proc(torch.tensor([[1, VOCAB + 3]]), torch.randn(1, VOCAB + 8))

    class Tok:
        def __init__(self, vocab: dict) -> None:
            self.vocab = vocab

        def get_vocab(self) -> dict:
            return self.vocab

    with pytest.raises(VocabularyMismatchError, match="tokenizers differ"):
        AntidistillationLogitsProcessor(
            proxy, grad, lam=0.1, tokenizer=Tok({"a": 0, "b": 1}), proxy_tokenizer=Tok({"a": 1})
        )


def test_nan_in_delta_is_a_clear_error() -> None:
    proxy = tiny_llama(1)
    grad = downstream_gradient(proxy, random_traces(4), progress=False)
    grad = {k: torch.full_like(v, float("nan")) for k, v in grad.items()}
    proc = AntidistillationLogitsProcessor(proxy, grad, lam=0.1)
    with pytest.raises(NonFiniteError, match="non-finite"):
        proc(torch.tensor([[1, 5, 6]]), torch.randn(1, VOCAB))
    # the proxy is restored even though the forward produced NaN
    assert all(torch.isfinite(p).all() for p in proxy.parameters())


def test_fingerprint_adjustment_is_the_gradient_of_the_green_mass() -> None:
    proxy = tiny_llama(1)
    proc = FingerprintLogitsProcessor(proxy, key="k", lam=1.0, eos_token_id=EOS)
    ids = torch.tensor([[1, 5, 6], [1, 7, 8]])
    scores = torch.randn(2, VOCAB)
    scores[1, EOS] = 100.0  # the teacher wants to stop on row 1: left alone
    adj = proc.adjustment(ids, scores)
    z = proxy(ids).logits[:, -1].detach().requires_grad_(True)
    green = proc.green_list.mask(ids[:, -2:]).float()
    (torch.softmax(z, -1) * green).sum(-1)[0].backward()
    torch.testing.assert_close(adj[0], z.grad[0], rtol=1e-5, atol=1e-7)
    assert torch.equal(adj[1], torch.zeros(VOCAB))
    assert not green[:, [PAD, 1, EOS]].any()  # special tokens are never green
    out = proc(ids, scores)
    torch.testing.assert_close(out, torch.log_softmax(scores, -1) + adj)


def test_kgw_processor_is_transformers_watermark() -> None:
    ids = torch.tensor([[1, 5, 6], [1, 7, 9]])
    scores = torch.randn(2, VOCAB)
    proc = KGWLogitsProcessor(VOCAB, bias=2.0, gamma=0.25, key=123)
    hf = transformers.WatermarkLogitsProcessor(
        vocab_size=VOCAB, device="cpu", greenlist_ratio=0.25, bias=2.0, hashing_key=123
    )
    torch.testing.assert_close(proc(ids, scores), hf(ids, torch.log_softmax(scores, -1)))
    ref = KGWLogitsProcessor(VOCAB, bias=2.0, key=123, temperature=2.0, order="reference")
    torch.testing.assert_close(ref(ids, scores), hf(ids, scores.clone()) / 2.0)
    green = proc.green_list.mask(ids[:, -1:])
    assert green.sum(-1).tolist() == [10, 10]
    assert proc.green_list.gamma == 0.25


def test_kgw_on_a_given_green_list_is_a_constant_bias() -> None:
    from coreopt.sampling import HashGreenList

    green = HashGreenList("k", VOCAB, context_width=3, special_token_ids=(PAD, 1, EOS))
    proc = KGWLogitsProcessor(VOCAB, bias=1.5, green_list=green, temperature=2.0)
    ids = torch.tensor([[1, 5, 6, 7], [1, 7, 9, 9]])
    scores = torch.randn(2, VOCAB)
    want = torch.log_softmax(scores, -1) / 2.0 + 1.5 * green.mask(ids[:, -3:]).float()
    torch.testing.assert_close(proc(ids, scores), want)
    with pytest.raises(VocabularyMismatchError):
        KGWLogitsProcessor(VOCAB + 1, green_list=green)
