"""Nothing paid is lost: value calls persisted as they are paid, and interrupts that keep them.

:func:`coreopt.least_core` wraps the value function so that every value is recorded the moment it
is paid for (in memory always, and in a sqlite file when ``checkpoint=PATH`` is given). The file is
in WAL mode and each value (each batch, for vectorized value functions) is its own committed
transaction: a SIGKILL loses at most the calls in flight. A rerun with the same path reads the
file back, pays only for the coalitions not in it, and counts the file's values in the budget.

``KeyboardInterrupt``, SIGTERM (converted to :class:`SolveTerminated` while a solve runs in the
main thread) and every exception raised during a solve leave with ``err.values``: every value
known, ``{frozenset_of_labels: value}``, ready for ``known_values=``. While a solve runs in the
main thread, the first SIGINT/SIGTERM that arrives with value calls in flight stops new calls and
lets those in flight finish (they are paid for: their values are kept), then raises; a second
signal raises at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Mapping
from types import FrameType
from typing import Any

import numpy as np
import numpy.typing as npt

from coreopt.game.coalitions import Players
from coreopt.game.oracle import PlainCalls, VectorizedValue

FORMAT = "coreopt.least_core/1"
"""Format tag written to (and required in) a checkpoint file."""


class SolveTerminated(SystemExit):
    """SIGTERM arrived while :func:`coreopt.least_core` was solving in the main thread.

    Subclasses :class:`SystemExit` (exit status 143, as for SIGTERM), so an uncaught one ends the
    program as the signal would have, but only after every value paid for was saved.

    Attributes:
        values: every value known when the signal arrived, ``{frozenset: float}``.
    """

    def __init__(self, values: dict[frozenset[Hashable], float] | None = None) -> None:
        super().__init__(143)
        self.values: dict[frozenset[Hashable], float] = dict(values or {})


class _Stopped(BaseException):
    """Raised in place of a queued value call once the solve is being interrupted.

    A ``BaseException``: the oracle's retry loop (``except Exception``) must not retry it.
    """


def player_identity(players: Players) -> str:
    """A JSON string that identifies the players (their order, types and reprs)."""
    return json.dumps(
        [f"{type(p).__module__}.{type(p).__qualname__}:{p!r}" for p in players.labels]
    )


def game_identity(value_fn: Any) -> str:
    """A best-effort name of the value function (module and qualified name; a Game's name)."""
    from coreopt.game.games import Game

    if isinstance(value_fn, Game):
        return f"Game:{value_fn.name}"
    fn = value_fn.fn if isinstance(value_fn, VectorizedValue) else value_fn
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    module = getattr(fn, "__module__", None) or type(fn).__module__
    return f"{module}.{name}"


class Checkpoint:
    """Values of one game, persisted in a sqlite file as they are paid for.

    Args:
        path: the file (created when missing).
        players: the game's players; stored, and checked when the file already exists.
        game: a name of the value function (see :func:`game_identity`); stored and checked.

    Raises:
        ValueError: the file belongs to another game (other players, another value function) or
            is not a coreopt checkpoint.
        TypeError: ``path`` is not a ``str`` or ``os.PathLike``.
    """

    def __init__(self, path: str | os.PathLike[str], players: Players, game: str) -> None:
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"checkpoint must be a str or os.PathLike path, got {path!r}")
        self.path = os.fspath(path)
        self.players = players
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise ValueError(f"checkpoint={self.path!r} cannot be opened: {exc}") from exc
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS coalition_value "
                "(mask TEXT PRIMARY KEY, value REAL NOT NULL, paid_at REAL NOT NULL)"
            )
            # calls started and not yet answered: left over only by a killed process
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS pending (mask TEXT PRIMARY KEY, started_at REAL)"
            )
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise ValueError(
                f"checkpoint={self.path!r} is not a coreopt least-core checkpoint: {exc}"
            ) from exc
        want = {"format": FORMAT, "players": player_identity(players), "game": game}
        self.lost_calls = 0
        """Calls paid by killed runs whose answers never arrived (they count toward budgets)."""
        if not meta:
            self._db.executemany("INSERT INTO meta VALUES (?, ?)", list(want.items()))
            return
        for key, label in (
            ("format", "format"),
            ("players", "players"),
            ("game", "value function"),
        ):
            if meta.get(key) != want[key]:
                self._db.close()
                raise ValueError(
                    f"checkpoint={self.path!r} belongs to another game: its {label} is "
                    f"{meta.get(key)!r}, this solve's is {want[key]!r}. Use a new path for a new "
                    "game (or delete the file to start over)"
                )
        # Calls a killed run started and never got an answer for were paid for all the same:
        # they count toward every later budget (one process per file at a time).
        self._db.execute("BEGIN")
        lost = self._db.execute(
            "SELECT COUNT(*) FROM pending WHERE mask NOT IN (SELECT mask FROM coalition_value)"
        ).fetchone()[0]
        total = int(meta.get("lost_calls", "0")) + int(lost)
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('lost_calls', ?)", (str(total),))
        self._db.execute("DELETE FROM pending")
        self._db.execute("COMMIT")
        self.lost_calls = total

    def load(self) -> dict[int, float]:
        """Every value in the file, keyed by coalition mask."""
        with self._lock:
            rows = self._db.execute("SELECT mask, value FROM coalition_value").fetchall()
        out: dict[int, float] = {}
        for key, value in rows:
            mask = int(key, 16)
            if mask >> self.players.n:
                raise ValueError(
                    f"checkpoint={self.path!r} holds mask {key} beyond {self.players.n} players"
                )
            out[mask] = float(value)
        return out

    def start(self, masks: list[int]) -> None:
        """Note (committed) that calls for ``masks`` are about to be paid for."""
        now = time.time()
        self._write(
            "INSERT OR REPLACE INTO pending VALUES (?, ?)", [(format(m, "x"), now) for m in masks]
        )

    def abandon(self, masks: list[int]) -> None:
        """The calls for ``masks`` failed: no answer, no longer pending."""
        self._write("DELETE FROM pending WHERE mask = ?", [(format(m, "x"),) for m in masks])

    def record(self, items: list[tuple[int, float]]) -> None:
        """Write ``(mask, value)`` pairs in one committed transaction (existing masks kept)."""
        if not items:
            return
        now = time.time()
        self._write(
            "INSERT OR IGNORE INTO coalition_value VALUES (?, ?, ?)",
            [(format(m, "x"), v, now) for m, v in items],
            "DELETE FROM pending WHERE mask = ?",
            [(format(m, "x"),) for m, _ in items],
        )

    def _write(self, *statements: Any) -> None:
        """Run ``(sql, rows)`` pairs with ``executemany`` in one committed transaction."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for sql, rows in zip(statements[::2], statements[1::2], strict=True):
                    self._db.executemany(sql, rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        """Close the file (every value is already committed)."""
        with self._lock:
            self._db.close()


def _as_value(raw: Any) -> float | None:
    """``raw`` as a finite float, or ``None`` when the oracle will reject it (it raises then)."""
    if isinstance(raw, str | bytes | bool):
        return None
    try:
        out = float(raw)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


class PaidLedger:
    """Every value paid for in one solve, recorded the moment the value function returns it.

    Wraps the value function (:meth:`wrap`); a recorded value also goes to the checkpoint file.
    :attr:`stop` makes queued calls give up instead of paying once the solve is interrupted.
    """

    # No lock guards ``paid`` or ``_active``: a signal handler reads them in the main thread,
    # possibly while the main thread itself is recording (a lock would deadlock there), and
    # single dict/set operations on frozenset keys are atomic under the GIL.

    def __init__(self, players: Players, checkpoint: Checkpoint | None) -> None:
        self.players = players
        self.checkpoint = checkpoint
        self.paid: dict[frozenset[Hashable], Any] = {}
        """Raw values as returned (validated when read: the oracle rejects bad ones itself)."""
        self.stop = threading.Event()
        self.stopping: list[int] = []
        """Non-empty once :meth:`halt` was called (a cheaper test than ``stop`` in hot loops)."""
        self.interrupted: int | None = None
        """The signal that stopped the solve (``signal.SIGINT``/``SIGTERM``), if any."""
        self._active: set[Any] = set()

    def halt(self, signum: int = 0) -> None:
        """Stop queued and future value calls (the calls in flight finish and are kept)."""
        self.stopping.append(signum)
        self.stop.set()

    @property
    def in_flight(self) -> int:
        """Value calls running now."""
        return len(self._active)

    def _enter(self, token: Any) -> None:
        if self.stop.is_set():
            raise _Stopped
        self._active.add(token)

    def values(
        self, extra: Mapping[frozenset[Hashable], float] | None = None
    ) -> dict[frozenset[Hashable], float]:
        """``extra`` (values known before the solve) updated with every valid value paid for."""
        out = dict(extra or {})
        for coalition, raw in self.paid.copy().items():
            value = _as_value(raw)
            if value is not None:
                out[coalition] = value
        return out

    def _record_one(self, coalition: frozenset[Hashable], raw: Any) -> None:
        self.paid[coalition] = raw
        if self.checkpoint is not None:
            value = _as_value(raw)
            mask = self.players.mask(coalition)
            if value is not None:
                self.checkpoint.record([(mask, value)])
            else:  # the oracle rejects it (and raises): no value, nothing pending
                self.checkpoint.abandon([mask])

    @contextlib.contextmanager
    def _paying(self, coalition: frozenset[Hashable]) -> Iterator[None]:
        """Around one call: in flight (one call per coalition at a time: the coalition is the
        token), and noted in the checkpoint file before it starts (abandoned if it raises)."""
        self._active.add(coalition)
        mask = self.players.mask(coalition)
        if self.checkpoint is not None:
            self.checkpoint.start([mask])
        try:
            yield
        except BaseException:
            if self.checkpoint is not None:
                self.checkpoint.abandon([mask])
            raise
        finally:
            self._active.discard(coalition)

    def _record_batch(self, masks: npt.NDArray[np.int64], raw: Any, fn: VectorizedValue) -> None:
        try:
            values = fn.check(raw, masks)
        except (TypeError, ValueError):
            return  # the oracle raises the same error and names the mismatch
        ok = np.isfinite(values)
        items = [(int(m), float(v)) for m, v, good in zip(masks, values, ok, strict=True) if good]
        self.paid.update((self.players.coalition(m), v) for m, v in items)
        if self.checkpoint is not None:
            self.checkpoint.record(items)
            self.checkpoint.abandon([int(m) for m, good in zip(masks, ok, strict=True) if not good])

    def wrap(self, value_fn: Any) -> Any:
        """``value_fn`` with every value it returns recorded (same kind: sync, async, batched)."""
        from coreopt.game.games import Game

        if isinstance(value_fn, Game):
            value_fn = VectorizedValue(value_fn.values, "masks")
        if isinstance(value_fn, VectorizedValue):
            return _LedgerVector(value_fn, self)
        is_async = asyncio.iscoroutinefunction(value_fn) or asyncio.iscoroutinefunction(
            getattr(value_fn, "__call__", None)  # noqa: B004 - async callable objects
        )
        stop = self.stop
        active = self._active
        paid = self.paid
        record = self._record_one
        if is_async:

            async def async_value(coalition: frozenset[Hashable]) -> Any:
                if stop.is_set():
                    raise asyncio.CancelledError("least_core was interrupted")
                with self._paying(coalition):
                    out = await value_fn(coalition)
                    record(coalition, out)  # still in flight: a signal waits for the write
                return out

            return async_value
        if not callable(value_fn):
            return value_fn  # the oracle raises the TypeError naming it

        if self.checkpoint is not None:

            def sync_value(coalition: frozenset[Hashable]) -> Any:
                if stop.is_set():
                    raise _Stopped
                with self._paying(coalition):
                    out = value_fn(coalition)
                    record(coalition, out)  # still in flight: a signal waits for the write
                return out

            return sync_value

        def fast_value(coalition: frozenset[Hashable]) -> Any:  # no file: record in memory only
            if stop.is_set():
                raise _Stopped
            active.add(coalition)
            try:
                out = value_fn(coalition)
            finally:
                active.discard(coalition)
            paid[coalition] = out
            return out

        # exact mode's hot loop calls value_fn itself and stores each value in its memo
        fast_value.plain_calls = PlainCalls(  # type: ignore[attr-defined]
            value_fn, active, self.stopping, _Stopped
        )
        return fast_value

    @contextlib.contextmanager
    def signals(self, values: Callable[[], dict[frozenset[Hashable], float]]) -> Iterator[None]:
        """While solving in the main thread: SIGINT and SIGTERM stop queued calls and raise
        (``KeyboardInterrupt`` / :class:`SolveTerminated`); the previous handlers are restored.

        Handlers are only installed over the defaults (a program's own handlers are kept), and
        never outside the main thread (Python allows signal handlers only there).
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def drain_or_raise(signum: int) -> bool:
            """True: raise now; False: let the calls in flight finish first (they are paid)."""
            first = self.interrupted is None
            self.interrupted = signum
            self.halt(signum)
            return not first or self.in_flight == 0

        def on_int(signum: int, frame: FrameType | None) -> None:
            if drain_or_raise(signum):
                raise KeyboardInterrupt

        def on_term(signum: int, frame: FrameType | None) -> None:
            if drain_or_raise(signum):
                raise SolveTerminated(values())

        saved: list[tuple[signal.Signals, Any]] = []
        for sig, handler, default in (
            (signal.SIGINT, on_int, signal.default_int_handler),
            (signal.SIGTERM, on_term, signal.SIG_DFL),
        ):
            current = signal.getsignal(sig)
            if current is default:
                signal.signal(sig, handler)
                saved.append((sig, current))
        try:
            yield
        finally:
            for saved_sig, previous in saved:
                signal.signal(saved_sig, previous)


class _LedgerVector(VectorizedValue):
    """A :class:`VectorizedValue` whose every batch of values is recorded as it returns."""

    def __init__(self, inner: VectorizedValue, ledger: PaidLedger) -> None:
        super().__init__(inner.fn, inner.form, inner.batch_size)
        self.inner = inner
        self.ledger = ledger

    def evaluate(self, masks: npt.NDArray[np.int64], n: int) -> Any:
        token = object()
        self.ledger._enter(token)
        ck = self.ledger.checkpoint
        if ck is not None:
            ck.start([int(m) for m in masks])
        try:
            raw = self.inner.evaluate(masks, n)
            self.ledger._record_batch(masks, raw, self.inner)  # in flight until written
        except BaseException:
            if ck is not None:
                ck.abandon([int(m) for m in masks])
            raise
        finally:
            self.ledger._active.discard(token)
        return raw


def interruption(ledger: PaidLedger, exc: BaseException) -> BaseException:
    """The exception to raise for ``exc``: after a drained SIGINT/SIGTERM, the calls that gave up
    (``_Stopped``, ``CancelledError``) become ``KeyboardInterrupt`` / :class:`SolveTerminated`."""
    if ledger.interrupted is None or not isinstance(exc, _Stopped | asyncio.CancelledError):
        return exc
    if ledger.interrupted == signal.SIGTERM:
        return SolveTerminated()
    return KeyboardInterrupt()


def attach_values(exc: BaseException, values: dict[frozenset[Hashable], float]) -> None:
    """Set ``exc.values`` to every known value (merging values the exception already holds)."""
    old = getattr(exc, "values", None)
    merged = {**values, **old} if isinstance(old, dict) else values
    with contextlib.suppress(AttributeError, TypeError):
        exc.values = merged  # type: ignore[attr-defined]


__all__ = ["Checkpoint", "PaidLedger", "SolveTerminated", "attach_values"]
