"""Statistics of repeated LLM samples."""

from __future__ import annotations

import math
from collections.abc import Sequence


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of repeated samples (``0.0`` error for one sample).

    Examples:
        >>> mean_and_stderr([1.0, 3.0])
        (2.0, 1.0)
    """
    if not values:
        raise ValueError("no samples")
    k = len(values)
    mean = math.fsum(values) / k
    if k == 1:
        return mean, 0.0
    var = math.fsum((v - mean) ** 2 for v in values) / (k - 1)
    return mean, math.sqrt(var / k)
