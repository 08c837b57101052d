"""Constraint generation against a row source with known values, and the tie-breaking rules.

Used as is by exact mode (the source is the full table) and by approximate mode for its final
tie-break (the source is every coalition evaluated).
"""

from __future__ import annotations

import highspy
import numpy as np
import numpy.typing as npt

from coreopt.game.coalitions import members
from coreopt.game.lp import LeastCoreLP, LPSolution
from coreopt.game.rows import ExplicitRows, TableRows, most_violated, span_residual

Source = TableRows | ExplicitRows
_INF = highspy.kHighsInf


def solve_by_generation(
    lp: LeastCoreLP, source: Source, *, tol: float, rows_per_round: int, max_rounds: int = 10_000
) -> tuple[LPSolution, int]:
    """Re-solve ``lp`` adding the most violated rows of ``source`` until none is violated.

    Returns:
        The final solution (optimal over every row of ``source``) and the number of LP solves.
    """
    if lp.num_rows == 0:
        # an LP without coalition rows is unbounded: start from the rows of largest excess at
        # the equal split
        masks, ex = source.excess(np.full(lp.n, lp.grand_value / lp.n))
        first = most_violated(masks, ex, -np.inf, rows_per_round, 0.0)
        if first.size == 0:
            raise ValueError("no eligible coalition left to constrain the least-core LP")
        lp.add_rows(first.tolist(), source.value_of(first).tolist())
    for rounds in range(1, max_rounds + 1):
        sol = lp.solve()
        masks, ex = source.excess(sol.x)
        new = most_violated(masks, ex, sol.epsilon, rows_per_round + lp.num_rows, tol)
        # rows already in the LP can look violated within HiGHS's feasibility tolerance
        new = np.array([m for m in new.tolist() if m not in lp][:rows_per_round], dtype=np.int64)
        if new.size == 0:
            return sol, rounds
        lp.add_rows(new.tolist(), source.value_of(new).tolist())
    raise RuntimeError(f"constraint generation did not converge in {max_rounds} rounds")


def egalitarian(
    source: Source,
    *,
    grand_value: float,
    x_lower: npt.NDArray[np.float64],
    level: float,
    seed_masks: npt.NDArray[np.int64],
    tol: float,
    rows_per_round: int,
) -> npt.NDArray[np.float64]:
    """Minimum-norm payoff in the (relaxed) least core: ``argmin ||x||_2`` s.t.
    ``x(N) = v(N)``, ``x(S) >= v(S) - level`` for every row of ``source``, and ``x >= x_lower``.

    ``level`` is ``e* + slack``: a small slack keeps the QP strictly feasible when ``e*`` carries
    rounding error. Each round solves the QP on the rows found so far (:func:`_min_norm`: cvxpy's
    Clarabel, an interior-point method, since HiGHS's active-set QP was seen to stop at 1e-5
    infeasibility on these degenerate problems; then polished on its active set to machine
    precision), and adds the rows of ``source`` it violates, until none is violated.
    """
    present: set[int] = {int(m) for m in np.asarray(seed_masks).tolist()}
    for _ in range(10_000):
        masks = np.array(sorted(present), dtype=np.int64)
        x = _min_norm(source.n, grand_value, x_lower, masks, source, level, tol)
        all_masks, ex = source.excess(x)
        new = most_violated(all_masks, ex, level, rows_per_round + len(present), tol)
        fresh = [m for m in new.tolist() if m not in present][:rows_per_round]
        if not fresh:
            return x
        present.update(fresh)
    raise RuntimeError("egalitarian tie-break did not converge")


def nucleolus(
    source: Source,
    *,
    grand_value: float,
    x_lower: npt.NDArray[np.float64],
    seed_masks: npt.NDArray[np.int64],
    tol: float,
    rows_per_round: int,
    scale: float = 1.0,
) -> tuple[npt.NDArray[np.float64], list[float]]:
    """The nucleolus of the game restricted to ``source``'s coalitions, by sequential LPs.

    Stage k minimises the largest excess ``e`` over coalitions not yet fixed, keeping every earlier
    stage's fixed coalitions at their excess; the rows with positive dual weight are then fixed
    (they are tight in every optimum), and coalitions whose indicator lies in the span of the fixed
    ones (their excess is already determined) leave the problem. Each stage adds at least one
    independent indicator, so at most ``n - 1`` stages run. ``e`` is free in every stage (the
    proper/all-coalitions convention does not change the nucleolus), except for an artificial
    lower bound ``-1e3 · n · scale`` that keeps a stage's first restricted LPs bounded; it is never
    active at a stage optimum of a game with values of magnitude ``scale``.

    Returns:
        The nucleolus payoff and the excess levels ``e_1 >= e_2 >= ...`` of the stages.
    """
    n = source.n
    fixed_masks: list[int] = []
    fixed_rhs: list[float] = []
    levels: list[float] = []
    indicators = [np.ones(n)]
    carry = np.asarray(seed_masks, dtype=np.int64)
    x = np.zeros(n)
    for _stage in range(n):
        lp = LeastCoreLP(n, grand_value, lower_bounds=x_lower, epsilon_lower=-1e3 * n * scale)
        lp.add_fixed_rows(fixed_masks, fixed_rhs)
        if carry.size:
            lp.add_rows(carry.tolist(), source.value_of(carry).tolist())
        sol, _ = solve_by_generation(lp, source, tol=tol, rows_per_round=rows_per_round)
        x = sol.x
        levels.append(sol.epsilon)
        tight = sol.masks[sol.duals > 1e-9]
        for m in tight.tolist():
            fixed_masks.append(m)
            fixed_rhs.append(float(source.value_of(np.array([m]))[0]) - sol.epsilon)
            indicators.append(_indicator(m, n))
        F = np.stack(indicators)
        _, s, vt = np.linalg.svd(F)
        rank = int((s > 1e-9 * s[0]).sum())
        if rank >= n:
            break
        basis_perp = vt[rank:].T
        source.exclude(span_residual(source, basis_perp) > 1e-9)
        # rows still eligible (outside the fixed span, which holds every fixed coalition) carry
        # over to the next stage
        carry = sol.masks[source.is_eligible(sol.masks)]
    return x, levels


def _min_norm(
    n: int,
    grand_value: float,
    x_lower: npt.NDArray[np.float64],
    masks: npt.NDArray[np.int64],
    source: Source,
    level: float,
    tol: float,
) -> npt.NDArray[np.float64]:
    """``argmin ||x||²`` s.t. ``x(N) = v(N)``, ``x(S) >= v(S) - level``, ``x >= x_lower``.

    Solved by cvxpy/Clarabel (interior point, ~1e-8 accurate), then polished to machine precision
    by a primal active-set pass guided by its multipliers: the minimum-norm point of an equality
    system is ``x = A^T λ`` with ``(A A^T) λ = b``; it is the exact optimum when it is feasible
    with ``λ >= 0`` on the inequalities (the KKT conditions). When the pass cannot certify that,
    the interior-point solution is returned.
    """
    import cvxpy as cp

    from coreopt.game.coalitions import incidence

    inc = incidence(masks, n) if masks.size else np.zeros((0, n))
    rhs = source.value_of(masks) - level if masks.size else np.zeros(0)
    bounded = np.flatnonzero(np.isfinite(x_lower))
    x = cp.Variable(n)
    rows = inc @ x >= rhs
    bounds = x[bounded] >= x_lower[bounded]
    constraints = [cp.sum(x) == grand_value, rows] + ([bounds] if bounded.size else [])
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x)), constraints)
    problem.solve(solver=cp.CLARABEL)
    if problem.status not in ("optimal", "optimal_inaccurate") or x.value is None:
        raise RuntimeError(f"egalitarian tie-break QP failed: {problem.status}")
    x_ip = np.asarray(x.value, dtype=np.float64)

    def dual(c: object) -> npt.NDArray[np.float64]:
        value = getattr(c, "dual_value", None)
        return np.zeros(0) if value is None else np.atleast_1d(np.asarray(value, dtype=np.float64))

    row_dual = dual(rows) if masks.size else np.zeros(0)
    bound_dual = dual(bounds) if bounded.size else np.zeros(0)
    # Active-set polish: start from the efficiency row alone and add, one at a time, the violated
    # constraint with the largest multiplier until the equality-constrained minimum-norm point is
    # feasible (constraints the optimum does not need never enter, so a degenerate optimum's
    # near-tight rows cannot make the system inconsistent).
    all_rows = np.vstack([inc, np.eye(n)[bounded]]) if bounded.size else inc
    all_rhs = np.concatenate([rhs, x_lower[bounded]])
    all_dual = np.concatenate([row_dual, bound_dual]) if bound_dual.size else row_dual
    if all_dual.shape[0] != all_rows.shape[0]:
        all_dual = np.zeros(all_rows.shape[0])
    chosen: list[int] = []
    polished = np.full(n, grand_value / n)
    lam = np.zeros(1)
    ok = False
    for _ in range(n + 1):
        A = np.vstack([np.ones((1, n)), all_rows[chosen]])
        b = np.concatenate([[grand_value], all_rhs[chosen]])
        lam = np.linalg.lstsq(A @ A.T, b, rcond=None)[0]
        polished = A.T @ lam
        gap = all_rhs - all_rows @ polished
        violated = np.flatnonzero(gap > tol)
        if violated.size == 0:
            ok = bool(np.allclose(A @ polished, b, atol=tol, rtol=0)) and bool(
                np.all(lam[1:] >= -1e-9 * max(1.0, float(np.abs(lam).max())))
            )
            break
        pick = int(violated[np.argmax(all_dual[violated] + 1e-300 * gap[violated])])
        if np.linalg.matrix_rank(np.vstack([A, all_rows[pick]])) <= A.shape[0]:
            break  # dependent: leave it to the interior-point solution
        chosen.append(pick)
    return polished if ok else x_ip


def _indicator(mask: int, n: int) -> npt.NDArray[np.float64]:
    v = np.zeros(n)
    v[members(mask)] = 1.0
    return v
