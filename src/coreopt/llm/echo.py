"""Log-probabilities of a continuation from a completions endpoint's ``echo=True`` answer, checked
so that they cannot be silently wrong.

The server returns, for the prompt it was sent (prompt text + continuation) and the one token it
generated, each token's text offset and log-probability. The continuation's log-probability is
the sum over the tokens that overlap its characters. Before summing, the answer must show that
those tokens cover the continuation whole: the echoed text ends with the continuation (or with it
and the generated token), the overlapping tokens run contiguously from its first character to its
last, and each has a finite log-probability <= 0. Anything else (the server ignored ``echo``,
returned nulls, left gaps, or offsets that point elsewhere) raises
:class:`~coreopt.llm.BadScoresError` naming what the server did. A token straddling the boundary
(its text begins in the prompt) is counted whole. Where the server gives the tokens' texts, each
must stand at its offset; a server whose offsets count another rendering of the text (special
tokens such as ``<|im_start|>`` dropped) is read again on the tokens' own texts joined.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from coreopt.llm.types import BadScoresError

logger = logging.getLogger("coreopt.llm")

FIX = (
    "score with a judge instead (--scoring judge), or serve the model with a server whose "
    "completions endpoint returns prompt log-probabilities with echo=True (vLLM, "
    "llama-cpp-python)"
)


@dataclass(frozen=True)
class EchoScores:
    """The checked per-token answer of an echo request.

    Attributes:
        logprob: natural-log probability of the continuation (sum over ``span``).
        offsets: character offset of every echoed token in ``text``.
        values: every echoed token's log-probability (``None`` where the server gave none).
        tokens: every echoed token's text (empty when the server gave none).
        text: the echoed text.
        span: ``(first, last + 1)`` indices of the continuation's tokens.
        start: character offset of the continuation in ``text``.
    """

    logprob: float
    offsets: tuple[int, ...]
    values: tuple[float | None, ...]
    tokens: tuple[str, ...]
    text: str
    span: tuple[int, int]
    start: int

    @property
    def count(self) -> int:
        """Tokens of the continuation."""
        return self.span[1] - self.span[0]


def continuation_scores(
    sent: str,
    continuation: str,
    echoed: str | None,
    offsets: Sequence[int] | None,
    values: Sequence[float | None] | None,
    tokens: Sequence[str] | None,
    *,
    server: str,
) -> EchoScores:
    """Check an echo answer and sum the continuation's log-probability.

    Args:
        sent: the text sent (prompt text + ``continuation``).
        continuation: the scored text (non-empty).
        echoed: ``choices[0].text`` of the answer (``None``: assume ``sent``).
        offsets, values, tokens: ``logprobs.text_offset``, ``.token_logprobs``, ``.tokens``.
        server: how to name the server in messages.

    Raises:
        BadScoresError: the answer does not cover the continuation as described above.
    """
    if not continuation:
        raise ValueError("cannot score an empty continuation")
    if offsets is None or values is None:
        raise BadScoresError(
            f"{server} returned no prompt log-probabilities (logprobs.text_offset/token_logprobs "
            f"missing); {FIX}"
        )
    if len(offsets) != len(values) or (tokens and len(tokens) != len(values)):
        raise BadScoresError(
            f"{server} returned {len(offsets)} token offsets for {len(values)} log-probabilities"
            f"{f' and {len(tokens)} tokens' if tokens else ''}; {FIX}"
        )
    text = sent if echoed is None else echoed
    attempts = [(text, [int(o) for o in offsets])]
    if tokens and all(isinstance(t, str) for t in tokens):
        # servers that compute offsets on another rendering of the text (special tokens dropped):
        # the tokens' own texts, joined, give offsets that match them by construction
        joined, cumulative, at = "".join(tokens), [], 0
        for tok in tokens:
            cumulative.append(at)
            at += len(tok)
        attempts.append((joined, cumulative))
    first_problem = ""
    for where, (candidate, offs) in enumerate(attempts):
        try:
            return _sum_over(candidate, continuation, offs, values, tokens, server)
        except _NoMatch as exc:
            first_problem = first_problem or str(exc)
            if where + 1 < len(attempts):
                logger.debug("%s: %s; trying the offsets of the tokens' own texts", server, exc)
    raise BadScoresError(f"{first_problem}; {FIX}")


class _NoMatch(Exception):
    """The continuation or the tokens' texts are not where the offsets say."""


def _sum_over(
    text: str,
    continuation: str,
    offsets: Sequence[int],
    values: Sequence[float | None],
    tokens: Sequence[str] | None,
    server: str,
) -> EchoScores:
    # where the continuation ends in the echoed text: at its end, or before the generated token
    end = None
    if text.endswith(continuation):
        end = len(text)
    elif offsets and text[: offsets[-1]].endswith(continuation):
        end = offsets[-1]
    if end is None:
        raise _NoMatch(
            f"{server} ignored echo=True: its answer ({len(values)} token(s), text "
            f"{_excerpt(text)}) does not repeat the scored text ending in "
            f"{_excerpt(continuation)}"
        )
    start = end - len(continuation)
    n = len(offsets)

    def stop(i: int) -> int:
        return offsets[i + 1] if i + 1 < n else len(text)

    inside = [i for i in range(n) if offsets[i] < end and stop(i) > start]
    if not inside:
        raise _NoMatch(
            f"{server} returned log-probabilities for no token of the continuation (characters "
            f"{start}-{end} of {len(text)}; token offsets {_excerpt(list(offsets))}): it ignored "
            "echo=True or its offsets point elsewhere"
        )
    first, last = inside[0], inside[-1]
    if any(offsets[i] >= offsets[i + 1] for i in range(first, last)) or inside != list(
        range(first, last + 1)
    ):
        raise BadScoresError(
            f"{server} returned token offsets that are not increasing over the continuation "
            f"({_excerpt([offsets[i] for i in inside])}); {FIX}"
        )
    if offsets[first] > start or stop(last) < end:
        raise BadScoresError(
            f"{server}'s tokens cover characters {offsets[first]}-{stop(last)} but the "
            f"continuation spans {start}-{end}: part of it has no log-probability; {FIX}"
        )
    for i in inside:
        tok = tokens[i] if tokens else ""
        if tok and "\ufffd" not in tok and text[offsets[i] : offsets[i] + len(tok)] != tok:
            raise _NoMatch(
                f"{server} placed token {i} ({_excerpt(tok)}) at character {offsets[i]}, where "
                f"the text reads {_excerpt(text[offsets[i] : offsets[i] + len(tok)])}: its "
                "offsets point elsewhere"
            )
    total = 0.0
    for i in inside:
        v = values[i]
        if v is None or not isinstance(v, int | float) or not math.isfinite(v) or v > 1e-4:
            raise BadScoresError(
                f"{server} returned log-probability {v!r} for token {i} "
                f"({_excerpt(tokens[i]) if tokens else 'its text not given'}) of the "
                "continuation: a log-probability must be a finite number <= 0; " + FIX
            )
        total += float(v)
    return EchoScores(
        logprob=total,
        offsets=tuple(offsets),
        values=tuple(None if v is None else float(v) for v in values),
        tokens=tuple(tokens or ()),
        text=text,
        span=(first, last + 1),
        start=start,
    )


def _excerpt(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
