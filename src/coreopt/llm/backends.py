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
import json
import logging
import os
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

from coreopt.errors import BackendNotInstalledError
from coreopt.llm.cache import text_hash
from coreopt.llm.echo import EchoScores, continuation_scores
from coreopt.llm.prompt import chat_renderer, describe
from coreopt.llm.types import (
    Completion,
    Decoding,
    MalformedResponseError,
    Prompt,
    UnsupportedOperationError,
    as_messages,
    as_text,
    is_transient_http,
)

logger = logging.getLogger("coreopt.llm")

DEFAULT_OPENAI_URL = "https://api.openai.com/v1"
"""The openai SDK's server when no base URL is given."""


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
        max_retries: the SDK's own retries, ``0`` by default: the :class:`~coreopt.llm.LLM`
            wrapper retries (``LLM(retries=...)``, honouring ``Retry-After``) and counts every
            HTTP attempt in its usage and budget. A value above 0 lets the SDK retry inside one
            counted call (its attempts are then not counted).
        timeout: seconds per HTTP request (an adaptive concurrency limit in
            :class:`~coreopt.llm.LLM` keeps answers well within it).
        logprobs: ask for the log-probabilities of generated tokens.
        chat_template: how :meth:`score` renders a chat prompt as text (see below):
            ``"chatml"`` (default), ``"plain"``, ``"hf:PATH"`` or a function ``prompt -> text``.
        **client_kwargs: passed to ``openai.AsyncOpenAI``.

    :meth:`score` uses the completions endpoint with ``echo=True`` (vLLM and llama-cpp-python
    serve it); servers without it raise :class:`~coreopt.llm.UnsupportedOperationError`. That
    endpoint takes raw text, so the chat prompt is rendered here with ``chat_template``: ChatML
    by default, the template of the embedded SmolLM2 (and of Qwen2/2.5), so the server and the
    embedded model value a coalition with the same prompt; pass ``"hf:PATH"`` (the model's
    tokenizer folder) for a model with another template. The answer is checked (see
    :func:`~coreopt.llm.echo.continuation_scores`): log-probabilities that do not cover the
    continuation raise :class:`~coreopt.llm.BadScoresError`, and a 200 answer that is not a
    completion (truncated JSON, HTML) raises :class:`~coreopt.llm.MalformedResponseError`
    (retried).

    Cache keys carry the server's :attr:`identity`: its base URL and, where ``/models``
    describes the model, a fingerprint of that description (see :meth:`afingerprint`).
    """

    name = "openai"
    verify_scores = True  # a server's log-probabilities are self-tested before a logprob solve
    _sdk = "openai"

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        max_retries: int = 0,
        timeout: float = 60.0,
        logprobs: bool = False,
        chat_template: str | Callable[[Prompt], str] = "chatml",
        **client_kwargs: Any,
    ) -> None:
        self.model = self._sdk_model(model)
        self.base_url = base_url or os.environ.get("COREOPT_LLM_BASE_URL") or None
        if api_key is None and os.environ.get("OPENAI_API_KEY") is None and self.base_url is None:
            raise ValueError(
                "no API key: pass api_key=..., set OPENAI_API_KEY, or point base_url / "
                "COREOPT_LLM_BASE_URL at a local server"
            )
        if not (isinstance(timeout, int | float) and timeout > 0):
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        self.logprobs = logprobs
        self.max_retries = max_retries
        self.timeout = float(timeout)
        self.template_name, self.render = chat_renderer(chat_template)
        self._chat_template = chat_template
        self.fingerprint: str | None = None
        self._api_key = api_key  # an explicit key travels with a pickled copy; else $OPENAI_API_KEY
        self._client_kwargs = {"max_retries": max_retries, "timeout": timeout, **client_kwargs}
        self._clients = _PerLoop(self._make_client)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("render", None)  # rebuilt from the template's name (a tokenizer may not pickle)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.template_name, self.render = chat_renderer(self._chat_template)

    @property
    def sdk_retries(self) -> bool:
        """Whether the SDK retries by itself (then the wrapper does not retry on top)."""
        return self.max_retries > 0

    @property
    def server(self) -> str:
        """The base URL (the SDK's default when none was given)."""
        return (self.base_url or DEFAULT_OPENAI_URL).rstrip("/")

    @property
    def identity(self) -> str:
        """Who answers, for cache keys: ``openai@URL`` plus ``#fingerprint`` when known."""
        fp = f"#{self.fingerprint}" if self.fingerprint else ""
        return f"openai@{self.server}{fp}"

    @property
    def score_format(self) -> str:
        """How scoring prompts are rendered (part of the score cache keys)."""
        return f"echo/{self.template_name}"

    def _make_client(self) -> Any:
        import openai

        # local servers ignore the key; the SDK requires one
        key = self._api_key or os.environ.get("OPENAI_API_KEY") or "not-needed"
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=key, **self._client_kwargs)

    def __repr__(self) -> str:
        # getattr: a repr of an instance whose __init__ raised (e.g. in a traceback) must not raise
        model, url = getattr(self, "model", None), getattr(self, "base_url", None)
        return f"OpenAIBackend(model={model!r}, base_url={url!r})"

    def is_transient(self, exc: BaseException) -> bool:
        return isinstance(exc, MalformedResponseError) or super().is_transient(exc)

    async def afingerprint(self) -> str | None:
        """A fingerprint of the served weights, where the server's ``/models`` describes the
        model (its entry with the model's name, or the only entry: llama.cpp servers list their
        GGUF file and its size, vLLM its weights' path); ``None`` when it describes none. One
        request, made once (cache keys then carry it); not retried."""
        try:
            page = await self._clients.get().models.list()
            entries = [e.model_dump() if hasattr(e, "model_dump") else dict(e) for e in page.data]
        except Exception as exc:  # no /models: keys carry the URL and model name only
            logger.debug("%s: no model description from /models (%s)", self.server, exc)
            return None
        chosen = [e for e in entries if e.get("id") == self.model] or (
            entries if len(entries) == 1 else []
        )
        if not chosen:
            return None
        desc = {k: v for k, v in chosen[0].items() if k not in ("created", "object")}
        self.fingerprint = text_hash(json.dumps(desc, sort_keys=True, default=str))
        return self.fingerprint

    async def _create(self, endpoint: Any, **kw: Any) -> Any:
        """One request; a 200 answer that is not a completion raises MalformedResponseError."""
        try:
            resp = await endpoint.create(model=self.model, **kw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MalformedResponseError(
                f"{self.server} answered with a malformed body (not valid JSON: {exc})"
            ) from exc
        choices = getattr(resp, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise MalformedResponseError(
                f"{self.server} answered 200 with something that is not a completion: "
                f"{describe(resp)}"
            )
        return resp

    async def generate(self, prompt: Prompt, decoding: Decoding) -> Completion:
        extra: dict[str, Any] = {}
        if decoding.seed is not None:
            extra["seed"] = decoding.seed
        if decoding.stop:
            extra["stop"] = list(decoding.stop)
        if self.logprobs:
            extra["logprobs"] = True
        resp = await self._create(
            self._clients.get().chat.completions,
            messages=as_messages(prompt),
            max_tokens=decoding.max_tokens,
            temperature=decoding.temperature,
            top_p=decoding.top_p,
            **extra,
        )
        choice = resp.choices[0]
        message = getattr(choice, "message", None)
        if message is None:
            raise MalformedResponseError(
                f"{self.server} answered a chat completion without a message: {describe(resp)}"
            )
        logprob = None
        content = getattr(getattr(choice, "logprobs", None), "content", None)
        if content:
            logprob = float(sum(t.logprob for t in content))
        usage = resp.usage
        return Completion(
            text=message.content or "",
            logprob=logprob,
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        )

    async def score_tokens(self, prompt: Prompt, continuation: str) -> tuple[EchoScores, Any]:
        """The checked per-token echo answer for ``continuation`` after ``prompt`` (rendered
        with the chat template), and the server's usage report."""
        import openai

        sent = self.render(prompt) + continuation
        try:
            resp = await self._create(
                self._clients.get().completions,
                prompt=sent,
                max_tokens=1,
                echo=True,
                logprobs=0,
                temperature=0.0,
            )
        except openai.NotFoundError as exc:
            raise UnsupportedOperationError(
                f"{self.server} has no /completions endpoint with echo to score "
                "log-probabilities; score with a judge instead (--scoring judge)"
            ) from exc
        choice = resp.choices[0]
        lp = getattr(choice, "logprobs", None)
        scores = continuation_scores(
            sent,
            continuation,
            getattr(choice, "text", None),
            getattr(lp, "text_offset", None),
            getattr(lp, "token_logprobs", None),
            getattr(lp, "tokens", None),
            server=f"the server at {self.server} (model {self.model})",
        )
        return scores, resp.usage

    async def score(self, prompt: Prompt, continuation: str) -> Completion:
        scores, usage = await self.score_tokens(prompt, continuation)
        count = scores.count
        billed_prompt = int(getattr(usage, "prompt_tokens", 0) or 0)  # includes the continuation
        billed_new = int(getattr(usage, "completion_tokens", 0) or 0)  # the one echo token
        return Completion(  # totals what was billed: the continuation is counted once
            text=continuation,
            logprob=scores.logprob,
            prompt_tokens=max(billed_prompt - count, 0),
            completion_tokens=min(count, billed_prompt) + billed_new,
        )


class AnthropicBackend(_SDKBackend):
    """Claude models through the ``anthropic`` SDK (its own retries and backoff).

    Args:
        model: model name (default ``$COREOPT_LLM_MODEL``).
        api_key: default ``$ANTHROPIC_API_KEY`` (read by the SDK).
        base_url: optional proxy URL.
        max_retries: the SDK's own retries, ``0`` by default (the :class:`~coreopt.llm.LLM`
            wrapper retries and counts every HTTP attempt).
        timeout: seconds per HTTP request.

    Anthropic gives no log-probabilities: :meth:`score` raises
    :class:`~coreopt.llm.UnsupportedOperationError` (score with a judge instead).
    """

    name = "anthropic"
    _sdk = "anthropic"

    def __init__(
        self,
        model: str | None = None,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        max_retries: int = 0,
        timeout: float = 60.0,
        **client_kwargs: Any,
    ) -> None:
        self.model = self._sdk_model(model)
        self.max_retries = max_retries
        self.timeout = float(timeout)
        self.base_url = base_url
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

    @property
    def sdk_retries(self) -> bool:
        """Whether the SDK retries by itself (then the wrapper does not retry on top)."""
        return self.max_retries > 0

    @property
    def identity(self) -> str:
        """Who answers, for cache keys (``anthropic`` or ``anthropic@URL`` for a proxy)."""
        return f"anthropic@{self.base_url.rstrip('/')}" if self.base_url else "anthropic"

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
