"""The real ``openai`` client against a loopback server: retries, concurrency, cache, budget."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("openai")

from coreopt.errors import BudgetExhaustedError
from coreopt.llm import LLM, Budget, Decoding, LLMError, OpenAIBackend, SQLiteCache


def backend(server, **kw) -> OpenAIBackend:
    return OpenAIBackend("fake-model", base_url=server.url, api_key="k", **kw)


def test_generate_and_score_through_the_real_client(fake_server, tmp_path) -> None:
    llm = LLM(backend(fake_server), cache=tmp_path / "c.sqlite")
    out = llm.generate("Sources:\n[1] a\n[2] b\n\nQuestion: q")
    assert out.text == "answer citing 2 sources"
    assert (out.prompt_tokens, out.completion_tokens) == (10, 5)
    s = llm.score("[1] a\nQuestion: q", "two words")
    assert s.logprob == pytest.approx(2 * -0.25)
    assert fake_server.requests == 2
    assert fake_server.bodies[0]["model"] == "fake-model"


def test_env_configuration(fake_server, monkeypatch) -> None:
    monkeypatch.setenv("COREOPT_LLM_BASE_URL", fake_server.url)
    monkeypatch.setenv("COREOPT_LLM_MODEL", "env-model")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    from coreopt.llm import make_backend

    b = make_backend(None)
    assert isinstance(b, OpenAIBackend)
    assert b.model == "env-model"
    assert LLM(b, cache=False).generate("hi").text.startswith("answer")


def test_sdk_retries_429_and_500_then_succeeds(fake_server) -> None:
    fake_server.fail = [429, 500]
    llm = LLM(backend(fake_server, max_retries=3), cache=False)
    assert llm.generate("hi").text == "answer citing 0 sources"
    assert fake_server.requests == 3
    assert llm.usage.calls == 1  # the SDK retried inside one paid call


def test_persistent_failure_raises_and_never_falls_back(fake_server) -> None:
    fake_server.fail = [500] * 10
    llm = LLM(backend(fake_server, max_retries=1), cache=False)
    with pytest.raises(LLMError, match="openai backend"):
        llm.generate("hi")
    assert fake_server.requests == 2
    assert llm.usage.failures == 1


def test_concurrency_limit_is_respected(fake_server) -> None:
    fake_server.delay = 0.05
    llm = LLM(backend(fake_server), max_concurrency=3, cache=False)

    async def many() -> None:
        await asyncio.gather(*(llm.agenerate(f"q{i}") for i in range(12)))

    asyncio.run(many())
    assert fake_server.requests == 12
    assert fake_server.max_in_flight == 3


def test_cache_survives_a_new_client_and_in_flight_calls_merge(fake_server, tmp_path) -> None:
    fake_server.delay = 0.05
    path = tmp_path / "c.sqlite"
    llm = LLM(backend(fake_server), cache=path)

    async def same() -> list[str]:
        outs = await asyncio.gather(*(llm.agenerate("same prompt") for _ in range(5)))
        return [o.text for o in outs]

    assert len(set(asyncio.run(same()))) == 1
    assert fake_server.requests == 1
    assert llm.usage.merged == 4
    again = LLM(backend(fake_server), cache=SQLiteCache(path))
    again.generate("same prompt")
    again.generate("same prompt", Decoding(max_tokens=8))  # other params: a new call
    assert fake_server.requests == 2
    assert again.usage.cache_hits == 1


def test_call_budget_raises_budget_exhausted(fake_server) -> None:
    llm = LLM(backend(fake_server), cache=False, budget=Budget(calls=2))
    llm.generate("a")
    llm.generate("b")
    with pytest.raises(BudgetExhaustedError):
        llm.generate("c")
    assert fake_server.requests == 2


def test_token_budget(fake_server) -> None:
    llm = LLM(backend(fake_server), cache=False, budget=Budget(tokens=20))
    llm.generate("a")  # 15 tokens
    llm.generate("b")  # 30: over after this one
    with pytest.raises(BudgetExhaustedError, match="token"):
        llm.generate("c")
