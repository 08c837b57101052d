"""What an :class:`~coreopt.llm.LLM` may pay for (:class:`Budget`) and what it paid
(:class:`Usage`).

Split from the former ``client`` module (behaviour unchanged); the counters behind a budget live in
:mod:`coreopt.llm.ledger`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

TEMPLATE_BASE_TOKENS = 16
"""Tokens reserved per call for a chat template's fixed part (begin/assistant-turn markers)."""
TEMPLATE_MESSAGE_TOKENS = 8
"""Tokens reserved per chat message for its role markers."""


@dataclass(frozen=True)
class Budget:
    """Limits on what an :class:`~coreopt.llm.LLM` may pay for (cache hits are free).

    Attributes:
        calls: most paid calls (``None``: unlimited; ``0``: none, only cached values). Counted
            when a call is dispatched: every HTTP attempt, failed and retried ones included, so
            it is never exceeded.
        tokens: most billed tokens, prompt plus completion (``None``: unlimited). Before a call
            is dispatched its tokens are *reserved*: the prompt's count (exact for backends
            with a tokenizer, e.g. :class:`~coreopt.llm.TransformersBackend`; otherwise
            ``ceil(UTF-8 bytes / bytes_per_token)`` plus :data:`TEMPLATE_BASE_TOKENS` and
            :data:`TEMPLATE_MESSAGE_TOKENS` per message) plus the most it can generate
            (``max_tokens``; for scoring, the continuation's count and one token). A call is
            dispatched only if tokens spent + tokens reserved by calls in flight + its own
            reservation fit in the budget; when it returns, its reservation is replaced by the
            tokens it reports. Hence: **spent tokens never exceed the budget when each
            reservation bounds its call's billed tokens**, which holds for any byte-level BPE
            tokenizer (GPT, Llama 3, Qwen, SmolLM2, ...) with the default ``bytes_per_token=1``
            and a chat template of usual size. Otherwise the budget is exceeded by at most the
            excess of the calls in flight, at most ``max_concurrency`` times the largest excess
            of one call over its reservation. A call that does not fit only because of the
            reservations in flight waits for them to settle; it is refused
            (:class:`~coreopt.errors.BudgetExhaustedError`) only when the tokens already spent
            leave no room for its reservation, so at most one reservation's worth of the
            budget stays unspent.
        bytes_per_token: UTF-8 bytes of prompt text per reserved token (``1.0``: a safe upper
            bound; ``3.5`` or so reserves close to the real count of English text with GPT-like
            tokenizers, spending a budget more fully but without the guarantee).
    """

    calls: int | None = None
    tokens: int | None = None
    bytes_per_token: float = 1.0

    def __post_init__(self) -> None:
        for name in ("calls", "tokens"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"Budget.{name} must be an int >= 0 or None, got {v!r}")
        if not (math.isfinite(self.bytes_per_token) and self.bytes_per_token > 0):
            raise ValueError(f"Budget.bytes_per_token must be > 0, got {self.bytes_per_token!r}")

    @property
    def limited(self) -> bool:
        """Whether any limit is set."""
        return self.calls is not None or self.tokens is not None


@dataclass
class Usage:
    """Counters of an :class:`~coreopt.llm.LLM` in this process (cumulative).

    Attributes:
        calls: paid calls started: every HTTP attempt (request sent), retried and failed ones
            included.
        tokens: billed tokens of the paid calls that returned.
        cache_hits: requests answered from the cache.
        merged: requests that waited on an identical call already in flight.
        retries: retried attempts (each also counted in ``calls``).
        failures: calls that failed for good.
        timeouts: attempts that timed out (each also counted in ``calls``).
    """

    calls: int = 0
    tokens: int = 0
    cache_hits: int = 0
    merged: int = 0
    retries: int = 0
    failures: int = 0
    timeouts: int = 0

    def add(self, other: Usage) -> None:
        """Add ``other``'s counters to these (e.g. a Ray worker's usage to the driver's)."""
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))
