"""Running coroutines from synchronous code, inside or outside a running event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, cast


def run_sync(make: Callable[[], Awaitable[Any]]) -> Any:
    """Run the coroutine ``make()`` to completion and return its result.

    Works whether or not this thread already runs an event loop: inside Jupyter (whose loop is
    running) the coroutine runs on a fresh loop in a helper thread, which this call joins.
    Exceptions propagate unchanged.

    Args:
        make: a zero-argument callable returning the coroutine (called in the thread that runs
            it, so objects bound to a loop are created on the right one).

    Examples:
        >>> import asyncio
        >>> async def twice(v):
        ...     await asyncio.sleep(0)
        ...     return 2 * v
        >>> run_sync(lambda: twice(21))
        42
    """

    def coro() -> Coroutine[Any, Any, Any]:
        return cast(Coroutine[Any, Any, Any], make())

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro())
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro())
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="coreopt-run-sync")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
