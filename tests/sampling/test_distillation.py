"""End to end: a student distilled on fingerprinted traces is detected; a clean one is not."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import BOS, EOS, PAD, tiny_llama

from coreopt.sampling import (
    FingerprintLogitsProcessor,
    HashGreenList,
    detect,
    detect_tokens,
    generate,
)

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))
from _sampling_experiments import train_lm  # noqa: E402

VOCAB = 12  # 9 ordinary tokens: about 80 bigram contexts, each seen many times
SPECIALS = (PAD, BOS, EOS)


def _traces(lam: float, seed: int) -> list:
    teacher, proxy = tiny_llama(10, vocab=VOCAB), tiny_llama(11, vocab=VOCAB)
    proc = FingerprintLogitsProcessor(proxy, key="k", lam=lam, special_token_ids=SPECIALS)
    g = torch.Generator().manual_seed(seed)
    prompts = [[BOS, *torch.randint(3, VOCAB, (2,), generator=g).tolist()] for _ in range(128)]
    out = generate(teacher, prompts, processor=proc, max_new_tokens=24, seed=seed, eos_token_id=[])
    return out.traces()


@pytest.mark.slow
def test_distilled_student_is_detected_and_clean_student_and_wrong_key_are_not() -> None:
    green = HashGreenList("k", VOCAB, special_token_ids=SPECIALS)
    wrong = HashGreenList("not-k", VOCAB, special_token_ids=SPECIALS)
    marked = _traces(lam=200.0, seed=0)
    clean = _traces(lam=0.0, seed=0)
    results = {}
    for name, traces in (("marked", marked), ("clean", clean)):
        student = tiny_llama(12, vocab=VOCAB)
        train_lm(student, traces, steps=120, batch_size=32, lr=1e-2, seed=0)
        results[name] = detect(student, green, traces)
        results[name + "-wrong"] = detect(student, wrong, traces)
        results[name + "-samples"] = detect(student, green, traces, mode="samples")
        # unsupervised contexts: the student's own fresh generations, scored as text (black box)
        fresh = generate(
            student,
            [list(t.prompt) for t in traces],
            max_new_tokens=24,
            seed=1,
            eos_token_id=[],
        ).traces()
        results[name + "-fresh"] = detect_tokens(green, fresh)
    assert results["marked"].log10_p < -3, results["marked"]
    assert results["marked-samples"].log10_p < -2, results["marked-samples"]
    assert results["marked-fresh"].log10_p < -2, results["marked-fresh"]
    for name in ("clean", "clean-wrong", "marked-wrong", "clean-samples", "clean-fresh"):
        assert results[name].p_value > 0.05, (name, results[name])
