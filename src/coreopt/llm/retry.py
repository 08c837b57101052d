"""When and how long to wait before retrying an LLM call: backoff with jitter, the server's
``Retry-After``, and which failures mean the server is overloaded."""

from __future__ import annotations

import email.utils
import math
import random
import time

from coreopt.llm.types import status_code

MAX_RETRY_AFTER_S = 60.0
"""A ``Retry-After`` longer than this is not waited for; the backoff is used instead."""


def retry_after(exc: BaseException) -> float | None:
    """Seconds the server asked to wait (``retry-after-ms`` or ``retry-after`` header of the
    HTTP answer an SDK exception carries), or ``None``."""
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            value = float(raw) * scale
        except ValueError:
            parsed = email.utils.parsedate_tz(str(raw))
            if parsed is None:
                continue
            value = email.utils.mktime_tz(parsed) - time.time()
        if math.isfinite(value):
            return max(0.0, value)
    return None


def backoff(attempt: int, first: float, most: float) -> float:
    """Exponential backoff with jitter: ``first * 2**attempt`` capped at ``most``, times a
    random factor in [0.5, 1)."""
    return min(most, first * 2**attempt) * (0.5 + random.random() / 2)


def retry_delay(exc: BaseException, attempt: int, first: float, most: float) -> float:
    """The wait before retry ``attempt + 1``: the server's ``Retry-After`` when it gives one (up
    to :data:`MAX_RETRY_AFTER_S`), else :func:`backoff`."""
    asked = retry_after(exc)
    if asked is not None and asked <= MAX_RETRY_AFTER_S:
        return asked
    return backoff(attempt, first, most)


def is_timeout(exc: BaseException) -> bool:
    """A request that timed out (SDK timeouts, ``TimeoutError``, HTTP 408)."""
    if isinstance(exc, TimeoutError) or "Timeout" in type(exc).__name__:
        return True
    return status_code(exc) == 408


def is_congestion(exc: BaseException) -> bool:
    """The server is overloaded: a timeout, or HTTP 429/503."""
    return is_timeout(exc) or status_code(exc) in (429, 503)
