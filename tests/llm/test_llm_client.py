"""The shared LLM wrapper over the callable backend: cache keys, in-flight merge, retries,
budgets, samples, sync use inside a running loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from coreopt.errors import BudgetExhaustedError
from coreopt.llm import (
    LLM,
    Budget,
    CallableBackend,
    Decoding,
    LLMError,
    SQLiteCache,
    make_backend,
    mean_and_stderr,
)
from coreopt.llm.cache import CacheKey, coalition_key


def counting(answer: str = "ok"):
    calls: list[str] = []
    lock = threading.Lock()

    def fn(prompt: str) -> str:
        with lock:
            calls.append(prompt)
        return answer

    return fn, calls


def test_cache_key_is_order_free_and_separates_every_field(tmp_path) -> None:
    assert coalition_key(["b", "a"]) == coalition_key(("a", "b")) == '["a", "b"]'
    base = CacheKey("openai", "m", "t", coalition_key("ab"), Decoding().key(), "generate")
    variants = [
        CacheKey("anthropic", "m", "t", base.coalition, base.params, "generate"),
        CacheKey("openai", "m2", "t", base.coalition, base.params, "generate"),
        CacheKey("openai", "m", "t2", base.coalition, base.params, "generate"),
        CacheKey("openai", "m", "t", coalition_key("a"), base.params, "generate"),
        CacheKey("openai", "m", "t", base.coalition, Decoding(max_tokens=3).key(), "generate"),
        CacheKey("openai", "m", "t", base.coalition, base.params, "score"),
        CacheKey("openai", "m", "t", base.coalition, base.params, "generate", sample=1),
    ]
    assert len({base.digest, *(v.digest for v in variants)}) == 1 + len(variants)
    cache = SQLiteCache(tmp_path / "x.sqlite")
    assert cache._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_cache_persists_across_instances(tmp_path) -> None:
    fn, calls = counting()
    path = tmp_path / "c.sqlite"
    LLM(CallableBackend(fn, model="m"), cache=path).generate("p", coalition=["y", "x"])
    again = LLM(CallableBackend(fn, model="m"), cache=path)
    assert again.generate("p", coalition=["x", "y"]).text == "ok"
    assert len(calls) == 1
    assert again.usage.cache_hits == 1
    assert SQLiteCache(path).rows()[0]["coalition"] == '["x", "y"]'


def test_identical_in_flight_requests_are_merged() -> None:
    gate = asyncio.Event()
    calls = []

    async def slow(prompt: str) -> str:
        calls.append(prompt)
        await gate.wait()
        return "done"

    llm = LLM(CallableBackend(slow, model="slow"), cache=False)

    async def run() -> list[str]:
        tasks = [asyncio.create_task(llm.agenerate("same")) for _ in range(6)]
        tasks.append(asyncio.create_task(llm.agenerate("other")))
        await asyncio.sleep(0.05)
        gate.set()
        return [(await t).text for t in tasks]

    assert asyncio.run(run()) == ["done"] * 7
    assert sorted(calls) == ["other", "same"]
    assert llm.usage.merged == 5


def test_transient_errors_are_retried_with_backoff() -> None:
    attempts = []

    def flaky(prompt: str) -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("reset")
        return "fine"

    llm = LLM(CallableBackend(flaky), cache=False, retries=3, retry_delay=0.001)
    assert llm.generate("p").text == "fine"
    assert llm.usage.retries == 2


def test_failures_are_raised_not_swallowed() -> None:
    def broken(prompt: str) -> str:
        raise ConnectionError("down")

    llm = LLM(CallableBackend(broken), cache=False, retries=1, retry_delay=0.001)
    with pytest.raises(LLMError, match="after 2 attempt"):
        llm.generate("p")

    def bug(prompt: str) -> str:
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):  # a bug is not retried
        LLM(CallableBackend(bug), cache=False, retries=3).generate("p")


def test_budgets_on_calls_count_only_paid_calls(tmp_path) -> None:
    fn, calls = counting()
    llm = LLM(CallableBackend(fn), cache=tmp_path / "c.sqlite", budget=Budget(calls=2))
    llm.generate("a")
    llm.generate("a")  # cached: free
    llm.generate("b")
    with pytest.raises(BudgetExhaustedError):
        llm.generate("c")
    assert len(calls) == 2
    with pytest.raises(ValueError, match="calls"):
        Budget(calls=-1)


def test_async_score_function_and_sync_api_inside_a_running_loop() -> None:
    async def score(prompt: str, continuation: str) -> float:
        return -float(len(continuation))

    llm = LLM(CallableBackend(None, score, model="len"), cache=False)

    async def inside_loop() -> float:
        out = llm.score("p", "abc")  # sync API while a loop runs (as in Jupyter)
        assert out.logprob is not None
        return out.logprob

    assert asyncio.run(inside_loop()) == -3.0


def test_make_backend_specs(monkeypatch) -> None:
    monkeypatch.delenv("COREOPT_LLM_BASE_URL", raising=False)
    monkeypatch.delenv("COREOPT_LLM_MODEL", raising=False)
    assert isinstance(make_backend(lambda p: "x"), CallableBackend)
    with pytest.raises(ValueError, match="unknown"):
        make_backend("nope")
    with pytest.raises(TypeError):
        make_backend(42)  # type: ignore[arg-type]


def test_mean_and_stderr() -> None:
    assert mean_and_stderr([2.0]) == (2.0, 0.0)
    m, se = mean_and_stderr([1.0, 2.0, 3.0])
    assert m == 2.0
    assert se == pytest.approx(1 / 3**0.5)
