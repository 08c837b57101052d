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
import bisect
import inspect
import itertools
import math
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias, cast

import numpy as np
import numpy.typing as npt

from coreopt.errors import BudgetExhaustedError, CoreoptError, NonFiniteError
from coreopt.game.coalitions import Players, incidence, mask_array
from coreopt.game.threads import caller_threads
from coreopt.parallel.aio import run_sync

_TIMED_CALLS = 4
"""Sync calls timed one by one before concluding the value function is slow (threads then)."""


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


class VectorizedValue:
    """A value function evaluated on many coalitions per call (see :func:`vectorized`).

    Attributes:
        fn: ``fn(batch) -> values``; ``batch`` is a bool array of shape ``(B, n)`` (``form=
            "incidence"``: ``batch[r, i]`` is whether player ``i``, in the order given to
            ``least_core``, is in coalition ``r``) or an int64 array of shape ``(B,)`` of
            bitmasks (``form="masks"``: player ``i`` is bit ``i``; above 62 players an ``object``
            array of Python ints); ``values`` has shape ``(B,)``.
        form: ``"incidence"`` or ``"masks"``.
        batch_size: most coalitions per call of ``fn``.
    """

    def __init__(
        self,
        fn: Callable[[npt.NDArray[Any]], npt.ArrayLike],
        form: Literal["incidence", "masks"] = "incidence",
        batch_size: int = 65536,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        if inspect.iscoroutinefunction(fn):
            raise TypeError("a vectorized value function must be synchronous")
        if form not in ("incidence", "masks"):
            raise ValueError(f"form must be 'incidence' or 'masks', got {form!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.fn = fn
        self.form = form
        self.batch_size = int(batch_size)

    def evaluate(self, masks: npt.NDArray[np.int64], n: int) -> Any:
        """``fn`` on the coalitions ``masks`` (shape ``(B,)``) of an ``n``-player game."""
        arg: npt.NDArray[Any] = masks
        if self.form == "incidence":
            arg = incidence(masks, n).astype(bool)
        return self.fn(arg)

    def check(self, raw: Any, masks: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """``raw`` as float64 of shape ``(B,)``, or a ValueError naming the mismatch."""
        try:
            if np.asarray(raw).dtype.kind in "USO" and any(
                isinstance(v, str | bytes) for v in np.asarray(raw, dtype=object).reshape(-1)
            ):
                raise TypeError("strings")  # never coerce '1.5'
            out = np.asarray(raw, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"the vectorized value function returned {type(raw).__name__}; expected an "
                "array of real numbers, one per row"
            ) from exc
        if out.shape != masks.shape:
            raise ValueError(
                f"the vectorized value function returned {out.size} values for "
                f"{masks.size} coalitions; it must return one value per row"
            )
        return out


ValueFn: TypeAlias = (
    Callable[[frozenset[Hashable]], float]
    | Callable[[frozenset[Hashable]], Awaitable[float]]
    | VectorizedValue
)
"""A value function: ``v(coalition) -> float`` (sync or async), or a :class:`VectorizedValue`."""


def vectorized(
    fn: Callable[[npt.NDArray[Any]], npt.ArrayLike] | None = None,
    *,
    form: Literal["incidence", "masks"] = "incidence",
    batch_size: int = 65536,
) -> Any:
    """Mark ``fn`` as a value function that evaluates a whole batch of coalitions per call.

    Cheap value functions (a table, an analytic game, a model scored on a GPU in batches) lose
    most of their time to per-coalition Python calls; ``least_core`` calls a vectorized function
    once per batch instead (budget, memo, retries and the NaN check still apply per coalition).
    Usable as ``@vectorized`` or ``vectorized(fn, form="masks")``.

    Args:
        fn: ``fn(batch) -> values``: ``batch`` of shape ``(B, n)`` bool (``form="incidence"``,
            columns in the player order given to ``least_core``) or ``(B,)`` int64 bitmasks
            (``form="masks"``); returns shape ``(B,)`` floats.
        form: how coalitions are passed.
        batch_size: most coalitions per call.

    Returns:
        A :class:`VectorizedValue` to pass as ``value_fn``.

    Examples:
        >>> import numpy as np, coreopt
        >>> from coreopt.game import vectorized
        >>> v = vectorized(lambda S: S.sum(axis=1) ** 2.0)   # S: (B, 3) bool; v(S) = |S|^2
        >>> res = coreopt.least_core(v, 3, progress=False)   # e* = max_s s^2 - 3s = -2
        >>> res.value_calls, round(res.epsilon, 6), res.x.round(6).tolist()
        (7, -2.0, [3.0, 3.0, 3.0])
    """
    if fn is None:
        return lambda f: VectorizedValue(f, form, batch_size)
    return VectorizedValue(fn, form, batch_size)


@dataclass(frozen=True)
class PlainCalls:
    """A sync value function the oracle may call in a tight loop (exact mode's hot path).

    Attributes:
        fn: the caller's ``v(frozenset_of_labels) -> float``, unwrapped.
        in_flight: a set holding a token while the loop runs, so that a first SIGINT/SIGTERM lets
            the current call finish (it is paid for) instead of interrupting it.
        stopping: a list that becomes non-empty once the solve is being interrupted; the loop
            then raises ``stopped()`` before the next call.
        stopped: the exception raised in place of the calls that give up.
    """

    fn: Callable[[frozenset[Hashable]], Any]
    in_flight: set[Any]
    stopping: list[Any]
    stopped: type[BaseException]


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
        if not callable(value_fn) and not isinstance(value_fn, VectorizedValue):
            raise TypeError(f"value_fn must be callable, got {type(value_fn).__name__}")
        self.value_fn: Any = value_fn
        self.players = players
        self.budget = budget
        self.retries = retries
        self.retry_delay = retry_delay
        self.max_concurrency = max_concurrency
        self.loop = loop
        self.vector: VectorizedValue | None = None
        if isinstance(value_fn, VectorizedValue):
            self.vector = value_fn
        elif _is_game(value_fn):  # coreopt.game.games.Game: its own vectorised values
            self.vector = VectorizedValue(cast(Any, value_fn).values, "masks")
        self.is_async = inspect.iscoroutinefunction(value_fn) or inspect.iscoroutinefunction(
            getattr(value_fn, "__call__", None)  # noqa: B004 - async callable objects
        )
        self._memo: dict[int, float] = {}
        # exact mode's sweep stores here (value by mask, _UNKNOWN where not swept): a list store
        # costs less than a dict insert; folded into the memo when the memo is read
        self._dense: list[float] | None = None
        self._dense_count = 0
        self.calls = 0
        self.seconds = 0.0
        self.exhausted = False
        """Whether the value function raised :class:`BudgetExhaustedError` (no call is left)."""
        self._fast: bool | None = None  # sync calls measured cheaper than a thread hand-off
        self._timed: list[float] = []  # seconds of the first calls, while _fast is undecided
        self._sweep = _SweepIndex()  # exact mode's sweep: the unknown masks of a range, quickly
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
    def cache(self) -> dict[int, float]:
        """The memo, ``{mask: value}`` (values of exact mode's sweep folded in first)."""
        if self._dense is not None:
            self._fold()
        return self._memo

    @property
    def values(self) -> dict[frozenset[Hashable], float]:
        """Every value known so far, keyed by coalition (safe to read from another thread while
        calls are being stored: the memo and the sweep's values are copied first, each in one
        step under the GIL)."""
        memo = dict(self._memo)
        dense = self._dense
        if dense is not None:
            memo.update(_known_in(dense))
        return {self.players.coalition(m): v for m, v in memo.items()}

    def table(self) -> npt.NDArray[np.float64]:
        """Every value known, as a dense table: shape ``(2**n,)``, indexed by mask, 0 where
        unknown (exact mode's input to the LP, once its sweep is done)."""
        memo = self._memo
        if self._dense is None:
            out = np.zeros(1 << self.players.n)
        else:
            out = np.array(self._dense, dtype=np.float64)
            out[np.isnan(out)] = 0.0
        out[np.fromiter(memo, dtype=np.int64, count=len(memo))] = np.fromiter(
            memo.values(), dtype=np.float64, count=len(memo)
        )
        return out

    def __contains__(self, mask: int) -> bool:
        return mask in self.cache

    def evaluate(self, masks: Iterable[int]) -> Sequence[int]:
        """Evaluate the masks not yet known, in order, as far as the budget allows.

        Args:
            masks: int masks; a ``range`` (step 1) is exact mode's sweep: its unknown masks are
                found without testing each one against the memo (see :class:`_SweepIndex`).

        Returns:
            The masks newly evaluated (a prefix of the unknown ones, when the budget cuts it), in
            order.
        """
        sweep = isinstance(masks, range) and masks.step == 1
        if sweep:
            runs = self._sweep.unknown_runs(self._memo, cast(range, masks))
        else:
            cache = self.cache
            todo = [m for m in dict.fromkeys(map(int, masks)) if m not in cache]
            runs = [range(m, m + 1) for m in todo]  # the loop joins neighbours (_consecutive)
        remaining = self.remaining
        if remaining is not None:
            cut = _take(runs, max(remaining, 0))
            if sweep and cut != runs:  # the budget ends the sweep early: up to the last run taken
                masks = range(cast(range, masks).start, cut[-1].stop if cut else 0)
            runs = cut
        if not runs:
            return []
        total = sum(map(len, runs))
        before = len(self._memo) + self._dense_count
        t0 = time.perf_counter()
        complete = False
        try:
            with caller_threads():  # the value function gets the caller's BLAS threads
                if self.vector is not None:
                    self._run_vector(_flat(runs), self.vector)
                elif self.is_async:
                    self._run_async(_flat(runs))
                else:
                    self._run_threads(runs, dense=sweep and self.players.n <= DENSE_MAX_N)
        finally:
            self.seconds += time.perf_counter() - t0
            complete = len(self._memo) + self._dense_count - before == total
            recorded = sweep and complete and self._sweep.stored(self._memo, cast(range, masks))
            if not recorded and self._dense is not None:
                self._fold()  # what the index cannot describe must be in the memo
        if complete:
            return MaskRuns(runs)
        cache = self.cache
        return [m for m in _flat(runs) if m in cache]

    # -- internals -------------------------------------------------------------------------------

    def _check(self, mask: int, value: Any) -> float:
        try:
            if isinstance(value, str | bytes):  # never coerce '1.5': a parsing bug upstream
                raise TypeError("a string")
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
        self._memo[mask] = self._check(mask, value)
        self.calls += 1

    def _fold(self) -> None:
        """Move the sweep's values into the memo (this thread only: the sweep is not running)."""
        dense, self._dense, self._dense_count = self._dense, None, 0
        if dense is not None:
            self._memo.update(_known_in(dense))

    def _fail(self, mask: int, exc: BaseException, batch: int = 1) -> ValueFunctionError:
        coalition = self.players.coalition(mask)
        where = f"a batch of {batch} coalitions starting with" if batch > 1 else "coalition"
        return ValueFunctionError(
            f"value_fn failed on {where} {sorted(map(str, coalition))} after "
            f"{self.retries + 1} attempts: {type(exc).__name__}: {exc}. Every value paid for so "
            "far is in err.values (pass it back as known_values= to resume)",
            coalition,
            self.values,
        )

    def _call_sync(self, mask: int, first: int = 0) -> Any:
        """``value_fn`` on ``mask``'s coalition with retries, from attempt ``first``."""
        coalition = self.players.coalition(mask)
        for attempt in range(first, self.retries + 1):
            try:
                return self.value_fn(coalition)
            except BudgetExhaustedError:
                raise
            except Exception as exc:
                if attempt == self.retries:
                    raise self._fail(mask, exc) from exc
                time.sleep(self.retry_delay * 2**attempt)
        raise AssertionError("unreachable")

    def _run_sequential(self, runs: list[range], dense: bool = False) -> None:
        """Call ``value_fn`` in this thread, one coalition after another, in mask order.

        The hot loop of exact mode with a cheap Python function. Masks are walked block by block
        of the split tables (:meth:`Players.split_tables`): within a block the high half of the
        coalition is fixed, so each call costs one frozenset union, the call, a type check and a
        dict store; the retry machinery and the full value check run only when a call raises or
        returns anything but a finite ``float``. With ``dense`` (exact mode's sweep) the values
        go to a list indexed by mask instead of the memo dict. When the value function carries
        :class:`PlainCalls` (no checkpoint file), the caller's function is called without its
        per-call wrapper: the loop marks itself in flight and checks ``stopping`` before each
        call instead, and each value is in the memo the moment it returns (an interruption from
        any thread finds it there).
        """
        plain: PlainCalls | None = getattr(self.value_fn, "plain_calls", None)
        fn = self.value_fn if plain is None else plain.fn
        stopping, stopped = ((), RuntimeError) if plain is None else (plain.stopping, plain.stopped)
        low, high, k = self.players.split_tables()
        size = 1 << k
        check = self._check
        cache: Any = self._memo
        if dense:
            if self._dense is None:
                self._dense = [_UNKNOWN] * (1 << self.players.n)
            cache = self._dense
        token = object()
        if plain is not None:
            plain.in_flight.add(token)
        before = len(cache)  # the masks are new and distinct: each value stored is one call
        try:
            for start, stop in _consecutive(runs):
                for h in range(start >> k, ((stop - 1) >> k) + 1):
                    base = h << k
                    a, b = max(start, base), min(stop, base + size)
                    lows = low if b - a == size else low[a - base : b - base]
                    fixed = high[h]
                    m = a - 1
                    for part in lows:
                        m += 1
                        if stopping:
                            raise stopped()
                        try:
                            try:
                                out = fn(fixed | part)
                            except BudgetExhaustedError:
                                raise
                            except Exception as exc:
                                if self.retries == 0:
                                    raise self._fail(m, exc) from exc
                                time.sleep(self.retry_delay)
                                out = self._call_sync(m, first=1)
                        except BudgetExhaustedError:
                            self.exhausted = True
                            return
                        # x - x == 0 exactly for finite floats (NaN and inf give NaN)
                        if type(out) is float and out - out == 0.0:
                            cache[m] = out
                        else:
                            cache[m] = check(m, out)  # ints pass; bad values raise, not retried
        finally:
            if plain is not None:
                plain.in_flight.discard(token)
            if dense:  # the runs' masks were unknown: each one no longer _UNKNOWN is one call
                stored = sum(len(r) - cache[r.start : r.stop].count(_UNKNOWN) for r in runs)
                self._dense_count += stored
                self.calls += stored
            else:
                self.calls += len(cache) - before

    def _run_vector(self, todo: list[int], fn: VectorizedValue) -> None:
        n = self.players.n
        for start in range(0, len(todo), fn.batch_size):
            chunk = todo[start : start + fn.batch_size]
            masks = mask_array(chunk, n)
            for attempt in range(self.retries + 1):
                try:
                    raw = fn.evaluate(masks, n)
                    break
                except BudgetExhaustedError:
                    self.exhausted = True
                    return
                except Exception as exc:
                    if attempt == self.retries:
                        raise self._fail(chunk[0], exc, batch=len(chunk)) from exc
                    time.sleep(self.retry_delay * 2**attempt)
            values = fn.check(raw, masks)
            bad = np.flatnonzero(~np.isfinite(values))
            if bad.size:
                self._store_all(chunk[: bad[0]], values[: bad[0]].tolist())
                self._check(chunk[bad[0]], values[bad[0]])  # raises, naming the coalition
            self._memo.update(zip(chunk, values.tolist(), strict=True))
            self.calls += len(chunk)

    def _run_threads(self, runs: list[range], dense: bool = False) -> None:
        # Cheap value functions (table lookups, analytic games) lose more to thread hand-offs than
        # they gain: the first calls are timed, and when the fastest of them took under 1 ms the
        # calls run in this thread from then on (the fastest of several: one call slowed by a
        # loaded machine must not send a cheap function to the thread pool for good).
        while runs and self.max_concurrency > 1 and self._fast is None:
            mask = runs[0].start
            t0 = time.perf_counter()
            try:
                value = self._call_sync(mask)
            except BudgetExhaustedError:
                self.exhausted = True
                return
            took = time.perf_counter() - t0
            self._store(mask, value)
            runs = [runs[0][1:], *runs[1:]] if len(runs[0]) > 1 else runs[1:]
            self._timed.append(took)
            if took < 1e-3:
                self._fast = True
            elif len(self._timed) >= _TIMED_CALLS:
                self._fast = False
        if not runs:
            return
        if self.max_concurrency == 1 or self._fast or (len(runs) == 1 and len(runs[0]) == 1):
            self._run_sequential(runs, dense)
            return
        todo = _flat(runs)
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
                    return await self.value_fn(coalition)
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
            results = run_sync(lambda: self._batch(todo))
        self._store_all(todo, results)


class _SweepIndex:
    """Which masks of a ``range`` are still unknown, without a memo lookup per mask.

    Exact mode sweeps every mask in ascending ranges. The memo's keys are described as one
    interval ``[lo, hi)`` of swept masks (all known) plus the sorted list of the other keys
    (``loose``: v(N), the singletons, ``known_values``); the list is rebuilt, in O(memo), only
    when the memo grew by other means than a completed sweep, which exact mode does once.
    """

    def __init__(self) -> None:
        self.lo = self.hi = 0
        self.loose: list[int] = []
        self.size = 0  # len(memo) this index describes

    def unknown_runs(self, cache: dict[int, float], masks: range) -> list[range]:
        """``masks`` (step 1) minus the known masks, as ascending runs."""
        lo, hi = self.lo, self.hi
        if len(cache) != self.size:
            self.loose = sorted(m for m in cache if not lo <= m < hi)
            self.size = len(cache)
        a, b = masks.start, masks.stop
        if a >= b:
            return []
        pieces = [(a, b)]
        if a < hi and b > lo:  # overlaps the swept interval
            pieces = [(a, lo)] * (a < lo) + [(hi, b)] * (b > hi)
        runs: list[range] = []
        loose = self.loose
        for a, b in pieces:
            for m in loose[bisect.bisect_left(loose, a) : bisect.bisect_left(loose, b)]:
                if m > a:
                    runs.append(range(a, m))
                a = m + 1
            if a < b:
                runs.append(range(a, b))
        return runs

    def stored(self, memo: dict[int, float], span: range) -> bool:
        """Record a completed sweep of ``span``: every mask in it is known now (in the memo or
        in the sweep's dense list). False when ``span`` does not adjoin the swept interval (the
        caller then folds the sweep's values into the memo)."""
        first, last = span.start, span.stop
        if self.hi == self.lo:
            self.lo, self.hi = first, last
        elif first <= self.hi and last >= self.lo:
            self.lo, self.hi = min(self.lo, first), max(self.hi, last)
        else:
            return False
        self.size = len(memo)  # memo keys added by the sweep lie inside the interval
        return True


class MaskRuns(Sequence[int]):
    """Masks given as ascending runs (``range`` objects), listed only when indexed.

    What :meth:`ValueOracle.evaluate` returns for a completed sweep: exact mode only counts them.
    """

    def __init__(self, runs: list[range]) -> None:
        self.runs = runs
        self._len = sum(map(len, runs))
        self._flat: list[int] | None = None

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[int]:
        return itertools.chain.from_iterable(self.runs)

    def __getitem__(self, i: Any) -> Any:
        if self._flat is None:
            self._flat = _flat(self.runs)
        return self._flat[i]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]


_UNKNOWN = math.nan
"""The dense sweep list's filler (one object: ``list.count`` finds it by identity)."""

DENSE_MAX_N = 24
"""Exact mode's sweep stores values in a list of ``2**n`` slots up to this many players."""


def _known_in(dense: list[float]) -> Iterator[tuple[int, float]]:
    """``(mask, value)`` of the slots of a dense sweep list that hold a value."""
    arr = np.array(dense, dtype=np.float64)
    idx = np.flatnonzero(~np.isnan(arr))
    return zip(idx.tolist(), arr[idx].tolist(), strict=True)


def _flat(runs: list[range]) -> list[int]:
    return list(itertools.chain.from_iterable(runs))


def _take(runs: list[range], count: int) -> list[range]:
    """The first ``count`` masks of ``runs``."""
    out: list[range] = []
    for r in runs:
        if count <= 0:
            break
        out.append(r[:count])
        count -= len(out[-1])
    return out


def _consecutive(runs: list[range]) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of ``runs`` with neighbouring runs joined."""
    start = stop = None
    for r in runs:
        if not r:
            continue
        if r.start == stop:
            stop = r.stop
            continue
        if start is not None:
            yield start, stop  # type: ignore[misc]
        start, stop = r.start, r.stop
    if start is not None:
        yield start, stop  # type: ignore[misc]


def _is_game(value_fn: Any) -> bool:
    from coreopt.game.games import Game

    return isinstance(value_fn, Game)
