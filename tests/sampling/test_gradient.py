"""downstream_gradient: completion-only, batch-size invariant, float32; safetensors round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import random_traces, tiny_llama

from coreopt.sampling import (
    GradientMismatchError,
    Trace,
    downstream_gradient,
    load_gradient,
    save_gradient,
)


def _manual_loss(model: torch.nn.Module, traces: list) -> torch.Tensor:
    """Mean completion NLL, one trace at a time, no padding."""
    total, count = torch.zeros((), dtype=torch.float64), 0
    for prompt, completion in traces:
        ids = torch.tensor([[*prompt, *completion]])
        logp = model(ids).logits[0, :-1].double().log_softmax(-1)
        for i, tok in enumerate(completion):
            total = total - logp[len(prompt) - 1 + i, tok]
            count += 1
    return total / count


def test_gradient_equals_autograd_of_the_mean_completion_nll(traces: list) -> None:
    model = tiny_llama(3)
    g = downstream_gradient(model, traces, batch_size=3, progress=False)
    model.zero_grad()
    _manual_loss(model, traces).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(g[name], p.grad.float(), rtol=1e-4, atol=1e-6)
        assert g[name].dtype == torch.float32


def test_gradient_is_independent_of_batch_size_and_ignores_prompt_tokens(traces: list) -> None:
    model = tiny_llama(3)
    a = downstream_gradient(model, traces, batch_size=1, progress=False)
    b = downstream_gradient(model, traces, batch_size=len(traces), progress=False)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-7)
    # changing a prompt token's *label role* cannot matter: only completions are scored, so the
    # gradient of traces whose completion is empty is zero and they are skipped
    c = downstream_gradient(model, [*traces, ([1, 5, 6], [])], batch_size=4, progress=False)
    for k in a:
        torch.testing.assert_close(a[k], c[k], rtol=1e-4, atol=1e-7)


def test_gradient_leaves_the_model_as_it_was(traces: list) -> None:
    model = tiny_llama(3).train()
    model.model.embed_tokens.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = downstream_gradient(model, [Trace(p, c) for p, c in traces], progress=False)
    assert model.training
    assert not model.model.embed_tokens.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert "model.embed_tokens.weight" in g  # frozen parameters still get a gradient


def test_gradient_rejects_bad_traces() -> None:
    model = tiny_llama(3)
    with pytest.raises(ValueError, match="no completion"):
        downstream_gradient(model, [([1, 2], [])], progress=False)
    with pytest.raises(ValueError, match="embedding table"):
        downstream_gradient(model, [([1, 2], [999])], progress=False)
    with pytest.raises(TypeError, match="pair"):
        downstream_gradient(model, [42], progress=False)  # type: ignore[list-item]


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    model = tiny_llama(3, tie=True)
    g = downstream_gradient(model, random_traces(4), progress=False)
    assert "lm_head.weight" not in g  # a tied weight appears once
    path = save_gradient(g, tmp_path / "sub" / "g.safetensors", metadata={"traces": 4})
    back = load_gradient(path, model)
    assert back.keys() == g.keys()
    for k in g:
        assert torch.equal(back[k], g[k])
    assert load_gradient(path)["model.norm.weight"].device.type == "cpu"


def test_load_gradient_errors(tmp_path: Path) -> None:
    model = tiny_llama(3)
    with pytest.raises(FileNotFoundError, match="downstream_gradient"):
        load_gradient(tmp_path / "missing.safetensors", model)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(GradientMismatchError, match="not a readable"):
        load_gradient(junk, model)
    other = tiny_llama(3, layers=1)
    g = downstream_gradient(model, random_traces(2), progress=False)
    path = save_gradient(g, tmp_path / "g.safetensors")
    with pytest.raises(GradientMismatchError, match="not parameters of the proxy"):
        load_gradient(path, other)
    wide = tiny_llama(3, vocab=48)
    with pytest.raises(GradientMismatchError, match="shape"):
        load_gradient(path, wide)
