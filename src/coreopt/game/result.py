"""Options and results of :func:`coreopt.least_core`."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from coreopt.status import Status

SEEDS = ("singletons", "leave_one_out", "complementary_pairs")
ORACLES = ("surrogate", "local_search", "probes")


@dataclass(frozen=True)
class LeastCoreConfig:
    """Options of :func:`coreopt.least_core`. Validated on construction.

    ``proper``, ``nonnegative``, ``imputation`` and ``normalize`` are the conventions of the LP
    (pyDVL, coopgame-py and the literature differ, so each is explicit); the other fields tune
    the solver.

    Attributes:
        proper: constraints on proper coalitions only (default). ``False`` adds the grand
            coalition's row ``x(N) + e >= v(N)``, i.e. forces ``e >= 0``.
        nonnegative: payments ``x_i >= 0``.
        imputation: payments ``x_i >= v({i})`` (individual rationality).
        normalize: subtract ``v(∅)`` from every value (an LLM answers something with no sources);
            costs one extra call.
        budget: maximum number of value calls (``None``: unlimited), values reused from
            ``known_values`` or a checkpoint included. Exact mode is chosen when every coalition
            fits in it.
        audit_probes: approximate mode: fresh uniform coalitions evaluated against the returned
            payoff after it is chosen (never added to the LP), for the probe-based
            :class:`RequirementEstimate` of what unseen coalitions may still require. At most a
            tenth of the budget is reserved for them. ``0`` skips the audit.
        mode: ``"auto"``, ``"exact"`` (evaluate all ``2^n - 1`` coalitions, certified optimal) or
            ``"approximate"`` (constraint generation).
        tie_break: ``None`` (any LP optimum), ``"egalitarian"`` (min ``||x||_2`` in the least
            core) or ``"nucleolus"`` (sequential LPs).
        tie_slack: slack added to ``e*`` for the tie-break, relative to the value scale.
        tol: violation tolerance, relative to the value scale ``max(1, max |v|)``.
        seeds: seeding strategies: any of ``"singletons"``, ``"leave_one_out"``,
            ``"complementary_pairs"``.
        seed_coalitions: user-given coalitions (sequences of labels) evaluated first.
        complementary_pairs: number of random (S, N\\S) pairs seeded.
        oracles: separation oracles run each round: ``"surrogate"`` (fitted on evaluated
            coalitions, maximised exactly), ``"local_search"`` (1-bit flips of the tight
            coalitions and of last round's violated ones, ranked by the surrogate), ``"probes"``
            (uniform random coalitions).
        surrogate: ``"auto"`` (``"quadratic"`` up to 60 players, ``"size"`` beyond;
            ``"quadratic_size"`` instead of ``"quadratic"`` where ``probe_sizes="auto"`` picks
            ``"sized"``),
            ``"quadratic"`` (pairwise: ``1 + n(n+1)/2`` features), ``"size"`` (linear plus a
            piecewise-linear function of ``|S|``: ``n + 9`` features), ``"quadratic_size"``
            (both: ``n(n+1)/2 + 9`` features; fits the saturation in ``|S|`` of coverage-like,
            submodular games) or ``"linear"``.
        surrogate_focus: the surrogate's least-squares weights are
            ``exp(clip((excess - max excess) / std(excess), -focus, 0))``: coalitions near tight
            count up to ``e^focus`` times more than far ones (``0``: unweighted fit).
        surrogate_solver: how the surrogate is maximised: ``"auto"`` (enumeration for
            n <= ``enumerate_max_n``, else ``"ascent"``),
            ``"enumerate"``, ``"milp"`` (HiGHS,
            capped in branch-and-bound nodes), ``"mincut"`` (exact when the surrogate is
            supermodular, else MILP) or ``"ascent"`` (the min-cut's maximiser when supermodular,
            plus steepest 1-flip ascents on the surrogate from the LP's tight rows, last
            round's violated ones and 64 seeded random coalitions: a fixed amount of work, for
            any n). A surrogate without pairs
            (``"size"``, ``"linear"``) is maximised exactly by sorting.
        enumerate_max_n: largest n for which the surrogate is maximised by enumeration and the
            tie-broken payoff is the separation target each round (above it the target is the
            LP's optimum and the tie-break runs once, at the end).
        batch_size: surrogate candidates (and as many local-search flips) evaluated per round
            (one batch of real calls). ``None`` (default): 32, or 8 when the greedy search
            (``greedy_paths``) is on: more, cheaper rounds.
        probes: probes per round (``None``, the default: 32, or 8 as for ``batch_size``).
        probe_sizes: ``"uniform"`` (each player in with probability 1/2, so sizes near
            ``n/2``; these probes also give the out-of-sample estimate), ``"sized"`` (size
            uniform on ``1..n-1``, then members uniform, for the probes, the complementary-pair
            seeds and the surrogate ascent's random starts: reaches the small and large
            coalitions where subadditive games bind; not used for the estimate) or ``"auto"``
            (default: ``"sized"`` above ``enumerate_max_n`` players when the singletons together
            are worth more than ``v(N)``, else ``"uniform"``).
        neighbourhood_ascent: each round, after the candidates and probes are evaluated,
            evaluate every unevaluated 1-flip neighbour of this many of them with the largest
            true excess ``v(S) - x(S)`` at the round's payoff (at most ``n`` real calls each;
            ``0``: off; ``None``, the default: 0; it was 1 for games that look subadditive
            before ``greedy_paths`` replaced it there).
        greedy_paths: each round, this many local searches of the TRUE excess ``v(S) - x(S)``
            at the round's payoff, started from the evaluated coalitions of largest excess
            there (:func:`~coreopt.game.separation.greedy_paths`: additions ranked by the
            surrogate, ``greedy_per_step`` real calls per step, then every removal, then the
            best-ranked swaps; each move taken only when the true excess grows); when they and
            the round's other candidates find nothing violated, as many more start from
            singletons, taken in turn. Every coalition evaluated joins the LP. ``0``: off;
            ``None`` (default): 4 above ``enumerate_max_n`` players on a game whose singletons
            together are worth more than ``v(N)`` (coverage-like, subadditive games, where a
            pairwise surrogate under-predicts the small coalitions that bind), else 0.
        greedy_per_step: real calls per search and step of ``greedy_paths`` (additions, swaps).
        greedy_prune: ``greedy_paths`` skips the additions, removals and swaps that bounds from
            the marginal gains already paid for show cannot raise the excess
            (:class:`~coreopt.game.separation.MarginalIndex`: valid bounds for a submodular
            game, a heuristic otherwise), so its calls go to neighbours that can. ``None``
            (default): on where ``greedy_paths=None`` turns the search on (games that look
            subadditive), else off.
        confirm_probes: when a round's candidates and probes show no violation, this many fresh
            uniform probes must also show none before stopping (a PAC-style check: 300 clean
            probes bound the violated fraction by 1% at 95% confidence). ``0`` skips it.
        confirm_ascents: then, from this many of the best confirm probes, a steepest ascent of
            the true excess ``v(S) - x(S)`` over 1-flip neighbourhoods (each step one batch of
            at most n real calls) must also end without a violation: violated coalitions can be
            far rarer than 1% (89 of 2^16 on a 16-player coverage game). ``0`` skips it.
        clean_rounds: consecutive rounds without any violation required to stop (each round
            refits the surrogate and searches again; rare violations are found by the next).
        max_rounds: cap on constraint-generation rounds.
        rows_per_round: violated rows added per LP round in exact mode.
        robust_payoff: approximate mode with the egalitarian tie-break, when not certified:
            return the minimum-norm point at ``epsilon + δ`` for the ``δ`` (0 or a few levels up
            to half the value scale) whose predicted requirement (its largest excess over the
            evaluated coalitions, or the surrogate's largest predicted excess if higher, or the
            largest true excess over a few coalitions paid for to test it, at most 144 calls
            held back from the budget) is lowest; ``δ = 0`` unless a relaxed level is clearly
            lower (:func:`coreopt.game.robust.robust_payoff`; reported as ``relaxation``). ``None``
            (default): only when fewer than 50 proper coalitions per player were evaluated above
            ``enumerate_max_n`` players, 10 up to it (``ROBUST_MAX_ROWS_PER_PLAYER``,
            ``ROBUST_SMALL_N_ROWS``: measured to help below, to hurt above, where the restricted
            least core is well pinned). ``False``: always the restricted least
            core's point.
        retries: retries of a failing value call (exponential backoff from ``retry_delay`` s).
        max_concurrency: value calls in flight at once.
        seed: random seed (probes, pairs).
        progress: tqdm bar per round (``None``: only on a terminal or notebook).
    """

    budget: int | None = None
    audit_probes: int = 100
    mode: Literal["auto", "exact", "approximate"] = "auto"
    proper: bool = True
    nonnegative: bool = False
    imputation: bool = False
    normalize: bool = False
    tie_break: Literal["egalitarian", "nucleolus"] | None = "egalitarian"
    tie_slack: float = 1e-10
    tol: float = 1e-9
    seeds: tuple[str, ...] = ("singletons", "leave_one_out", "complementary_pairs")
    seed_coalitions: tuple[tuple[Hashable, ...], ...] = ()
    complementary_pairs: int = 8
    oracles: tuple[str, ...] = ORACLES
    surrogate: Literal["auto", "quadratic", "quadratic_size", "size", "linear"] = "auto"
    surrogate_focus: float = 0.0
    clean_rounds: int = 1
    surrogate_solver: Literal["auto", "enumerate", "milp", "mincut", "ascent"] = "auto"
    enumerate_max_n: int = 20
    batch_size: int | None = None
    probes: int | None = None
    probe_sizes: Literal["auto", "uniform", "sized"] = "auto"
    neighbourhood_ascent: int | None = None
    greedy_paths: int | None = None
    greedy_per_step: int = 2
    greedy_prune: bool | None = None
    confirm_probes: int = 300
    confirm_ascents: int = 16
    max_rounds: int = 1000
    rows_per_round: int = 64
    robust_payoff: bool | None = None
    retries: int = 2
    retry_delay: float = 0.5
    max_concurrency: int = 8
    seed: int = 0
    progress: bool | None = None

    def __post_init__(self) -> None:
        if self.budget is not None and (
            isinstance(self.budget, bool) or not isinstance(self.budget, int | np.integer)
        ):
            raise TypeError(
                f"budget must be a positive int (a number of value calls) or None, got "
                f"{type(self.budget).__name__} {self.budget!r}"
            )
        if self.budget is not None and self.budget < 1:
            raise ValueError(f"budget must be a positive int or None, got {self.budget!r}")
        if self.mode not in ("auto", "exact", "approximate"):
            raise ValueError(f"mode={self.mode!r}; expected 'auto', 'exact' or 'approximate'")
        if self.tie_break not in (None, "egalitarian", "nucleolus"):
            raise ValueError(
                f"tie_break={self.tie_break!r}; expected None, 'egalitarian' or 'nucleolus'"
            )
        bad = [s for s in self.seeds if s not in SEEDS]
        if bad:
            raise ValueError(f"unknown seeds {bad}; expected a subset of {SEEDS}")
        bad = [o for o in self.oracles if o not in ORACLES]
        if bad:
            raise ValueError(f"unknown oracles {bad}; expected a subset of {ORACLES}")
        if self.surrogate not in ("auto", "quadratic", "quadratic_size", "size", "linear"):
            raise ValueError(
                f"surrogate={self.surrogate!r}; expected 'auto', 'quadratic', 'quadratic_size', "
                "'size' or 'linear'"
            )
        if self.probe_sizes not in ("auto", "uniform", "sized"):
            raise ValueError(
                f"probe_sizes={self.probe_sizes!r}; expected 'auto', 'uniform' or 'sized'"
            )
        if self.neighbourhood_ascent is not None and self.neighbourhood_ascent < 0:
            raise ValueError(
                f"neighbourhood_ascent must be >= 0 or None, got {self.neighbourhood_ascent!r}"
            )
        if self.surrogate_solver not in ("auto", "enumerate", "milp", "mincut", "ascent"):
            raise ValueError(f"surrogate_solver={self.surrogate_solver!r} is unknown")
        for name in ("batch_size", "probes", "greedy_paths"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | np.integer)
            ):
                raise TypeError(f"{name} must be an int or None, got {value!r}")
        if self.robust_payoff is not None and not isinstance(self.robust_payoff, bool | np.bool_):
            raise TypeError(f"robust_payoff must be a bool or None, got {self.robust_payoff!r}")
        if self.greedy_prune is not None and not isinstance(self.greedy_prune, bool | np.bool_):
            raise TypeError(f"greedy_prune must be a bool or None, got {self.greedy_prune!r}")
        if self.greedy_per_step < 1:
            raise ValueError(f"greedy_per_step must be >= 1, got {self.greedy_per_step!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size!r}")
        for name in ("probes", "greedy_paths"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 or None, got {getattr(self, name)!r}")
        for name in (
            "max_rounds",
            "rows_per_round",
            "max_concurrency",
            "clean_rounds",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in (
            "confirm_probes",
            "confirm_ascents",
            "audit_probes",
            "retries",
            "complementary_pairs",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("tol", "tie_slack", "retry_delay", "surrogate_focus"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class RoundInfo:
    """One round of constraint generation.

    Attributes:
        round: index (round 0 also makes the seeding calls).
        calls: value calls made so far (cumulative).
        epsilon: value of the restricted LP solved at the start of the round (over the rows of
            earlier rounds), against which the round's candidates were checked.
        rows: LP rows after the round.
        violations: evaluated candidates and probes found violated in this round.
        seconds: wall time since the start.
    """

    round: int
    calls: int
    epsilon: float
    rows: int
    violations: int
    seconds: float


@dataclass(frozen=True)
class RequirementEstimate:
    """What the coalitions NOT evaluated may still require of a payoff: an estimate, not a bound.

    A payoff's *requirement* is ``max_S v(S) - x(S)`` over every proper coalition (the smallest
    ``e`` for which it is in the ``e``-core). Approximate mode only sees the coalitions it paid
    for, so the true requirement can be larger than ``epsilon_upper``. This estimate comes from
    fresh uniform coalitions (probes) evaluated *after* the payoff was chosen: their excesses are
    an unbiased sample of all coalitions' excesses. Sampling cannot bound a maximum: a coalition
    rarer than ``1/probes`` can still need more (the true requirement stays uncertified).

    Attributes:
        probes: number of held-out uniform probes.
        level: the requirement over the coalitions used to choose the payoff (before the probes).
        max_excess: largest excess ``v(S) - x(S)`` among the probes.
        exceeding: probes whose excess is above ``level`` (beyond the tolerance).
        fraction_upper: one-sided Clopper-Pearson upper bound, at ``confidence``, on the fraction
            of ALL proper coalitions whose excess is above ``level``.
        confidence: the confidence of ``fraction_upper`` (0.95).
        of_returned_payoff: ``True`` when the probes were measured against the returned payoff;
            ``False`` when no call was left for that and they come from the last round, measured
            against that round's payoff (which differs from the returned one).
    """

    probes: int
    level: float
    max_excess: float
    exceeding: int
    fraction_upper: float
    confidence: float = 0.95
    of_returned_payoff: bool = True

    def scaled(self, unit: float) -> RequirementEstimate:
        """The same estimate with excesses multiplied by ``unit`` (solver units -> game units)."""
        return RequirementEstimate(
            self.probes,
            self.level * unit,
            self.max_excess * unit,
            self.exceeding,
            self.fraction_upper,
            self.confidence,
            self.of_returned_payoff,
        )

    def describe(self) -> str:
        """One sentence for :meth:`LeastCoreResult.summary`."""
        whose = "the returned payoff" if self.of_returned_payoff else "the last round's payoff"
        return (
            f"ESTIMATE from {self.probes} fresh uniform probes against {whose}: largest excess "
            f"{self.max_excess:.6g}, {self.exceeding} above {self.level:.6g}; with "
            f"{self.confidence:.0%} confidence at most {self.fraction_upper:.2%} of all "
            f"coalitions need more than {self.level:.6g} (rarer ones may need more: not a bound)"
        )


@dataclass(frozen=True)
class LeastCoreResult:
    """A least-core payoff with its certificate and diagnostics.

    Attributes:
        payoff: ``{player: payment}``.
        x: payments in player order, shape ``(n,)``.
        epsilon: value of the LP over every coalition evaluated: a certified LOWER bound on the
            least-core value ``e*`` (equal to it when ``exact``).
        epsilon_upper: largest excess ``v(S) - x(S)`` of the returned payoff over every proper
            coalition evaluated: the payoff is in the ``epsilon_upper``-core of those coalitions.
            Unless ``certified``, it is a LOWER bound on the payoff's true requirement (unseen
            coalitions may need more; see ``estimate``), not an upper bound on anything.
        probe_excess: largest excess over the last round's fresh uniform probes, measured against
            that round's payoff before the probes joined the LP (out of sample; ``None`` when no
            probe ran). When ``status`` is ``CONVERGED`` that payoff is the one returned.
        violation_rate: 95% (Clopper-Pearson) upper confidence bound on the fraction of
            coalitions violated by that payoff beyond that round's LP level, from the same probes
            (``0.0`` when exact, ``None`` without probes).
        exact: certified optimal (every coalition evaluated, or an exact table); same as
            ``certified``.
        value_calls: distinct value-function calls made by this run (each coalition at most
            once); values taken from ``known_values`` or a checkpoint are in ``reused_values``.
        lp_rounds: LP solves.
        status: ``Status.CONVERGED``: certified optimal (every coalition evaluated);
            ``Status.ESTIMATED``: approximate mode's sampling-based stopping rule was met, the
            payoff is an estimate; ``BUDGET_EXHAUSTED``: the budget ran out (partial, estimated;
            ``epsilon`` is still a certified lower bound); ``MAX_ITERATIONS``.
        mode: ``"exact"`` or ``"approximate"``.
        tie_break: the rule applied to pick ``x`` inside the least core.
        tight: coalitions with positive dual weight (the balancing collection certifying
            ``epsilon``), as frozensets of labels.
        duals: their dual weights, aligned with ``tight`` (they sum to 1 when ``e`` is free).
        levels: nucleolus stage levels ``e_1 >= e_2 >= ...`` (nucleolus only).
        history: one :class:`RoundInfo` per round.
        timings: seconds spent in ``value`` calls, ``lp`` solves, ``separation`` and ``total``.
        estimate: what unseen coalitions may still require of the payoff (approximate mode;
            ``None`` when exact or when no probe could be paid for).
        reused_values: values taken from ``known_values`` or the checkpoint file (counted in
            the budget, not in ``value_calls``).
        relaxation: approximate mode: how far above ``epsilon`` (in the game's units) the level
            of the returned payoff was relaxed because it was predicted to need less of the
            unseen coalitions (``robust_payoff``); ``0.0``: the tie-broken point of the least
            core of the evaluated coalitions.
    """

    payoff: dict[Hashable, float]
    x: npt.NDArray[np.float64]
    epsilon: float
    epsilon_upper: float
    probe_excess: float | None
    violation_rate: float | None
    exact: bool
    value_calls: int
    lp_rounds: int
    status: Status
    mode: str
    tie_break: str | None
    tight: list[frozenset[Hashable]]
    duals: npt.NDArray[np.float64]
    levels: list[float] = field(default_factory=list)
    history: list[RoundInfo] = field(default_factory=list, repr=False)
    timings: dict[str, float] = field(default_factory=dict)
    estimate: RequirementEstimate | None = None
    reused_values: int = 0
    relaxation: float = 0.0

    @property
    def certified(self) -> bool:
        """Whether the payoff is certified optimal (every coalition's constraint was checked)."""
        return self.exact

    @property
    def gap(self) -> float:
        """``epsilon_upper - epsilon`` over the evaluated coalitions only: unless ``certified``,
        the payoff's true requirement may exceed ``epsilon_upper`` (see ``estimate``)."""
        return self.epsilon_upper - self.epsilon

    def summary(self, players: Sequence[Hashable] | None = None) -> str:
        """A short human-readable report.

        A certified result states ``epsilon``; a partial one states the certified lower bound on
        ``e*``, the payoff's requirement over the evaluated coalitions (a lower bound on its true
        requirement) and the probe-based estimate for the unseen ones, labelled as an estimate.
        """
        calls = f"value calls {self.value_calls}"
        if self.reused_values:
            calls += f" (+{self.reused_values} reused)"
        timing = (
            f"{calls}, LP rounds {self.lp_rounds}, "
            f"time {self.timings.get('total', float('nan')):.3f} s"
        )
        if self.exact:
            lines = [
                f"least core ({self.mode}, {self.status.value}): certified optimal, epsilon = "
                f"{self.epsilon:.6g} (every coalition checked)",
                timing,
            ]
        else:
            seen = self.value_calls + self.reused_values
            lines = [
                f"least core ({self.mode}, {self.status.value}): NOT certified, an estimate",
                f"  certified: e* >= {self.epsilon:.6g} (LP over the evaluated coalitions)",
                f"  the payoff needs at least {self.epsilon_upper:.6g} (its largest excess over "
                f"the {seen} evaluated coalitions; unseen coalitions may need more)",
                *(
                    [
                        f"  level relaxed by {self.relaxation:.6g} above e* >= {self.epsilon:.6g}:"
                        " predicted to need less of the unseen coalitions (robust_payoff)"
                    ]
                    if self.relaxation > 0
                    else []
                ),
                "  "
                + (
                    self.estimate.describe()
                    if self.estimate is not None
                    else "no probe of unseen coalitions: their requirement is unknown"
                ),
                timing,
            ]
        for label in players or list(self.payoff):
            lines.append(f"  {label!s:>16}: {self.payoff[label]:.6g}")
        return "\n".join(lines)
