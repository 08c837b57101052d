"""Detection: Hoeffding p-values, null behaviour (wrong key, clean student), vocab mapping."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import BOS, EOS, PAD, VOCAB, tiny_llama

from coreopt.sampling import (
    FingerprintLogitsProcessor,
    HashGreenList,
    KGWLogitsProcessor,
    Trace,
    VocabMapping,
    detect,
    detect_tokens,
    generate,
    hoeffding_p_value,
)

SPECIALS = (PAD, BOS, EOS)


def _prompts(n: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [[BOS, *torch.randint(3, VOCAB, (3,), generator=g).tolist()] for _ in range(n)]


@pytest.fixture(scope="module")
def fingerprinted() -> list[Trace]:
    torch.set_num_threads(1)  # module-scoped: runs before the per-test thread fixture
    teacher, proxy = tiny_llama(0), tiny_llama(1)
    proc = FingerprintLogitsProcessor(proxy, key="k", lam=300.0, special_token_ids=SPECIALS)
    out = generate(
        teacher, _prompts(48), processor=proc, max_new_tokens=24, seed=0, eos_token_id=[]
    )
    return out.traces()


def test_hoeffding_p_value() -> None:
    assert hoeffding_p_value(0.4, 50, 0.5) == (1.0, 0.0)
    p, lp = hoeffding_p_value(0.7, 50, 0.5)
    assert p == pytest.approx(math.exp(-4.0))
    assert lp == pytest.approx(-4.0 / math.log(10))
    p, lp = hoeffding_p_value(1.0, 10**6, 0.5)
    assert p == 0.0  # underflows ...
    assert lp == pytest.approx(-2 * 10**6 * 0.25 / math.log(10))  # ... but log10 p is exact


def test_fingerprinted_text_is_detected_and_the_wrong_key_is_not(fingerprinted: list) -> None:
    right = detect_tokens(HashGreenList("k", VOCAB, special_token_ids=SPECIALS), fingerprinted)
    wrong = detect_tokens(HashGreenList("k2", VOCAB, special_token_ids=SPECIALS), fingerprinted)
    assert right.log10_p < -5
    assert right.mean_green > 0.6
    assert wrong.p_value > 0.05
    assert right.n <= VOCAB * VOCAB  # grouped by seeding bigram
    assert 40 * 24 < right.contexts <= 48 * 24  # special tokens are not scored


def test_a_clean_student_gives_no_evidence(fingerprinted: list) -> None:
    student = tiny_llama(5)  # never trained on anything
    green = HashGreenList("k", VOCAB, special_token_ids=SPECIALS)
    for mode in ("probabilities", "samples"):
        res = detect(student, green, fingerprinted, mode=mode)  # type: ignore[arg-type]
        assert res.p_value > 0.05, res
        assert res.n > 100


def test_vocab_mapping_gives_the_same_answer_for_a_permuted_student(fingerprinted: list) -> None:
    """A student whose tokenizer is a permutation of the teacher's, mapped through strings."""
    student = tiny_llama(5)
    green = HashGreenList("k", VOCAB, special_token_ids=SPECIALS)
    base = detect(student, green, fingerprinted)
    perm = torch.randperm(VOCAB, generator=torch.Generator().manual_seed(3))  # teacher -> student
    inv = torch.argsort(perm)  # student -> teacher
    permuted = tiny_llama(5)
    with torch.no_grad():  # same function, rows permuted
        permuted.model.embed_tokens.weight.copy_(student.model.embed_tokens.weight[inv])
        permuted.lm_head.weight.copy_(student.lm_head.weight[inv])
    traces = [
        Trace(perm[list(t.prompt)].tolist(), perm[list(t.completion)].tolist())
        for t in fingerprinted
    ]
    mapped = detect(permuted, green, traces, vocab_mapping=VocabMapping(inv, VOCAB))
    assert mapped.n == base.n
    assert mapped.mean_green == pytest.approx(base.mean_green, abs=1e-5)


def test_kgw_traces_are_detected_with_the_same_detector() -> None:
    teacher = tiny_llama(0)
    proc = KGWLogitsProcessor(VOCAB, bias=4.0, gamma=0.5, key=7)
    out = generate(
        teacher, _prompts(32), processor=proc, max_new_tokens=24, seed=0, eos_token_id=[]
    )
    res = detect_tokens(proc.green_list, out.traces())
    assert res.log10_p < -5
    assert res.gamma == 0.5


def test_entropy_filter_keeps_the_null_and_drops_contexts(fingerprinted: list) -> None:
    student = tiny_llama(5)
    green = HashGreenList("k", VOCAB, special_token_ids=SPECIALS)
    every = detect(student, green, fingerprinted)
    # an untrained student is near uniform over 37 eligible tokens: entropy close to log(37)
    assert detect(student, green, fingerprinted, min_entropy=1.0).contexts == every.contexts
    none = detect(student, green, fingerprinted, min_entropy=10.0)
    assert none.contexts == 0
    assert none.p_value == 1.0
    probs = torch.softmax(student(torch.tensor([list(fingerprinted[0].ids)])).logits[0], -1)
    eligible = probs[:, 3:] / probs[:, 3:].sum(-1, keepdim=True)
    median = float((-(eligible * eligible.log()).sum(-1)).median())
    some = detect(student, green, fingerprinted, min_entropy=median)
    assert 0 < some.contexts < every.contexts
    assert some.p_value > 0.05
    with pytest.raises(ValueError, match="min_entropy"):
        detect(student, green, fingerprinted, min_entropy=-1.0)
