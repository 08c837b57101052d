"""A self-test of a backend's log-probabilities, run before paying for a solve scored with them.

A server can return log-probabilities that look fine and are wrong: shifted by one token (a
llama-cpp-python server on a GGUF file without a BOS token), computed on another text, or not
log-probabilities at all. Credits computed from them are silently wrong (the source with the
answer can get the lowest credit). The test scores, through the same path and chat format as the
solve, two continuations of one prompt that asks to continue a count:

* ``SURE`` continues the count (``9, 10, ..., 16``): any working model finds it far more likely
  than
* ``WRONG``, an unlikely word then numbers out of order (``Zebra 4, 17, 2, ...``).

It passes when

1. ``logprob(SURE) - logprob(WRONG) >= MARGIN`` nats (the embedded SmolLM2-135M gives about 30);
2. where the token count is known, ``SURE`` averages at least ``SURE_MEAN_ABOVE`` per token (values
   read one position late, as llama-cpp-python's echo gives for a GGUF without a BOS token, value
   each token as the one after itself: a count then looks unlikely);
   and, for servers that return per-token values (``score_tokens``, the echo path):
3. the prompt's tokens get the same log-probabilities in both answers (a causal model cannot see
   the continuation from the prompt: values shifted one token towards the start differ there);
4. ``WRONG``'s first token gets a log-probability below ``FIRST_BELOW`` (values shifted one token
   towards the end give it the last prompt token's, which is near 0).

A pass is remembered per server identity, model, chat format and test version: in the cache file
(table ``verified``) when the LLM has one, else in the :class:`~coreopt.llm.LLM` object.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from coreopt.llm.types import BadScoresError, Completion

if TYPE_CHECKING:
    from coreopt.llm.client import LLM

VERSION = "coreopt.selftest/1"
PROMPT = [
    {"role": "system", "content": "Continue the sequence exactly."},
    {"role": "user", "content": "Continue the count: 1, 2, 3, 4, 5, 6, 7, 8,"},
]
SURE = "9, 10, 11, 12, 13, 14, 15, 16"
WRONG = "Zebra 4, 17, 2, 15, 8, 13, 6, 11"
MARGIN = 10.0
"""Nats by which ``SURE`` must beat ``WRONG``."""
SURE_MEAN_ABOVE = -1.5
"""Least mean log-probability per token of ``SURE`` (where the token count is known): a count is
near-certain token by token (SmolLM2-135M: about -0.3)."""
FIRST_BELOW = -2.0
"""Most log-probability ``WRONG``'s first token may get."""
PROMPT_TOLERANCE = 0.1
"""Most difference (nats, plus 1% of the value) between the two answers' values of a prompt
token (servers batch differently: tiny numeric differences are normal)."""
FIX = (
    "fixes: serve the model with a BOS token (a GGUF whose tokenizer adds one, or a server "
    "that aligns prompt log-probabilities), render prompts with the model's own template "
    "(--chat-template hf:PATH), or score with a judge through the chat endpoint "
    "(--scoring judge)"
)


@dataclass(frozen=True)
class SelfTestReport:
    """What the self-test saw.

    Attributes:
        server: the backend in words.
        sure, wrong: log-probabilities of ``SURE`` and ``WRONG``.
        first_wrong: log-probability of ``WRONG``'s first token (``nan`` when not reported).
        prompt_gap: largest difference between the two answers' prompt-token values (``nan``
            when not reported).
        problems: why it failed (empty: passed).
    """

    server: str
    sure: float
    wrong: float
    first_wrong: float = math.nan
    prompt_gap: float = math.nan
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def message(self) -> str:
        """One paragraph: the server, what was seen, and the fixes."""
        seen = f"log p(count continued) = {self.sure:.2f}, log p(out-of-order) = {self.wrong:.2f}"
        return (
            f"{self.server} failed the log-probability self-test ({seen}): "
            + "; ".join(self.problems)
            + f". Its scores would give wrong credits; {FIX}."
        )


def _check(server: str, sure: Any, wrong: Any) -> SelfTestReport:
    """Apply the three criteria to two answers (``Completion``s, or the backend's per-token
    ``EchoScores`` where it has them)."""
    lp_sure, lp_wrong = float(sure.logprob), float(wrong.logprob)
    problems = []
    if not lp_sure - lp_wrong >= MARGIN:
        problems.append(
            f"the counted continuation should beat the out-of-order one by {MARGIN:g} nats, "
            f"got {lp_sure - lp_wrong:.2f}"
        )
    count = sure.count if hasattr(sure, "span") else int(getattr(sure, "completion_tokens", 0))
    if count > 0 and not lp_sure / count >= SURE_MEAN_ABOVE:
        problems.append(
            f"the counted continuation got {lp_sure / count:.2f} nats per token over {count} "
            f"tokens (a count is near-certain: expected above {SURE_MEAN_ABOVE:g}); the values "
            "are not the model's probabilities of these tokens (read one position late?)"
        )
    first, gap = math.nan, math.nan
    if hasattr(sure, "values") and hasattr(wrong, "values"):
        first_v = wrong.values[wrong.span[0]]
        first = math.nan if first_v is None else float(first_v)
        if not first <= FIRST_BELOW:
            problems.append(
                f"the unlikely first word of the out-of-order continuation got log-probability "
                f"{first:.2f} (expected below {FIRST_BELOW:g}): values look shifted one token "
                "towards the end"
            )
        # the prompt's tokens (those before either continuation) must agree
        gap = 0.0
        common = min(sure.span[0], wrong.span[0])
        for i in range(common):
            a, b = sure.values[i], wrong.values[i]
            if a is None or b is None:
                continue
            if sure.offsets[i] != wrong.offsets[i]:
                break
            gap = max(gap, abs(a - b))
            if abs(a - b) > PROMPT_TOLERANCE + 0.01 * abs(a):
                problems.append(
                    f"the prompt's token {i} ({sure.tokens[i] if sure.tokens else '?'!r}) got "
                    f"{a:.2f} and {b:.2f} in two requests that differ only after it: values look "
                    "shifted one token towards the start"
                )
                break
    return SelfTestReport(server, lp_sure, lp_wrong, first, gap, problems)


def verification_key(llm: LLM) -> str:
    """What a remembered pass is keyed by: the test version, chat format, server and model."""
    fmt = str(getattr(llm.backend, "score_format", ""))
    return f"{VERSION}|{fmt}|{llm.identity}|{llm.model}"


async def self_test(llm: LLM) -> SelfTestReport:
    """Run the test (two paid calls, counted in the LLM's usage and budget, never cached).

    Returns:
        The report (see :attr:`SelfTestReport.passed`).
    """
    await llm.resolve_identity()
    backend = llm.backend
    per_token = getattr(backend, "score_tokens", None)

    def paid(continuation: str) -> Any:
        async def call() -> Completion:
            if per_token is not None:
                scores, usage = await per_token(PROMPT, continuation)
                return _Scored(scores, int(getattr(usage, "total_tokens", 0) or 0))
            return await backend.score(PROMPT, continuation)

        def need() -> int:
            return llm.reservation(PROMPT, new_tokens=1, continuation=continuation)

        return llm._paid(call, need)

    sure = await paid(SURE)
    wrong = await paid(WRONG)
    return _check(llm.describe(), getattr(sure, "scores", sure), getattr(wrong, "scores", wrong))


class _Scored(Completion):
    """A Completion carrying the per-token answer it came from (not cached)."""

    def __init__(self, scores: Any, tokens: int) -> None:
        super().__init__(text="", logprob=scores.logprob, prompt_tokens=tokens)
        object.__setattr__(self, "scores", scores)


async def averify(llm: LLM, *, force: bool = False) -> SelfTestReport | None:
    """Run :func:`self_test` unless a pass is remembered; remember a pass; raise on a failure.

    Raises:
        BadScoresError: the test failed.
    """
    await llm.resolve_identity()
    key = verification_key(llm)
    if not force and (key in llm.verified or (llm.cache is not None and llm.cache.verified(key))):
        return None
    report = await self_test(llm)
    if not report.passed:
        raise BadScoresError(report.message())
    llm.verified.add(key)
    if llm.cache is not None:
        llm.cache.remember_verified(key, f"sure={report.sure:.3f} wrong={report.wrong:.3f}")
    return report
