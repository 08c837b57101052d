"""coreopt.credit.assign on scripted LLMs: the loopback OpenAI server, callables, budgets, and a
crash-and-resume run that pays only for the calls not yet cached."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading

import pytest

import coreopt
from coreopt.credit import assign, assign_items, load_items
from coreopt.llm import LLM, Budget, CallableBackend, SQLiteCache
from coreopt.status import Status

SOURCES = {
    "wiki": "The Eiffel Tower was completed in 1889.",
    "blog": "Paris is the capital of France.",
    "forum": "Gustave Eiffel's company built the tower.",
    "ad": "Buy cheap flights to Paris!",
}


def useful_words(prompt: str, continuation: str) -> float:
    """A scripted log-probability: sources mentioning the tower or 1889 make the answer likely,
    with a bonus when both facts are present (complementary sources)."""
    has_year = "1889" in prompt
    has_tower = "company built the tower" in prompt
    return -5.0 + 2.0 * has_year + 1.0 * has_tower + 1.0 * (has_year and has_tower)


def test_logprob_credit_with_a_callable_backend() -> None:
    llm = LLM(CallableBackend(lambda p: "1889", useful_words, model="script"), cache=False)
    res = assign("When was the Eiffel Tower completed?", SOURCES, llm=llm, progress=False)
    q = res.queries[0]
    assert q.result.exact
    assert q.reference == "1889"
    assert sum(res.credit.values()) == pytest.approx(4.0)  # v(N) - v(∅)
    assert res.credit["ad"] == pytest.approx(0.0, abs=1e-6)
    assert res.credit["blog"] == pytest.approx(0.0, abs=1e-6)
    # the least core is {wiki >= 2, forum >= 1, wiki + forum = 4}: egalitarian picks (2, 2)
    assert res.credit["wiki"] >= 2 - 1e-6
    assert res.credit["forum"] >= 1 - 1e-6
    assert q.result.epsilon == pytest.approx(0.0, abs=1e-6)
    assert res.status == Status.CONVERGED
    assert "wiki" in res.table()
    assert "epsilon = 0 (exact)" in res.table() or "epsilon = -0 (exact)" in res.table()
    json.dumps(res.to_json())


def test_an_approximate_certificate_is_never_printed_as_an_interval() -> None:
    # only e* >= epsilon is certified when some coalitions were never evaluated: the table must
    # not print [epsilon, epsilon_upper] as if the true requirement were known to lie inside
    llm = LLM(CallableBackend(lambda p: "1889", useful_words, model="script"), cache=False)
    sources = {**SOURCES, **{f"filler{i}": f"Unrelated note number {i}." for i in range(8)}}
    res = assign(
        "When was the Eiffel Tower completed?",
        sources,
        llm=llm,
        progress=False,
        mode="approximate",
    )
    q = res.queries[0]
    assert not q.result.exact
    line = next(x for x in res.table().splitlines() if x.startswith("query"))
    assert " in [" not in line, line
    assert "NOT certified" in line, line
    assert "e* >= " in line, line


def test_judge_scoring_through_the_real_openai_client(fake_server, tmp_path) -> None:
    pytest.importorskip("openai")
    llm = coreopt.llm.OpenAIBackend("fake", base_url=fake_server.url, api_key="k")
    res = assign(
        "When was the Eiffel Tower completed?",
        SOURCES,
        llm=llm,
        judge=llm,
        cache=tmp_path / "c.sqlite",
        progress=False,
    )
    # the scripted judge rates an answer by the number of sources in its context: additive game
    for sid in SOURCES:
        assert res.credit[sid] == pytest.approx(1.0, abs=1e-6)
    assert res.scoring == "judge"
    paid = fake_server.requests
    # an answer per coalition (the grand coalition's is the full-context answer) and a rating
    # per distinct answer (identical judge prompts are one cached call)
    assert paid == 16 + 5
    again = assign(
        "When was the Eiffel Tower completed?",
        SOURCES,
        llm=llm,
        judge=llm,
        cache=tmp_path / "c.sqlite",
        progress=False,
    )
    assert fake_server.requests == paid  # everything cached
    assert again.credit == res.credit


def test_logprob_scoring_through_the_openai_echo_endpoint(fake_server) -> None:
    pytest.importorskip("openai")
    llm = coreopt.llm.OpenAIBackend("fake", base_url=fake_server.url, api_key="k")
    res = assign("q?", list(SOURCES.values())[:3], llm=llm, cache=False, progress=False)
    vals = list(res.credit.values())
    assert vals == pytest.approx([vals[0]] * 3)  # the scripted score is symmetric
    assert set(res.credit) == {"s1", "s2", "s3"}


def test_llm_budget_ends_with_a_partial_result() -> None:
    llm = LLM(CallableBackend(lambda p: "1889", useful_words), cache=False)
    res = assign(
        "When?", SOURCES, llm=llm, budget=Budget(calls=12), mode="approximate", progress=False
    )
    assert res.status == Status.BUDGET_EXHAUSTED
    assert res.usage.calls == 12
    assert res.queries[0].result.value_calls == 11  # the 12th call was the full-context answer


def test_several_queries_aggregate_credit() -> None:
    llm = LLM(CallableBackend(lambda p: "1889", useful_words), cache=False)
    one = assign("When was it completed?", SOURCES, llm=llm, progress=False)
    two = assign(["When was it completed?", "Who built it?"], SOURCES, llm=llm, progress=False)
    assert len(two.queries) == 2
    for sid in SOURCES:
        assert two.credit[sid] == pytest.approx(sum(q.credit[sid] for q in two.queries), abs=1e-9)
    assert two.credit["wiki"] == pytest.approx(2 * one.credit["wiki"], abs=1e-6)


def test_repeated_samples_report_standard_errors() -> None:
    lock = threading.Lock()
    counter = {"n": 0}

    def noisy_judge(prompt: str) -> str:
        if "Rating" not in prompt:
            return "an answer"
        with lock:
            counter["n"] += 1
            return str(5 + counter["n"] % 3)

    llm = LLM(CallableBackend(noisy_judge), cache=False)
    res = assign("q?", ["a", "b"], llm=llm, judge=llm, samples=3, progress=False)
    q = res.queries[0]
    assert len(q.stderr) == 4
    assert all(se >= 0 for se in q.stderr.values())


def test_load_items_formats(tmp_path) -> None:
    (tmp_path / "a.json").write_text(json.dumps({"query": "q", "sources": ["x", "y"]}))
    (tmp_path / "b.jsonl").write_text(
        json.dumps({"query": "q1", "sources": {"a": "x"}})
        + "\n"
        + json.dumps({"query": "q2", "sources": [{"id": "a", "text": "x"}], "reference": "r"})
    )
    (tmp_path / "c.json").write_text(json.dumps({"queries": ["q1", "q2"], "sources": ["x"]}))
    assert load_items(tmp_path / "a.json")[0].sources == {"s1": "x", "s2": "y"}
    items = load_items(tmp_path / "b.jsonl")
    assert [i.query for i in items] == ["q1", "q2"]
    assert items[1].reference == "r"
    assert len(load_items(tmp_path / "c.json")) == 2
    with pytest.raises(ValueError, match="no queries"):
        assign_items([], llm=lambda p: "x")


CRASHING_RUN = textwrap.dedent(
    """
    import os, sys, threading
    from coreopt.credit import assign
    from coreopt.llm import LLM, CallableBackend
    sys.path.insert(0, {tests!r})
    from test_assign import SOURCES, useful_words
    lock = threading.Lock()
    n = [0]
    def score(prompt, continuation):
        with lock:
            n[0] += 1
            if n[0] > 9:
                os._exit(137)  # killed midway, as by SIGKILL
        return useful_words(prompt, continuation)
    llm = LLM(CallableBackend(lambda p: "1889", score, model="script"), cache={cache!r},
              max_concurrency=1)
    assign("When?", SOURCES, llm=llm, progress=False)
    """
)


def test_crash_and_resume_pays_only_for_uncached_calls(tmp_path) -> None:
    cache = str(tmp_path / "resume.sqlite")
    code = CRASHING_RUN.format(tests=str(__import__("pathlib").Path(__file__).parent), cache=cache)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert proc.returncode == 137, proc.stderr.decode()[-2000:]
    done = len(SQLiteCache(cache))
    assert done == 1 + 9  # the full-context answer and 9 scores survived the crash
    llm = LLM(CallableBackend(lambda p: "1889", useful_words, model="script"), cache=cache)
    res = assign("When?", SOURCES, llm=llm, progress=False)
    fresh = assign(
        "When?",
        SOURCES,
        llm=LLM(CallableBackend(lambda p: "1889", useful_words, model="script"), cache=False),
        progress=False,
    )
    assert res.usage.cache_hits == done
    assert res.usage.calls == fresh.usage.calls - done
    assert res.credit == pytest.approx(fresh.credit)


KILLED_FROM_OUTSIDE = textwrap.dedent(
    """
    import sys, time
    from coreopt.credit import assign
    from coreopt.llm import LLM, CallableBackend
    sys.path.insert(0, {tests!r})
    from test_assign import SIX, slow_words
    llm = LLM(CallableBackend(lambda p: "1889", slow_words, model="slow"), cache={cache!r},
              max_concurrency=4)
    assign("When?", SIX, llm=llm, progress=False)
    """
)
SIX = {**SOURCES, "map": "The tower stands on the Champ de Mars.", "shop": "Souvenirs here."}


def slow_words(prompt: str, continuation: str) -> float:
    import time

    time.sleep(0.05)
    return useful_words(prompt, continuation) + 0.5 * ("Champ de Mars" in prompt)


def test_sigkill_with_calls_in_flight_loses_only_those_calls(tmp_path) -> None:
    import time
    from pathlib import Path

    cache = str(tmp_path / "killed.sqlite")
    code = KILLED_FROM_OUTSIDE.format(tests=str(Path(__file__).parent), cache=cache)
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (Path(cache).exists() and len(SQLiteCache(cache)) >= 20):
            assert proc.poll() is None, "the solve exited before it could be killed"
            assert time.monotonic() < deadline, "the solve never got going"
            time.sleep(0.01)
        proc.kill()  # SIGKILL: no cleanup, four calls in flight
    finally:
        proc.wait(timeout=30)
    done = len(SQLiteCache(cache))
    assert 20 <= done < 1 + 64  # the full answer and some of the 64 coalitions survived
    resumed = assign(
        "When?",
        SIX,
        llm=LLM(CallableBackend(lambda p: "1889", slow_words, model="slow"), cache=cache),
        progress=False,
    )
    assert resumed.usage.cache_hits == done
    assert resumed.usage.calls == 1 + 64 - done  # only what the kill left unpaid
    fresh = assign(
        "When?",
        SIX,
        llm=LLM(CallableBackend(lambda p: "1889", slow_words, model="slow"), cache=False),
        progress=False,
    )
    assert resumed.credit == pytest.approx(fresh.credit)
