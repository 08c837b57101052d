"""Exact separation on the TRUE game by a HiGHS MILP, for the coverage and voting families.

``max over proper S of v(S) - x(S)`` has an exact mixed-integer formulation for both families, so
at n = 40 (2^40 coalitions) the benchmark can still (a) compute the least-core value e* exactly,
by constraint generation with this separation, and (b) audit any payoff's true requirement
``max_S v(S) - x(S)`` exactly. Membership ``z_i`` is binary; ``1 <= Σ z <= n - 1`` (proper).

* coverage (``games.coverage_structure``): ``max Σ_f w_f y_f - x·z`` with ``y_f <= Σ_{i covers f}
  z_i``, ``0 <= y_f <= 1`` (at an optimum ``y_f = 1`` iff some chosen source covers f);
* weighted voting (``games.random_voting_weights``): ``max u - x·z`` with ``Σ w_i z_i >= q u``,
  ``u`` binary.

The MILP's optimum is re-evaluated on the game itself (``v(mask) - x(mask)``), so a solver
tolerance can only make the audit miss by HiGHS's gap (set to 1e-9 relative and absolute).
HiGHS's presolve is off: with it the MILP reported suboptimal coalitions as optimal at n = 40.
"""

from __future__ import annotations

from collections.abc import Callable

import highspy
import numpy as np
import numpy.typing as npt

Separator = Callable[[npt.NDArray[np.float64]], tuple[float, int]]
_INF = highspy.kHighsInf


def _model(n: int, extra_cost: npt.NDArray[np.float64], extra_int: bool) -> highspy.Highs:
    from coreopt.game.lp import new_highs

    h = new_highs(threads=1)  # silent: no banner on stdout, output_flag off
    h.setOptionValue("mip_rel_gap", 1e-9)
    h.setOptionValue("mip_abs_gap", 1e-9)
    # HiGHS's MILP presolve returned suboptimal coalitions reported optimal (gap 0, one node) at
    # payoffs near the least core: coverage n = 40 seed 3, 23.596 where a coalition with 23.635
    # exists, found when the payoff moved by 1e-9. Off, every such perturbation agrees
    # (benchmarks/RESULTS.md, session 7; tests/benchmarks/test_least_core_bench.py)
    h.setOptionValue("presolve", "off")
    k = extra_cost.shape[0]
    none = np.array([], dtype=np.int32)
    h.addCols(
        n + k,
        np.concatenate([np.zeros(n), extra_cost]),
        np.zeros(n + k),
        np.ones(n + k),
        0,
        none,
        none,
        np.array([]),
    )
    ints = list(range(n)) + (list(range(n, n + k)) if extra_int else [])
    h.changeColsIntegrality(
        len(ints), np.array(ints, dtype=np.int32), np.full(len(ints), highspy.HighsVarType.kInteger)
    )
    h.addRow(1.0, n - 1.0, n, np.arange(n, dtype=np.int32), np.ones(n))
    return h


def _separator(h: highspy.Highs, n: int, value_of: Callable[[int], float]) -> Separator:
    idx = np.arange(n, dtype=np.int32)

    def separate(x: npt.NDArray[np.float64]) -> tuple[float, int]:
        h.changeColsCost(n, idx, np.asarray(x, dtype=np.float64))
        h.run()
        if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            raise RuntimeError(f"audit MILP: {h.modelStatusToString(h.getModelStatus())}")
        z = np.asarray(h.getSolution().col_value[:n]) > 0.5
        mask = int(sum(1 << i for i in range(n) if z[i]))
        return value_of(mask) - float(np.asarray(x)[z].sum()), mask

    return separate


def coverage_separator(
    covers: npt.NDArray[np.bool_], weight: npt.NDArray[np.float64], value_of: Callable[[int], float]
) -> Separator:
    """Exact ``max_S v(S) - x(S)`` (and its mask) for a coverage game."""
    n, facts = covers.shape
    h = _model(n, -np.asarray(weight, dtype=np.float64), extra_int=False)
    for f in range(facts):
        src = np.flatnonzero(covers[:, f]).astype(np.int32)
        cols = np.concatenate([[n + f], src]).astype(np.int32)
        vals = np.concatenate([[1.0], -np.ones(src.size)])
        h.addRow(-_INF, 0.0, cols.size, cols, vals)
    return _separator(h, n, value_of)


def voting_separator(
    weights: npt.NDArray[np.float64], quota: float, value_of: Callable[[int], float]
) -> Separator:
    """Exact ``max_S v(S) - x(S)`` (and its mask) for a weighted voting game."""
    n = weights.shape[0]
    h = _model(n, np.array([-1.0]), extra_int=True)
    cols = np.arange(n + 1, dtype=np.int32)
    h.addRow(0.0, _INF, n + 1, cols, np.concatenate([weights, [-quota]]))
    return _separator(h, n, value_of)


def exact_epsilon(
    n: int,
    grand_value: float,
    value_of: Callable[[int], float],
    separate: Separator,
    tol: float = 1e-9,
    max_rounds: int = 5000,
) -> tuple[float, int]:
    """e* (proper coalitions, free payments) by constraint generation with exact separation.

    Starts from the singletons and leave-one-out rows; each round solves the LP on HiGHS and adds
    the coalition of largest excess at its optimum, until none exceeds e by more than
    ``tol · max(1, |v(N)|)``. Returns ``(e*, rounds)``.
    """
    from coreopt.game.lp import LeastCoreLP

    lp = LeastCoreLP(n, grand_value)
    grand = (1 << n) - 1
    seeds = [1 << i for i in range(n)] + [grand ^ (1 << i) for i in range(n)]
    lp.add_rows(seeds, [value_of(m) for m in seeds])
    limit = tol * max(1.0, abs(grand_value))
    for rounds in range(1, max_rounds + 1):
        sol = lp.solve()
        worst, mask = separate(sol.x)
        if worst <= sol.epsilon + limit or mask in lp:
            return sol.epsilon, rounds
        lp.add_rows([mask], [value_of(mask)])
    raise RuntimeError(f"exact e* did not converge in {max_rounds} rounds")
