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


def test_retries_429_and_500_are_counted_as_http_attempts(fake_server) -> None:
    fake_server.fail = [429, 500]
    llm = LLM(backend(fake_server), retries=3, retry_delay=0.01, cache=False)
    assert llm.generate("hi").text == "answer citing 0 sources"
    assert fake_server.requests == 3
    # every HTTP attempt is a paid call (the SDK makes no retries of its own)
    assert (llm.usage.calls, llm.usage.retries, llm.usage.failures) == (3, 2, 0)


def test_persistent_failure_raises_and_never_falls_back(fake_server) -> None:
    fake_server.fail = [500] * 10
    llm = LLM(backend(fake_server), retries=3, retry_delay=0.0, cache=False)
    with pytest.raises(LLMError, match=r"127\.0\.0\.1.*failed after 4 HTTP request\(s\)"):
        llm.generate("hi")
    assert fake_server.requests == 4
    assert (llm.usage.calls, llm.usage.retries, llm.usage.failures) == (4, 3, 1)


def test_sdk_retries_when_asked_are_said_to_be_uncounted(fake_server) -> None:
    fake_server.fail = [500] * 10
    llm = LLM(backend(fake_server, max_retries=1), cache=False)
    with pytest.raises(LLMError, match="SDK's own retries, not counted"):
        llm.generate("hi")
    assert fake_server.requests == 2


def test_concurrency_limit_is_respected(fake_server) -> None:
    fake_server.delay = 0.05
    llm = LLM(backend(fake_server), max_concurrency=3, cache=False, adaptive=False)

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


def test_token_budget_reserves_before_dispatch(fake_server) -> None:
    llm = LLM(backend(fake_server), cache=False, budget=Budget(tokens=120))
    small = Decoding(max_tokens=5)
    need = llm.reservation("a", new_tokens=5)  # 1 + 4 bytes ("user") + template + max_tokens
    assert need == 5 + 16 + 8 + 5
    llm.generate("a", small)  # 15 tokens billed
    llm.generate("b", small)  # 30
    llm.generate("c", small)  # 45
    with pytest.raises(BudgetExhaustedError, match="token"):
        llm.generate("d", Decoding(max_tokens=90))  # 45 + 5 + 24 + 90 > 120: never dispatched
    assert fake_server.requests == 3
    assert llm.ledger.totals() == (3, 45, 0)


def burst(llm: LLM, n: int) -> list[object]:
    async def go() -> list[object]:
        return await asyncio.gather(
            *(llm.agenerate(f"question {i}", Decoding(max_tokens=5)) for i in range(n)),
            return_exceptions=True,
        )

    return asyncio.run(go())


def test_token_budget_is_never_exceeded_at_high_concurrency(fake_server) -> None:
    fake_server.delay = 0.05
    budget = 3000  # 200 calls of 15 tokens; each reserves 45
    llm = LLM(
        backend(fake_server),
        max_concurrency=64,
        cache=False,
        budget=Budget(tokens=budget),
        adaptive=False,  # a fixed limit: the calls all run at once
    )
    outs = burst(llm, 300)
    done = [o for o in outs if not isinstance(o, BaseException)]
    assert all(isinstance(o, BudgetExhaustedError) for o in outs if isinstance(o, BaseException))
    _, spent, reserved = llm.ledger.totals()
    assert reserved == 0
    assert spent == llm.usage.tokens == 15 * len(done) == 15 * fake_server.requests
    assert spent <= budget
    assert fake_server.max_in_flight > 32  # the calls really ran concurrently
    need = llm.reservation("question 299", new_tokens=5)
    assert spent > budget - need  # refused only when spent tokens leave no room: little unused


def test_token_overshoot_is_bounded_by_the_calls_in_flight(fake_server) -> None:
    """A server billing more than reserved (an unusual tokenizer) overshoots the budget by at
    most the excess of the calls in flight, as documented on Budget."""
    fake_server.delay = 0.05
    fake_server.prompt_tokens = 100  # the reservation assumed about 25 for the prompt
    llm = LLM(
        backend(fake_server),
        max_concurrency=16,
        cache=False,
        budget=Budget(tokens=1000),
        adaptive=False,
    )
    burst(llm, 200)
    _, spent, reserved = llm.ledger.totals()
    excess = 105 - llm.reservation("question 199", new_tokens=5)
    assert excess > 0
    assert reserved == 0
    assert 1000 < spent <= 1000 + llm.max_concurrency * excess


def test_failed_and_retried_calls_release_their_reservation(fake_server) -> None:
    fake_server.fail = [500] * 3
    llm = LLM(backend(fake_server), retries=0, cache=False, budget=Budget(tokens=10_000))
    for _ in range(3):
        with pytest.raises(LLMError):
            llm.generate("x")
    assert llm.ledger.totals() == (3, 0, 0)
    llm.generate("x")
    assert llm.ledger.totals() == (4, 15, 0)


def test_backend_pickles_without_clients_and_without_the_environment_key(
    fake_server, monkeypatch
) -> None:
    import pickle

    monkeypatch.setenv("OPENAI_API_KEY", "env-secret")
    llm = LLM(OpenAIBackend("fake-model", base_url=fake_server.url), cache=False)
    llm.generate("warm up")  # builds an SDK client bound to that loop
    blob = pickle.dumps(llm)
    assert b"env-secret" not in blob  # read again from the environment where the copy runs
    copy = pickle.loads(blob)
    assert copy.generate("hi").text == "answer citing 0 sources"
    assert fake_server.bodies[-1]["model"] == "fake-model"
    given = OpenAIBackend("m", base_url=fake_server.url, api_key="given")
    assert b"given" in pickle.dumps(given)  # an explicit key travels with the copy
