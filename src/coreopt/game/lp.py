"""The least-core linear program on HiGHS, grown row by row and re-solved warm.

Variables: payments ``x_0 .. x_{n-1}`` and the excess ``e``. Problem::

    minimise e   s.t.   x(N) = v(N),    x(S) + e >= v(S)   for every row S added,

with optional bounds ``x >= 0`` (non-negative payments), ``x_i >= v({i})`` (imputations) and
``e >= 0`` (when all coalitions, N included, count: ``x(N) + e >= v(N)`` forces it). Rows are added
incrementally with ``Highs.addRows``; HiGHS keeps the basis, so each re-solve is a warm dual
simplex.
The optimum over a subset of rows is a lower bound on the optimum over all rows.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import highspy
import numpy as np
import numpy.typing as npt

from coreopt.game.coalitions import mask_array, members

_INF = highspy.kHighsInf
_BANNER_LOCK = threading.Lock()
_banner_done = False


def new_highs(threads: int = 1) -> highspy.Highs:
    """A silent ``highspy.Highs`` instance.

    HiGHS prints its copyright banner on C-level stdout when the first instance of the process is
    constructed, before any option can switch output off. Library code must never write to
    stdout, so the first construction runs with file descriptor 1 pointed at ``os.devnull``
    (once per process, under a lock); ``output_flag`` is switched off on every instance.
    """
    global _banner_done
    with _BANNER_LOCK:
        if _banner_done:
            h = highspy.Highs()
        else:
            h = _construct_muted()
            _banner_done = True
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", threads)
    return h


def _construct_muted() -> highspy.Highs:
    """``highspy.Highs()`` with C-level stdout sent to ``os.devnull`` while it runs."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError, AttributeError):  # no usable fd 1: nothing can leak to it
        return highspy.Highs()
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 1)
            return highspy.Highs()
        finally:
            os.dup2(saved, 1)
            os.close(devnull)
    finally:
        os.close(saved)


class InfeasibleGameError(ValueError):
    """The least-core LP has no solution under the requested payment bounds."""


@dataclass(frozen=True)
class LPSolution:
    """One optimal solution of the (restricted) least-core LP.

    Attributes:
        x: payments, shape ``(n,)``.
        epsilon: optimal excess ``e``.
        masks: coalition masks of the rows, in the order they were added, shape ``(R,)``.
        duals: their dual values (>= 0, summing to 1 when ``e`` is free), shape ``(R,)``: the
            balancing weights that certify the bound.
        grand_dual: dual of the efficiency row ``x(N) = v(N)``.
        iterations: simplex iterations of this solve.
        seconds: wall time of this solve.
    """

    x: npt.NDArray[np.float64]
    epsilon: float
    masks: npt.NDArray[np.int64]
    duals: npt.NDArray[np.float64]
    grand_dual: float
    iterations: int
    seconds: float


class LeastCoreLP:
    """Incremental least-core LP.

    Args:
        n: number of players.
        grand_value: ``v(N)``.
        nonnegative: add bounds ``x_i >= 0``.
        lower_bounds: per-player lower bounds on ``x`` (e.g. ``v({i})`` for imputations), shape
            ``(n,)``; combined with ``nonnegative`` by taking the maximum.
        epsilon_lower: lower bound on ``e`` (``0.0`` when all coalitions count); ``None``: free.
        threads: HiGHS threads (1 keeps warm solves cheapest).
    """

    def __init__(
        self,
        n: int,
        grand_value: float,
        *,
        nonnegative: bool = False,
        lower_bounds: npt.ArrayLike | None = None,
        epsilon_lower: float | None = None,
        threads: int = 1,
    ) -> None:
        self.n = n
        self.grand_value = float(grand_value)
        self._h = new_highs(threads)
        self._h.setOptionValue("primal_feasibility_tolerance", 1e-10)
        self._h.setOptionValue("dual_feasibility_tolerance", 1e-10)
        lo = np.full(n, -_INF)
        if nonnegative:
            lo = np.maximum(lo, 0.0)
        if lower_bounds is not None:
            lb = np.asarray(lower_bounds, dtype=np.float64).reshape(-1)
            if lb.shape != (n,):
                raise ValueError(f"lower_bounds must have shape ({n},), got {lb.shape}")
            lo = np.maximum(lo, lb)
        self.x_lower = lo
        costs = np.zeros(n + 1)
        costs[n] = 1.0
        lower = np.append(lo, -_INF if epsilon_lower is None else float(epsilon_lower))
        upper = np.full(n + 1, _INF)
        empty_i = np.array([], dtype=np.int32)
        self._h.addCols(n + 1, costs, lower, upper, 0, empty_i, empty_i, np.array([]))
        self._h.addRows(
            1,
            np.array([self.grand_value]),
            np.array([self.grand_value]),
            n,
            np.array([0], dtype=np.int32),
            np.arange(n, dtype=np.int32),
            np.ones(n),
        )
        self._fixed_rows = 0
        self._masks: list[int] = []
        self._values: list[float] = []
        self._row_of: dict[int, int] = {}

    @property
    def num_rows(self) -> int:
        """Coalition rows added (the efficiency row excluded)."""
        return len(self._masks)

    @property
    def masks(self) -> npt.NDArray[np.int64]:
        """Masks of the rows, in insertion order."""
        return mask_array(self._masks, self.n)  # int64 up to 62 players, else Python ints

    @property
    def values(self) -> npt.NDArray[np.float64]:
        """``v(S)`` of the rows, in insertion order."""
        return np.array(self._values, dtype=np.float64)

    def __contains__(self, mask: int) -> bool:
        return int(mask) in self._row_of

    def add_rows(self, masks: Iterable[int], values: Iterable[float]) -> int:
        """Add rows ``x(S) + e >= v(S)``; masks already present are skipped.

        Returns:
            The number of rows actually added.
        """
        starts: list[int] = []
        index: list[int] = []
        lower: list[float] = []
        for mask, value in zip(masks, values, strict=True):
            m = int(mask)
            if m in self._row_of:
                continue
            if m <= 0 or m >= (1 << self.n):
                raise ValueError(f"mask {m} is not a coalition of {self.n} players")
            self._row_of[m] = len(self._masks)
            self._masks.append(m)
            self._values.append(float(value))
            starts.append(len(index))
            index.extend(members(m))
            index.append(self.n)
            lower.append(float(value))
        if not starts:
            return 0
        k = len(starts)
        self._h.addRows(
            k,
            np.array(lower),
            np.full(k, _INF),
            len(index),
            np.array(starts, dtype=np.int32),
            np.array(index, dtype=np.int32),
            np.ones(len(index)),
        )
        return k

    def add_fixed_rows(self, masks: Iterable[int], rhs: Iterable[float]) -> None:
        """Add equality rows ``x(S) = rhs`` (no ``e``): a nucleolus stage's fixed coalitions.

        Must be called before any :meth:`add_rows` (row order is what maps duals to coalitions).
        """
        if self._masks:
            raise RuntimeError("add_fixed_rows must be called before add_rows")
        starts: list[int] = []
        index: list[int] = []
        bounds: list[float] = []
        for mask, value in zip(masks, rhs, strict=True):
            starts.append(len(index))
            index.extend(members(int(mask)))
            bounds.append(float(value))
        if starts:
            b = np.array(bounds)
            self._h.addRows(
                len(starts),
                b,
                b,
                len(index),
                np.array(starts, dtype=np.int32),
                np.array(index, dtype=np.int32),
                np.ones(len(index)),
            )
            self._fixed_rows += len(starts)

    def solve(self) -> LPSolution:
        """Re-solve (warm) and return the optimum.

        Raises:
            InfeasibleGameError: the bounds on ``x`` cannot meet ``x(N) = v(N)``.
            RuntimeError: HiGHS ended with any other non-optimal status.
        """
        t0 = time.perf_counter()
        self._h.run()
        status = self._h.getModelStatus()
        if status != highspy.HighsModelStatus.kOptimal:
            text = self._h.modelStatusToString(status)
            if status in (highspy.HighsModelStatus.kInfeasible,):
                # (no raw numbers: the solver sees the game in units of its largest |v|)
                ratio = (
                    f" ({self.x_lower.sum() / self.grand_value:.6g} times v(N))"
                    if self.grand_value > 0
                    else ""
                )
                raise InfeasibleGameError(
                    "the least-core LP is infeasible: the payment lower bounds (nonnegative/"
                    f"imputation) sum to more than v(N){ratio}; drop nonnegative/imputation "
                    "or check v(N)"
                )
            raise RuntimeError(f"HiGHS did not solve the least-core LP: {text}")
        sol = self._h.getSolution()
        col = np.asarray(sol.col_value, dtype=np.float64)
        row_dual = np.asarray(sol.row_dual, dtype=np.float64)
        return LPSolution(
            x=col[: self.n].copy(),
            epsilon=float(col[self.n]),
            masks=self.masks,
            duals=np.maximum(row_dual[1 + self._fixed_rows :], 0.0),
            grand_dual=float(row_dual[0]),
            iterations=int(self._h.getInfo().simplex_iteration_count),
            seconds=time.perf_counter() - t0,
        )
