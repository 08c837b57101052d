"""Exact least core from a full value table, by constraint generation over all ``2**n`` rows.

Separation is one vectorised pass: ``x(S)`` for every mask by doubling
(:func:`~coreopt.game.coalitions.subset_sums`), then the most violated rows are added to the warm
HiGHS LP. n = 20 (a million coalitions) solves in seconds.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Hashable, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from coreopt.game.coalitions import Players
from coreopt.game.games import Game
from coreopt.game.generation import egalitarian, nucleolus, solve_by_generation
from coreopt.game.lp import InfeasibleGameError, LeastCoreLP, LPSolution
from coreopt.game.result import LeastCoreConfig, LeastCoreResult, RequirementEstimate, RoundInfo
from coreopt.game.rows import ExplicitRows, TableRows
from coreopt.status import Status


def exact_least_core(
    table: npt.ArrayLike | Game,
    players: int | Sequence[Hashable] | None = None,
    *,
    method: Literal["generation", "full"] = "generation",
    config: LeastCoreConfig | None = None,
    **overrides: Any,
) -> LeastCoreResult:
    """The least core of a game given by its full value table (the reference solver).

    Args:
        table: ``v`` on every coalition indexed by bitmask (player ``i`` is bit ``i``), shape
            ``(2**n,)`` with ``table[0] = v(∅)``; or a :class:`~coreopt.game.games.Game`.
        players: labels (default ``0..n-1``, or the game's players).
        method: ``"generation"`` (add the most violated rows until none is violated) or
            ``"full"`` (every row at once: the textbook LP, slower, for cross-checks).
        config: conventions and tie-break (``proper``, ``nonnegative``, ``imputation``,
            ``normalize``, ``tie_break``, ``tol``, ``rows_per_round``); other fields are ignored.
        **overrides: fields of :class:`~coreopt.game.result.LeastCoreConfig`.

    Returns:
        A :class:`~coreopt.game.result.LeastCoreResult` with ``exact=True`` and ``value_calls=0``.

    Examples:
        >>> from coreopt.game import exact_least_core, games
        >>> res = exact_least_core(games.glove(1, 1))
        >>> round(res.epsilon, 9), res.x.round(9).tolist()
        (-0.5, [0.5, 0.5])
    """
    cfg = dataclasses.replace(config or LeastCoreConfig(), **overrides)
    if isinstance(table, Game):
        players = table.players.labels if players is None else players
        values = table.table()
    else:
        values = np.asarray(table, dtype=np.float64).reshape(-1)
    n = values.shape[0].bit_length() - 1
    if values.shape[0] != 1 << n or n < 1:
        raise ValueError(f"table must have length 2**n with n >= 1, got {values.shape[0]}")
    if not np.all(np.isfinite(values)):
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        raise ValueError(f"table has a non-finite value at mask {bad}: {values[bad]}")
    p = Players(n if players is None else players)
    if p.n != n:
        raise ValueError(f"{p.n} players given but the table has 2**{n} entries")
    return solve_table(values, p, cfg, method=method)


def solve_table(
    values: npt.NDArray[np.float64],
    players: Players,
    cfg: LeastCoreConfig,
    *,
    method: Literal["generation", "full"] = "generation",
    value_calls: int = 0,
    value_seconds: float = 0.0,
    start: float | None = None,
) -> LeastCoreResult:
    """Solve exactly on a complete table (also the last step of exact mode in ``least_core``)."""
    t0 = time.perf_counter() if start is None else start
    n = players.n
    if cfg.normalize:
        values = values - values[0]
    if n == 1:
        return _one_player(values, players, cfg, value_calls, value_seconds, t0)
    # Scale invariance: HiGHS's and the QP's tolerances are absolute, so the LP and the tie-break
    # see the game in units of its largest |v| and the answer is mapped back at the end.
    unit = value_unit(values)
    values = values / unit
    scale = 1.0
    tol = cfg.tol * scale
    grand = (1 << n) - 1
    singles = np.array([1 << i for i in range(n)], dtype=np.int64)
    lp = make_lp(n, float(values[grand]), cfg, values[singles] if cfg.imputation else None)
    source = TableRows(values)
    t_lp = time.perf_counter()
    if method == "full":
        proper = np.arange(1, grand, dtype=np.int64)
        lp.add_rows(proper.tolist(), values[proper].tolist())
        sol, rounds = lp.solve(), 1
    elif method == "generation":
        seeds = seed_masks(n)
        lp.add_rows(seeds.tolist(), values[seeds].tolist())
        sol, rounds = solve_by_generation(lp, source, tol=tol, rows_per_round=cfg.rows_per_round)
    else:
        raise ValueError(f"method={method!r}; expected 'generation' or 'full'")
    lp_seconds = time.perf_counter() - t_lp
    x, levels = apply_tie_break(sol, lp, lambda: TableRows(values), cfg, scale, tol)
    _, ex = source.excess(x)
    upper = float(ex.max()) if n > 1 else float("-inf")
    if not cfg.proper:
        upper = max(upper, 0.0)
    total = time.perf_counter() - t0
    history = [RoundInfo(0, value_calls, sol.epsilon, lp.num_rows, 0, total)]
    return build_result(
        players,
        x,
        sol,
        upper,
        exact=True,
        value_calls=value_calls,
        lp_rounds=rounds,
        status=Status.CONVERGED,
        mode="exact",
        cfg=cfg,
        levels=levels,
        history=history,
        timings={"value": value_seconds, "lp": lp_seconds, "separation": 0.0, "total": total},
        probe_excess=None,
        violation_rate=0.0,
        unit=unit,
    )


def _one_player(
    values: npt.NDArray[np.float64],
    players: Players,
    cfg: LeastCoreConfig,
    value_calls: int,
    value_seconds: float,
    t0: float,
) -> LeastCoreResult:
    """The trivial game of one player: ``x = v(N)``; no proper coalition constrains ``e``, so
    ``e* = -inf`` (``0`` when the grand coalition counts, ``proper=False``)."""
    grand = float(values[1])
    if (cfg.nonnegative and grand < 0) or (cfg.imputation and grand < float(values[1])):
        raise InfeasibleGameError(
            f"the least-core LP is infeasible: one player, v(N) = {grand:.6g} < 0 with "
            "nonnegative=True"
        )
    eps = float("-inf") if cfg.proper else 0.0
    sol = LPSolution(
        x=np.array([grand]),
        epsilon=eps,
        masks=np.zeros(0, dtype=np.int64),
        duals=np.zeros(0),
        grand_dual=0.0,
        iterations=0,
        seconds=0.0,
    )
    total = time.perf_counter() - t0
    return build_result(
        players,
        sol.x,
        sol,
        eps,
        exact=True,
        value_calls=value_calls,
        lp_rounds=0,
        status=Status.CONVERGED,
        mode="exact",
        cfg=cfg,
        levels=[],
        history=[RoundInfo(0, value_calls, eps, 0, 0, total)],
        timings={"value": value_seconds, "lp": 0.0, "separation": 0.0, "total": total},
        probe_excess=None,
        violation_rate=0.0,
    )


def value_unit(values: npt.ArrayLike) -> float:
    """The game's scale: the largest ``|v(S)|`` (``1.0`` for an all-zero game).

    Every LP, QP and tolerance works on ``v / value_unit(v)``; payoffs and excesses are multiplied
    back by it, so a game in other units gives the same answer in those units.
    """
    a = np.abs(np.asarray(values, dtype=np.float64))
    unit = float(a.max()) if a.size else 0.0
    return unit if unit > 0 and np.isfinite(unit) else 1.0


def make_lp(
    n: int,
    grand_value: float,
    cfg: LeastCoreConfig,
    singleton_values: npt.NDArray[np.float64] | None,
) -> LeastCoreLP:
    """The LP with the conventions of ``cfg``."""
    return LeastCoreLP(
        n,
        grand_value,
        nonnegative=cfg.nonnegative,
        lower_bounds=singleton_values,
        epsilon_lower=None if cfg.proper else 0.0,
    )


def seed_masks(n: int) -> npt.NDArray[np.int64]:
    """Singletons and leave-one-out coalitions (proper ones only)."""
    grand = (1 << n) - 1
    out = {1 << i for i in range(n)} | {grand ^ (1 << i) for i in range(n)}
    out.discard(0)
    out.discard(grand)
    return np.array(sorted(out), dtype=np.int64)


def apply_tie_break(
    sol: LPSolution,
    lp: LeastCoreLP,
    make_source: Any,
    cfg: LeastCoreConfig,
    scale: float,
    tol: float,
) -> tuple[npt.NDArray[np.float64], list[float]]:
    """Pick ``x`` inside the least core of ``make_source()``'s rows by ``cfg.tie_break``."""
    if cfg.tie_break is None:
        return sol.x, []
    if cfg.tie_break == "egalitarian":
        x = egalitarian(
            make_source(),
            grand_value=lp.grand_value,
            x_lower=lp.x_lower,
            level=sol.epsilon + cfg.tie_slack * scale,
            seed_masks=sol.masks,
            tol=tol,
            rows_per_round=cfg.rows_per_round,
        )
        return x, []
    x, levels = nucleolus(
        make_source(),
        grand_value=lp.grand_value,
        x_lower=lp.x_lower,
        seed_masks=sol.masks[sol.duals > 0],
        tol=tol,
        rows_per_round=cfg.rows_per_round,
        scale=scale,
    )
    return x, levels


def build_result(
    players: Players,
    x: npt.NDArray[np.float64],
    sol: LPSolution,
    epsilon_upper: float,
    *,
    exact: bool,
    value_calls: int,
    lp_rounds: int,
    status: Status,
    mode: str,
    cfg: LeastCoreConfig,
    levels: list[float],
    history: list[RoundInfo],
    timings: dict[str, float],
    probe_excess: float | None,
    violation_rate: float | None,
    unit: float = 1.0,
    estimate: RequirementEstimate | None = None,
    reused_values: int = 0,
    relaxation: float = 0.0,
) -> LeastCoreResult:
    """Assemble a :class:`LeastCoreResult` (labels, tight coalitions, duals).

    ``x``, ``sol``, ``epsilon_upper``, ``levels``, ``probe_excess``, ``history`` and ``estimate``
    are in units of ``unit`` (the solver works on ``v / unit``); they are mapped back here.
    """
    positive = sol.duals > 1e-9
    x = np.asarray(x, dtype=np.float64) * unit
    if unit != 1.0:
        history = [dataclasses.replace(h, epsilon=h.epsilon * unit) for h in history]
        levels = [lv * unit for lv in levels]
        probe_excess = None if probe_excess is None else probe_excess * unit
        if estimate is not None:
            estimate = estimate.scaled(unit)
    return LeastCoreResult(
        payoff={label: float(v) for label, v in zip(players.labels, x, strict=True)},
        x=x,
        epsilon=float(sol.epsilon) * unit,
        epsilon_upper=float(epsilon_upper) * unit,
        probe_excess=probe_excess,
        violation_rate=violation_rate,
        exact=exact,
        value_calls=value_calls,
        lp_rounds=lp_rounds,
        status=status,
        mode=mode,
        tie_break=cfg.tie_break,
        tight=[players.coalition(int(m)) for m in sol.masks[positive]],
        duals=sol.duals[positive],
        levels=levels,
        history=history,
        timings=timings,
        estimate=estimate,
        reused_values=reused_values,
        relaxation=relaxation * unit,
    )


__all__ = ["ExplicitRows", "exact_least_core", "solve_table"]
