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
    Completion,
    Decoding,
    LLMError,
    SQLiteCache,
    SQLiteLedger,
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


class InFlight:
    """An async backend function that records how many calls run at once."""

    def __init__(self, delay: float = 0.02) -> None:
        self.delay = delay
        self.now = 0
        self.peak = 0
        self.calls = 0
        self.lock = threading.Lock()

    async def __call__(self, prompt: str) -> str:
        with self.lock:
            self.now += 1
            self.calls += 1
            self.peak = max(self.peak, self.now)
        try:
            await asyncio.sleep(self.delay)
        finally:
            with self.lock:
                self.now -= 1
        return "ok"


def test_concurrency_limit_holds_across_threads_and_loops() -> None:
    fn = InFlight()
    llm = LLM(CallableBackend(fn, model="inflight"), max_concurrency=3, cache=False)

    async def many(tag: int) -> None:
        await asyncio.gather(*(llm.agenerate(f"{tag}-{i}") for i in range(8)))

    threads = [threading.Thread(target=asyncio.run, args=(many(t),)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fn.calls == 32
    assert fn.peak == 3  # one limit for the object, not one per event loop


def test_cancelled_waiters_give_their_slot_back() -> None:
    fn = InFlight(delay=0.05)
    llm = LLM(CallableBackend(fn, model="inflight"), max_concurrency=2, cache=False)

    async def run() -> None:
        tasks = [asyncio.create_task(llm.agenerate(f"p{i}")) for i in range(6)]
        await asyncio.sleep(0.01)
        for t in tasks[1:5]:  # one running call and three waiting ones
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # every slot is free again: two calls run at once
        fn.peak = 0
        await asyncio.gather(*(llm.agenerate(f"q{i}") for i in range(4)))

    asyncio.run(run())
    assert fn.peak == 2
    assert llm.ledger.totals()[2] == 0


def test_identical_calls_merge_across_event_loops() -> None:
    gate = threading.Event()
    calls = []

    def slow(prompt: str) -> str:
        calls.append(prompt)
        gate.wait(5)
        return "done"

    llm = LLM(CallableBackend(slow, model="slow"), cache=False)
    out: list[str] = []
    threads = [
        threading.Thread(target=lambda: out.append(llm.generate("same").text)) for _ in range(3)
    ]
    for t in threads:
        t.start()
    while llm.usage.merged < 2:
        threading.Event().wait(0.005)
    gate.set()
    for t in threads:
        t.join()
    assert out == ["done"] * 3
    assert calls == ["same"]


def test_a_cancelled_owner_hands_the_call_to_a_waiter() -> None:
    fn = InFlight(delay=0.05)
    llm = LLM(CallableBackend(fn, model="inflight"), cache=False)

    async def run() -> str:
        owner = asyncio.create_task(llm.agenerate("same"))
        await asyncio.sleep(0.01)
        waiter = asyncio.create_task(llm.agenerate("same"))
        await asyncio.sleep(0.01)
        owner.cancel()
        return (await waiter).text

    assert asyncio.run(run()) == "ok"
    assert fn.calls == 2


def test_token_reservations_wait_for_calls_in_flight() -> None:
    def billed(prompt: str) -> Completion:
        return Completion(text="ok", prompt_tokens=3, completion_tokens=2)

    llm = LLM(
        CallableBackend(billed, model="billed"),
        cache=False,
        max_concurrency=16,
        budget=Budget(tokens=200),
    )
    need = llm.reservation("p00", new_tokens=4)
    assert need == 3 + 4 + 16 + 8 + 4

    async def run() -> list[object]:
        return await asyncio.gather(
            *(llm.agenerate(f"p{i:02d}", Decoding(max_tokens=4)) for i in range(60)),
            return_exceptions=True,
        )

    outs = asyncio.run(run())
    ok = [o for o in outs if isinstance(o, Completion)]
    assert all(isinstance(o, BudgetExhaustedError) for o in outs if not isinstance(o, Completion))
    _, spent, reserved = llm.ledger.totals()
    assert (spent, reserved) == (5 * len(ok), 0)
    assert 200 - need < spent <= 200  # waited rather than refused while reservations were held


def test_budget_validation_and_exact_reservation_hook() -> None:
    with pytest.raises(ValueError, match="bytes_per_token"):
        Budget(bytes_per_token=0)
    with pytest.raises(ValueError, match="tokens"):
        Budget(tokens=1.5)  # type: ignore[arg-type]

    class Counted(CallableBackend):
        def count_tokens(self, prompt: object, continuation: str = "") -> int:
            return 7 + len(continuation)

    llm = LLM(Counted(lambda p: "x"), cache=False, budget=Budget(tokens=10))
    assert llm.reservation("anything", new_tokens=2) == 9
    assert llm.reservation("anything", new_tokens=1, continuation="ab") == 10
    llm.generate("p", Decoding(max_tokens=3))  # 7 + 3 fits exactly
    with pytest.raises(BudgetExhaustedError):
        llm.generate("q", Decoding(max_tokens=4))


def shout(prompt: str) -> str:
    return prompt.upper()


def test_pickled_copy_shares_cache_and_budget(tmp_path) -> None:
    import pickle

    path = tmp_path / "c.sqlite"
    llm = LLM(CallableBackend(shout, model="shout"), cache=path, budget=Budget(calls=3))
    llm.generate("a")
    copy = pickle.loads(pickle.dumps(llm))
    assert copy.is_copy
    assert not llm.is_copy
    assert isinstance(llm.ledger, SQLiteLedger)  # moved to the cache file when pickled
    assert copy.ledger.path == str(path) == copy.cache.path
    assert copy.generate("a").text == "A"  # the original's cached answer
    assert copy.usage.cache_hits == 1
    copy.generate("b")
    llm.generate("c")
    with pytest.raises(BudgetExhaustedError):
        copy.generate("d")  # three calls in all: the original's two and the copy's one
    assert llm.ledger.totals()[0] == 3
    assert (llm.usage.calls, copy.usage.calls) == (2, 1)


def test_budget_ledger_is_shared_by_processes(tmp_path) -> None:
    import multiprocessing
    import pickle
    from concurrent.futures import ProcessPoolExecutor

    llm = LLM(CallableBackend(shout, model="shout"), cache=False, budget=Budget(calls=10))
    blob = pickle.dumps(llm)  # a temporary ledger file, since there is no cache file
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(3, mp_context=ctx) as pool:
        paid = list(pool.map(_spend, [blob] * 3, [f"w{i}" for i in range(3)]))
    assert sum(paid) == 10
    assert llm.ledger.totals()[0] == 10


def _spend(blob: bytes, tag: str) -> int:
    import pickle

    copy = pickle.loads(blob)
    for i in range(10):
        try:
            copy.generate(f"{tag}-{i}")
        except BudgetExhaustedError:
            break
    return int(copy.usage.calls)
