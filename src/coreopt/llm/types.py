"""The small async protocol every LLM backend implements, and the values it returns."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from coreopt.errors import CoreoptError

Message = Mapping[str, str]
"""A chat message: ``{"role": "system" | "user" | "assistant", "content": "..."}``."""

Prompt = str | Sequence[Message]
"""A prompt: a user message as text, or a list of chat messages."""


class LLMError(CoreoptError, RuntimeError):
    """An LLM call failed for good (after the retries). Values already paid for stay cached."""


class UnsupportedOperationError(CoreoptError, NotImplementedError):
    """The backend cannot do this (e.g. Anthropic gives no log-probabilities to score with)."""


class MalformedResponseError(LLMError):
    """The server answered 200 with a body that is not a valid completion (truncated JSON, an HTML
    page, no choices). Transient: retried, then raised."""


class BadScoresError(LLMError):
    """The server's log-probabilities cannot be trusted: they do not cover the scored text (echo
    ignored, nulls, gaps), or they failed the self-test (shifted or misaligned). Not retried and
    never cached."""


@dataclass(frozen=True)
class Decoding:
    """Decoding parameters of a generation (part of every cache key).

    Attributes:
        max_tokens: most new tokens.
        temperature: ``0`` is greedy (deterministic where the backend allows).
        top_p: nucleus sampling mass.
        seed: sampling seed (repeated samples use ``seed + i``).
        stop: stop strings.
    """

    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens!r}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")

    def key(self) -> str:
        """Canonical JSON of the parameters (for cache keys)."""
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class Completion:
    """What a backend returns.

    Attributes:
        text: the generated text (for :meth:`Backend.score`: the scored continuation).
        logprob: natural-log probability of ``text`` given the prompt, summed over its tokens
            (``None`` when the backend does not report it).
        prompt_tokens: tokens of the prompt (as billed).
        completion_tokens: tokens of ``text``.
        meta: backend-specific extras (JSON-serialisable).
    """

    text: str = ""
    logprob: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@runtime_checkable
class Backend(Protocol):
    """One LLM behind two async calls. Implementations: :class:`~coreopt.llm.OpenAIBackend`,
    :class:`~coreopt.llm.AnthropicBackend`, :class:`~coreopt.llm.TransformersBackend`,
    :class:`~coreopt.llm.CallableBackend`.

    Attributes:
        name: backend kind (``"openai"``, ...), part of the cache key.
        model: model identifier, part of the cache key.
        sdk_retries: the backend's SDK retries transient errors itself (the shared wrapper then
            does not retry on top).

    Optional members the wrapper uses where a backend has them: ``identity`` (who answers, for
    cache keys; default ``name``), ``timeout`` (seconds per request: turns on the adaptive
    concurrency limit), ``server`` (for messages), ``afingerprint()`` (a model fingerprint for
    ``identity``), ``score_format`` (how scoring prompts are rendered, part of score keys),
    ``verify_scores`` (self-test scores before a solve) and ``score_tokens()`` (per-token echo
    answers for that self-test).
    """

    name: str
    model: str

    @property
    def sdk_retries(self) -> bool:
        """The backend's SDK retries transient errors itself (the wrapper then does not)."""
        ...

    async def generate(self, prompt: Prompt, decoding: Decoding) -> Completion:
        """Generate an answer to ``prompt``."""
        ...

    async def score(self, prompt: Prompt, continuation: str) -> Completion:
        """Log-probability of ``continuation`` as the answer to ``prompt``."""
        ...

    def is_transient(self, exc: BaseException) -> bool:
        """Whether ``exc`` is worth retrying (rate limit, server error, timeout)."""
        ...


def as_messages(prompt: Prompt) -> list[dict[str, str]]:
    """``prompt`` as a list of chat messages."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    out = []
    for m in prompt:
        if "role" not in m or "content" not in m:
            raise ValueError(f"a chat message needs 'role' and 'content', got {dict(m)!r}")
        out.append({"role": str(m["role"]), "content": str(m["content"])})
    return out


def as_text(prompt: Prompt) -> str:
    """``prompt`` flattened to text (for backends without a chat format)."""
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(
        m["content"] if m["role"] == "user" else f"{m['role']}: {m['content']}"
        for m in as_messages(prompt)
    )


def status_code(exc: BaseException) -> int | None:
    """The HTTP status an SDK exception carries, if any."""
    code = getattr(exc, "status_code", None)
    if code is None:
        code = getattr(getattr(exc, "response", None), "status_code", None)
    return code if isinstance(code, int) else None


def is_transient_http(exc: BaseException) -> bool:
    """Rate limits, server errors, timeouts and dropped connections."""
    code = status_code(exc)
    if code is not None:
        return code in (408, 409, 429) or code >= 500
    return isinstance(exc, ConnectionError | TimeoutError)
