"""The shared wrapper around every backend: concurrency limit, retries, sqlite cache, merging of
identical in-flight calls, call and token budgets."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import threading
import weakref
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from coreopt.errors import BudgetExhaustedError
from coreopt.llm.cache import CacheKey, SQLiteCache, coalition_key, text_hash
from coreopt.llm.types import Backend, Completion, Decoding, LLMError, Prompt, as_messages

logger = logging.getLogger("coreopt.llm")


@dataclass(frozen=True)
class Budget:
    """Limits on what an :class:`LLM` may pay for (cache hits are free).

    Attributes:
        calls: most paid calls (``None``: unlimited).
        tokens: most billed tokens, prompt plus completion (``None``: unlimited). Checked before
            each call, so calls already in flight may overshoot it by their own tokens.
    """

    calls: int | None = None
    tokens: int | None = None

    def __post_init__(self) -> None:
        for name in ("calls", "tokens"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or v < 0):
                raise ValueError(f"Budget.{name} must be an int >= 0 or None, got {v!r}")


@dataclass
class Usage:
    """Counters of an :class:`LLM` (cumulative).

    Attributes:
        calls: paid calls started (including failed ones).
        tokens: billed tokens of the paid calls that returned.
        cache_hits: requests answered from the cache.
        merged: requests that waited on an identical call already in flight.
        retries: retried attempts.
        failures: calls that failed for good.
    """

    calls: int = 0
    tokens: int = 0
    cache_hits: int = 0
    merged: int = 0
    retries: int = 0
    failures: int = 0


class LLM:
    """A backend with the shared machinery around it. Use :meth:`agenerate`/:meth:`ascore` from
    async code or :meth:`generate`/:meth:`score` from sync code (Jupyter included).

    Args:
        backend: any :class:`~coreopt.llm.Backend`.
        max_concurrency: calls in flight at once (per event loop).
        retries: retries of transient errors for backends whose SDK does not retry (the OpenAI
            and Anthropic SDKs retry themselves: see their ``max_retries``).
        retry_delay: first backoff in seconds; doubles each retry, with jitter, up to
            ``max_delay``.
        cache: ``None`` for the default file (:func:`~coreopt.llm.cache.default_cache_path`),
            ``False`` for none, a path, or a :class:`SQLiteCache`.
        budget: a :class:`Budget`; when it runs out a call raises
            :class:`~coreopt.errors.BudgetExhaustedError` (least_core then returns a partial
            result).

    Examples:
        >>> from coreopt.llm import LLM, CallableBackend
        >>> llm = LLM(CallableBackend(lambda p: "42", model="const"), cache=False)
        >>> llm.generate("What is six times seven?").text
        '42'
    """

    def __init__(
        self,
        backend: Backend,
        *,
        max_concurrency: int = 8,
        retries: int = 3,
        retry_delay: float = 0.5,
        max_delay: float = 20.0,
        cache: SQLiteCache | str | os.PathLike[str] | bool | None = None,
        budget: Budget | None = None,
    ) -> None:
        for name in ("generate", "score", "is_transient"):
            if not callable(getattr(backend, name, None)):
                raise TypeError(f"backend must implement {name}(); got {type(backend).__name__}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency!r}")
        if retries < 0 or retry_delay < 0:
            raise ValueError("retries and retry_delay must be >= 0")
        self.backend = backend
        self.max_concurrency = max_concurrency
        self.retries = retries
        self.retry_delay = retry_delay
        self.max_delay = max_delay
        self.cache: SQLiteCache | None
        if cache is None or cache is True:
            self.cache = SQLiteCache()
        elif cache is False:
            self.cache = None
        elif isinstance(cache, SQLiteCache):
            self.cache = cache
        else:
            self.cache = SQLiteCache(cache)
        self.budget = budget or Budget()
        self.usage = Usage()
        self._lock = threading.Lock()
        self._sems: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )
        self._inflight: dict[tuple[int, str], asyncio.Future[Completion]] = {}

    def __repr__(self) -> str:
        return (
            f"LLM({self.backend!r}, max_concurrency={self.max_concurrency}, "
            f"cache={self.cache!r}, budget={self.budget})"
        )

    @property
    def name(self) -> str:
        return str(self.backend.name)

    @property
    def model(self) -> str:
        return str(self.backend.model)

    # -- keys ------------------------------------------------------------------------------------

    def key(
        self,
        kind: str,
        *,
        template: str,
        coalition: Iterable[Hashable] = (),
        params: str = "",
        sample: int = 0,
    ) -> CacheKey:
        """The cache key of a call (see :class:`~coreopt.llm.cache.CacheKey`)."""
        return CacheKey(
            self.name, self.model, template, coalition_key(coalition), params, kind, sample
        )

    # -- async API -------------------------------------------------------------------------------

    async def agenerate(
        self,
        prompt: Prompt,
        decoding: Decoding | None = None,
        *,
        template: str | None = None,
        coalition: Iterable[Hashable] = (),
        sample: int = 0,
    ) -> Completion:
        """Generate (cached). ``template`` identifies the prompt template and its fixed inputs
        (default: a hash of the whole prompt); ``coalition`` the labels in context."""
        decoding = decoding or Decoding()
        if sample and decoding.seed is not None:
            decoding = Decoding(
                decoding.max_tokens,
                decoding.temperature,
                decoding.top_p,
                decoding.seed + sample,
                decoding.stop,
            )
        key = self.key(
            "generate",
            template=template or _prompt_hash(prompt),
            coalition=coalition,
            params=decoding.key(),
            sample=sample,
        )
        return await self._cached(key, lambda: self.backend.generate(prompt, decoding))

    async def ascore(
        self,
        prompt: Prompt,
        continuation: str,
        *,
        template: str | None = None,
        coalition: Iterable[Hashable] = (),
    ) -> Completion:
        """Log-probability of ``continuation`` as the answer to ``prompt`` (cached)."""
        key = self.key(
            "score",
            template=text_hash(template or _prompt_hash(prompt), continuation),
            coalition=coalition,
        )
        return await self._cached(key, lambda: self.backend.score(prompt, continuation))

    # -- sync API (works inside a running event loop, e.g. Jupyter) --------------------------------

    def generate(self, prompt: Prompt, decoding: Decoding | None = None, **kw: Any) -> Completion:
        """Synchronous :meth:`agenerate`."""
        return run_sync(lambda: self.agenerate(prompt, decoding, **kw))

    def score(self, prompt: Prompt, continuation: str, **kw: Any) -> Completion:
        """Synchronous :meth:`ascore`."""
        return run_sync(lambda: self.ascore(prompt, continuation, **kw))

    # -- internals -------------------------------------------------------------------------------

    def _sem(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        with self._lock:
            sem = self._sems.get(loop)
            if sem is None:
                sem = self._sems[loop] = asyncio.Semaphore(self.max_concurrency)
            return sem

    def _reserve(self) -> None:
        with self._lock:
            b, u = self.budget, self.usage
            if b.calls is not None and u.calls >= b.calls:
                raise BudgetExhaustedError(f"LLM call budget of {b.calls} calls is spent")
            if b.tokens is not None and u.tokens >= b.tokens:
                raise BudgetExhaustedError(
                    f"LLM token budget of {b.tokens} tokens is spent ({u.tokens} used)"
                )
            u.calls += 1

    async def _cached(self, key: CacheKey, call: Callable[[], Awaitable[Completion]]) -> Completion:
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                with self._lock:
                    self.usage.cache_hits += 1
                return hit
        loop = asyncio.get_running_loop()
        slot = (id(loop), key.digest)
        pending = self._inflight.get(slot)
        if pending is not None:
            with self._lock:
                self.usage.merged += 1
            return await asyncio.shield(pending)
        fut: asyncio.Future[Completion] = loop.create_future()
        self._inflight[slot] = fut
        try:
            result = await self._paid(call)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        else:
            if self.cache is not None:
                self.cache.put(key, result)
            fut.set_result(result)
            return result
        finally:
            self._inflight.pop(slot, None)

    async def _paid(self, call: Callable[[], Awaitable[Completion]]) -> Completion:
        retries = 0 if getattr(self.backend, "sdk_retries", False) else self.retries
        async with self._sem():
            for attempt in range(retries + 1):
                self._reserve()
                try:
                    out = await call()
                except BudgetExhaustedError:
                    raise
                except Exception as exc:
                    if attempt < retries and self.backend.is_transient(exc):
                        delay = min(self.max_delay, self.retry_delay * 2**attempt)
                        delay *= 0.5 + random.random() / 2  # jitter
                        with self._lock:
                            self.usage.retries += 1
                        logger.info("LLM call failed (%s); retrying in %.2f s", exc, delay)
                        await asyncio.sleep(delay)
                        continue
                    with self._lock:
                        self.usage.failures += 1
                    if isinstance(exc, LLMError | NotImplementedError | TypeError | ValueError):
                        raise
                    raise LLMError(
                        f"{self.name} backend ({self.model}) failed after {attempt + 1} "
                        f"attempt(s): {type(exc).__name__}: {exc}"
                    ) from exc
                with self._lock:
                    self.usage.tokens += out.total_tokens
                return out
        raise AssertionError("unreachable")


def _prompt_hash(prompt: Prompt) -> str:
    return text_hash(*(f"{m['role']}:{m['content']}" for m in as_messages(prompt)))


def run_sync(make: Callable[[], Awaitable[Any]]) -> Any:
    """Run a coroutine to completion from sync code, even inside a running loop (Jupyter)."""
    from coreopt.game.oracle import _run_in_fresh_loop

    return _run_in_fresh_loop(make)


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of repeated samples (``0.0`` error for one sample)."""
    if not values:
        raise ValueError("no samples")
    k = len(values)
    mean = math.fsum(values) / k
    if k == 1:
        return mean, 0.0
    var = math.fsum((v - mean) ** 2 for v in values) / (k - 1)
    return mean, math.sqrt(var / k)
