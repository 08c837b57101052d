"""``coreopt.least_core``: least-core credit assignment with as few value calls as possible.

Exact mode evaluates every coalition and solves the LP over the full table (certified optimal).
Approximate mode is constraint generation, after Harris, Prasad & Trockman 2026, *In-Context
Credit Assignment via the Core* (the paper's full algorithm was not available to us, so the steps
are our reconstruction): seed rows, solve the restricted LP on HiGHS (its value is a certified
lower bound on e*), propose coalitions with the separation portfolio, evaluate them in one batch,
add every evaluated coalition as a row, and stop when a round's candidates and fresh uniform
probes show no violation, or the budget is spent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm.auto import tqdm

from coreopt.errors import BudgetExhaustedError
from coreopt.game.checkpoint import (
    Checkpoint,
    PaidLedger,
    attach_values,
    game_identity,
    interruption,
)
from coreopt.game.coalitions import (
    MAX_VECTOR_PLAYERS,
    Players,
    check_enumerable,
    incidence,
    mask_array,
)
from coreopt.game.exact import apply_tie_break, build_result, make_lp, solve_table, value_unit
from coreopt.game.generation import IncrementalMinNorm, egalitarian
from coreopt.game.oracle import ValueFn, ValueOracle, VectorizedValue
from coreopt.game.result import LeastCoreConfig, LeastCoreResult, RequirementEstimate, RoundInfo
from coreopt.game.robust import prefix_probes, robust_payoff
from coreopt.game.rows import ExplicitRows
from coreopt.game.separation import (
    MarginalIndex,
    Surrogate,
    SurrogateFit,
    best_by_mincut,
    fit_surrogate,
    greedy_paths,
    local_search,
    random_masks,
    top_by_ascent,
    top_by_enumeration,
    top_by_milp,
    top_by_size,
    top_flips,
)
from coreopt.game.threads import solver_threads
from coreopt.status import Status

logger = logging.getLogger("coreopt.game")

AUTO_EXACT_MAX_N = 10
"""Without a budget, ``mode="auto"`` evaluates every coalition only up to this many players."""


def least_core(
    value_fn: ValueFn,
    players: int | Sequence[Hashable],
    budget: int | None = None,
    config: LeastCoreConfig | None = None,
    *,
    known_values: Mapping[Iterable[Hashable], float] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    **overrides: Any,
) -> LeastCoreResult:
    """Least-core payoff of the game ``value_fn`` over ``players``.

    Solves ``min e  s.t.  x(S) + e >= v(S)`` for every proper coalition S, ``x(N) = v(N)``,
    evaluating ``v`` as few times as possible.

    Args:
        value_fn: ``v(coalition) -> float`` where ``coalition`` is a ``frozenset`` of labels; may
            be ``async def``; may be expensive (an LLM query). Called at most once per coalition.
        players: an int ``n`` (players ``0..n-1``) or a sequence of distinct hashable labels.
        budget: maximum value calls. ``mode="auto"`` evaluates every coalition when ``2^n - 1``
            calls fit (or ``n <= 10`` without a budget), else runs constraint generation.
        config: a :class:`LeastCoreConfig`; keyword ``overrides`` replace its fields.
        known_values: values already paid for, ``{coalition: value}`` (e.g. ``err.values`` of a
            failed run); they are used without calling ``value_fn`` and count toward ``budget``
            (a resumed run never pays more than ``budget`` in total).
        checkpoint: a sqlite file where every value is saved as it is paid for (WAL mode, one
            committed transaction per value or vectorized batch: a killed process loses at most
            its calls in flight). A rerun with the same path pays only for coalitions not in the
            file, and the file's values count toward ``budget``. The file stores the players and
            the value function's name, and a file of another game is refused.

    Returns:
        A :class:`LeastCoreResult`: ``payoff``, ``x``, ``epsilon`` (certified lower bound on
        e*), ``epsilon_upper`` (largest excess of the payoff over every coalition evaluated),
        ``estimate`` (probe-based, for the unseen coalitions), ``exact``/``certified``,
        ``value_calls``, ``status`` and the per-round ``history``. Values are in the game's own
        units: tolerances are relative to its largest ``|v|``, so any scale gives the same
        answer, scaled. One player gets ``v(N)`` (no proper coalition: ``epsilon = -inf``, or
        ``0`` with ``proper=False``).

    Raises:
        ValueError: bad players/options, a budget too small for ``v(N)`` and the singletons, a
            non-finite value in ``known_values``, or a checkpoint file of another game.
        TypeError: a non-int budget, a non-number value (strings are not coerced).
        KeyboardInterrupt: re-raised with ``err.values`` (every value known); in the main
            thread SIGTERM becomes :class:`~coreopt.game.checkpoint.SolveTerminated` (a
            ``SystemExit``) with the same ``values``. Every other exception raised during the
            solve also carries ``err.values``.
        ValueFunctionError: ``value_fn`` kept failing (retries exhausted); ``err.values`` keeps
            every value paid for.
        NonFiniteError: ``value_fn`` returned NaN or infinity.
        BudgetExhaustedError: ``value_fn`` raised it before ``v(N)`` and the singletons were
            known (``err.values`` keeps every value paid for). Raised later, it ends the solve
            with a partial result (``status=Status.BUDGET_EXHAUSTED``) instead.

    Examples:
        >>> import coreopt
        >>> from coreopt.game import games
        >>> res = coreopt.least_core(games.glove(1, 1), 2, progress=False)
        >>> res.payoff, res.epsilon, res.exact
        ({0: 0.5, 1: 0.5}, -0.5, True)
    """
    cfg = _merge_config(config, budget, overrides)
    return _solve(value_fn, players, cfg, known_values, None, checkpoint)


async def aleast_core(
    value_fn: ValueFn,
    players: int | Sequence[Hashable],
    budget: int | None = None,
    config: LeastCoreConfig | None = None,
    *,
    known_values: Mapping[Iterable[Hashable], float] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    **overrides: Any,
) -> LeastCoreResult:
    """Async :func:`least_core`: ``await coreopt.aleast_core(...)`` inside a running event loop.

    The LP work runs in a worker thread; ``async`` value calls run on the caller's loop (so
    clients bound to that loop keep working) and never block it. Cancelling the task (Ctrl-C
    under ``asyncio.run`` does) stops further value calls, waits for the calls in flight (they
    are paid for; a second cancellation stops the wait) and re-raises the
    ``asyncio.CancelledError`` with ``err.values`` (under ``asyncio.run`` the
    ``KeyboardInterrupt`` it then raises has that error as ``__context__``); with ``checkpoint=``
    every value is on disk anyway.
    """
    cfg = _merge_config(config, budget, overrides)
    loop = asyncio.get_running_loop()
    box: dict[str, Any] = {}
    worker = asyncio.ensure_future(
        asyncio.to_thread(_solve, value_fn, players, cfg, known_values, loop, checkpoint, box)
    )
    try:
        return await asyncio.shield(worker)
    except asyncio.CancelledError as exc:
        ledger: PaidLedger | None = box.get("ledger")
        if ledger is not None:
            ledger.halt()
            # no new call starts; the calls in flight are paid for: wait for their values (a
            # second cancellation, or Ctrl-C under asyncio.run, stops waiting)
            await asyncio.wait({worker})
            attach_values(exc, _all_values(ledger, box.get("known") or {}, box["state"]))
        raise


def _merge_config(
    config: LeastCoreConfig | None, budget: int | None, overrides: dict[str, Any]
) -> LeastCoreConfig:
    """``config`` with ``budget`` (when given) and keyword overrides applied."""
    if budget is not None:
        overrides = {**overrides, "budget": budget}
    return dataclasses.replace(config or LeastCoreConfig(), **overrides)


def _check_known(
    known_values: Mapping[Iterable[Hashable], float] | None, players: Players
) -> dict[int, float]:
    """``known_values`` keyed by mask, validated (the errors name ``known_values``)."""
    if known_values is None:
        return {}
    if not isinstance(known_values, Mapping):
        raise TypeError(
            "known_values must be a mapping {coalition: value}, got "
            f"{type(known_values).__name__}"
        )
    out: dict[int, float] = {}
    for coalition, value in known_values.items():
        where = f"known_values[{sorted(map(str, coalition))}]"
        if isinstance(value, str | bytes | bool) or not isinstance(
            value, int | float | np.integer | np.floating
        ):
            raise TypeError(f"{where} is {value!r}; expected a real number (not coerced)")
        if not math.isfinite(float(value)):
            raise ValueError(
                f"{where} is {float(value)}: known_values must be finite (this value was not "
                "computed by value_fn in this run)"
            )
        out[players.mask(coalition)] = float(value)
    return out


def _solve(
    value_fn: ValueFn,
    players_arg: int | Sequence[Hashable],
    cfg: LeastCoreConfig,
    known_values: Mapping[Iterable[Hashable], float] | None,
    loop: asyncio.AbstractEventLoop | None,
    checkpoint: str | os.PathLike[str] | None = None,
    box: dict[str, Any] | None = None,
) -> LeastCoreResult:
    """Validate, open the checkpoint, and solve with every exit path keeping the paid values."""
    players = Players(players_arg)
    if not callable(value_fn) and not isinstance(value_fn, VectorizedValue):
        raise TypeError(f"value_fn must be callable, got {type(value_fn).__name__}")
    known = _check_known(known_values, players)
    store = None
    lost = 0
    if checkpoint is not None:
        store = Checkpoint(checkpoint, players, game_identity(value_fn))
        lost = store.lost_calls
        if lost:
            logger.warning(
                "checkpoint %s: %d calls of a killed run never got their answers; they were "
                "paid for and count toward the budget",
                store.path,
                lost,
            )
        on_disk = store.load()
        store.record([(m, v) for m, v in known.items() if m not in on_disk])
        known = {**on_disk, **known}
    ledger = PaidLedger(players, store)
    known_labels = {players.coalition(m): v for m, v in known.items()}
    state: dict[str, Any] = {}
    if box is not None:
        box["ledger"], box["known"], box["state"] = ledger, known_labels, state
    try:
        # one BLAS thread for the solver's arithmetic: the same payoff on any machine
        with ledger.signals(lambda: _all_values(ledger, known_labels, state)), solver_threads():
            res = _solve_known(ledger.wrap(value_fn), players, cfg, known, loop, state, lost)
    except BaseException as exc:
        ledger.halt()  # queued calls give up instead of paying
        err = interruption(ledger, exc)
        attach_values(err, _all_values(ledger, known_labels, state))
        if err is exc:
            raise
        raise err from None
    if store is not None:
        store.close()
    return dataclasses.replace(res, reused_values=len(known))


def _all_values(
    ledger: PaidLedger, known: dict[frozenset[Hashable], float], state: dict[str, Any]
) -> dict[frozenset[Hashable], float]:
    """Every value known: before the solve, paid during it, and in the oracle's memo."""
    oracle: ValueOracle | None = state.get("oracle")
    memo = oracle.values if oracle is not None else {}
    return {**known, **memo, **ledger.values()}


def _solve_known(
    value_fn: ValueFn,
    players: Players,
    cfg: LeastCoreConfig,
    known: dict[int, float],
    loop: asyncio.AbstractEventLoop | None,
    state: dict[str, Any],
    lost: int = 0,
) -> LeastCoreResult:
    t0 = time.perf_counter()
    n = players.n
    grand = players.grand
    # values known beyond the ones exact mode needs (v(∅) when it is not used) still count
    extra = 1 if (0 in known and not cfg.normalize) else 0
    needed_exact = (1 << n) - 1 + (1 if cfg.normalize else 0) + extra
    minimum = 1 + n + (1 if cfg.normalize else 0)
    if cfg.budget is not None and cfg.budget < minimum and n > 1:
        raise ValueError(
            f"budget={cfg.budget} is too small: v(N), the {n} singletons"
            + (" and v(∅) (normalize=True)" if cfg.normalize else "")
            + f" need {minimum} calls before any LP can be solved"
        )
    mode = cfg.mode
    if mode == "auto":
        fits = cfg.budget is not None and needed_exact <= cfg.budget
        mode = "exact" if fits or (cfg.budget is None and n <= AUTO_EXACT_MAX_N) else "approximate"
    if mode == "exact" and cfg.budget is not None and needed_exact > cfg.budget:
        raise ValueError(
            f"mode='exact' needs {needed_exact} value calls but budget={cfg.budget}; raise the "
            "budget or use mode='approximate'"
        )
    oracle = ValueOracle(
        value_fn,
        players,
        # values already known count toward the budget: a resumed run never pays more in total
        # (and so do the calls a killed run paid for without getting their answers)
        budget=None if cfg.budget is None else max(cfg.budget - len(known) - lost, 0),
        retries=cfg.retries,
        retry_delay=cfg.retry_delay,
        max_concurrency=cfg.max_concurrency,
        loop=loop,
    )
    oracle.cache.update(known)
    state["oracle"] = oracle
    if mode == "exact" or n == 1:
        return _exact(oracle, players, cfg, t0)
    return _approximate(oracle, players, cfg, t0, grand)


def _exact(
    oracle: ValueOracle, players: Players, cfg: LeastCoreConfig, t0: float
) -> LeastCoreResult:
    check_enumerable(players.n)
    wanted = range(0 if cfg.normalize else 1, 1 << players.n)  # every mask, in order
    # v(N), v(∅) and the singletons first: a partial table must still support an LP
    first = [players.grand] + ([0] if cfg.normalize else []) + [1 << i for i in range(players.n)]
    bar = tqdm(
        total=len(wanted), desc="least core (exact): value calls", disable=_disabled(cfg.progress)
    )
    try:
        bar.update(len(oracle.evaluate(first)))
        # plain calls: the chunk grows while calls are cheap (a progress update about every 0.2 s)
        chunk = oracle.vector.batch_size if oracle.vector else max(cfg.max_concurrency * 4, 8)
        start = 0
        while start < len(wanted) and not oracle.exhausted:
            tic = time.perf_counter()
            got = oracle.evaluate(wanted[start : start + chunk])
            start += chunk
            bar.update(len(got))
            if not oracle.vector and got:
                per_call = (time.perf_counter() - tic) / len(got)
                chunk = min(max(chunk, int(0.2 / max(per_call, 1e-7))), 1 << 16)
    finally:
        bar.close()
    if oracle.exhausted:  # the value function's own budget ran out: LP over what is known
        return _approximate(oracle, players, cfg, t0, players.grand)
    return solve_table(
        oracle.table(),
        players,
        cfg,
        value_calls=oracle.calls,
        value_seconds=oracle.seconds,
        start=t0,
    )


def _approximate(
    oracle: ValueOracle, players: Players, cfg: LeastCoreConfig, t0: float, grand: int
) -> LeastCoreResult:
    n = players.n
    rng = np.random.default_rng(cfg.seed)
    # -- seeding: v(N) (and v(∅)), singletons always, then the configured strategies ---------------
    first = [grand] + ([0] if cfg.normalize else []) + [1 << i for i in range(n)]
    oracle.evaluate(first)
    if any(m not in oracle for m in first) and oracle.exhausted:
        raise BudgetExhaustedError(
            "the value function's budget ran out before v(N) and the singletons were evaluated; "
            "err.values holds every value paid for (pass it back as known_values= to resume)",
            oracle.values,
        )
    if any(m not in oracle for m in first):  # pragma: no cover - guarded by the budget check
        raise ValueError("the budget ran out before v(N) and the singletons were evaluated")
    cfg, sampled = _resolve_search(cfg, n, oracle, grand)
    seeds: list[int] = []
    if "leave_one_out" in cfg.seeds:
        seeds += [grand ^ (1 << i) for i in range(n)]
    if "complementary_pairs" in cfg.seeds:
        pair_masks = _sized_masks if cfg.probe_sizes == "sized" else random_masks
        for m in pair_masks(rng, n, cfg.complementary_pairs):
            seeds += [m, grand ^ m]
    seeds += [players.mask(c) for c in cfg.seed_coalitions]
    seeds = [m for m in seeds if m not in (0, grand)]
    oracle.evaluate(seeds)
    # calls kept for the audit of the returned payoff (fresh probes, never added to the LP)
    reserve = 0
    if cfg.budget is not None and oracle.budget is not None:
        reserve = max(0, min(cfg.audit_probes, cfg.budget // 10, oracle.remaining or 0))
        oracle.budget -= reserve
    # calls kept to test the candidate payoffs of robust_payoff (real coalitions: they join the
    # evaluated ones), where the budget is expected to leave the payoff poorly pinned
    judge = 0
    if cfg.budget is not None and oracle.budget is not None and _robust_on(cfg, n, cfg.budget):
        judge = max(0, min(JUDGE_CALLS, cfg.budget // 20, oracle.remaining or 0))
        oracle.budget -= judge

    offset = oracle.cache[0] if cfg.normalize else 0.0
    # Scale invariance: the LP, the QP, the surrogate and every tolerance see v / unit (unit: the
    # largest |v| seen while seeding); results are mapped back to the game's units at the end.
    unit = value_unit([v - offset for v in oracle.cache.values()])

    def value(m: int) -> float:
        return (oracle.cache[m] - offset) / unit

    lp = make_lp(
        n,
        value(grand),
        cfg,
        np.array([value(1 << i) for i in range(n)]) if cfg.imputation else None,
    )
    in_lp: set[int] = set()

    # above LOOP_TIE_BREAK_MAX_N players the separation target is the minimum-norm point of the
    # restricted least core on one warm HiGHS QP (the exact tie-break runs once, at the end)
    loop_qp = None
    if cfg.tie_break is not None and n > LOOP_TIE_BREAK_MAX_N and not sampled:
        loop_qp = IncrementalMinNorm(n, lp.grand_value, lp.x_lower)

    def sync_rows() -> None:
        new = [m for m in oracle.cache if m not in in_lp and m not in (0, grand)]
        vals = [value(m) for m in new]
        lp.add_rows(new, vals)
        if loop_qp is not None:
            loop_qp.add_rows(new, vals)
        in_lp.update(new)

    sync_rows()
    scale = max(1.0, max(abs(value(m)) for m in oracle.cache))
    tol = cfg.tol * scale
    history: list[RoundInfo] = []
    # out-of-sample estimate: the last round's fresh uniform probes, measured against the payoff
    # of that round before they joined the LP (excesses relative to that round's level)
    probe_stats: tuple[npt.NDArray[np.float64], float] | None = None
    frontier: list[int] = []  # violated coalitions of the last round: local search starts there
    fit = SurrogateFit(n, _surrogate_kind(cfg, n))
    index = MarginalIndex(n) if cfg.greedy_prune else None
    clean = 0  # consecutive rounds without a violation
    lp_rounds = 0
    t_lp = t_sep = 0.0
    status = Status.MAX_ITERATIONS
    # the bar counts every call of the budget, those held back for the judge and the audit too
    # (paid after the search, while the payoff is chosen: a phase named in the bar's postfix)
    held = reserve + judge
    bar = tqdm(
        total=None if oracle.budget is None else oracle.budget + held,
        desc="least core: value calls",
        disable=_disabled(cfg.progress),
    )
    bar.update(oracle.calls)

    slack = cfg.tie_slack * scale if cfg.tie_break else 0.0

    def known_rows() -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """Every proper coalition evaluated so far and its (normalised) value."""
        masks = mask_array([m for m in oracle.cache if m not in (0, grand)], n)
        return masks, np.array([value(int(m)) for m in masks])

    def payoff(sol: Any) -> tuple[npt.NDArray[np.float64], list[float]]:
        """The payoff to return for ``sol``: the tie-break is applied inside the loop, so that the
        payoff returned is the one separation has checked."""
        if cfg.tie_break is None:
            return sol.x, []
        rows = ExplicitRows(n, *known_rows())
        return apply_tie_break(sol, lp, lambda: rows, cfg, scale, tol)

    def loop_target(sol: Any) -> npt.NDArray[np.float64]:
        """This round's separation target above ``LOOP_TIE_BREAK_MAX_N`` players."""
        assert loop_qp is not None
        x = loop_qp.solve(sol.epsilon + slack)
        return sol.x if x is None else x

    def check(masks: list[int], x: Any, level: float) -> tuple[list[int], bool]:
        """Evaluate ``masks``; return those with excess above ``level`` (most violated first)
        and whether all of them could be evaluated within the budget."""
        before = oracle.calls
        oracle.evaluate(masks)
        bar.update(oracle.calls - before)
        done = [m for m in dict.fromkeys(masks) if m in oracle]
        ex = np.array([value(m) for m in done]) - _coalition_sums(x, done, n)
        order = np.argsort(-ex, kind="stable")
        bad = [done[i] for i in order if ex[i] > level + tol]
        return bad, len(done) == len(set(masks))

    try:
        for rnd in range(cfg.max_rounds):
            ts = time.perf_counter()
            sol = lp.solve()
            lp_rounds += 1
            t_lp += time.perf_counter() - ts
            if oracle.remaining == 0:
                status = Status.BUDGET_EXHAUSTED
                break
            ts = time.perf_counter()
            # the tie-broken payoff is the separation target up to LOOP_TIE_BREAK_MAX_N players;
            # beyond, the warm HiGHS QP's min-norm point (the exact tie-break, a QP rebuilt and
            # polished each round, cost more than the value calls; it runs once, at the end)
            # with the sampled search (uniform probes, which no target steers) the LP's own
            # point: the min-norm QP on uniform rows cost 27 s a round at n = 1,000
            x_cur = sol.x if sampled else (payoff(sol)[0] if loop_qp is None else loop_target(sol))
            level = sol.epsilon + slack
            candidates = _propose(oracle, sol, x_cur, cfg, n, value, frontier, fit)
            probes: list[int] = []
            if "probes" in cfg.oracles:
                sized = cfg.probe_sizes == "sized"
                probes = (
                    _sized_masks(rng, n, _count(cfg.probes))
                    if sized
                    else random_masks(rng, n, _count(cfg.probes))
                )
            t_sep += time.perf_counter() - ts
            found, checked_all = check(candidates + probes, x_cur, level)
            if cfg.neighbourhood_ascent and oracle.remaining != 0:
                found, complete = _neighbourhoods(
                    check,
                    candidates + probes,
                    found,
                    cfg.neighbourhood_ascent,
                    x_cur,
                    level,
                    n,
                    value,
                    oracle,
                )
                checked_all = checked_all and complete
            for wide in (False, True) if cfg.greedy_paths else ():
                # first from the evaluated coalitions of largest excess; then, when nothing
                # violated was found near the tight rows, from singletons taken in turn
                if oracle.remaining == 0 or (wide and (found or not checked_all)):
                    break
                found, complete = _greedy_round(
                    check,
                    found,
                    fit,
                    cfg,
                    rnd,
                    x_cur,
                    level,
                    tol,
                    n,
                    value,
                    oracle,
                    bar,
                    wide,
                    index,
                )
                checked_all = checked_all and complete
            # the out-of-sample estimate needs uniform coalitions: sized probes are left out
            fresh = [m for m in probes if m in oracle] if cfg.probe_sizes == "uniform" else []
            if not found and checked_all and cfg.confirm_probes and oracle.remaining != 0:
                confirm = random_masks(rng, n, cfg.confirm_probes)
                found, checked_all = check(confirm, x_cur, level)
                fresh += [m for m in confirm if m in oracle]
                if not found and checked_all and cfg.confirm_ascents and oracle.remaining != 0:
                    # Violated coalitions can be too rare for uniform probes (0.1% of 2^16 on a
                    # coverage game): climb the true excess from the best probes before stopping.
                    seen = [m for m in confirm if m in oracle]
                    ex = np.array([value(m) for m in seen]) - _coalition_sums(x_cur, seen, n)
                    # half the starts: the best probes; half: random coalitions of uniformly
                    # random size (uniform probes almost never have the small or large sizes
                    # where the violated coalitions of submodular games sit)
                    k = cfg.confirm_ascents
                    starts = [seen[i] for i in np.argsort(-ex, kind="stable")[: (k + 1) // 2]]
                    starts += _sized_masks(rng, n, k - len(starts))
                    found, checked_all = _ascend(check, starts, x_cur, level, n, value, oracle)
            if fresh:
                ex = np.array([value(m) for m in fresh]) - _coalition_sums(x_cur, fresh, n)
                probe_stats = (ex, level)
            violated = len(found)
            frontier = found[: _count(cfg.batch_size)]
            sync_rows()
            history.append(
                RoundInfo(
                    rnd, oracle.calls, sol.epsilon, lp.num_rows, violated, time.perf_counter() - t0
                )
            )
            bar.set_postfix(
                round=rnd, eps=f"{sol.epsilon * unit:.5g}", violated=violated, refresh=False
            )
            clean = clean + 1 if violated == 0 and checked_all else 0
            if clean >= cfg.clean_rounds:
                status = Status.ESTIMATED  # a sampling-based rule: certified only below
                break
            if oracle.remaining == 0:
                status = Status.BUDGET_EXHAUSTED
        sync_rows()
        ts = time.perf_counter()
        sol = lp.solve()
        lp_rounds += 1
        t_lp += time.perf_counter() - ts
        bar.set_postfix_str("choosing the payoff: minimum-norm point", refresh=True)
        evaluated, vals = known_rows()
        x, levels = payoff(sol)
        # every proper coalition evaluated: the LP had every row, the answer is certified
        certified = n <= MAX_VECTOR_PLAYERS and len(evaluated) == (1 << n) - 2
        relaxation = 0.0
        if oracle.budget is not None:
            oracle.budget += judge
        if not certified and _robust_on(cfg, n, len(evaluated)):
            # cap the probe's calls at the judge's share (all of it when the budget is unlimited)
            sizes = max(1, (judge if cfg.budget is not None else JUDGE_CALLS) // 9)
            clip = (float(vals.min()), float(vals.max())) if vals.size else None

            def probe(xc: npt.NDArray[np.float64], surrogate: Surrogate) -> float:
                probes = prefix_probes(xc, surrogate, sizes, clip=clip)
                masks = [m for m in probes if m not in (0, grand)]
                before = oracle.calls
                oracle.evaluate(masks)
                bar.update(oracle.calls - before)
                done = [m for m in masks if m in oracle]
                if not done:
                    return -math.inf
                return float(max(np.array([value(m) for m in done]) - _coalition_sums(xc, done, n)))

            bar.set_postfix_str("choosing the payoff: relaxed levels, judge's probes", refresh=True)
            x, relaxation = _robust(x, sol, evaluated, vals, fit, lp, cfg, scale, slack, tol, probe)
            evaluated, vals = known_rows()  # the probes' coalitions were paid for: they count
        excess = vals - _coalition_sums(x, evaluated.tolist(), n)
        upper = float(excess.max())
        if not cfg.proper:
            upper = max(upper, 0.0)
        if certified:
            status = Status.CONVERGED
        probe_excess = violation_rate = None
        if probe_stats is not None:
            ex, probe_level = probe_stats
            probe_excess = float(ex.max())
            violation_rate = _clopper_pearson_upper(int((ex > probe_level + tol).sum()), ex.size)
        estimate = None
        if not certified:
            if oracle.budget is not None:
                oracle.budget += reserve
            bar.set_postfix_str("auditing the payoff on fresh coalitions", refresh=True)
            before = oracle.calls
            estimate = _audit(oracle, rng, cfg, x, upper, tol, n, value)
            bar.update(oracle.calls - before)
            if estimate is not None:
                upper = max(upper, estimate.max_excess)
            elif probe_stats is not None:
                ex, probe_level = probe_stats
                k = int((ex > probe_level + tol).sum())
                estimate = RequirementEstimate(
                    probes=int(ex.size),
                    level=probe_level,
                    max_excess=float(ex.max()),
                    exceeding=k,
                    fraction_upper=_clopper_pearson_upper(k, ex.size),
                    of_returned_payoff=False,
                )
    finally:
        bar.close()
    total = time.perf_counter() - t0
    logger.info(
        "least_core: %s after %d calls: e* >= %.6g (certified); the payoff needs >= %.6g over the "
        "evaluated coalitions%s",
        status.value,
        oracle.calls,
        sol.epsilon * unit,
        upper * unit,
        "" if certified else " (unseen ones may need more)",
    )
    return build_result(
        players,
        x,
        sol,
        upper,
        exact=certified,
        value_calls=oracle.calls,
        lp_rounds=lp_rounds,
        status=status,
        mode="approximate",
        cfg=cfg,
        levels=levels,
        history=history,
        timings={"value": oracle.seconds, "lp": t_lp, "separation": t_sep, "total": total},
        probe_excess=probe_excess,
        violation_rate=0.0 if certified else violation_rate,
        unit=unit,
        estimate=estimate,
        relaxation=relaxation,
    )


def _robust(
    x: npt.NDArray[np.float64],
    sol: Any,
    evaluated: npt.NDArray[Any],
    vals: npt.NDArray[np.float64],
    fit: SurrogateFit,
    lp: Any,
    cfg: LeastCoreConfig,
    scale: float,
    slack: float,
    tol: float,
    probe: Callable[[npt.NDArray[np.float64], Surrogate], float],
) -> tuple[npt.NDArray[np.float64], float]:
    """The payoff of :func:`~coreopt.game.robust.robust_payoff` and its level relaxation (solver
    units); the relaxed points come from :func:`~coreopt.game.generation.egalitarian` (the warm
    loop QP stalls at its iteration cap when the level jumps: measured at n = 200)."""
    masks = [int(m) for m in evaluated.tolist()]
    fit.add(
        [m for m in masks if m not in fit.seen],
        [float(v) for m, v in zip(masks, vals, strict=True) if m not in fit.seen],
    )
    surrogate = fit.fit()
    base = sol.epsilon + slack

    rows = ExplicitRows(n=x.shape[0], masks=evaluated, values=vals)

    def at_level(d: float) -> npt.NDArray[np.float64] | None:
        return egalitarian(
            rows,
            grand_value=lp.grand_value,
            x_lower=lp.x_lower,
            level=base + d,
            seed_masks=sol.masks[sol.duals > 1e-9],
            tol=tol,
            rows_per_round=cfg.rows_per_round,
        )

    chosen, choice = robust_payoff(x, at_level, masks, vals, surrogate, scale, cfg.seed, probe)
    return chosen, choice.delta


def _robust_on(cfg: LeastCoreConfig, n: int, rows: int) -> bool:
    """Whether ``robust_payoff`` applies with ``rows`` proper coalitions evaluated (or, before
    the run, the budget): forced by ``cfg.robust_payoff``, else below the rows-per-player
    thresholds; only with the egalitarian tie-break and at least two players."""
    if cfg.tie_break != "egalitarian" or n < 2:
        return False
    if cfg.robust_payoff is not None:
        return bool(cfg.robust_payoff)
    per_player = ROBUST_MAX_ROWS_PER_PLAYER if n > cfg.enumerate_max_n else ROBUST_SMALL_N_ROWS
    return rows < per_player * n


def _audit(
    oracle: ValueOracle,
    rng: np.random.Generator,
    cfg: LeastCoreConfig,
    x: npt.NDArray[np.float64],
    level: float,
    tol: float,
    n: int,
    value: Callable[[int], float],
) -> RequirementEstimate | None:
    """Evaluate up to ``cfg.audit_probes`` fresh uniform coalitions against the returned payoff
    ``x`` and estimate how often unseen coalitions exceed ``level`` (solver units)."""
    k = cfg.audit_probes if oracle.remaining is None else min(cfg.audit_probes, oracle.remaining)
    if k <= 0:
        return None
    draws = random_masks(rng, n, 4 * k)
    fresh = [m for m in dict.fromkeys(int(m) for m in draws) if m not in oracle][:k]
    oracle.evaluate(fresh)
    got = [m for m in fresh if m in oracle]
    if not got:
        return None
    ex = np.array([value(m) for m in got]) - _coalition_sums(x, got, n)
    exceeding = int((ex > level + tol).sum())
    return RequirementEstimate(
        probes=len(got),
        level=level,
        max_excess=float(ex.max()),
        exceeding=exceeding,
        fraction_upper=_clopper_pearson_upper(exceeding, len(got)),
    )


def _propose(
    oracle: ValueOracle,
    sol: Any,
    x: npt.NDArray[np.float64],
    cfg: LeastCoreConfig,
    n: int,
    value: Any,
    frontier: list[int],
    fit: SurrogateFit,
) -> list[int]:
    """Candidate coalitions for this round, best first, none evaluated yet."""
    known = set(oracle.cache)
    out: list[int] = []
    batch = _count(cfg.batch_size)
    surrogate = None
    if ("surrogate" in cfg.oracles or "local_search" in cfg.oracles) and cfg.surrogate_focus > 0:
        masks = mask_array([m for m in oracle.cache if m != 0], n)
        vals = np.array([value(int(m)) for m in masks])
        # Weighted fit (reconstructed option): the surrogate only has to be right where the
        # excess v(S) - x(S) is high, so coalitions near tight count more.
        excess = vals - _coalition_sums(x, masks.tolist(), n)
        spread = max(float(np.std(excess)), 1e-12)
        weights = np.exp(np.clip((excess - excess.max()) / spread, -cfg.surrogate_focus, 0))
        surrogate = fit_surrogate(masks, vals, n, kind=_surrogate_kind(cfg, n), weights=weights)
    elif "surrogate" in cfg.oracles or "local_search" in cfg.oracles:
        # the default, unweighted fit: normal equations accumulated across rounds
        new = [m for m in oracle.cache if m != 0 and m not in fit.seen]
        fit.add(new, [value(m) for m in new])
        surrogate = fit.fit()
    if "surrogate" in cfg.oracles and surrogate is not None:
        solver = cfg.surrogate_solver
        if solver == "auto":
            # enumeration while 2^n is small; then the min-cut or the node-capped MILP up to
            # MILP_MAX_N players; beyond, exact sorting for a surrogate without pairs, else the
            # min-cut's maximiser (supermodular) and a work-bounded ascent on the surrogate from
            # the LP's tight rows and last round's violated rows (the MILP's cost grows with its
            # n^2 pair variables)
            if n <= cfg.enumerate_max_n:
                solver = "enumerate"
            else:
                solver = "mincut" if n <= MILP_MAX_N else "ascent"
        if solver in ("milp", "mincut") and surrogate.g is not None and surrogate.pairwise:
            solver = "ascent"  # the MILP and the min-cut have no size term g(|S|)
        if solver == "enumerate":
            out += top_by_enumeration(surrogate, x, batch, known)
        elif not surrogate.pairwise and solver in ("ascent", "milp", "mincut"):
            out += top_by_size(surrogate, x, batch, known)
        elif solver == "ascent":
            best = best_by_mincut(surrogate, x)
            if best is not None and best not in known:
                out.append(best)
            tight = [int(m) for m in sol.masks[sol.duals > 1e-9]]
            # plus random starts (seeded by the seed and the number of values known: the same
            # run draws the same starts on any machine)
            start_rng = np.random.default_rng([cfg.seed, len(known)])
            if cfg.probe_sizes == "sized":
                extra = _sized_masks(start_rng, n, ASCENT_STARTS)
            else:
                extra = random_masks(start_rng, n, ASCENT_STARTS)
            starts = list(dict.fromkeys(frontier + tight + out + extra))
            out += top_by_ascent(surrogate, x, batch, known | set(out), starts)
        else:
            best = best_by_mincut(surrogate, x) if solver == "mincut" else None
            if best is not None and best not in known:
                out.append(best)
            if best is None or cfg.surrogate_solver == "milp":
                out += top_by_milp(surrogate, x, max(1, batch // 2), known | set(out))
    if "local_search" in cfg.oracles:
        tight = [int(m) for m in sol.masks[sol.duals > 1e-9]]
        bases = list(dict.fromkeys(frontier + tight))
        if surrogate is not None and len(bases) * n > FLIPS_MATERIALISED_MAX:
            out += top_flips(surrogate, x, bases, batch, known | set(out))
        else:
            flips = local_search(bases, n, known | set(out))
            if flips and surrogate is not None:
                pred = surrogate.predict(mask_array(flips, n)) - _coalition_sums(x, flips, n)
                order = np.argsort(-pred, kind="stable")
                flips = [flips[i] for i in order]
            out += flips[:batch]
    return list(dict.fromkeys(out))


def _neighbourhoods(
    check: Callable[[list[int], Any, float], tuple[list[int], bool]],
    pool: list[int],
    found: list[int],
    k: int,
    x: npt.NDArray[np.float64],
    level: float,
    n: int,
    value: Callable[[int], float],
    oracle: ValueOracle,
) -> tuple[list[int], bool]:
    """One step of true-excess ascent aimed at this round's target ``x``.

    Evaluates every unevaluated 1-flip neighbour (at most ``n`` real calls each) of the ``k``
    coalitions of ``pool`` (this round's candidates and probes) with the largest true excess
    ``v(S) - x(S)``. Returns ``found`` joined with the violated neighbours, most violated first,
    and whether every neighbour could be evaluated within the budget.
    """
    grand = (1 << n) - 1
    done = [m for m in dict.fromkeys(pool) if m in oracle]
    if not done:
        return found, True
    ex = np.array([value(m) for m in done]) - _coalition_sums(x, done, n)
    complete = True
    out = list(found)
    for i in np.argsort(-ex, kind="stable")[:k].tolist():
        start = done[i]
        nb = [start ^ (1 << j) for j in range(n)]
        nb = [m for m in nb if m not in (0, grand) and m not in oracle]
        more, ok = check(nb, x, level)
        complete = complete and ok
        out += [m for m in more if m not in out]
    return _by_true_excess(out, x, n, value), complete


def _by_true_excess(
    masks: list[int], x: npt.NDArray[np.float64], n: int, value: Callable[[int], float]
) -> list[int]:
    """``masks`` (evaluated) ordered by true excess ``v(S) - x(S)``, largest first (stable)."""
    if not masks:
        return masks
    ex = np.array([value(m) for m in masks]) - _coalition_sums(x, masks, n)
    return [masks[i] for i in np.argsort(-ex, kind="stable").tolist()]


def _greedy_round(
    check: Callable[[list[int], Any, float], tuple[list[int], bool]],
    found: list[int],
    fit: SurrogateFit,
    cfg: LeastCoreConfig,
    rnd: int,
    x: npt.NDArray[np.float64],
    level: float,
    tol: float,
    n: int,
    value: Callable[[int], float],
    oracle: ValueOracle,
    bar: Any,
    wide: bool = False,
    index: MarginalIndex | None = None,
) -> tuple[list[int], bool]:
    """``cfg.greedy_paths`` greedy ascents of the true excess at this round's payoff ``x``
    (:func:`~coreopt.game.separation.greedy_paths`), from singletons taken in turn (round ``r``
    starts from players ``r·k .. r·k + k - 1`` mod n): every coalition on the paths joins the LP.
    Returns ``found`` joined with the violated coalitions evaluated, most violated first."""
    k = int(cfg.greedy_paths or 0)
    if wide:
        starts = [1 << ((rnd * k + p) % n) for p in range(min(k, n))]
    else:
        done = [m for m in oracle.cache if m != 0 and m != (1 << n) - 1]
        starts = _by_true_excess(done, x, n, value)[:k]
    before = set(oracle.cache)
    surrogate = fit.fit() if fit.seen else None

    def evaluate(masks: list[int]) -> None:
        got = oracle.calls
        oracle.evaluate(masks)
        bar.update(oracle.calls - got)

    def known(m: int) -> float | None:
        return value(m) if m in oracle else None

    if index is not None:
        fresh = [m for m in oracle.cache if m not in index.known and m != 0]
        index.add(fresh, [value(m) for m in fresh])
    greedy_paths(evaluate, known, surrogate, x, starts, cfg.greedy_per_step, tol, index=index)
    new = [m for m in oracle.cache if m not in before and m != 0]
    more, complete = check(new, x, level)  # already paid for: sorts them, costs nothing
    out = list(found) + [m for m in more if m not in found]
    return _by_true_excess(out, x, n, value), complete and oracle.remaining != 0


def _ascend(
    check: Callable[[list[int], Any, float], tuple[list[int], bool]],
    starts: list[int],
    x: npt.NDArray[np.float64],
    level: float,
    n: int,
    value: Callable[[int], float],
    oracle: ValueOracle,
) -> tuple[list[int], bool]:
    """Steepest ascent of the true excess ``v(S) - x(S)`` over 1-flip neighbourhoods.

    From each start, evaluate every unevaluated neighbour (one batch of real calls), move to the
    best one while the excess grows, and stop at a local maximum. Returns the violated coalitions
    of the first neighbourhood that has any (most violated first), and whether every neighbourhood
    visited could be evaluated within the budget.
    """
    grand = (1 << n) - 1
    for start in starts:
        found, complete = check([start], x, level)  # a start may be new (a random one)
        if found or not complete:
            return found, complete
        cur = start
        cur_ex = value(cur) - float(_coalition_sums(x, [cur], n)[0])
        while True:
            nb = [cur ^ (1 << i) for i in range(n)]
            nb = [m for m in nb if m not in (0, grand)]
            found, complete = check(nb, x, level)
            if found or not complete:
                return found, complete
            done = [m for m in nb if m in oracle]
            ex = np.array([value(m) for m in done]) - _coalition_sums(x, done, n)
            best = int(np.argmax(ex))
            if ex[best] <= cur_ex:
                break
            cur, cur_ex = done[best], float(ex[best])
    return [], True


ROBUST_MAX_ROWS_PER_PLAYER = 50
"""``robust_payoff=None``: the payoff is chosen against predicted excesses
(:func:`~coreopt.game.robust.robust_payoff`) when fewer than this many proper coalitions per
player were evaluated. Measured on coverage n = 40 (games 0-5, solver seed 0, the payoff's true
requirement over e*, exact MILP audit; benchmarks/RESULTS.md, session 7): with it / without,
1,200 calls +14.9% / +47.6%, 2,000 calls +14.5% / +19.6%, 3,000 calls +10.0% / +9.0%, 4,000 calls
+8.5% / +4.6%, 5,000 calls +7.6% / +3.6%: the surrogate's prediction helps while the restricted
least core is poorly pinned and misleads once it is well pinned. At n = 100, 200 and 1,000 with
3,000 calls (29, 15 and 3 per player) it lowered the requirement on coverage (seed 0: 47.0 →
31.1, 67.7 → 25.0, 94.1 → 47.7) and left weighted voting unchanged."""

JUDGE_CALLS = 144
"""Real calls (at most a twentieth of the budget, held back from the start) that test the
candidate payoffs of ``robust_payoff``: three candidates x three orders x 16 prefix sizes
(:func:`~coreopt.game.robust.prefix_probes`)."""

ROBUST_SMALL_N_ROWS = 10
"""The same threshold up to ``enumerate_max_n`` players (the surrogate is maximised exactly there,
so fewer rows pin the payoff). Measured at n = 16 and 18 (coverage and voting, 3 seeds each,
requirement audited by enumeration): 150 calls (8-9 per player) better in 10 of 12 games, equal in
2 (voting 1.24-1.77 → 0.66-0.67 of v(N)); 300 calls (17-19 per player) worse in 6, better in 4."""

LOOP_TIE_BREAK_MAX_N = 20
"""Up to this many players the tie-broken payoff is each round's separation target; above, the
minimum-norm point of the restricted least core from one warm HiGHS QP is (the exact tie-break
then runs once, at the end). Separating at the LP's own vertex instead was measured 13-20% worse
(true requirement over e*) at n = 22."""

GREEDY_PATHS = 4
"""``greedy_paths=None`` on a game that looks subadditive above ``enumerate_max_n`` players:
four true-excess searches a round, pruned by marginal-gain bounds (``greedy_prune``). Measured
at n = 40, 5,000 calls, the payoff's requirement over e* (exact MILP audit;
benchmarks/RESULTS.md), mean of 12 runs (coverage seeds 0-5 at solver seed 0, seeds 0-2 at
solver seeds 1 and 2): 2 searches unpruned +4.65%, 2 pruned +3.76%, 4 pruned +3.39%. Earlier,
unpruned, with 8 candidates and 8 probes a round (coverage seeds 0-5): 2 searches +4.3%
(+7.9% without them); with 32 and 32 +5.8%; without the swap phase +4.6%."""

DEFAULT_BATCH = 32
"""``batch_size=None`` / ``probes=None``: surrogate candidates / probes a round."""

AIMED_BATCH = 8
"""The same when ``greedy_paths`` is on by default: fewer, so that the budget buys more rounds
(more LP re-solves, each aiming the searches at a new payoff)."""

SAMPLED_PROBES = 64
"""``probes=None`` above ``QUADRATIC_MAX_N`` players on a game that does not look subadditive:
the budget goes to uniform probes, ``SAMPLED_BATCH`` surrogate and local-search candidates a
round, and each round's target is the LP's own point (the probes do not depend on it; the
min-norm QP on uniform rows took 27 s a round at n = 1,000). There the surrogate is the
``"size"`` one (linear in the players plus size hinges), and on weighted voting its candidates
(prefixes of the players by ``a_i - x_i``, 1-flips of the tight rows) pinned the payoff worse than
uniform coalitions: the payoff's true requirement (exact MILP audit, e* ≈ 0.498 of ``v(N)``;
benchmarks/RESULTS.md), game seeds 0-2, 32 candidates and 32 probes a round → this: n = 64 with
2,000 calls 0.670 / 0.643 / 0.634 → 0.553 / 0.557 / 0.545, n = 80 with 3,000 0.617 / 0.628 /
0.616 → 0.532 / 0.534 / 0.539, with 8,000 0.518 / 0.519 / 0.519 → 0.511 / 0.510 / 0.507, n = 100
with 3,000 0.683 / 0.651 / 0.607 → 0.551 / 0.557 / 0.556, n = 200 with 3,000 0.692 / 0.680 /
0.662 → 0.621 / 0.612 / 0.629. Convex (supermodular pairwise) games at n = 100 gave the same
payoff to the digit, glove and majority games the same requirement. At n = 40 (the quadratic
surrogate) the candidates helped (voting, 1,200 calls: 0.611 / 0.571 / 0.577 with them, 0.675 /
0.613 / 0.675 with probes alone), so the rule starts above ``QUADRATIC_MAX_N``."""

SAMPLED_BATCH = 1
"""``batch_size=None`` where :data:`SAMPLED_PROBES` applies."""

FLIPS_MATERIALISED_MAX = 200_000
"""Above this many 1-bit flips of the tight and violated rows, ``"local_search"`` ranks them by
gains (:func:`~coreopt.game.separation.top_flips`) instead of building each flipped coalition
(n = 1,000, 3,000 calls: a round's ranking had grown to gigabytes and minutes)."""

ASCENT_STARTS = 64
"""Random starts of the surrogate ascent each round, besides the tight and violated rows."""

MILP_MAX_N = 20
"""``surrogate_solver="auto"``: the min-cut or the node-capped MILP maximises the surrogate up to
this many players (when ``enumerate_max_n`` is lowered below it), the surrogate ascent above.
Measured at n = 22 on a coverage game with 3,000 calls (the payoff's true requirement over e*):
+5% with the ascent from the tight and violated rows alone, within 1e-4 with 64 random starts
added, in 16 s on a loaded machine (the MILP took minutes there)."""

QUADRATIC_MAX_N = 60
"""``surrogate="auto"`` fits the pairwise surrogate up to this many players (1,831 features),
and the ``"size"`` surrogate (``n + 9`` features) beyond."""


def _resolve_search(
    cfg: LeastCoreConfig, n: int, oracle: ValueOracle, grand: int
) -> tuple[LeastCoreConfig, bool]:
    """``cfg`` with the ``"auto"`` search options resolved from ``v(N)`` and the singletons,
    and whether the sampled search (``SAMPLED_PROBES``) was chosen.

    A game whose singletons together are worth more than the grand coalition
    (``Σ v({i}) > v(N)``, after ``v(∅)`` is subtracted when ``normalize``) looks subadditive, like
    a coverage game: its binding coalitions are small, so above ``enumerate_max_n`` players the
    search is aimed there (``probe_sizes="sized"``, ``greedy_paths=GREEDY_PATHS`` and, up to
    ``QUADRATIC_MAX_N`` players, ``surrogate="quadratic_size"``). Any other game keeps the
    uniform search. ``batch_size`` and ``probes`` left at ``None`` become ``AIMED_BATCH`` when the
    greedy search is on; ``SAMPLED_BATCH`` and ``SAMPLED_PROBES`` (mostly uniform probes) above
    ``QUADRATIC_MAX_N`` players when it is not; else ``DEFAULT_BATCH``. The test uses values
    already paid for and no random draw.
    """
    offset = oracle.cache[0] if cfg.normalize else 0.0
    singles = sum(oracle.cache[1 << i] - offset for i in range(n))
    whole = oracle.cache[grand] - offset
    # relative margin: the same decision in any units (scale invariance)
    aimed = n > cfg.enumerate_max_n and singles > whole + 1e-9 * max(abs(whole), abs(singles))
    changes: dict[str, Any] = {}
    if cfg.probe_sizes == "auto":
        changes["probe_sizes"] = "sized" if aimed else "uniform"
    greedy = bool(cfg.greedy_paths) or (cfg.greedy_paths is None and aimed)
    if cfg.greedy_paths is None:
        changes["greedy_paths"] = GREEDY_PATHS if aimed else 0
    if cfg.greedy_prune is None:
        changes["greedy_prune"] = aimed
    if cfg.neighbourhood_ascent is None:
        changes["neighbourhood_ascent"] = 0
    # weighted voting above QUADRATIC_MAX_N players: uniform rows pin the payoff better than the
    # size surrogate's candidates (SAMPLED_PROBES)
    sampled = not aimed and not greedy and n > QUADRATIC_MAX_N
    if cfg.batch_size is None:
        changes["batch_size"] = (
            AIMED_BATCH if greedy else SAMPLED_BATCH if sampled else DEFAULT_BATCH
        )
    if cfg.probes is None:
        changes["probes"] = AIMED_BATCH if greedy else SAMPLED_PROBES if sampled else DEFAULT_BATCH
    if cfg.surrogate == "auto" and aimed and n <= QUADRATIC_MAX_N:
        changes["surrogate"] = "quadratic_size"
    uniform = changes.get("probe_sizes", cfg.probe_sizes) == "uniform"
    sampled_on = sampled and uniform and cfg.batch_size is None and cfg.probes is None
    return (dataclasses.replace(cfg, **changes) if changes else cfg), sampled_on


def _count(value: int | None) -> int:
    """``batch_size`` / ``probes`` of a resolved config (``None`` only before resolution)."""
    return DEFAULT_BATCH if value is None else int(value)


def _surrogate_kind(cfg: LeastCoreConfig, n: int) -> str:
    """The surrogate fitted for ``n`` players under ``cfg.surrogate``."""
    kind = str(getattr(cfg, "surrogate", "quadratic"))
    if kind == "auto":
        return "quadratic" if n <= QUADRATIC_MAX_N else "size"
    return kind


def _sized_masks(rng: np.random.Generator, n: int, k: int) -> list[int]:
    """``k`` random proper coalitions whose size is uniform on ``1..n-1``."""
    out = []
    for _ in range(k):
        size = int(rng.integers(1, n)) if n > 1 else 1
        out.append(int(sum(1 << int(i) for i in rng.choice(n, size, replace=False))))
    return out


def _coalition_sums(
    x: npt.NDArray[np.float64], masks: list[int], n: int
) -> npt.NDArray[np.float64]:
    if not masks:
        return np.zeros(0)
    return incidence(masks, n) @ x


def _clopper_pearson_upper(k: int, m: int, confidence: float = 0.95) -> float:
    """One-sided upper confidence bound on a binomial proportion (k successes in m trials)."""
    if k >= m:
        return 1.0
    from scipy.special import betaincinv

    return float(betaincinv(k + 1, m - k, confidence))


def _disabled(progress: bool | None) -> bool | None:
    return None if progress is None else not progress
