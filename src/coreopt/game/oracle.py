"""Memoised, counted, budgeted evaluation of a (possibly async, possibly failing) value function.

Every coalition is evaluated at most once (memo by bitmask). Calls in a batch run concurrently:
sync functions on a thread pool, ``async def`` functions on an event loop (the caller's loop when
one was handed over by :func:`coreopt.aleast_core`, else a private loop in a helper thread, so
the synchronous API works inside Jupyter's running loop). A failing call is retried with
exponential backoff, then raised as :class:`ValueFunctionError` naming the coalition; a NaN or
infinite value raises :class:`~coreopt.errors.NonFiniteError` at once. In both cases every value
already paid for stays in :attr:`ValueOracle.values` and travels on the exception. A value
function that raises :class:`~coreopt.errors.BudgetExhaustedError` (e.g. an LLM client whose call
or token budget ran out) is not retried: the oracle keeps the batch's other values and reports no
remaining budget, so the solver ends with a partial result.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import threading
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from coreopt.errors import BudgetExhaustedError, CoreoptError, NonFiniteError
from coreopt.game.coalitions import Players

ValueFn = Callable[[frozenset[Hashable]], float] | Callable[[frozenset[Hashable]], Awaitable[float]]


class ValueFunctionError(CoreoptError, RuntimeError):
    """The value function kept failing on a coalition.

    Attributes:
        coalition: the coalition (frozenset of labels) whose evaluation failed.
        values: every value paid for so far, ``{frozenset: float}``: pass it back as
            ``least_core(..., known_values=err.values)`` to resume without paying again.
    """

    def __init__(
        self, message: str, coalition: frozenset[Hashable], values: dict[frozenset[Hashable], float]
    ) -> None:
        super().__init__(message)
        self.coalition = coalition
        self.values = values


class ValueOracle:
    """Evaluates ``value_fn`` on coalitions given as masks, once each, within a budget.

    Args:
        value_fn: ``v(frozenset_of_labels) -> float``, sync or ``async def``.
        players: the players.
        budget: maximum number of calls (``None``: unlimited).
        retries: extra attempts per coalition after a failure.
        retry_delay: first backoff in seconds (doubles each retry).
        max_concurrency: calls in flight at once.
        known_values: values already paid for (``{coalition: value}``); not counted as calls.
        loop: an event loop running in another thread to run ``async`` calls on.
    """

    def __init__(
        self,
        value_fn: ValueFn,
        players: Players,
        *,
        budget: int | None = None,
        retries: int = 2,
        retry_delay: float = 0.5,
        max_concurrency: int = 8,
        known_values: Mapping[Iterable[Hashable], float] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not callable(value_fn):
            raise TypeError(f"value_fn must be callable, got {type(value_fn).__name__}")
        self.value_fn = value_fn
        self.players = players
        self.budget = budget
        self.retries = retries
        self.retry_delay = retry_delay
        self.max_concurrency = max_concurrency
        self.loop = loop
        self.is_async = inspect.iscoroutinefunction(value_fn) or inspect.iscoroutinefunction(
            getattr(value_fn, "__call__", None)  # noqa: B004 - async callable objects
        )
        self.cache: dict[int, float] = {}
        self.calls = 0
        self.seconds = 0.0
        self.exhausted = False
        self._fast: bool | None = None  # sync calls measured cheaper than a thread hand-off
        """Whether the value function raised :class:`BudgetExhaustedError` (no call is left)."""
        for coalition, value in (known_values or {}).items():
            mask = players.mask(coalition)
            self.cache[mask] = self._check(mask, value)

    @property
    def remaining(self) -> int | None:
        """Calls left in the budget (``None``: unlimited; ``0`` once the value function's own
        budget ran out)."""
        if self.exhausted:
            return 0
        return None if self.budget is None else self.budget - self.calls

    @property
    def values(self) -> dict[frozenset[Hashable], float]:
        """Every value known so far, keyed by coalition."""
        return {self.players.coalition(m): v for m, v in self.cache.items()}

    def __contains__(self, mask: int) -> bool:
        return mask in self.cache

    def evaluate(self, masks: Iterable[int]) -> list[int]:
        """Evaluate the masks not yet known, in order, as far as the budget allows.

        Returns:
            The masks newly evaluated (a prefix of the unknown ones, when the budget cuts it).
        """
        todo: list[int] = []
        seen: set[int] = set()
        for m in masks:
            m = int(m)
            if m in self.cache or m in seen:
                continue
            seen.add(m)
            todo.append(m)
        if self.remaining is not None:
            todo = todo[: max(self.remaining, 0)]
        if not todo:
            return []
        t0 = time.perf_counter()
        try:
            if self.is_async:
                self._run_async(todo)
            else:
                self._run_threads(todo)
        finally:
            self.seconds += time.perf_counter() - t0
        return [m for m in todo if m in self.cache]

    # -- internals -------------------------------------------------------------------------------

    def _check(self, mask: int, value: Any) -> float:
        try:
            out = float(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"value_fn returned {value!r} for coalition "
                f"{sorted(map(str, self.players.coalition(mask)))}; "
                "expected a real number"
            ) from exc
        if not math.isfinite(out):
            raise NonFiniteError(
                f"value_fn returned {out} for coalition "
                f"{sorted(map(str, self.players.coalition(mask)))}; values must be finite "
                "(err.result holds every value paid for so far)",
                result=self.values,
            )
        return out

    def _store(self, mask: int, value: Any) -> None:
        self.cache[mask] = self._check(mask, value)
        self.calls += 1

    def _fail(self, mask: int, exc: BaseException) -> ValueFunctionError:
        coalition = self.players.coalition(mask)
        return ValueFunctionError(
            f"value_fn failed on coalition {sorted(map(str, coalition))} after "
            f"{self.retries + 1} attempts: {type(exc).__name__}: {exc}. Every value paid for so "
            "far is in err.values (pass it back as known_values= to resume)",
            coalition,
            self.values,
        )

    def _call_sync(self, mask: int) -> Any:
        coalition = self.players.coalition(mask)
        for attempt in range(self.retries + 1):
            try:
                return self.value_fn(coalition)
            except BudgetExhaustedError:
                raise
            except Exception as exc:
                if attempt == self.retries:
                    raise self._fail(mask, exc) from exc
                time.sleep(self.retry_delay * 2**attempt)
        raise AssertionError("unreachable")

    def _run_threads(self, todo: list[int]) -> None:
        # Cheap value functions (table lookups, analytic games) lose more to thread hand-offs than
        # they gain: the first call of each batch is timed, and calls under 1 ms run in this thread.
        if todo and self.max_concurrency > 1 and self._fast is None:
            t0 = time.perf_counter()
            try:
                value = self._call_sync(todo[0])
            except BudgetExhaustedError:
                self.exhausted = True
                return
            self._fast = time.perf_counter() - t0 < 1e-3
            self._store(todo[0], value)
            todo = todo[1:]
        if len(todo) <= 1 or self.max_concurrency == 1 or self._fast:
            for m in todo:
                try:
                    value = self._call_sync(m)
                except BudgetExhaustedError:
                    self.exhausted = True
                    return
                self._store(m, value)
            return
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(todo))) as pool:
            futures = [pool.submit(self._call_sync, m) for m in todo]
            outcomes = [f.exception() or f.result() for f in futures]
        self._store_all(todo, outcomes)

    def _store_all(self, todo: list[int], outcomes: list[Any]) -> None:
        """Keep every successful value, then raise the first failure (with all values paid)."""
        error: BaseException | None = None
        for m, value in zip(todo, outcomes, strict=True):
            if isinstance(value, BudgetExhaustedError):  # not a failure: no call is left
                self.exhausted = True
                continue
            if isinstance(value, BaseException):
                error = error or value
                continue
            try:
                self._store(m, value)
            except BaseException as exc:
                error = error or exc
        if error is not None:
            if isinstance(error, ValueFunctionError):
                error.values = self.values
            raise error

    async def _call_async(self, mask: int, sem: asyncio.Semaphore) -> Any:
        coalition = self.players.coalition(mask)
        async with sem:
            for attempt in range(self.retries + 1):
                try:
                    return await self.value_fn(coalition)  # type: ignore[misc]
                except BudgetExhaustedError:
                    raise
                except Exception as exc:
                    if attempt == self.retries:
                        raise self._fail(mask, exc) from exc
                    await asyncio.sleep(self.retry_delay * 2**attempt)
        raise AssertionError("unreachable")

    async def _batch(self, todo: list[int]) -> list[Any]:
        sem = asyncio.Semaphore(self.max_concurrency)
        return await asyncio.gather(
            *(self._call_async(m, sem) for m in todo), return_exceptions=True
        )

    def _run_async(self, todo: list[int]) -> None:
        if self.loop is not None:
            results = asyncio.run_coroutine_threadsafe(self._batch(todo), self.loop).result()
        else:
            results = _run_in_fresh_loop(lambda: self._batch(todo))
        self._store_all(todo, results)


def _run_in_fresh_loop(make: Callable[[], Awaitable[Any]]) -> Any:
    """Run a coroutine to completion whether or not this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())  # type: ignore[arg-type]
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(make())  # type: ignore[arg-type]
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="coreopt-async-values")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
