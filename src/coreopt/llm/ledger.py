"""Budget ledgers: where the spent and reserved calls/tokens of a :class:`~coreopt.llm.Budget` are
counted, in one process (:class:`MemoryLedger`) or shared by every process using a sqlite file
(:class:`SQLiteLedger`).

Split from the former ``client`` module (behaviour unchanged).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from coreopt.errors import BudgetExhaustedError
from coreopt.llm.budget import Budget

RESERVATION_STALL_S = 600.0
"""A call waiting for room in a token budget gives up (budget spent) when the ledger has not
changed for this long: the reservations in its way belong to a worker that crashed."""


def budget_check(budget: Budget, calls: int, tokens: int, reserved: int, need: int) -> str | None:
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
            why = budget_check(budget, self.calls, self.tokens, self.reserved, need)
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
        why = budget_check(budget, calls, tokens, reserved, need)
        if why is None:
            with self._lock:
                cur = self._conn.execute("BEGIN IMMEDIATE")
                try:
                    calls, tokens, reserved = cur.execute(
                        "SELECT calls, tokens, reserved FROM budget_ledger WHERE run = ?",
                        (self.run,),
                    ).fetchone()
                    why = budget_check(budget, calls, tokens, reserved, need)
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


def remove_sqlite(path: str) -> None:
    """Remove a sqlite file with its WAL and shared-memory files (missing ones are fine)."""
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            Path(path + suffix).unlink()
