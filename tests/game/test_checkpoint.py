"""Nothing paid is lost: the checkpoint file, budgets across reruns, and every exit path.

The value functions log each call (to memory or to a file) before answering, so "paid twice" is
counted from the log, independently of the solver's own counters.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import coreopt
from coreopt.game import exact_least_core, games
from coreopt.game.checkpoint import SolveTerminated

N = 9
GAME = games.coverage(N, seed=0)


pytestmark = pytest.mark.usefixtures("default_signal_handlers")


class Logged:
    """``GAME``'s value, counting every call per coalition (thread-safe)."""

    def __init__(self, stop_after: int | None = None, exc: BaseException | None = None) -> None:
        self.calls: Counter[frozenset] = Counter()
        self.lock = threading.Lock()
        self.stop_after = stop_after
        self.exc = exc

    def __call__(self, s: frozenset) -> float:
        with self.lock:
            self.calls[s] += 1
            total = sum(self.calls.values())
        if self.stop_after is not None and total == self.stop_after and self.exc is not None:
            raise self.exc
        return GAME(s)


def test_rerun_with_the_checkpoint_pays_only_for_new_coalitions(tmp_path: Path) -> None:
    path = tmp_path / "values.sqlite"
    first = Logged()
    res1 = coreopt.least_core(
        first, N, budget=120, mode="approximate", checkpoint=path, progress=False
    )
    assert res1.value_calls == sum(first.calls.values()) <= 120
    # a second run with a larger budget: the file's values are reused, never paid again
    second = Logged()
    res2 = coreopt.least_core(
        second, N, budget=300, mode="approximate", checkpoint=str(path), progress=False
    )
    assert not set(second.calls) & set(first.calls)
    assert res2.reused_values == len(first.calls)
    # the budget counts what the file already holds: the total never exceeds it
    assert res2.value_calls + res2.reused_values <= 300
    assert len(first.calls) + len(second.calls) <= 300
    # exact mode through the same file: only the coalitions never paid for
    third = Logged()
    res3 = coreopt.least_core(third, N, mode="exact", checkpoint=path, progress=False)
    assert not set(third.calls) & (set(first.calls) | set(second.calls))
    assert len(first.calls) + len(second.calls) + len(third.calls) == (1 << N) - 1
    assert res3.epsilon == pytest.approx(exact_least_core(GAME).epsilon, abs=1e-9)
    assert "reused" in res3.summary()


def test_a_budget_already_spent_in_the_file_pays_nothing(tmp_path: Path) -> None:
    path = tmp_path / "v.sqlite"
    coreopt.least_core(Logged(), N, budget=100, mode="approximate", checkpoint=path, progress=False)
    again = Logged()
    res = coreopt.least_core(
        again, N, budget=100, mode="approximate", checkpoint=path, progress=False
    )
    assert sum(again.calls.values()) == 0
    assert res.value_calls == 0
    assert res.reused_values == 100


def test_known_values_count_toward_the_budget() -> None:
    # the issue: resuming from err.values with a fresh budget paid 2,716 calls for 2,000
    first = Logged(stop_after=60, exc=RuntimeError("server down"))
    with pytest.raises(coreopt.game.ValueFunctionError) as info:
        coreopt.least_core(
            first, N, budget=200, mode="approximate", retries=0, max_concurrency=1, progress=False
        )
    paid = info.value.values
    assert 50 <= len(paid) < 60
    second = Logged()
    res = coreopt.least_core(
        second, N, budget=200, mode="approximate", known_values=paid, progress=False
    )
    assert not set(second.calls) & set(paid)
    assert len(paid) + sum(second.calls.values()) <= 200
    assert res.reused_values == len(paid)


def test_a_file_of_another_game_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "v.sqlite"
    coreopt.least_core(GAME, N, budget=60, mode="approximate", checkpoint=path, progress=False)
    with pytest.raises(ValueError, match=r"another game.*players"):
        coreopt.least_core(GAME, list("abcdefghi"), budget=60, checkpoint=path, progress=False)
    with pytest.raises(ValueError, match=r"another game.*value function"):
        coreopt.least_core(games.pairwise(N), N, budget=60, checkpoint=path, progress=False)
    (tmp_path / "junk").write_text("not a database at all, just text " * 10)
    with pytest.raises(ValueError, match="not a coreopt"):
        coreopt.least_core(GAME, N, checkpoint=tmp_path / "junk", progress=False)
    with pytest.raises(TypeError, match="checkpoint"):
        coreopt.least_core(GAME, N, checkpoint=3, progress=False)  # type: ignore[arg-type]


@pytest.mark.parametrize("concurrency", [1, 4])
def test_keyboard_interrupt_keeps_every_value_paid(tmp_path: Path, concurrency: int) -> None:
    # a real SIGINT to this process while worker threads are paying (the threaded path)
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals need the main thread")
    calls: Counter[frozenset] = Counter()
    lock = threading.Lock()
    armed = [True]

    def slow(s: frozenset) -> float:
        with lock:
            calls[s] += 1
            total = sum(calls.values())
        if total == 40 and armed[0]:
            os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.002)
        return GAME(s)

    path = tmp_path / "v.sqlite"
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt) as info:
        coreopt.least_core(
            slow,
            N,
            budget=300,
            mode="approximate",
            checkpoint=path,
            max_concurrency=concurrency,
            progress=False,
        )
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
    values = info.value.values  # type: ignore[attr-defined]
    # every call made finished (in flight ones were waited for) and is kept, none is lost
    assert set(values) == set(calls)
    assert all(v == GAME(s) for s, v in values.items())
    # the rerun pays only for the rest
    calls_before = dict(calls)
    calls.clear()
    armed[0] = False
    # (the same function: the file stores its name and refuses another value function)
    res = coreopt.least_core(
        slow, N, budget=300, mode="approximate", checkpoint=path, progress=False
    )
    assert not set(calls) & set(calls_before)
    assert res.reused_values == len(calls_before)


def test_keyboard_interrupt_on_the_async_path_keeps_values() -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals need the main thread")
    calls: Counter[frozenset] = Counter()

    async def value(s: frozenset) -> float:
        calls[s] += 1
        if sum(calls.values()) == 30:
            os.kill(os.getpid(), signal.SIGINT)
        await asyncio.sleep(0.002)
        return GAME(s)

    with pytest.raises(KeyboardInterrupt) as info:
        coreopt.least_core(
            value, N, budget=300, mode="approximate", max_concurrency=4, progress=False
        )
    assert set(info.value.values) == set(calls)  # type: ignore[attr-defined]


def test_sigterm_becomes_an_exception_with_the_values(tmp_path: Path) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals need the main thread")
    calls: Counter[frozenset] = Counter()

    def value(s: frozenset) -> float:
        calls[s] += 1
        if sum(calls.values()) == 25:
            os.kill(os.getpid(), signal.SIGTERM)
        return GAME(s)

    with pytest.raises(SolveTerminated) as info:
        coreopt.least_core(value, N, budget=300, mode="approximate", progress=False)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert info.value.code == 143
    assert set(info.value.values) == set(calls)


def test_a_solver_side_exception_carries_the_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import coreopt.game.solver as solver

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("tie-break QP failed")

    monkeypatch.setattr(solver, "apply_tie_break", broken)
    f = Logged()
    path = tmp_path / "v.sqlite"
    with pytest.raises(RuntimeError, match="QP failed") as info:
        coreopt.least_core(f, N, budget=100, mode="approximate", checkpoint=path, progress=False)
    assert set(info.value.values) == set(f.calls)  # type: ignore[attr-defined]
    monkeypatch.undo()
    again = Logged()
    coreopt.least_core(again, N, budget=100, mode="approximate", checkpoint=path, progress=False)
    assert not set(again.calls) & set(f.calls)


def test_cancelled_aleast_core_carries_the_values() -> None:
    calls: Counter[frozenset] = Counter()
    answered: Counter[frozenset] = Counter()

    async def value(s: frozenset) -> float:
        calls[s] += 1
        await asyncio.sleep(0.005)
        answered[s] += 1
        return GAME(s)

    async def main() -> BaseException:
        task = asyncio.ensure_future(
            coreopt.aleast_core(value, N, budget=300, mode="approximate", progress=False)
        )
        # wait for answered calls, not started ones: under load, started calls may still be in
        # flight when the task is cancelled
        while sum(answered.values()) < 20:
            await asyncio.sleep(0.005)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError as exc:
            return exc
        raise AssertionError("not cancelled")

    err = asyncio.run(main())
    values = err.values  # type: ignore[attr-defined]
    assert len(values) >= 20
    assert set(values) <= set(calls)
    assert all(v == GAME(s) for s, v in values.items())


WORKER = textwrap.dedent(
    """
    import json, sys, time
    import coreopt
    from coreopt.game import games

    log, ckpt, kind = sys.argv[1:4]
    game = games.coverage(9, seed=0)

    def value(s):
        with open(log, "a") as f:  # logged when paid for (the request is sent)
            f.write(json.dumps(sorted(s)) + "\\n")
        time.sleep(0.02)
        return game(s)

    try:
        res = coreopt.least_core(value, 9, budget=150, mode="approximate", checkpoint=ckpt,
                                 max_concurrency=4, progress=False)
    except KeyboardInterrupt as err:
        print("INTERRUPTED", len(err.values), flush=True)
        sys.exit(3)
    print("DONE", res.value_calls, res.reused_values, flush=True)
    """
)


def _run_until(script: Path, log: Path, ckpt: Path, lines: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(script), str(log), str(ckpt), "x"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= lines:
            return proc
        if proc.poll() is not None:
            raise AssertionError(f"worker ended early: {proc.communicate()}")
        time.sleep(0.01)
    proc.kill()
    raise AssertionError("worker too slow")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_killed_subprocess_resumes_without_paying_twice(tmp_path: Path, sig: int) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    log, ckpt = tmp_path / "calls.log", tmp_path / "values.sqlite"
    proc = _run_until(script, log, ckpt, lines=40)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 3, err
        assert out.startswith("INTERRUPTED")
    else:
        assert proc.returncode == -signal.SIGKILL
    paid_first = Counter(log.read_text().splitlines())
    rerun = subprocess.run(
        [sys.executable, str(script), str(log), str(ckpt), "x"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.startswith("DONE")
    _, calls, reused = rerun.stdout.split()
    paid = Counter(log.read_text().splitlines())
    twice = [c for c, k in paid.items() if k > 1]
    if sig == signal.SIGINT:
        assert twice == []  # the calls in flight finished and were saved
    else:
        assert len(twice) <= 4  # SIGKILL loses at most the calls in flight (max_concurrency)
    assert max(paid_first.values()) == 1
    # the budget spans both runs
    assert int(calls) + int(reused) <= 150
    # every call paid, the ones a SIGKILL lost included, fits in the budget: the file notes
    # calls before they start, and a rerun counts the unanswered ones as spent
    assert sum(paid.values()) <= 150
    assert all(len(json.loads(c)) for c in paid)


def test_values_are_in_the_file_as_soon_as_they_are_paid(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "v.sqlite"
    seen_in_file: list[int] = []

    def value(s: frozenset) -> float:
        with sqlite3.connect(path) as db:  # another connection, as a crash survivor would read
            seen_in_file.append(db.execute("SELECT COUNT(*) FROM coalition_value").fetchone()[0])
        return GAME(s)

    coreopt.least_core(
        value, N, budget=50, mode="approximate", checkpoint=path, max_concurrency=1, progress=False
    )
    # before call k (0-based) the file already held the k values paid before it
    assert seen_in_file == list(range(len(seen_in_file)))
    assert np.all(np.diff(seen_in_file) == 1)


def test_a_second_ctrl_c_raises_at_once_and_still_keeps_the_values() -> None:
    # the second SIGINT does not wait for the drain: calls in flight in worker threads finish
    # after the exception left the oracle, and only the ledger sees their values
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals need the main thread")
    calls: Counter[frozenset] = Counter()
    lock = threading.Lock()

    def slow(s: frozenset) -> float:
        with lock:
            calls[s] += 1
            total = sum(calls.values())
        if total == 40:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        return GAME(s)

    with pytest.raises(KeyboardInterrupt) as info:
        coreopt.least_core(
            slow, N, budget=300, mode="approximate", max_concurrency=4, progress=False
        )
    values = info.value.values  # type: ignore[attr-defined]
    assert set(values) == set(calls)


def test_aleast_core_uses_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "v.sqlite"
    calls: Counter[frozenset] = Counter()

    async def value(s: frozenset) -> float:
        calls[s] += 1
        await asyncio.sleep(0)
        return GAME(s)

    async def main() -> tuple[coreopt.game.LeastCoreResult, coreopt.game.LeastCoreResult]:
        first = await coreopt.aleast_core(
            value, N, budget=80, mode="approximate", checkpoint=os.fspath(path), progress=False
        )
        second = await coreopt.aleast_core(
            value, N, budget=200, mode="approximate", checkpoint=path, progress=False
        )
        return first, second

    first, second = asyncio.run(main())
    assert max(calls.values()) == 1  # the second run never paid a value of the first again
    assert second.reused_values == first.value_calls
    assert first.value_calls + second.value_calls == sum(calls.values()) <= 200
