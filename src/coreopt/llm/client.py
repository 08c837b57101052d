"""The shared wrapper around every backend: concurrency limit, retries, sqlite cache, merging of
identical in-flight calls, call and token budgets (with token reservations).

An :class:`LLM` may be used from several threads and event loops at once (a thread pool of
queries, Jupyter's loop and a helper thread): its concurrency limit, in-flight merging, cache and
budget are shared by all of them. It can also be pickled (Ray tasks, process pools): the copy
rebuilds its backend in the worker, reopens the same sqlite cache file (WAL: safe across
processes) and, when it has a budget, shares that budget with every other copy through a ledger
table in a sqlite file (see :meth:`LLM.share_budget`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import os
import random
import sqlite3
import tempfile
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coreopt.errors import BudgetExhaustedError
from coreopt.llm.cache import CacheKey, SQLiteCache, coalition_key, text_hash
from coreopt.llm.types import Backend, Completion, Decoding, LLMError, Prompt, as_messages

logger = logging.getLogger("coreopt.llm")

TEMPLATE_BASE_TOKENS = 16
"""Tokens reserved per call for a chat template's fixed part (begin/assistant-turn markers)."""
TEMPLATE_MESSAGE_TOKENS = 8
"""Tokens reserved per chat message for its role markers."""
RESERVATION_STALL_S = 600.0
"""A call waiting for room in a token budget gives up (budget spent) when the ledger has not
changed for this long: the reservations in its way belong to a worker that crashed."""


@dataclass(frozen=True)
class Budget:
    """Limits on what an :class:`LLM` may pay for (cache hits are free).

    Attributes:
        calls: most paid calls (``None``: unlimited). Counted when a call is dispatched (failed
            and retried attempts included), so it is never exceeded.
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
    """Counters of an :class:`LLM` in this process (cumulative).

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

    def add(self, other: Usage) -> None:
        """Add ``other``'s counters to these (e.g. a Ray worker's usage to the driver's)."""
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


# ------------------------------------------------------------------------------------------------
# Budget ledgers: where spent and reserved calls/tokens are counted
# ------------------------------------------------------------------------------------------------


def _check(budget: Budget, calls: int, tokens: int, reserved: int, need: int) -> str | None:
    """``None``: the call may go; ``"wait"``: only reservations in flight are in the way;
    otherwise why the budget refuses it."""
    if budget.calls is not None and calls >= budget.calls:
        return f"LLM call budget of {budget.calls} calls is spent"
    if budget.tokens is not None:
        if tokens + need > budget.tokens:
            return (
                f"LLM token budget of {budget.tokens} tokens is spent: {tokens} used, and this "
                f"call may need {need}"
            )
        if tokens + reserved + need > budget.tokens:
            return "wait"
    return None


class MemoryLedger:
    """Spent and reserved calls/tokens of one process (thread-safe)."""

    def __init__(self, calls: int = 0, tokens: int = 0) -> None:
        self.calls = calls
        self.tokens = tokens
        self.reserved = 0
        self._lock = threading.Lock()

    def reserve(self, budget: Budget, need: int) -> bool:
        """Count a call and reserve ``need`` tokens (``True``); ``False`` when the call must
        wait for calls in flight to settle.

        Raises:
            BudgetExhaustedError: the budget cannot take this call.
        """
        with self._lock:
            why = _check(budget, self.calls, self.tokens, self.reserved, need)
            if why == "wait":
                return False
            if why is not None:
                raise BudgetExhaustedError(why)
            self.calls += 1
            self.reserved += need
            return True

    def settle(self, reserved: int, spent: int) -> None:
        """Replace a call's reservation by the tokens it spent."""
        with self._lock:
            self.reserved -= reserved
            self.tokens += spent

    def totals(self) -> tuple[int, int, int]:
        """``(calls, tokens, reserved)``."""
        with self._lock:
            return self.calls, self.tokens, self.reserved


_LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS budget_ledger (
    run TEXT PRIMARY KEY, calls INTEGER, tokens INTEGER, reserved INTEGER, updated REAL
)
"""


class SQLiteLedger:
    """Spent and reserved calls/tokens in a sqlite table, shared by every process using the file.

    Each reservation is one ``BEGIN IMMEDIATE`` transaction (WAL journal), so processes on one
    machine (Ray workers, process pools) see one budget. The row is keyed by ``run``, so several
    runs can share a file (the LLM cache's, by default) without sharing budgets.

    Args:
        path: the sqlite file.
        run: the ledger's key (a fresh one starts at ``calls``/``tokens``).
    """

    def __init__(
        self, path: str | os.PathLike[str], run: str, *, calls: int = 0, tokens: int = 0
    ) -> None:
        self.path = str(path)
        self.run = run
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            self.path, check_same_thread=False, timeout=60.0, isolation_level=None
        )
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(_LEDGER_SCHEMA)
            self._conn.execute(
                "INSERT OR IGNORE INTO budget_ledger VALUES (?, ?, ?, 0, ?)",
                (run, calls, tokens, time.time()),
            )

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "run": self.run}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["run"])  # type: ignore[misc]

    def reserve(self, budget: Budget, need: int) -> bool:
        """As :meth:`MemoryLedger.reserve`, atomically over every process."""
        calls, tokens, reserved = self.totals()  # cheap read first: waiting calls poll
        why = _check(budget, calls, tokens, reserved, need)
        if why is None:
            with self._lock:
                cur = self._conn.execute("BEGIN IMMEDIATE")
                try:
                    calls, tokens, reserved = cur.execute(
                        "SELECT calls, tokens, reserved FROM budget_ledger WHERE run = ?",
                        (self.run,),
                    ).fetchone()
                    why = _check(budget, calls, tokens, reserved, need)
                    if why is None:
                        cur.execute(
                            "UPDATE budget_ledger SET calls = calls + 1, "
                            "reserved = reserved + ?, updated = ? WHERE run = ?",
                            (need, time.time(), self.run),
                        )
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise
                cur.execute("COMMIT")
        if why == "wait":
            return False
        if why is not None:
            raise BudgetExhaustedError(why)
        return True

    def settle(self, reserved: int, spent: int) -> None:
        """Replace a call's reservation by the tokens it spent."""
        with self._lock:
            self._conn.execute(
                "UPDATE budget_ledger SET reserved = reserved - ?, tokens = tokens + ?, "
                "updated = ? WHERE run = ?",
                (reserved, spent, time.time(), self.run),
            )

    def totals(self) -> tuple[int, int, int]:
        """``(calls, tokens, reserved)`` over every process."""
        with self._lock:
            row = self._conn.execute(
                "SELECT calls, tokens, reserved FROM budget_ledger WHERE run = ?", (self.run,)
            ).fetchone()
        return int(row[0]), int(row[1]), int(row[2])

    def close(self) -> None:
        with self._lock:
            self._conn.close()


# ------------------------------------------------------------------------------------------------
# A concurrency limit shared by every event loop and thread
# ------------------------------------------------------------------------------------------------


class _Limiter:
    """A FIFO semaphore usable from any event loop in any thread (``async with limiter:``)."""

    def __init__(self, value: int) -> None:
        self._value = value
        self._lock = threading.Lock()
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()

    async def __aenter__(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._value > 0 and not self._waiters:
                self._value -= 1
                return
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append((loop, fut))
        try:
            await fut
        except BaseException:
            with self._lock:
                try:
                    self._waiters.remove((loop, fut))
                    granted = False
                except ValueError:  # popped by release(): a grant is on its way or arrived
                    granted = fut.done() and not fut.cancelled()
            if granted:
                self._release()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        with self._lock:
            while self._waiters:
                loop, fut = self._waiters.popleft()
                if loop.is_closed():
                    continue
                try:
                    loop.call_soon_threadsafe(self._grant, fut)
                except RuntimeError:  # the loop closed meanwhile
                    continue
                return
            self._value += 1

    def _grant(self, fut: asyncio.Future[None]) -> None:
        if fut.done():  # cancelled before the grant arrived: pass it on
            self._release()
        else:
            fut.set_result(None)


# ------------------------------------------------------------------------------------------------
# The wrapper
# ------------------------------------------------------------------------------------------------


class LLM:
    """A backend with the shared machinery around it. Use :meth:`agenerate`/:meth:`ascore` from
    async code or :meth:`generate`/:meth:`score` from sync code (Jupyter included).

    Args:
        backend: any :class:`~coreopt.llm.Backend`.
        max_concurrency: calls in flight at once, over every thread and event loop using this
            object.
        retries: retries of transient errors for backends whose SDK does not retry (the OpenAI
            and Anthropic SDKs retry themselves: see their ``max_retries``).
        retry_delay: first backoff in seconds; doubles each retry, with jitter, up to
            ``max_delay``.
        cache: ``None`` for the default file (:func:`~coreopt.llm.cache.default_cache_path`),
            ``False`` for none, a path, or a :class:`SQLiteCache`.
        budget: a :class:`Budget`; when it runs out a call raises
            :class:`~coreopt.errors.BudgetExhaustedError` (least_core then returns a partial
            result).

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
        self._setup(MemoryLedger())

    def _setup(self, ledger: MemoryLedger | SQLiteLedger, *, copy: bool = False) -> None:
        self.is_copy = copy  # unpickled (a copy in a worker): its usage is its own
        self.usage = Usage()
        self.ledger: MemoryLedger | SQLiteLedger = ledger
        self._lock = threading.Lock()
        self._limiter = _Limiter(self.max_concurrency)
        self._inflight: dict[str, concurrent.futures.Future[Completion]] = {}

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
            weakref.finalize(self, _remove_sqlite, tmp)
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
        self._setup(state["ledger"] or MemoryLedger(), copy=True)

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
        """Log-probability of ``continuation`` as the answer to ``prompt`` (cached)."""
        key = self.key(
            "score",
            template=text_hash(template or _prompt_hash(prompt), continuation),
            coalition=coalition,
        )

        def need() -> int:
            return self.reservation(prompt, new_tokens=1, continuation=continuation)

        return await self._cached(key, lambda: self.backend.score(prompt, continuation), need)

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
        retries = 0 if getattr(self.backend, "sdk_retries", False) else self.retries
        async with self._limiter:
            reserve = need() if self.budget.tokens is not None else 0
            for attempt in range(retries + 1):
                await self._wait_for_room(reserve)
                with self._lock:
                    self.usage.calls += 1
                try:
                    out = await call()
                except BaseException as exc:
                    self.ledger.settle(reserve, 0)  # a failed call bills nothing we can know
                    if isinstance(exc, BudgetExhaustedError) or not isinstance(exc, Exception):
                        raise
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
                self.ledger.settle(reserve, out.total_tokens)
                with self._lock:
                    self.usage.tokens += out.total_tokens
                return out
        raise AssertionError("unreachable")


def _remove_sqlite(path: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            Path(path + suffix).unlink()


def _prompt_hash(prompt: Prompt) -> str:
    return text_hash(*(f"{m['role']}:{m['content']}" for m in as_messages(prompt)))


def run_sync(make: Callable[[], Awaitable[Any]]) -> Any:
    """Run a coroutine to completion from sync code, even inside a running loop (Jupyter)."""
    from coreopt.parallel.aio import run_sync as _run_sync

    return _run_sync(make)


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
