"""Credits that cannot be silently wrong: repeated samples are averaged (checked against numbers
worked out by hand), a server's log-probabilities are self-tested before a solve, checkpoints per
query, and budget messages that say what was kept."""

from __future__ import annotations

import math
import re

import pytest

from coreopt.credit import assign
from coreopt.errors import BudgetExhaustedError
from coreopt.llm import LLM, BadScoresError, Budget, CallableBackend, Completion, Decoding
from coreopt.llm.types import UnsupportedOperationError, as_text


class SeededAnswers:
    """Answers ``k * (1 + seed % 3)`` for ``k`` sources in context; as a judge, rates an answer
    by its number. Samples 0, 1, 2 (seeds 0, 1, 2) answer k, 2k, 3k: mean 2k, standard error
    k / sqrt(3)."""

    name = "seeded"
    model = "seeded"
    sdk_retries = False

    async def generate(self, prompt: object, decoding: Decoding) -> Completion:
        text = as_text(prompt)  # type: ignore[arg-type]
        if "Rating:" in text:
            m = re.search(r"\nAnswer: (\d+)", text)
            return Completion(m.group(1) if m else "0")
        k = len(re.findall(r"^\[\d+\]", text, flags=re.M))
        return Completion(str(k * (1 + (decoding.seed or 0) % 3)))

    async def score(self, prompt: object, continuation: str) -> Completion:
        raise UnsupportedOperationError("no scores")

    def is_transient(self, exc: BaseException) -> bool:
        return False


def test_repeated_samples_are_averaged() -> None:
    llm = LLM(SeededAnswers(), cache=False)  # type: ignore[arg-type]
    res = assign("q?", ["a", "b", "c"], llm=llm, judge=llm, samples=3, progress=False)
    q = res.queries[0]
    # v(S) = mean(k, 2k, 3k) = 2k: an additive game paying each source 2 (one sample: 1)
    assert res.credit == pytest.approx({"s1": 2.0, "s2": 2.0, "s3": 2.0})
    for coalition, value in q.values.items():
        k = len(coalition)
        assert value == pytest.approx(2 * k)
        assert q.stderr[coalition] == pytest.approx(k / math.sqrt(3))
    one = assign("q?", ["a", "b", "c"], llm=llm, judge=llm, samples=1, progress=False)
    assert one.credit == pytest.approx({"s1": 1.0, "s2": 1.0, "s3": 1.0})


# -- the self-test before a logprob solve ---------------------------------------------------------


@pytest.mark.parametrize("mode", ["shift_next", "shift_prev", "repeat"])
def test_shifted_server_is_refused_before_the_solve(fake_server, mode) -> None:
    pytest.importorskip("openai")
    from coreopt.llm import OpenAIBackend

    fake_server.score_mode = mode
    backend = OpenAIBackend("fake", base_url=fake_server.url, api_key="k")
    with pytest.raises(BadScoresError, match="self-test"):
        assign("q?", ["a", "b", "c"], llm=backend, cache=False, progress=False)
    assert fake_server.requests == 2  # the two self-test calls, nothing of the solve


def test_aligned_server_passes_and_values_coalitions_in_chatml(fake_server, tmp_path) -> None:
    pytest.importorskip("openai")
    from coreopt.llm import OpenAIBackend

    backend = OpenAIBackend("fake", base_url=fake_server.url, api_key="k")
    res = assign(
        "q?", ["a", "b"], llm=backend, reference="yes", cache=tmp_path / "c.sqlite", progress=False
    )
    # the fake's value of an answer word is -0.5 / (1 + k) with k sources in context
    q = res.queries[0]
    assert q.values[frozenset({"s1", "s2"})] == pytest.approx(-0.5 / 3)
    assert q.values[frozenset()] == pytest.approx(-0.5)
    assert all(b["prompt"].startswith("<|im_start|>system\n") for b in fake_server.bodies)
    paid = fake_server.requests
    assert paid == 2 + 4  # self-test, then the 4 coalitions of 2 sources
    assign("q?", ["a", "b"], llm=backend, reference="yes", cache=tmp_path / "c.sqlite")
    assert fake_server.requests == paid  # values cached, self-test remembered


def test_callables_are_not_self_tested_unless_asked() -> None:
    llm = LLM(CallableBackend(None, lambda p, c: -1.0, model="flat"), cache=False)
    assign("q?", ["a", "b"], llm=llm, reference="r", progress=False)
    with pytest.raises(BadScoresError, match="self-test"):
        assign("q?", ["a", "b"], llm=llm, reference="r", progress=False, verify=True)


# -- checkpoints and budgets --------------------------------------------------------------------


def test_checkpoint_folder_keeps_each_querys_values(tmp_path) -> None:
    calls = {"n": 0}

    def score(prompt: str, continuation: str) -> float:
        calls["n"] += 1
        return -1.0 - prompt.count("[")

    def run(query: str) -> dict[str, float]:
        llm = LLM(CallableBackend(None, score, model="ck"), cache=False)
        res = assign(query, ["a", "b", "c"], llm=llm, reference="r", checkpoint=tmp_path / "ck")
        return {str(k): v for k, v in res.credit.items()}

    first = run("q1?")
    assert calls["n"] == 8
    files = sorted(p.name for p in (tmp_path / "ck").iterdir() if p.suffix == ".sqlite")
    assert len(files) == 1
    assert run("q1?") == first
    assert calls["n"] == 8
    run("q2?")  # another query: its own file, paid for
    assert calls["n"] == 16
    assert len([p for p in (tmp_path / "ck").iterdir() if p.suffix == ".sqlite"]) == 2
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="must be a folder"):
        assign("q?", ["a"], llm=LLM(CallableBackend(None, score)), checkpoint=tmp_path / "file")


def test_zero_budget_pays_nothing_and_says_what_was_kept() -> None:
    calls = {"n": 0}

    def score(prompt: str, continuation: str) -> float:
        calls["n"] += 1
        return -1.0

    llm = LLM(CallableBackend(None, score), cache=False)
    with pytest.raises(BudgetExhaustedError, match="at most 0 paid calls") as info:
        assign("q?", ["a", "b"], llm=llm, reference="r", budget=Budget(calls=0))
    assert "cache is off: no call paid for was kept" in str(info.value)
    assert calls["n"] == 0
