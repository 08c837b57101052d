"""The shared wrapper around every backend: concurrency limit (adaptive for servers), retries
counted as HTTP attempts, sqlite cache keyed by the server's identity, merging of identical
in-flight calls, call and token budgets (with token reservations), and the check that scores are
real log-probabilities before they are cached.

An :class:`LLM` may be used from several threads and event loops at once (a thread pool of
queries, Jupyter's loop and a helper thread): its concurrency limit, in-flight merging, cache and
budget are shared by all of them. It can also be pickled (Ray tasks, process pools): the copy
rebuilds its backend in the worker, reopens the same sqlite cache file (WAL: safe across
processes) and, when it has a budget, shares that budget with every other copy through a ledger
table in a sqlite file (see :meth:`LLM.share_budget`).

The parts live in their own modules: :mod:`coreopt.llm.budget` (:class:`Budget`, :class:`Usage`),
:mod:`coreopt.llm.ledger` (where budgets are counted), :mod:`coreopt.llm.limiter` (calls in
flight), :mod:`coreopt.llm.retry` (backoff, ``Retry-After``), :mod:`coreopt.llm.stats`
(:func:`mean_and_stderr`) and :mod:`coreopt.llm.selftest` (the check of a server's
log-probabilities); their names stay importable from here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import os
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Any

from coreopt.errors import BudgetExhaustedError
from coreopt.llm.budget import TEMPLATE_BASE_TOKENS, TEMPLATE_MESSAGE_TOKENS, Budget, Usage
from coreopt.llm.cache import CacheKey, SQLiteCache, coalition_key, text_hash
from coreopt.llm.ledger import (
    RESERVATION_STALL_S,
    MemoryLedger,
    SQLiteLedger,
    budget_check,
    remove_sqlite,
)
from coreopt.llm.limiter import Limiter
from coreopt.llm.retry import is_congestion, is_timeout, retry_delay
from coreopt.llm.stats import mean_and_stderr
from coreopt.llm.types import (
    Backend,
    BadScoresError,
    Completion,
    Decoding,
    LLMError,
    Prompt,
    as_messages,
)

__all__ = [
    "LLM",
    "RESERVATION_STALL_S",
    "TEMPLATE_BASE_TOKENS",
    "TEMPLATE_MESSAGE_TOKENS",
    "Budget",
    "MemoryLedger",
    "SQLiteLedger",
    "Usage",
    "budget_check",
    "mean_and_stderr",
    "run_sync",
]

logger = logging.getLogger("coreopt.llm")

_NOT_WRAPPED = (BadScoresError, NotImplementedError, TypeError, ValueError)
"""Failures raised as they are (they name their cause); others become an LLMError that counts the
attempts."""


class LLM:
    """A backend with the shared machinery around it. Use :meth:`agenerate`/:meth:`ascore` from
    async code or :meth:`generate`/:meth:`score` from sync code (Jupyter included).

    Args:
        backend: any :class:`~coreopt.llm.Backend`.
        max_concurrency: most calls in flight at once, over every thread and event loop using
            this object.
        retries: retries of transient errors (timeouts, dropped connections, 408/409/429/5xx,
            malformed 200 answers); each retry is one more HTTP attempt, counted in
            :attr:`usage` (``calls`` and ``retries``) and in the budget. Not used for a backend
            whose SDK retries by itself (``max_retries > 0`` on it).
        retry_delay: first backoff in seconds; doubles each retry, with jitter, up to
            ``max_delay``; a server's ``Retry-After`` (up to 60 s) replaces it.
        cache: ``None`` for the default file (:func:`~coreopt.llm.cache.default_cache_path`),
            ``False`` for none, a path, or a :class:`SQLiteCache`.
        budget: a :class:`Budget`; when it runs out a call raises
            :class:`~coreopt.errors.BudgetExhaustedError` (least_core then returns a partial
            result).
        adaptive: adapt the calls in flight to the server (see
            :class:`~coreopt.llm.limiter.Limiter`: start at 2, grow while answers come back
            within a quarter of the timeout, halve on a timeout or 429/503), never above
            ``max_concurrency``. Default: on for backends with a request ``timeout`` (servers),
            off for local models (whose scoring batches concurrent calls).

    Cache keys carry the backend's ``identity`` (for a server: its base URL and a fingerprint of
    the served model where ``/models`` reports one), so two servers answering to one model name
    never share values.

    Pickling (Ray tasks, process pools) ships the backend (rebuilt in the worker: SDK clients,
    local models), the settings, the cache's path and the budget; the copy starts with zero
    :attr:`usage` and a budget shared with the original (:meth:`share_budget` is called first).

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
        adaptive: bool | None = None,
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
        self.adaptive = (
            getattr(backend, "timeout", None) is not None if adaptive is None else bool(adaptive)
        )
        self._setup(MemoryLedger())

    def _setup(self, ledger: MemoryLedger | SQLiteLedger, *, copy: bool = False) -> None:
        self.is_copy = copy  # unpickled (a copy in a worker): its usage is its own
        self.usage = Usage()
        self.ledger: MemoryLedger | SQLiteLedger = ledger
        self._lock = threading.Lock()
        self.limiter = Limiter(self.max_concurrency, adaptive=self.adaptive)
        self._inflight: dict[str, concurrent.futures.Future[Completion]] = {}
        self._identity: concurrent.futures.Future[None] | None = None
        self.verified: set[str] = set()  # self-tests passed in this process

    def __repr__(self) -> str:
        return (
            f"LLM({self.backend!r}, max_concurrency={self.max_concurrency}, "
            f"cache={self.cache!r}, budget={self.budget})"
        )

    # -- pickling (Ray, process pools) -----------------------------------------------------------

    def share_budget(self, path: str | os.PathLike[str] | None = None) -> SQLiteLedger:
        """Move the budget's counters to a :class:`SQLiteLedger` that copies of this object in
        other processes share (done automatically when it is pickled with a budget).

        Args:
            path: the sqlite file; default: the cache's file, else a new temporary file
                (removed when this object is garbage-collected).

        The file must be on this machine's disk (sqlite's WAL needs shared memory): on a
        multi-node cluster each node would count against its own copy of the file.
        """
        if isinstance(self.ledger, SQLiteLedger) and path is None:
            return self.ledger
        if path is None and self.cache is not None and self.cache.path != ":memory:":
            path = self.cache.path
        if path is None:
            fd, tmp = tempfile.mkstemp(prefix="coreopt-budget-", suffix=".sqlite")
            os.close(fd)
            path = tmp
            weakref.finalize(self, remove_sqlite, tmp)
        calls, tokens, _ = self.ledger.totals()
        ledger = SQLiteLedger(path, uuid.uuid4().hex, calls=calls, tokens=tokens)
        self.ledger = ledger
        return ledger

    def __getstate__(self) -> dict[str, Any]:
        if self.budget.limited:
            self.share_budget()
        shared = self.ledger if isinstance(self.ledger, SQLiteLedger) else None
        return {
            "backend": self.backend,
            "max_concurrency": self.max_concurrency,
            "retries": self.retries,
            "retry_delay": self.retry_delay,
            "max_delay": self.max_delay,
            "cache": None if self.cache is None else self.cache.path,
            "budget": self.budget,
            "adaptive": self.adaptive,
            "ledger": shared,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.backend = state["backend"]
        self.max_concurrency = state["max_concurrency"]
        self.retries = state["retries"]
        self.retry_delay = state["retry_delay"]
        self.max_delay = state["max_delay"]
        self.cache = None if state["cache"] is None else SQLiteCache(state["cache"])
        self.budget = state["budget"]
        self.adaptive = state.get("adaptive", False)
        self._setup(state["ledger"] or MemoryLedger(), copy=True)

    @property
    def name(self) -> str:
        return str(self.backend.name)

    @property
    def model(self) -> str:
        return str(self.backend.model)

    @property
    def identity(self) -> str:
        """Who answers, as cache keys see it: the backend's ``identity`` (a server's base URL and
        model fingerprint) or, for local backends, its kind."""
        return str(getattr(self.backend, "identity", self.backend.name))

    def describe(self) -> str:
        """The backend in words, for messages (``the openai server at URL (model M)``)."""
        server = getattr(self.backend, "server", None)
        if server:
            return f"the {self.name} server at {server} (model {self.model})"
        return f"the {self.name} backend ({self.model})"

    async def resolve_identity(self) -> str:
        """Ask the backend for its model fingerprint once (``afingerprint``, where it has one)
        before any cache key is made; later calls return at once."""
        ask = getattr(self.backend, "afingerprint", None)
        if ask is None:
            return self.identity
        with self._lock:
            fut = self._identity
            owner = fut is None
            if fut is None:
                fut = self._identity = concurrent.futures.Future()
        if owner:
            try:
                await ask()
            finally:
                fut.set_result(None)
        else:
            await asyncio.wrap_future(fut)
        return self.identity

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
            self.identity, self.model, template, coalition_key(coalition), params, kind, sample
        )

    def reservation(self, prompt: Prompt, *, new_tokens: int, continuation: str = "") -> int:
        """Tokens reserved for a call before it is dispatched (see :class:`Budget`).

        Args:
            prompt: the prompt.
            new_tokens: the most tokens the call generates (``max_tokens``).
            continuation: text scored after the prompt (for :meth:`score`).
        """
        count = getattr(self.backend, "count_tokens", None)
        if callable(count):
            return int(count(prompt, continuation)) + new_tokens
        messages = as_messages(prompt)
        nbytes = sum(len(m["role"]) + len(m["content"].encode("utf-8")) for m in messages)
        nbytes += len(continuation.encode("utf-8"))
        text_tokens = math.ceil(nbytes / self.budget.bytes_per_token)
        return (
            text_tokens
            + TEMPLATE_BASE_TOKENS
            + TEMPLATE_MESSAGE_TOKENS * len(messages)
            + new_tokens
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
        await self.resolve_identity()
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
        final = decoding

        def need() -> int:
            return self.reservation(prompt, new_tokens=final.max_tokens)

        return await self._cached(key, lambda: self.backend.generate(prompt, final), need)

    async def ascore(
        self,
        prompt: Prompt,
        continuation: str,
        *,
        template: str | None = None,
        coalition: Iterable[Hashable] = (),
    ) -> Completion:
        """Log-probability of ``continuation`` as the answer to ``prompt`` (cached).

        The backend's answer must be a finite log-probability <= 0; otherwise
        :class:`~coreopt.llm.BadScoresError` is raised and nothing is cached."""
        await self.resolve_identity()
        key = self.key(
            "score",
            template=text_hash(template or _prompt_hash(prompt), continuation),
            coalition=coalition,
            params=str(getattr(self.backend, "score_format", "")),
        )

        def need() -> int:
            return self.reservation(prompt, new_tokens=1, continuation=continuation)

        return await self._cached(
            key, lambda: self.backend.score(prompt, continuation), need, self._check_score
        )

    def _check_score(self, out: Completion) -> None:
        lp = out.logprob
        if not isinstance(lp, int | float) or not math.isfinite(lp) or lp > 1e-4:
            raise BadScoresError(
                f"{self.describe()} scored a continuation with log-probability {lp!r}: a "
                "log-probability must be a finite number <= 0 (not cached)"
            )

    async def averify_scoring(self, *, force: bool = False) -> Any:
        """Self-test this LLM's log-probabilities before paying for a solve scored with them
        (see :func:`coreopt.llm.selftest.self_test`); a pass is remembered per server and model
        (in the cache file, else in this object).

        Returns:
            The :class:`~coreopt.llm.selftest.SelfTestReport`, or ``None`` when a pass was
            remembered.

        Raises:
            BadScoresError: the test failed (the message names the server, what was seen and a
                fix).
        """
        from coreopt.llm.selftest import averify

        return await averify(self, force=force)

    def verify_scoring(self, *, force: bool = False) -> Any:
        """Synchronous :meth:`averify_scoring`."""
        return run_sync(lambda: self.averify_scoring(force=force))

    # -- sync API (works inside a running event loop, e.g. Jupyter) --------------------------------

    def generate(self, prompt: Prompt, decoding: Decoding | None = None, **kw: Any) -> Completion:
        """Synchronous :meth:`agenerate`."""
        return run_sync(lambda: self.agenerate(prompt, decoding, **kw))

    def score(self, prompt: Prompt, continuation: str, **kw: Any) -> Completion:
        """Synchronous :meth:`ascore`."""
        return run_sync(lambda: self.ascore(prompt, continuation, **kw))

    # -- internals -------------------------------------------------------------------------------

    async def _cached(
        self,
        key: CacheKey,
        call: Callable[[], Awaitable[Completion]],
        need: Callable[[], int],
        check: Callable[[Completion], None] | None = None,
    ) -> Completion:
        digest = key.digest
        while True:
            if self.cache is not None:
                hit = self.cache.get(key)
                if hit is not None:
                    with self._lock:
                        self.usage.cache_hits += 1
                    return hit
            with self._lock:
                pending = self._inflight.get(digest)
                owner = pending is None
                if pending is None:
                    pending = self._inflight[digest] = concurrent.futures.Future()
                else:
                    self.usage.merged += 1
            if owner:
                break
            try:  # an identical call is in flight (on any loop): wait for its answer
                return await asyncio.shield(asyncio.wrap_future(pending))
            except (asyncio.CancelledError, concurrent.futures.CancelledError):
                if not pending.cancelled():
                    raise  # this request itself was cancelled
                # the call we waited on was cancelled with its caller: make it ourselves
        try:
            result = await self._paid(call, need)
            if check is not None:
                check(result)  # a bad answer raises here: never cached
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                pending.cancel()
            else:
                pending.set_exception(exc)
            raise
        else:
            if self.cache is not None:
                self.cache.put(key, result)
            pending.set_result(result)
            return result
        finally:
            with self._lock:
                self._inflight.pop(digest, None)

    async def _wait_for_room(self, need: int) -> None:
        """Reserve ``need`` tokens, waiting while reservations of calls in flight are in the way
        (refused if they never settle: a worker holding them crashed)."""
        pause, seen, since = 0.002, None, time.monotonic()
        while not self.ledger.reserve(self.budget, need):
            totals = self.ledger.totals()
            if totals != seen:
                seen, since = totals, time.monotonic()
            elif time.monotonic() - since > RESERVATION_STALL_S:
                raise BudgetExhaustedError(
                    f"waited {RESERVATION_STALL_S:.0f} s for {totals[2]} reserved tokens to "
                    "settle (a worker that held them crashed?); the token budget is treated as "
                    "spent"
                )
            await asyncio.sleep(pause)
            pause = min(2 * pause, 0.05)

    async def _paid(
        self, call: Callable[[], Awaitable[Completion]], need: Callable[[], int]
    ) -> Completion:
        """Make a paid call: one slot of the limiter, a budget reservation per HTTP attempt,
        retries of transient failures (each counted), and the limiter told how the server
        coped."""
        retries = 0 if getattr(self.backend, "sdk_retries", False) else self.retries
        timeout = getattr(self.backend, "timeout", None)
        async with self.limiter:
            reserve = need() if self.budget.tokens is not None else 0
            for attempt in range(retries + 1):
                await self._wait_for_room(reserve)
                with self._lock:
                    self.usage.calls += 1
                epoch, started = self.limiter.epoch, time.monotonic()
                try:
                    out = await call()
                except BaseException as exc:
                    self.ledger.settle(reserve, 0)  # a failed call bills nothing we can know
                    if isinstance(exc, BudgetExhaustedError) or not isinstance(exc, Exception):
                        raise
                    if is_timeout(exc):
                        with self._lock:
                            self.usage.timeouts += 1
                    if is_congestion(exc):
                        self.limiter.congested(epoch)
                    if attempt < retries and self.backend.is_transient(exc):
                        delay = retry_delay(exc, attempt, self.retry_delay, self.max_delay)
                        with self._lock:
                            self.usage.retries += 1
                        logger.info(
                            "%s: attempt %d failed (%s); retrying in %.2f s",
                            self.describe(),
                            attempt + 1,
                            exc,
                            delay,
                        )
                        await asyncio.sleep(delay)
                        continue
                    with self._lock:
                        self.usage.failures += 1
                    if isinstance(exc, _NOT_WRAPPED):
                        raise
                    what = "HTTP request(s)" if hasattr(self.backend, "server") else "attempt(s)"
                    if getattr(self.backend, "sdk_retries", False):
                        what += " (plus the SDK's own retries, not counted)"
                    hint = ""
                    if "Connection" in type(exc).__name__ and hasattr(self.backend, "server"):
                        hint = " (the server refused or dropped the connection: is it running?)"
                    raise LLMError(
                        f"{self.describe()} failed after {attempt + 1} {what}: "
                        f"{type(exc).__name__}: {exc}{hint}"
                    ) from exc
                self.limiter.answered(time.monotonic() - started, timeout)
                self.ledger.settle(reserve, out.total_tokens)
                with self._lock:
                    self.usage.tokens += out.total_tokens
                return out
        raise AssertionError("unreachable")


def _prompt_hash(prompt: Prompt) -> str:
    return text_hash(*(f"{m['role']}:{m['content']}" for m in as_messages(prompt)))


def run_sync(make: Callable[[], Awaitable[Any]]) -> Any:
    """Run a coroutine to completion from sync code, even inside a running loop (Jupyter)."""
    from coreopt.parallel.aio import run_sync as _run_sync

    return _run_sync(make)
