"""Remote and callable backends: OpenAI-compatible servers, Anthropic, any Python function.

SDKs are imported only when a backend is built. Each SDK client is bound to the event loop it was
first used on (its connection pool is), so a client is kept per running loop. Backends pickle
without their clients (a Ray worker builds its own); an API key given as an argument travels with
the copy, one read from the environment is read again where the copy runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import math
import os
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

from coreopt.errors import BackendNotInstalledError
from coreopt.llm.types import (
    Completion,
    Decoding,
    Prompt,
    UnsupportedOperationError,
    as_messages,
    as_text,
    is_transient_http,
)


class _PerLoop:
    """A value made lazily for each running event loop (SDK clients hold loop-bound pools).

    Each value is closed (its async ``close()`` awaited) when its loop shuts down its async
    generators, as ``asyncio.run`` does before closing the loop; otherwise the SDK would close
    its connections later, from another loop, and log "Event loop is closed" errors.
    """

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._values: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )

    def get(self) -> Any:
        loop = asyncio.get_running_loop()
        if loop not in self._values:
            value = self._make()
            hook = _close_on_shutdown(value)
            step: Any = hook.__anext__()  # registers the generator with this loop
            with contextlib.suppress(StopIteration):
                step.send(None)  # runs it to its ``yield`` at once
            self._values[loop] = (value, hook)  # the loop only holds the hook weakly
        return self._values[loop][0]


async def _close_on_shutdown(value: Any) -> AsyncIterator[None]:
    try:
        yield
    finally:
        close = getattr(value, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()


class _SDKBackend:
    """What the SDK backends share: the SDK's presence and the model name checked on
    construction, a client per event loop (from ``_make_client``) that a pickled copy leaves
    behind, and the SDK's connection errors and timeouts counted as transient.
    """

    _sdk: str  # the SDK's module (and package) name

    def _sdk_model(self, model: str | None) -> str:
        """Raise unless the SDK is installed; the model name (default ``$COREOPT_LLM_MODEL``)."""
        if importlib.util.find_spec(self._sdk) is None:
            raise BackendNotInstalledError(self._sdk, "llm")
        model = model or os.environ.get("COREOPT_LLM_MODEL")
        if not model:
            raise ValueError("model is required: pass model=... or set COREOPT_LLM_MODEL")
        return model

    def _make_client(self) -> Any:
        raise NotImplementedError

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_clients"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._clients = _PerLoop(self._make_client)

    def is_transient(self, exc: BaseException) -> bool:
        sdk = importlib.import_module(self._sdk)
        if isinstance(exc, sdk.APIConnectionError | sdk.APITimeoutError):
            return True
        return is_transient_http(exc)


class OpenAIBackend(_SDKBackend):
    """Chat completions of any OpenAI-compatible server (OpenAI, vLLM, llama.cpp, Ollama, SGLang).

    Args:
        model: model name (default ``$COREOPT_LLM_MODEL``).
        base_url: server URL such as ``http://127.0.0.1:8000/v1`` (default
            ``$COREOPT_LLM_BASE_URL``, else the SDK's default).
        api_key: key (default ``$OPENAI_API_KEY``; local servers get a placeholder).
        max_retries: the SDK's own retries of 408/409/429/5xx and connection errors (with its
            exponential backoff; the shared :class:`~coreopt.llm.LLM` wrapper adds none on top).
        timeout: seconds per request.
        logprobs: ask for the log-probabilities of generated tokens.
        **client_kwargs: passed to ``openai.AsyncOpenAI``.

    :meth:`score` uses the completions endpoint with ``echo=True`` (vLLM and llama.cpp serve it);
    servers without it raise :class:`~coreopt.llm.UnsupportedOperationError`.
    """

    name = "openai"
    sdk_retries = True
    _sdk = "openai"

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        max_retries: int = 3,
        timeout: float = 60.0,
        logprobs: bool = False,
        **client_kwargs: Any,
    ) -> None:
        self.model = self._sdk_model(model)
        self.base_url = base_url or os.environ.get("COREOPT_LLM_BASE_URL") or None
        if api_key is None and os.environ.get("OPENAI_API_KEY") is None and self.base_url is None:
            raise ValueError(
                "no API key: pass api_key=..., set OPENAI_API_KEY, or point base_url / "
                "COREOPT_LLM_BASE_URL at a local server"
            )
        self.logprobs = logprobs
        self.max_retries = max_retries
        self._api_key = api_key  # an explicit key travels with a pickled copy; else $OPENAI_API_KEY
        self._client_kwargs = {"max_retries": max_retries, "timeout": timeout, **client_kwargs}
        self._clients = _PerLoop(self._make_client)

    def _make_client(self) -> Any:
        import openai

        # local servers ignore the key; the SDK requires one
        key = self._api_key or os.environ.get("OPENAI_API_KEY") or "not-needed"
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=key, **self._client_kwargs)

    def __repr__(self) -> str:
        # getattr: a repr of an instance whose __init__ raised (e.g. in a traceback) must not raise
        model, url = getattr(self, "model", None), getattr(self, "base_url", None)
        return f"OpenAIBackend(model={model!r}, base_url={url!r})"

    async def generate(self, prompt: Prompt, decoding: Decoding) -> Completion:
        extra: dict[str, Any] = {}
        if decoding.seed is not None:
            extra["seed"] = decoding.seed
        if decoding.stop:
            extra["stop"] = list(decoding.stop)
        if self.logprobs:
            extra["logprobs"] = True
        resp = await self._clients.get().chat.completions.create(
            model=self.model,
            messages=as_messages(prompt),
            max_tokens=decoding.max_tokens,
            temperature=decoding.temperature,
            top_p=decoding.top_p,
            **extra,
        )
        choice = resp.choices[0]
        logprob = None
        content = getattr(getattr(choice, "logprobs", None), "content", None)
        if content:
            logprob = float(sum(t.logprob for t in content))
        usage = resp.usage
        return Completion(
            text=choice.message.content or "",
            logprob=logprob,
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        )

    async def score(self, prompt: Prompt, continuation: str) -> Completion:
        import openai

        text = as_text(prompt) + "\n"
        try:
            resp = await self._clients.get().completions.create(
                model=self.model,
                prompt=text + continuation,
                max_tokens=1,
                echo=True,
                logprobs=0,
                temperature=0.0,
            )
        except openai.NotFoundError as exc:
            raise UnsupportedOperationError(
                f"{self.base_url or 'this server'} has no /completions endpoint with echo to "
                "score log-probabilities; use a judge instead"
            ) from exc
        lp = resp.choices[0].logprobs
        if lp is None or lp.token_logprobs is None or lp.text_offset is None:
            raise UnsupportedOperationError("the server returned no prompt log-probabilities")
        start = len(text)
        end = len(text) + len(continuation)
        total, count = 0.0, 0
        for off, value in zip(lp.text_offset, lp.token_logprobs, strict=False):
            if start <= off < end and value is not None and math.isfinite(value):
                total += float(value)
                count += 1
        usage = resp.usage
        billed_prompt = int(getattr(usage, "prompt_tokens", 0) or 0)  # includes the continuation
        billed_new = int(getattr(usage, "completion_tokens", 0) or 0)  # the one echo token
        return Completion(  # totals what was billed: the continuation is counted once
            text=continuation,
            logprob=total,
            prompt_tokens=max(billed_prompt - count, 0),
            completion_tokens=min(count, billed_prompt) + billed_new,
        )


class AnthropicBackend(_SDKBackend):
    """Claude models through the ``anthropic`` SDK (its own retries and backoff).

    Args:
        model: model name (default ``$COREOPT_LLM_MODEL``).
        api_key: default ``$ANTHROPIC_API_KEY`` (read by the SDK).
        base_url: optional proxy URL.
        max_retries: the SDK's retries of 408/409/429/5xx.
        system: optional system prompt.

    Anthropic gives no log-probabilities: :meth:`score` raises
    :class:`~coreopt.llm.UnsupportedOperationError` (score with a judge instead).
    """

    name = "anthropic"
    sdk_retries = True
    _sdk = "anthropic"

    def __init__(
        self,
        model: str | None = None,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        max_retries: int = 3,
        timeout: float = 60.0,
        **client_kwargs: Any,
    ) -> None:
        self.model = self._sdk_model(model)
        self._client_kwargs = {
            "api_key": api_key,  # None: $ANTHROPIC_API_KEY, read by the SDK where it runs
            "base_url": base_url,
            "max_retries": max_retries,
            "timeout": timeout,
            **client_kwargs,
        }
        self._clients = _PerLoop(self._make_client)

    def _make_client(self) -> Any:
        import anthropic

        return anthropic.AsyncAnthropic(**self._client_kwargs)

    def __repr__(self) -> str:
        return f"AnthropicBackend(model={getattr(self, 'model', None)!r})"

    async def generate(self, prompt: Prompt, decoding: Decoding) -> Completion:
        messages = as_messages(prompt)
        system = "\n".join(m["content"] for m in messages if m["role"] == "system")
        extra: dict[str, Any] = {"system": system} if system else {}
        if decoding.stop:
            extra["stop_sequences"] = list(decoding.stop)
        resp = await self._clients.get().messages.create(
            model=self.model,
            max_tokens=decoding.max_tokens,
            temperature=decoding.temperature,
            messages=[m for m in messages if m["role"] != "system"],
            **extra,
        )
        text = "".join(getattr(b, "text", "") for b in resp.content)
        return Completion(
            text=text,
            prompt_tokens=int(resp.usage.input_tokens),
            completion_tokens=int(resp.usage.output_tokens),
        )

    async def score(self, prompt: Prompt, continuation: str) -> Completion:
        raise UnsupportedOperationError(
            "Anthropic models give no log-probabilities; score with a judge instead"
        )


class CallableBackend:
    """Any Python function as a backend (sync or ``async def``).

    Args:
        fn: ``fn(prompt_text) -> str | Completion``: the answer to a prompt. Sync functions run
            in a worker thread.
        score_fn: optional ``score_fn(prompt_text, continuation) -> float | Completion``: the
            log-probability of ``continuation``.
        model: identifier used in cache keys (default: the function's qualified name).
        transient: exception types worth retrying (default: every ``Exception`` except
            ``TypeError``/``ValueError``, which are bugs rather than flakiness).

    Examples:
        >>> import asyncio
        >>> from coreopt.llm import CallableBackend, Decoding
        >>> b = CallableBackend(lambda p: p.upper(), model="upper")
        >>> asyncio.run(b.generate("hi", Decoding())).text
        'HI'
    """

    name = "callable"
    sdk_retries = False

    def __init__(
        self,
        fn: Callable[..., Any] | None,
        score_fn: Callable[..., Any] | None = None,
        *,
        model: str | None = None,
        transient: tuple[type[BaseException], ...] | None = None,
    ) -> None:
        if fn is None and score_fn is None:
            raise ValueError("give fn (generation), score_fn (log-probabilities) or both")
        for label, f in (("fn", fn), ("score_fn", score_fn)):
            if f is not None and not callable(f):
                raise TypeError(f"{label} must be callable, got {type(f).__name__}")
        self.fn = fn
        self.score_fn = score_fn
        ref = fn if fn is not None else score_fn
        self.model: str = str(model or getattr(ref, "__qualname__", type(ref).__name__))
        self.transient = transient

    def __repr__(self) -> str:
        return f"CallableBackend(model={self.model!r})"

    @staticmethod
    async def _call(fn: Callable[..., Any], *args: Any) -> Any:
        if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 - async callable objects
        ):
            return await fn(*args)
        out = await asyncio.to_thread(fn, *args)
        if inspect.isawaitable(out):
            out = await out
        return out

    async def generate(self, prompt: Prompt, decoding: Decoding) -> Completion:
        if self.fn is None:
            raise UnsupportedOperationError("this CallableBackend has no generation function")
        out = await self._call(self.fn, as_text(prompt))
        if isinstance(out, Completion):
            return out
        if not isinstance(out, str):
            raise TypeError(f"fn must return str or Completion, got {type(out).__name__}")
        return Completion(text=out)

    async def score(self, prompt: Prompt, continuation: str) -> Completion:
        if self.score_fn is None:
            raise UnsupportedOperationError("this CallableBackend has no score_fn")
        out = await self._call(self.score_fn, as_text(prompt), continuation)
        if isinstance(out, Completion):
            return out
        return Completion(text=continuation, logprob=float(out))

    def is_transient(self, exc: BaseException) -> bool:
        if self.transient is not None:
            return isinstance(exc, self.transient)
        return isinstance(exc, Exception) and not isinstance(
            exc, TypeError | ValueError | NotImplementedError
        )
