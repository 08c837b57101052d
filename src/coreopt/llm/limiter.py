"""How many LLM calls may be in flight at once, shared by every event loop and thread.

:class:`Limiter` is a FIFO semaphore usable from any event loop in any thread. Its limit is fixed,
or *adaptive* (for servers, where a call can time out): additive increase, multiplicative decrease
(AIMD, as TCP's congestion control). It starts low, grows by about one call per round of answers
that come back well within the timeout, stops growing when answers take half the timeout, and
halves when a call times out or the server answers 429/503. So a slow server (one slot, say) is
never sent more requests than it answers within the timeout, and the requests abandoned by timed-out
clients (which the server still works through) stay few.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque

ADAPTIVE_START = 2
"""Calls in flight an adaptive limit starts with."""
GROW_BELOW = 0.25
"""An answer faster than this fraction of the timeout lets an adaptive limit grow."""
HOLD_BELOW = 0.5
"""An answer slower than this fraction of the timeout shrinks an adaptive limit by a quarter
(between the two the limit holds)."""


class Limiter:
    """A FIFO semaphore usable from any event loop in any thread (``async with limiter:``).

    Args:
        limit: most calls in flight (the ceiling of an adaptive limit).
        adaptive: adapt the limit to the server (see the module's description) through
            :meth:`answered` and :meth:`congested`.
    """

    def __init__(self, limit: int, *, adaptive: bool = False) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit!r}")
        self.ceiling = limit
        self.adaptive = adaptive
        self._limit = float(min(ADAPTIVE_START, limit) if adaptive else limit)
        self._in_flight = 0
        self.epoch = 0  # bumped by each decrease: a burst of timeouts halves the limit once
        self.peak = 0  # most calls in flight seen
        self._lock = threading.Lock()
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()

    @property
    def limit(self) -> int:
        """The current limit (whole calls)."""
        return max(1, int(self._limit))

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def __aenter__(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._in_flight < self.limit and not self._waiters:
                self._take()
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
                except ValueError:  # popped by _dispatch(): a grant is on its way or arrived
                    granted = fut.done() and not fut.cancelled()
            if granted:
                self.release()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def _take(self) -> None:
        self._in_flight += 1
        self.peak = max(self.peak, self._in_flight)

    def release(self) -> None:
        """Give a slot back (and pass it on to the next waiter)."""
        with self._lock:
            self._in_flight -= 1
            self._dispatch()

    def _dispatch(self) -> None:  # with the lock held
        while self._waiters and self._in_flight < self.limit:
            loop, fut = self._waiters.popleft()
            if loop.is_closed():
                continue
            try:
                loop.call_soon_threadsafe(self._grant, fut)
            except RuntimeError:  # the loop closed meanwhile
                continue
            self._take()

    def _grant(self, fut: asyncio.Future[None]) -> None:
        if fut.done():  # cancelled before the grant arrived: pass it on
            self.release()
        else:
            fut.set_result(None)

    # -- adaptation ------------------------------------------------------------------------------

    def answered(self, seconds: float, timeout: float | None) -> None:
        """A call came back after ``seconds`` (the server's timeout: ``timeout``)."""
        if not self.adaptive or timeout is None or timeout <= 0:
            return
        with self._lock:
            if seconds < GROW_BELOW * timeout:
                self._limit = min(float(self.ceiling), self._limit + 1.0 / self.limit)
                self._dispatch()
            elif seconds > HOLD_BELOW * timeout:
                self._limit = max(1.0, self._limit * 0.75)

    def congested(self, epoch: int) -> None:
        """A call dispatched in ``epoch`` timed out or was refused (429/503): halve the limit,
        once per burst (calls dispatched before the last decrease do not count again)."""
        if not self.adaptive:
            return
        with self._lock:
            if epoch == self.epoch:
                self._limit = max(1.0, self._limit / 2)
                self.epoch += 1
