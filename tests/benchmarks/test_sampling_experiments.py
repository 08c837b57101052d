"""benchmarks/_sampling_experiments.py: tokenizer, task, training and a smoke run of both sweeps."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from _sampling_experiments import (  # noqa: E402
    ChainSum,
    CharTokenizer,
    HarnessConfig,
    build_setup,
    distillation_sweep,
    fingerprint_sweep,
    tiny_lm,
    train_lm,
)


def test_char_tokenizer_round_trip_and_errors() -> None:
    tok = CharTokenizer("0123456789=,>")
    ids = tok.encode("12=3,4>5", bos=True, eos=True)
    assert ids[0] == tok.bos_token_id
    assert ids[-1] == tok.eos_token_id
    assert tok.decode(ids) == "12=3,4>5"
    assert set(tok.get_vocab().values()) == set(range(len(tok)))
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.encode("x")
    with pytest.raises(ValueError, match="distinct"):
        CharTokenizer("00")


def test_chain_sum_solutions_are_correct_in_any_order() -> None:
    task = ChainSum(4)
    rng = random.Random(0)
    for problem in task.problems(50, seed=1):
        assert len(set(problem)) == 4
        completion = task.solution(problem, rng)
        assert task.correct(problem, completion)
        assert len(completion) == task.max_new_tokens
        text = task.tokenizer.decode(completion)
        operands = [int(step[0]) for step in text.split(">")[0].split(",")]
        assert sorted(operands) == sorted(problem)
    assert task.answer(task.tokenizer.encode("12,34")) is None
    assert not task.correct((1, 2, 3, 4), task.tokenizer.encode("11>9"))
    with pytest.raises(ValueError, match="operands"):
        ChainSum(1)


def test_train_lm_lowers_the_completion_loss() -> None:
    task = ChainSum(2)
    traces = task.reference_traces(task.problems(64, seed=0), seed=0)
    model = tiny_lm(
        len(task.tokenizer),
        {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1},
        seed=0,
    )
    losses = train_lm(model, traces, steps=40, batch_size=16, lr=1e-2, warmup=5)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    assert not model.training


@pytest.mark.slow
def test_quick_harness_runs_end_to_end_and_its_numbers_move_the_right_way() -> None:
    torch.manual_seed(0)
    config = HarnessConfig.quick()
    setup = build_setup(config)
    points = distillation_sweep(setup, config, lams=(0.0, 0.7), temperatures=(1.5,))
    assert [p.method for p in points] == ["ads", "ads", "temperature"]
    assert all(len(p.student_accuracies) == config.student_seeds for p in points)
    assert all(0 <= p.teacher_accuracy <= 1 for p in points)
    plain, ads = points[0], points[1]
    assert (plain.param, ads.param) == (0.0, 0.7)
    # λ > 0 poisons the traces: the teacher's accuracy on them falls, and so do its students'.
    # (The quick models are barely trained; these are directions, not the paper's effect sizes.)
    assert ads.teacher_accuracy < plain.teacher_accuracy
    mean = sum(ads.student_accuracies) / len(ads.student_accuracies)
    assert mean <= sum(plain.student_accuracies) / len(plain.student_accuracies)
    fps = fingerprint_sweep(setup, config, adfp_lams=(64.0,), kgw_biases=(2.0,), hf_kgw_biases=())
    assert [p.method for p in fps] == ["adfp", "kgw"]
    assert all(p.log10_p_text <= 0 for p in fps)
    # Both marks are in the teacher's text (hundreds of scored tokens: p far below 1e-5).
    assert all(p.log10_p_text < -5 for p in fps), [p.log10_p_text for p in fps]
