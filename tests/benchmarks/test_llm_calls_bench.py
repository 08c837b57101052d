"""Smoke test of benchmarks/llm_calls.py (coreopt alone: CI has no anchor environment)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.slow
def test_llm_calls_benchmark_quick_smoke() -> None:
    pytest.importorskip("openai")
    proc = subprocess.run(
        [sys.executable, str(BENCH_DIR / "llm_calls.py"), "--quick", "--skip-anchors"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=BENCH_DIR.parent,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    assert "### Value-call throughput against a server with 50 ms latency" in out
    assert "### Calls for the same accuracy on the retrieval task" in out
    for conc in (1, 8):
        assert f"| concurrency {conc} | coreopt LLM" in out
        assert f"| concurrency {conc} | ideal (concurrency ÷ latency)" in out
    assert "| retrieval n=8 seed=0" in out
    assert "skipped: --skip-anchors" in out
    assert "appended to" not in out


def test_retrieval_game_scores_the_prompt_it_is_given() -> None:
    sys.path.insert(0, str(BENCH_DIR))
    try:
        from llm_calls import RetrievalGame

        from coreopt.credit.assign import build_prompt
    finally:
        sys.path.remove(str(BENCH_DIR))
    game = RetrievalGame.make(8, 0)
    sources = list(game.sources().items())
    assert game.table.max() == 0.0  # log-probabilities: every value <= 0
    assert sorted(set(game.kinds)) == ["distractor", "gold", "paraphrase", "two-fact"]
    for mask in (0, 1, 5, 0b10110001, (1 << 8) - 1):
        prompt = build_prompt(game.QUERY, [s for i, s in enumerate(sources) if mask >> i & 1])
        assert game.score(str(prompt), game.REFERENCE) == game.table[mask]
    gold = [i for i, k in enumerate(game.kinds) if k == "gold"]
    assert all(game.table[1 << i] > game.table[0] for i in gold)
