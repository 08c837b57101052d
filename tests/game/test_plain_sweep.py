"""Exact mode's hot loop for plain Python value functions (no checkpoint): one call per coalition,
every exit path keeps what was paid.

The loop bypasses the per-call wrapper, so each guarantee of the wrapper is checked here again:
the coalition handed to the function, retries, bad values, Ctrl-C and cancellation. Calls are
counted by the value function itself, independently of the solver's counters.
"""

import asyncio
import itertools
import math
import os
import signal
import threading
import time
from collections import Counter

import numpy as np
import pytest

import coreopt
from coreopt.errors import NonFiniteError
from coreopt.game import ValueFunctionError, exact_least_core, games
from coreopt.game.coalitions import Players

N = 13
GAME = games.coverage(N, seed=1)


pytestmark = pytest.mark.usefixtures("default_signal_handlers")


class Counted:
    """``GAME`` by coalition, counting calls; optional faults at the k-th call."""

    def __init__(self, fault_at: int | None = None, fault: object = None, fail_once: bool = True):
        self.calls: Counter[frozenset] = Counter()
        self.fault_at = fault_at
        self.fault = fault
        self.fail_once = fail_once

    def __call__(self, s: frozenset) -> float:
        self.calls[s] += 1
        total = sum(self.calls.values())
        if total == self.fault_at:
            if isinstance(self.fault, BaseException):
                raise self.fault
            if callable(self.fault):
                self.fault()
            elif self.fault is not None:
                return self.fault  # type: ignore[return-value]
        return GAME(s)


@pytest.mark.parametrize("labels", [None, "strings"], ids=["ints", "labels"])
def test_every_coalition_is_handed_over_once_with_the_right_members(labels) -> None:
    players = list(range(N)) if labels is None else [f"p{i}" for i in range(N)]
    seen: Counter[frozenset] = Counter()

    def v(s: frozenset) -> float:
        assert type(s) is frozenset
        seen[s] += 1
        return float(sum(2 ** players.index(p) for p in s) % 7)

    coreopt.least_core(v, players, mode="exact", progress=False)
    expected = {frozenset(c) for r in range(1, N + 1) for c in itertools.combinations(players, r)}
    assert set(seen) == expected
    assert max(seen.values()) == 1


def test_split_tables_build_the_same_coalitions_as_the_byte_tables() -> None:
    for n in (1, 2, 7, 16, 24):
        p = Players([f"x{i}" for i in range(n)])
        low, high, k = p.split_tables()
        rng = np.random.default_rng(n)
        for m in {0, (1 << n) - 1, *rng.integers(0, 1 << n, 200).tolist()}:
            assert low[m & ((1 << k) - 1)] | high[m >> k] == p.coalition(m)
    big = Players(100)
    low, high, k = big.split_tables()
    for m in (0, (1 << 100) - 1, 3 << 70, 12345 << 40 | 77):
        assert low[m & ((1 << k) - 1)] | high[m >> k] == big.coalition(m)


def test_the_sweep_gives_the_table_solver_s_answer() -> None:
    res = coreopt.least_core(Counted(), N, mode="exact", progress=False)
    ref = exact_least_core(GAME.table(), N)
    assert res.epsilon == pytest.approx(ref.epsilon, abs=1e-12)
    assert res.value_calls == (1 << N) - 1


def test_a_failing_call_is_retried_and_nothing_else_is_paid_twice() -> None:
    fn = Counted(fault_at=3000, fault=RuntimeError("flaky"))
    res = coreopt.least_core(fn, N, mode="exact", retries=1, retry_delay=0.0, progress=False)
    twice = [s for s, c in fn.calls.items() if c > 1]
    assert len(twice) == 1
    assert fn.calls[twice[0]] == 2
    assert len(fn.calls) == (1 << N) - 1
    assert res.value_calls == (1 << N) - 1
    ref = exact_least_core(GAME.table(), N)
    assert res.epsilon == pytest.approx(ref.epsilon, abs=1e-12)


def test_without_retries_the_failure_names_the_coalition_and_keeps_the_values() -> None:
    fn = Counted(fault_at=2000, fault=RuntimeError("down"))
    with pytest.raises(ValueFunctionError, match="down") as info:
        coreopt.least_core(fn, N, mode="exact", retries=0, progress=False)
    values = info.value.values
    assert len(values) == 1999  # every answered call, the failing one excluded
    assert all(v == GAME(s) for s, v in values.items())


@pytest.mark.parametrize(
    ("bad", "error"), [("1.5", TypeError), (math.nan, NonFiniteError)], ids=["string", "nan"]
)
def test_a_bad_value_mid_sweep_is_refused_not_retried(bad, error) -> None:
    fn = Counted(fault_at=1500, fault=bad)
    with pytest.raises(error):
        coreopt.least_core(fn, N, mode="exact", retries=3, retry_delay=0.0, progress=False)
    assert max(fn.calls.values()) == 1  # a bad answer is not a failure to retry


def test_integer_values_are_accepted() -> None:
    res = coreopt.least_core(lambda s: len(s) ** 2, N, mode="exact", progress=False)
    assert res.payoff[0] == pytest.approx(N)  # symmetric: the equal split of N**2


def test_ctrl_c_mid_sweep_lets_the_current_call_finish_and_keeps_every_value() -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals need the main thread")
    fn = Counted(fault_at=4000, fault=lambda: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(KeyboardInterrupt) as info:
        coreopt.least_core(fn, N, mode="exact", progress=False)
    values = info.value.values  # type: ignore[attr-defined]
    assert set(values) == set(fn.calls)  # the call that was running when Ctrl-C came is kept
    assert len(values) == 4000
    assert max(fn.calls.values()) == 1
    # resuming pays only for the rest
    again = Counted()
    res = coreopt.least_core(again, N, mode="exact", known_values=values, progress=False)
    assert not set(again.calls) & set(values)
    assert res.value_calls + res.reused_values == (1 << N) - 1


def test_cancelled_aleast_core_with_a_sync_function_carries_the_values() -> None:
    fn = Counted()
    started = threading.Event()

    def slow(s: frozenset) -> float:
        out = fn(s)  # counted: paid for from here
        if sum(fn.calls.values()) >= 200:
            started.set()
            time.sleep(0.05)  # the cancellation lands while this call is in flight
        return out

    async def main() -> BaseException:
        task = asyncio.ensure_future(coreopt.aleast_core(slow, N, mode="exact", progress=False))
        while not started.is_set():
            await asyncio.sleep(0.001)
        task.cancel()
        try:
            await task
        except BaseException as exc:  # the cancellation is the point
            return exc
        raise AssertionError("the task finished before it was cancelled")

    err = asyncio.run(main())
    values = err.values  # type: ignore[attr-defined]
    assert len(values) >= 200
    assert set(values) == set(fn.calls)  # the call in flight at the cancellation included
    assert all(v == GAME(s) for s, v in values.items())


def test_known_values_scattered_anywhere_are_never_paid_again() -> None:
    """The sweep finds the unknown masks of each range without a memo lookup per mask: known
    values at random places (and at the edges of the ranges it is handed) must be skipped."""
    rng = np.random.default_rng(5)
    players = Players(N)
    picked = {0, 1, 2, (1 << N) - 1, *rng.integers(1, 1 << N, 700).tolist()}
    known = {players.coalition(m): GAME(players.coalition(m)) for m in picked if m}
    fn = Counted()
    res = coreopt.least_core(fn, N, mode="exact", known_values=known, progress=False)
    assert not set(fn.calls) & set(known)
    assert max(fn.calls.values()) == 1
    assert len(fn.calls) + len(known) == (1 << N) - 1
    assert res.epsilon == pytest.approx(exact_least_core(GAME.table(), N).epsilon, abs=1e-12)


def test_the_oracle_s_ranges_in_any_order_pay_each_mask_once() -> None:
    """Ranges handed to the oracle out of order, overlapping and after single masks."""
    from coreopt.game.oracle import ValueOracle

    fn = Counted()
    oracle = ValueOracle(fn, Players(N), max_concurrency=1)
    expected: set[int] = set()
    rng = np.random.default_rng(9)
    for _ in range(40):
        if rng.random() < 0.3:
            masks = rng.integers(1, 1 << N, 5).tolist()
            got = oracle.evaluate(masks)
            new = [m for m in dict.fromkeys(masks) if m not in expected]
        else:
            a = int(rng.integers(1, (1 << N) - 300))
            r = range(a, a + int(rng.integers(1, 300)))
            got = oracle.evaluate(r)
            new = [m for m in r if m not in expected]
        assert list(got) == new
        expected.update(new)
    assert set(oracle.cache) == expected
    assert max(fn.calls.values()) == 1
    assert oracle.calls == len(expected) == sum(fn.calls.values())


def test_the_swept_table_is_the_game_s_table() -> None:
    """The table handed to the LP, built from the sweep's list and the memo, mask by mask."""
    from coreopt.game.oracle import ValueOracle

    oracle = ValueOracle(Counted(), Players(N), max_concurrency=1)
    oracle.evaluate([(1 << N) - 1, 1, 2, 4])  # the memo, as exact mode seeds it
    assert len(oracle.evaluate(range(1, 1 << N))) == (1 << N) - 5
    players = Players(N)
    ref = np.array([0.0] + [GAME(players.coalition(m)) for m in range(1, 1 << N)])
    np.testing.assert_array_equal(oracle.table(), ref)
    assert len(oracle.values) == (1 << N) - 1
