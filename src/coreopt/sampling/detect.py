"""Was a *model* trained on fingerprinted text? A one-sided test on its green-token mass.

For each scored context ``c`` a student gives a score ``s_c ∈ [0, 1]``:

* open weight (``mode="probabilities"``): ``s_c = p(S(c) | c) / p(E | c)``, the student's
  probability of the green list ``S(c)`` renormalised over the eligible tokens ``E`` (tokens that
  can be green and, across tokenizers, have a teacher counterpart);
* black box (``mode="samples"`` or :func:`detect_tokens`): ``s_c = 1[t_c ∈ S(c)]`` for a token
  ``t_c`` the student produced (contexts whose token is not eligible are skipped).

Contexts sharing a seeding n-gram share a green list, so they are grouped by n-gram and each
group contributes one score (the mean over its contexts). Under the null hypothesis (the student
never saw text fingerprinted with this key) each green list is independent of the student and
``E[s] = γ``; with ``n`` distinct n-grams and mean ``ḡ``, Hoeffding's inequality gives the
p-value ``p = exp(−2n(ḡ − γ)²)`` when ``ḡ > γ`` (and 1 otherwise). Contexts are *supervised*
when they come from the student's training traces, *unsupervised* when they are fresh
generations of the student (``generate(student, prompts).traces()``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from tqdm.auto import tqdm

from coreopt.sampling._checks import check_choice, check_real
from coreopt.sampling._models import model_device, output_vocab_size
from coreopt.sampling.greenlist import GreenList, VocabMapping, unique_first
from coreopt.sampling.traces import TraceLike, as_traces, pad_right


@dataclass(frozen=True)
class DetectionResult:
    """Outcome of a fingerprint test.

    Attributes:
        p_value: Hoeffding p-value of "the student was not trained on fingerprinted text".
        log10_p: ``log10(p_value)`` (exact even when ``p_value`` underflows to 0).
        mean_green: ``ḡ``, the mean score over distinct n-grams.
        gamma: the chance rate ``γ`` of the green list.
        n: distinct seeding n-grams scored.
        contexts: contexts scored before grouping by n-gram.
        mode: ``"probabilities"``, ``"samples"`` or ``"tokens"``.
    """

    p_value: float
    log10_p: float
    mean_green: float
    gamma: float
    n: int
    contexts: int
    mode: str

    def detected(self, alpha: float = 0.01) -> bool:
        """Whether the test rejects at level ``alpha``."""
        return self.p_value < alpha

    def __str__(self) -> str:
        return (
            f"DetectionResult(log10 p = {self.log10_p:.2f}, mean green = {self.mean_green:.4f} "
            f"vs γ = {self.gamma:.4f}, n = {self.n} n-grams from {self.contexts} contexts, "
            f"{self.mode})"
        )


def hoeffding_p_value(mean: float, n: int, gamma: float) -> tuple[float, float]:
    """``(p, log10 p)`` with ``p = exp(−2n(mean − γ)²)`` if ``mean > γ``, else ``(1, 0)``.

    Examples:
        >>> hoeffding_p_value(0.5, 100, 0.5)
        (1.0, 0.0)
        >>> p, lp = hoeffding_p_value(0.6, 100, 0.5)
        >>> round(lp, 3), round(p, 4)
        (-0.869, 0.1353)
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n == 0 or not mean > gamma:
        return 1.0, 0.0
    exponent = -2.0 * n * (mean - gamma) ** 2
    return math.exp(exponent), exponent / math.log(10.0)


def _result(
    scores: list[float], keys: list[tuple[int, ...]], gamma: float, mode: str
) -> DetectionResult:
    groups = unique_first(keys)
    per_group = [sum(scores[i] for i in idx) / len(idx) for idx in groups.values()]
    n = len(per_group)
    mean = sum(per_group) / n if n else float("nan")
    p, lp = hoeffding_p_value(mean, n, gamma) if n else (1.0, 0.0)
    return DetectionResult(p, lp, mean, gamma, n, len(scores), mode)


def _student_tables(
    green_list: GreenList, mapping: VocabMapping | None, student_width: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(to_teacher, valid)`` over the student's vocabulary (``valid``: eligible and mapped)."""
    if mapping is None:
        n = min(student_width, green_list.vocab_size)
        to_teacher = torch.full((student_width,), -1, dtype=torch.long)
        to_teacher[:n] = torch.arange(n)
    else:
        if mapping.teacher_vocab_size != green_list.vocab_size:
            raise ValueError(
                f"the vocabulary mapping targets {mapping.teacher_vocab_size} teacher tokens but "
                f"the green list has {green_list.vocab_size}"
            )
        to_teacher = torch.full((student_width,), -1, dtype=torch.long)
        k = min(student_width, mapping.student_vocab_size)
        to_teacher[:k] = mapping.to_teacher[:k]
    to_teacher = to_teacher.to(device)
    eligible = green_list.eligible(device)
    valid = (to_teacher >= 0) & eligible[to_teacher.clamp(min=0)]
    return to_teacher, valid


def _contexts(
    ids: torch.Tensor, prompt_len: int, total_len: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions ``i`` whose logits predict a completion token, and their ``(·, w)`` n-grams."""
    pos = torch.arange(prompt_len - 1, total_len - 1, device=ids.device)
    offs = torch.arange(-width + 1, 1, device=ids.device)
    idx = pos[:, None] + offs[None, :]
    grams = torch.where(idx >= 0, ids[idx.clamp(min=0)], torch.full_like(idx, -1))
    return pos, grams


@torch.no_grad()
def detect(
    student: torch.nn.Module,
    green_list: GreenList,
    traces: Iterable[TraceLike],
    *,
    mode: Literal["probabilities", "samples"] = "probabilities",
    vocab_mapping: VocabMapping | None = None,
    temperature: float = 1.0,
    batch_size: int = 8,
    pad_token_id: int = 0,
    seed: int = 0,
    min_entropy: float = 0.0,
    progress: bool = False,
) -> DetectionResult:
    """Test whether ``student`` was trained on text fingerprinted with ``green_list``'s key.

    Every completion position of every trace is a context (the prompt and the completion before
    it); the student is run teacher-forced over each trace once.

    Args:
        student: the suspect model (a causal LM), run in eval mode.
        green_list: the fingerprint's green list (the same key, ``γ`` and ``w`` as at sampling):
            a :class:`~coreopt.sampling.HashGreenList` or :class:`~coreopt.sampling.KGWGreenList`.
        traces: contexts in the *student's* tokenization: its training traces (supervised) or
            its own fresh generations (unsupervised), as :class:`~coreopt.sampling.Trace` or
            ``(prompt_ids, completion_ids)`` pairs.
        mode: ``"probabilities"`` (open weight: the student's green mass) or ``"samples"``
            (black box simulated: one token drawn from the student per context).
        vocab_mapping: student id -> teacher id through shared token strings
            (:meth:`VocabMapping.from_tokenizers`); ``None`` when the student shares the
            teacher's tokenizer. Contexts whose seeding n-gram has an unmapped token are skipped.
        temperature: of the student's distribution.
        batch_size: traces per forward pass (the full ``(batch, length, vocabulary)`` logits
            are held at once: lower it for long traces and large vocabularies).
        pad_token_id: right-padding id (masked out).
        seed: seed of the draws in ``mode="samples"``.
        min_entropy: score only contexts where the student's next-token entropy (nats, over
            the eligible tokens) is at least this. Contexts where the student is (nearly)
            certain add only noise: whether its one likely token is green is a coin flip that
            no fingerprint can move. The selection uses the student alone, never the key, so
            the p-value stays valid. 0 (default) scores every context.
        progress: a ``tqdm`` bar over batches.

    Returns:
        A :class:`DetectionResult`; ``p_value`` close to 1 means no evidence.
    """
    check_choice("mode", mode, ("probabilities", "samples"))
    temperature = check_real("temperature", temperature, low=0.0, strict=True)
    min_entropy = check_real("min_entropy", min_entropy, low=0.0)
    items = [t for t in as_traces(traces) if t.completion]
    if not items:
        raise ValueError("traces hold no completion token: nothing to score")
    student.eval()
    device = model_device(student)
    width_s = output_vocab_size(student)
    to_teacher, valid = _student_tables(green_list, vocab_mapping, width_s, device)
    w = green_list.context_width
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    scores: list[float] = []
    keys: list[tuple[int, ...]] = []
    batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    for batch in tqdm(batches, desc="detect", unit="batch", disable=not progress):
        ids, mask = pad_right([t.ids for t in batch], pad_token_id, device=device)
        logits = student(input_ids=ids, attention_mask=mask).logits
        for row, trace in enumerate(batch):
            pos, grams = _contexts(ids[row], len(trace.prompt), len(trace.ids), w)
            mapped = torch.where(grams >= 0, to_teacher[grams.clamp(min=0)], grams)
            ok = ~((grams >= 0) & (mapped < 0)).any(-1)
            if not bool(ok.any()):
                continue
            pos, mapped = pos[ok], mapped[ok]
            probs = torch.softmax(logits[row, pos].float() / temperature, dim=-1)
            green_t = green_list.mask(mapped).to(device)
            green = green_t[:, to_teacher.clamp(min=0)] & valid[None, :]
            denom = (probs * valid).sum(-1)
            if mode == "probabilities":
                s = (probs * green).sum(-1) / denom.clamp(min=1e-30)
                keep = denom > 1e-12
            else:
                tok = torch.multinomial(probs, 1, generator=gen)[:, 0]
                keep = valid[tok]
                s = green.gather(1, tok[:, None])[:, 0].float()
            if min_entropy > 0:
                r = probs * valid / denom.clamp(min=1e-30)[:, None]
                entropy = -(r * r.clamp(min=1e-30).log()).sum(-1)
                keep = keep & (entropy >= min_entropy)
            for k, (sv, gram) in enumerate(zip(s.tolist(), mapped.tolist(), strict=True)):
                if bool(keep[k]):
                    scores.append(float(sv))
                    keys.append(tuple(gram))
    return _result(scores, keys, float(green_list.gamma), mode)


def detect_tokens(
    green_list: GreenList,
    traces: Iterable[TraceLike],
    *,
    vocab_mapping: VocabMapping | None = None,
) -> DetectionResult:
    """Black-box test on text a suspect model wrote: the green rate of its own tokens.

    Each completion token ``t_i`` is scored ``1[t_i ∈ S(n-gram before it)]`` (ineligible tokens
    skipped); scores are grouped by n-gram as in :func:`detect`. Use it on generations of the
    student obtained through an API (unsupervised black-box contexts), or on the teacher's
    fingerprinted traces themselves as a sanity check.

    Args:
        green_list: the fingerprint's green list.
        traces: the text as token ids (``(prompt, completion)``; only completions are scored).
        vocab_mapping: as for :func:`detect`.
    """
    items = [t for t in as_traces(traces) if t.completion]
    if not items:
        raise ValueError("traces hold no completion token: nothing to score")
    width = max(max(t.ids) for t in items) + 1
    if vocab_mapping is not None:
        width = max(width, vocab_mapping.student_vocab_size)
    to_teacher, valid = _student_tables(green_list, vocab_mapping, width, torch.device("cpu"))
    w = green_list.context_width
    scores: list[float] = []
    keys: list[tuple[int, ...]] = []
    for trace in items:
        ids = torch.tensor(trace.ids, dtype=torch.long)
        pos, grams = _contexts(ids, len(trace.prompt), len(trace.ids), w)
        mapped = torch.where(grams >= 0, to_teacher[grams.clamp(min=0)], grams)
        tok = ids[pos + 1]
        ok = ~((grams >= 0) & (mapped < 0)).any(-1) & valid[tok]
        if not bool(ok.any()):
            continue
        mapped, tok = mapped[ok], tok[ok]
        green_t = green_list.mask(mapped)
        hit = green_t.gather(1, to_teacher[tok][:, None])[:, 0]
        scores += [float(h) for h in hit.tolist()]
        keys += [tuple(g) for g in mapped.tolist()]
    return _result(scores, keys, float(green_list.gamma), "tokens")
