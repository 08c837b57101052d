"""Fan-out of credit assignment over queries: threads, a process pool and a local Ray cluster give
the sequential run's results, share the sqlite cache, and share one LLM budget."""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

import coreopt
from coreopt.credit import assign
from coreopt.llm import LLM, Budget, CallableBackend, SQLiteLedger
from coreopt.status import Status

SOURCES = {
    "wiki": "The Eiffel Tower was completed in 1889.",
    "blog": "Paris is the capital of France.",
    "forum": "Gustave Eiffel's company built the tower.",
    "ad": "Buy cheap flights to Paris!",
    "map": "The tower stands on the Champ de Mars.",
}
QUERIES = [
    "When was the Eiffel Tower completed?",
    "Who built the Eiffel Tower?",
    "Where is the Eiffel Tower?",
    "What is the capital of France?",
]


def answer(prompt: str) -> str:
    return "1889"


def score(prompt: str, continuation: str) -> float:
    """Depends on the query and on which sources are in context (complements, a substitute)."""
    year = "1889" in prompt
    tower = "company built the tower" in prompt
    place = "Champ de Mars" in prompt
    capital = "capital of France" in prompt
    bonus = 0.5 * ("Who built" in prompt) * tower + 0.25 * ("Where" in prompt) * place
    return -6.0 + 2.0 * year + tower + (year and tower) + 0.5 * max(place, capital) + bonus


def make_llm(cache: object = False, budget: Budget | None = None) -> LLM:
    return LLM(CallableBackend(answer, score, model="fanout"), cache=cache, budget=budget)


def same_results(a: coreopt.credit.CreditResult, b: coreopt.credit.CreditResult) -> None:
    assert a.credit == b.credit
    for qa, qb in zip(a.queries, b.queries, strict=True):
        assert qa.query == qb.query
        assert qa.credit == qb.credit
        assert qa.result.value_calls == qb.result.value_calls
        assert qa.result.epsilon == qb.result.epsilon
    assert a.usage.calls == b.usage.calls


def test_threads_give_the_sequential_results() -> None:
    seq = assign(QUERIES, SOURCES, llm=make_llm(), progress=False)
    par = assign(QUERIES, SOURCES, llm=make_llm(), progress=False, executor="threads")
    same_results(seq, par)
    assert len({tuple(q.credit.values()) for q in seq.queries}) == len(QUERIES)  # distinct games


def spawn_pool(workers: int = 2) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def test_process_pool_shares_the_cache_file_and_the_budget(tmp_path) -> None:
    cache = tmp_path / "c.sqlite"
    seq = assign(QUERIES, SOURCES, llm=make_llm(), progress=False)
    with spawn_pool() as pool:
        first = assign(QUERIES, SOURCES, llm=make_llm(cache), progress=False, executor=pool)
        same_results(seq, first)  # the workers' usage is added to the driver's LLM
        again = assign(QUERIES, SOURCES, llm=make_llm(cache), progress=False, executor=pool)
        assert again.usage.calls == 0
        assert again.usage.cache_hits == seq.usage.calls  # written by the workers, read by all
        assert again.credit == seq.credit

        limited = make_llm(budget=Budget(calls=40))
        res = assign(
            QUERIES, SOURCES, llm=limited, progress=False, executor=pool, mode="approximate"
        )
    assert isinstance(limited.ledger, SQLiteLedger)
    assert limited.ledger.totals()[0] == limited.usage.calls == 40  # one budget for all workers
    assert res.status == Status.BUDGET_EXHAUSTED
    solved = {q.query for q in res.queries}
    assert solved | set(res.unsolved) == set(QUERIES)
    assert solved  # some queries were solved, the rest reported, nothing raised


def test_queries_the_budget_never_reached_are_reported_unsolved() -> None:
    res = assign(
        QUERIES, SOURCES, llm=make_llm(budget=Budget(calls=40)), progress=False, mode="approximate"
    )
    assert res.status == Status.BUDGET_EXHAUSTED
    solved = len(res.queries)
    assert solved >= 1
    assert [q.query for q in res.queries] == QUERIES[:solved]  # sequential: in order
    assert res.unsolved == QUERIES[solved:] != []
    assert "unsolved" in res.table()
    assert res.to_json()["unsolved"] == res.unsolved
    with pytest.raises(coreopt.errors.BudgetExhaustedError, match="before any query"):
        assign(QUERIES, SOURCES, llm=make_llm(budget=Budget(calls=3)), progress=False)


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    from ray import cloudpickle

    this = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(this)  # Ray workers cannot import a test module
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        cloudpickle.unregister_pickle_by_value(this)


@pytest.mark.distributed
def test_ray_fan_out_equals_the_sequential_run(ray_cluster, tmp_path) -> None:
    pids = tmp_path / "pids"

    def traced_score(prompt: str, continuation: str) -> float:  # a closure: cloudpickle ships it
        with open(pids, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        return score(prompt, continuation)

    def llm(cache: object) -> LLM:
        return LLM(CallableBackend(answer, traced_score, model="fanout"), cache=cache)

    seq = assign(QUERIES, SOURCES, llm=llm(False), progress=False)
    pids.unlink()
    cache = tmp_path / "c.sqlite"
    par = assign(QUERIES, SOURCES, llm=llm(cache), progress=False, executor="ray")
    same_results(seq, par)
    workers = {int(p) for p in pids.read_text().split()}
    assert os.getpid() not in workers  # the value calls ran in Ray worker processes
    again = assign(QUERIES, SOURCES, llm=llm(cache), progress=False, executor="ray")
    assert (again.usage.calls, again.usage.cache_hits) == (0, seq.usage.calls)

    limited = LLM(CallableBackend(answer, score, model="fanout"), cache=False)
    limited.budget = Budget(calls=40)
    res = assign(QUERIES, SOURCES, llm=limited, progress=False, executor="ray", mode="approximate")
    assert limited.ledger.totals()[0] == limited.usage.calls == 40
    assert res.status == Status.BUDGET_EXHAUSTED


@pytest.mark.distributed
def test_ray_fan_out_through_the_real_openai_client(ray_cluster, fake_server, tmp_path) -> None:
    pytest.importorskip("openai")
    backend = coreopt.llm.OpenAIBackend("fake", base_url=fake_server.url, api_key="k")
    queries = QUERIES[:3]
    seq = assign(
        queries, SOURCES, llm=backend, judge=backend, cache=tmp_path / "seq.sqlite", progress=False
    )
    paid = fake_server.requests
    cache = tmp_path / "c.sqlite"
    par = assign(
        queries, SOURCES, llm=backend, judge=backend, cache=cache, progress=False, executor="ray"
    )
    same_results(seq, par)
    assert fake_server.requests == 2 * paid  # the workers called the server themselves
    assert par.scoring == "judge"
    for q in par.queries:  # the scripted judge: one point per source in context
        assert q.credit == pytest.approx(dict.fromkeys(SOURCES, 1.0), abs=1e-6)
    assert Path(cache).stat().st_size > 0
