"""Constraint generation against a row source with known values, and the tie-breaking rules.

Used as is by exact mode (the source is the full table) and by approximate mode for its final
tie-break (the source is every coalition evaluated).
"""

from __future__ import annotations

import math
from typing import Any

import highspy
import numpy as np
import numpy.typing as npt

from coreopt.game.coalitions import mask_array, members
from coreopt.game.lp import LeastCoreLP, LPSolution, new_highs
from coreopt.game.rows import ExplicitRows, TableRows, most_violated, span_residual

Source = TableRows | ExplicitRows
_INF = highspy.kHighsInf
_OK = highspy.HighsStatus.kOk
_RELAX = (1e-7, 1e-5, 1e-3)
"""Relative relaxations of the level tried when HiGHS's QP fails on a sliver of a feasible set
(measured at n = 50: 1e-7 and 1e-6 still failed, 1e-5 solved)."""


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
    rounding error. Each round solves the QP on the rows found so far (:func:`_min_norm`: HiGHS's
    active-set QP, polished on its active set to machine precision; cvxpy's Clarabel only when
    that cannot be certified), and adds the rows of ``source`` it violates, until none is
    violated.
    """
    present: set[int] = {int(m) for m in np.asarray(seed_masks).tolist()}
    for _ in range(10_000):
        masks = mask_array(sorted(present), source.n)
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
    masks: npt.NDArray[Any],
    source: Source,
    level: float,
    tol: float,
) -> npt.NDArray[np.float64]:
    """``argmin ||x||²`` s.t. ``x(N) = v(N)``, ``x(S) >= v(S) - level``, ``x >= x_lower``.

    First solved as a least-distance program by non-negative least squares (:func:`_qp_ldp`;
    HiGHS's active-set QP when that fails), then polished to machine precision by a primal
    active-set pass guided by its multipliers: the
    minimum-norm point of an equality system is ``x = A^T λ`` with ``(A A^T) λ = b``; it is the
    exact optimum when it is feasible with ``λ >= 0`` on the inequalities (the KKT conditions).
    When HiGHS fails or the pass cannot certify its answer, the same is done from cvxpy/Clarabel
    (interior point; imported only then), and when that pass fails too the interior-point
    solution is returned.
    """
    from coreopt.game.coalitions import incidence

    inc = incidence(masks, n) if masks.size else np.zeros((0, n))
    rhs = source.value_of(masks) - level if masks.size else np.zeros(0)
    bounded = np.flatnonzero(np.isfinite(x_lower))
    all_rows = np.vstack([inc, np.eye(n)[bounded]]) if bounded.size else inc
    all_rhs = np.concatenate([rhs, x_lower[bounded]])
    ldp = _qp_ldp(n, grand_value, all_rows, all_rhs)
    if ldp is not None:
        polished = _polish(n, grand_value, all_rows, all_rhs, ldp[1], tol)
        if polished is not None:
            return polished
    first = _qp_highs(n, grand_value, all_rows, all_rhs)
    for rel in _RELAX if all_rhs.size else ():
        if first is not None:
            break
        # HiGHS's active-set QP can stop with a solve error when the level leaves a sliver of a
        # feasible set; its multipliers on a slightly relaxed problem still rank the constraints
        # for the polish, which enforces the exact ones
        relax = rel * max(1.0, float(np.abs(all_rhs).max()), abs(grand_value))
        first = _qp_highs(n, grand_value, all_rows, all_rhs - relax)
    if first is not None:
        polished = _polish(n, grand_value, all_rows, all_rhs, first[1], tol)
        if polished is not None:
            return polished
    x_ip, all_dual = _qp_clarabel(n, grand_value, inc, rhs, x_lower, bounded)
    polished = _polish(n, grand_value, all_rows, all_rhs, all_dual, tol)
    return x_ip if polished is None else polished


QP_ITERATION_LIMIT = 2000
"""HiGHS's active-set QP (the min-norm point): iterations per solve at most, or
``QP_ITERATIONS_PER_PLAYER`` per player if more. A bounded amount of work, not seconds: the QP
can cycle on a sliver of a feasible set (measured: a warm per-round solve and the final
tie-break's cold solve on coverage n = 40, seed 3, never returned). Normal solves stay far below
(warm: at most ~220 at n = 40 with 5,000 rows; cold: 36 there, 1,854 at n = 1,000 with 1,500
rows)."""


QP_ITERATIONS_PER_PLAYER = 20


def qp_iteration_limit(n: int) -> int:
    """Active-set iterations allowed to one min-norm QP solve with ``n`` players."""
    return max(QP_ITERATION_LIMIT, QP_ITERATIONS_PER_PLAYER * n)


def _qp_ldp(
    n: int, grand_value: float, rows: npt.NDArray[np.float64], rhs: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None:
    """``argmin ||x||²`` s.t. ``1·x = v(N)``, ``rows @ x >= rhs`` as a least-distance program
    (Lawson & Hanson, *Solving Least Squares Problems*, ch. 23): ``(x, multipliers)`` of
    ``rows``, or ``None`` when it cannot be solved this way (infeasible, or NNLS out of
    iterations).

    ``x = (v(N)/n) 1 + Z y`` with ``Z`` an orthonormal basis of the sum-zero plane (the columns
    of a Householder reflection after the first), so the problem is ``min ||y||`` s.t.
    ``G y >= h`` with ``G = rows Z``, ``h = rhs - (v(N)/n) rows 1``; NNLS on ``[G^T; h^T] u ≈
    e_last`` gives ``y = G^T u / (1 - h·u)`` and the multipliers ``u / (1 - h·u)``. Measured on
    the minimum-norm QPs of weighted voting n = 500 with 3,000 calls: 1.2 s instead of 45 s
    (2,755 rows) and 0.07 s instead of 21-24 s (~620 rows) for HiGHS's QP, the same point to
    2e-8 (benchmarks/RESULTS.md, session 7).
    """
    from scipy.optimize import nnls

    if n < 2:
        return None
    base = grand_value / n
    if rows.shape[0] == 0:
        return np.full(n, base), np.zeros(0)
    # Householder reflection H = I - 2 v v^T / (v^T v) with v = 1/sqrt(n) + e_1 maps the unit
    # ones vector to -e_1: H's columns 1..n-1 span the sum-zero plane
    v = np.full(n, 1.0 / math.sqrt(n))
    v[0] += 1.0
    rv = rows @ v
    G = (rows - np.outer(rv, v) * (2.0 / float(v @ v)))[:, 1:]
    h = rhs - base * rows.sum(axis=1)
    E = np.vstack([G.T, h[None, :]])
    f = np.zeros(n)
    f[-1] = 1.0
    try:
        u, _ = nnls(E, f, maxiter=LDP_ITERATIONS_PER_ROW * max(E.shape))
    except (RuntimeError, ValueError):
        return None
    denom = 1.0 - float(h @ u)
    if not np.isfinite(denom) or denom <= 1e-12:
        return None  # ||E u - f|| = 0: the constraints are infeasible
    y = (G.T @ u) / denom
    z = np.concatenate([[0.0], y])
    x = base + z - v * (2.0 * float(v @ z) / float(v @ v))
    return x, u / denom


LDP_ITERATIONS_PER_ROW = 10
"""NNLS active-set iterations per row (or player, if more) of the least-distance program: a bound
on work, not seconds; then HiGHS's QP takes over."""


def _qp_highs(
    n: int, grand_value: float, rows: npt.NDArray[np.float64], rhs: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None:
    """``argmin ½||x||²`` s.t. ``1·x = v(N)``, ``rows @ x >= rhs`` on HiGHS: ``(x, |multipliers|)``
    of ``rows``, or ``None`` when HiGHS does not report an optimum."""
    h = new_highs()
    h.setOptionValue("qp_iteration_limit", qp_iteration_limit(n))  # then Clarabel takes over
    empty = np.array([], dtype=np.int32)
    h.addCols(n, np.zeros(n), np.full(n, -_INF), np.full(n, _INF), 0, empty, empty, np.array([]))
    idx = np.arange(n, dtype=np.int32)
    if h.passHessian(n, n, int(highspy.HessianFormat.kTriangular), idx, idx, np.ones(n)) != _OK:
        return None
    h.addRow(grand_value, grand_value, n, idx, np.ones(n))
    if rows.shape[0]:
        r, c = np.nonzero(rows)
        starts = np.searchsorted(r, np.arange(rows.shape[0])).astype(np.int32)
        h.addRows(
            rows.shape[0],
            rhs,
            np.full(rows.shape[0], _INF),
            r.size,
            starts,
            c.astype(np.int32),
            rows[r, c].astype(np.float64),
        )
    h.run()
    if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return None
    sol = h.getSolution()
    x = np.asarray(sol.col_value, dtype=np.float64)
    dual = np.abs(np.asarray(sol.row_dual, dtype=np.float64)[1:])
    return x, dual


def _qp_clarabel(
    n: int,
    grand_value: float,
    inc: npt.NDArray[np.float64],
    rhs: npt.NDArray[np.float64],
    x_lower: npt.NDArray[np.float64],
    bounded: npt.NDArray[np.intp],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The same QP by cvxpy/Clarabel: ``(x, multipliers)`` of the rows then the bounds."""
    import cvxpy as cp

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

    row_dual = dual(rows) if inc.shape[0] else np.zeros(0)
    bound_dual = dual(bounds) if bounded.size else np.zeros(0)
    all_dual = np.concatenate([row_dual, bound_dual]) if bound_dual.size else row_dual
    if all_dual.shape[0] != inc.shape[0] + bounded.size:
        all_dual = np.zeros(inc.shape[0] + bounded.size)
    return x_ip, all_dual


def _polish(
    n: int,
    grand_value: float,
    all_rows: npt.NDArray[np.float64],
    all_rhs: npt.NDArray[np.float64],
    all_dual: npt.NDArray[np.float64],
    tol: float,
) -> npt.NDArray[np.float64] | None:
    """The multiplier-guided active-set pass of :func:`_min_norm`: the exact minimum-norm point,
    or ``None`` when it cannot be certified (KKT) this way.

    It starts from the constraints the first solver reports active (positive multiplier), cut to
    a linearly independent set by one pivoted QR, and solves the equality-constrained
    minimum-norm system; while the point violates a constraint, the violated one with the largest
    multiplier joins; a chosen constraint with a negative multiplier (it pulls instead of pushing)
    leaves first. Usually the first solve is the answer (one QR and one solve, where adding
    the rows one at a time took one SVD per row: minutes at n = 1000). The point is returned only
    when it is feasible and every multiplier is >= 0, which makes it the unique optimum.
    """
    import scipy.linalg

    scale = max(1.0, float(np.abs(all_dual).max())) if all_dual.size else 1.0
    chosen = _independent_rows(all_rows, np.flatnonzero(all_dual > 1e-9 * scale))
    polished = np.full(n, grand_value / n)
    use_qr = False
    for _ in range(2 * n + 2):
        A = np.vstack([np.ones((1, n)), all_rows[chosen]])
        b = np.concatenate([[grand_value], all_rhs[chosen]])
        # the minimum-norm solution of A x = b and its multipliers (x = A^T lam): by the normal
        # equations (A A^T) lam = b (exact on small, well-conditioned systems: the glove game's
        # split comes out as 0.5, not 0.4999999999999998), and where they miss A x = b by more
        # than tol, by one QR of A^T = Q R (R^T y = b, x = Q y, R lam = y): the normal equations
        # square A's condition number (1.5e16 on an active set of 999 rows at n = 1,000, where
        # they missed by 7e-9 and the polish gave up)
        if not use_qr:
            lam = np.linalg.lstsq(A @ A.T, b, rcond=None)[0]
            polished = A.T @ lam
            use_qr = not np.allclose(A @ polished, b, atol=tol, rtol=0)  # then QR from here on
        if use_qr:
            Q, R = scipy.linalg.qr(A.T, mode="economic")
            with np.errstate(all="ignore"):
                y = scipy.linalg.solve_triangular(R, b, trans="T", check_finite=False)
                lam = scipy.linalg.solve_triangular(R, y, check_finite=False)
            polished = Q @ y
        if not (np.all(np.isfinite(polished)) and np.all(np.isfinite(lam))):
            return None  # a singular system: leave it to the other solver
        if not np.allclose(A @ polished, b, atol=tol, rtol=0):
            return None  # an inconsistent system: leave it to the other solver
        gap = all_rhs - all_rows @ polished
        violated = np.flatnonzero(gap > tol)
        pulling = np.flatnonzero(lam[1:] < -1e-9 * max(1.0, float(np.abs(lam).max())))
        if violated.size == 0 and pulling.size == 0:
            return polished
        if pulling.size:
            del chosen[int(pulling[np.argmin(lam[1:][pulling])])]
            continue
        pick = int(violated[np.argmax(all_dual[violated] + 1e-300 * gap[violated])])
        if np.linalg.matrix_rank(np.vstack([A, all_rows[pick]])) <= A.shape[0]:
            return None  # dependent: leave it to the other solver
        chosen.append(pick)
    return None


def _independent_rows(rows: npt.NDArray[np.float64], picked: npt.NDArray[np.intp]) -> list[int]:
    """A maximal subset of ``picked`` whose rows are independent together with the all-ones row
    (one QR with column pivoting of the rows with their mean part removed), in ``picked`` order."""
    if picked.size == 0:
        return []
    import scipy.linalg

    sub = rows[picked]
    centred = sub - sub.mean(axis=1, keepdims=True)  # the component along the ones row removed
    _, r, piv = scipy.linalg.qr(centred.T, mode="economic", pivoting=True)
    d = np.abs(np.diag(r))
    if d.size == 0 or d[0] == 0.0:
        return []
    rank = int(np.count_nonzero(d > d[0] * max(rows.shape) * np.finfo(float).eps * 10))
    return sorted(int(picked[i]) for i in piv[:rank])


def _indicator(mask: int, n: int) -> npt.NDArray[np.float64]:
    v = np.zeros(n)
    v[members(mask)] = 1.0
    return v


class IncrementalMinNorm:
    """``argmin ||x||²`` s.t. ``x(N) = v(N)``, ``x(S) >= v(S) - level``, ``x >= x_lower`` on one
    HiGHS QP model kept across rounds: rows are added as coalitions are evaluated and only the row
    bounds change with ``level``, so each round's solve starts from the last one's active set.

    Approximate mode's separation target above ``LOOP_TIE_BREAK_MAX_N`` players (an egalitarian
    point accurate to HiGHS's tolerances, ~1e-7 relative; the payoff returned is still polished
    by :func:`egalitarian` once, at the end).

    Args:
        n: number of players.
        grand_value: ``v(N)``.
        x_lower: lower bounds on ``x``, shape ``(n,)`` (``-inf``: none).
    """

    def __init__(self, n: int, grand_value: float, x_lower: npt.NDArray[np.float64]) -> None:
        from coreopt.game.coalitions import members

        self.n = n
        self._members = members
        h = new_highs()
        empty = np.array([], dtype=np.int32)
        lo = np.where(np.isfinite(x_lower), x_lower, -_INF)
        h.addCols(n, np.zeros(n), lo, np.full(n, _INF), 0, empty, empty, np.array([]))
        idx = np.arange(n, dtype=np.int32)
        if h.passHessian(n, n, int(highspy.HessianFormat.kTriangular), idx, idx, np.ones(n)) != _OK:
            raise RuntimeError("HiGHS refused the identity Hessian of the min-norm QP")
        h.addRow(grand_value, grand_value, n, idx, np.ones(n))
        # a bounded amount of work (not seconds): HiGHS's active-set QP can cycle on a sliver of
        # a feasible set; the solve then ends at the limit and the level is relaxed (below)
        h.setOptionValue("qp_iteration_limit", qp_iteration_limit(n))
        self._h = h
        self._values: list[float] = []
        self._level = 0.0

    def add_rows(self, masks: list[int], values: list[float]) -> None:
        """Add rows ``x(S) >= v(S) - level`` (at the current level)."""
        if not masks:
            return
        starts: list[int] = []
        index: list[int] = []
        for m in masks:
            starts.append(len(index))
            index.extend(self._members(int(m)))
        k = len(masks)
        self._h.addRows(
            k,
            np.asarray(values, dtype=np.float64) - self._level,
            np.full(k, _INF),
            len(index),
            np.array(starts, dtype=np.int32),
            np.array(index, dtype=np.int32),
            np.ones(len(index)),
        )
        self._values.extend(float(v) for v in values)

    def solve(self, level: float) -> npt.NDArray[np.float64] | None:
        """The minimum-norm point at ``level``, or ``None`` when HiGHS reports no optimum.

        A sliver of a feasible set (``level`` a hair above the LP's optimum) can stop HiGHS's
        active-set QP with a solve error; the level is then relaxed by ``1e-7``, ``1e-5``, then
        ``1e-3`` of the largest ``|v|`` (a separation target needs no more accuracy).
        """
        k = len(self._values)
        unit = max(1.0, float(np.abs(self._values).max())) if k else 0.0
        for attempt in (level, *(level + rel * unit for rel in _RELAX)):
            if attempt != self._level and k:
                self._h.changeRowsBounds(  # type: ignore[attr-defined]
                    k,
                    np.arange(1, k + 1, dtype=np.int32),
                    np.asarray(self._values) - attempt,
                    np.full(k, _INF),
                )
            self._level = attempt
            self._h.run()
            if self._h.getModelStatus() == highspy.HighsModelStatus.kOptimal:
                return np.asarray(self._h.getSolution().col_value, dtype=np.float64)
        return None
