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
    (papers.md §1: tools differ, so each is explicit); the other fields tune the solver.

    Attributes:
        proper: constraints on proper coalitions only (default). ``False`` adds the grand
            coalition's row ``x(N) + e >= v(N)``, i.e. forces ``e >= 0``.
        nonnegative: payments ``x_i >= 0``.
        imputation: payments ``x_i >= v({i})`` (individual rationality).
        normalize: subtract ``v(∅)`` from every value (an LLM answers something with no sources);
            costs one extra call.
        budget: maximum number of value calls (``None``: unlimited). Exact mode is chosen when
            every coalition fits in it.
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
        surrogate: ``"quadratic"`` (pairwise) or ``"linear"``.
        surrogate_focus: the surrogate's least-squares weights are
            ``exp(clip((excess - max excess) / std(excess), -focus, 0))``: coalitions near tight
            count up to ``e^focus`` times more than far ones (``0``: unweighted fit).
        surrogate_solver: how the surrogate is maximised: ``"auto"`` (enumeration for
            n <= ``enumerate_max_n``, else min-cut when supermodular, else MILP), ``"enumerate"``,
            ``"milp"`` or ``"mincut"``.
        enumerate_max_n: largest n for which the surrogate is maximised by enumeration.
        batch_size: candidate coalitions evaluated per round (one batch of real calls).
        probes: uniform probes per round.
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
        retries: retries of a failing value call (exponential backoff from ``retry_delay`` s).
        max_concurrency: value calls in flight at once.
        seed: random seed (probes, pairs).
        progress: tqdm bar per round (``None``: only on a terminal or notebook).
    """

    budget: int | None = None
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
    surrogate: Literal["quadratic", "linear"] = "quadratic"
    surrogate_focus: float = 0.0
    clean_rounds: int = 1
    surrogate_solver: Literal["auto", "enumerate", "milp", "mincut"] = "auto"
    enumerate_max_n: int = 20
    batch_size: int = 32
    probes: int = 32
    confirm_probes: int = 300
    confirm_ascents: int = 16
    max_rounds: int = 1000
    rows_per_round: int = 64
    retries: int = 2
    retry_delay: float = 0.5
    max_concurrency: int = 8
    seed: int = 0
    progress: bool | None = None

    def __post_init__(self) -> None:
        if self.budget is not None and (isinstance(self.budget, bool) or self.budget < 1):
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
        if self.surrogate not in ("quadratic", "linear"):
            raise ValueError(f"surrogate={self.surrogate!r}; expected 'quadratic' or 'linear'")
        if self.surrogate_solver not in ("auto", "enumerate", "milp", "mincut"):
            raise ValueError(f"surrogate_solver={self.surrogate_solver!r} is unknown")
        for name in (
            "batch_size",
            "max_rounds",
            "rows_per_round",
            "max_concurrency",
            "clean_rounds",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in (
            "probes",
            "confirm_probes",
            "confirm_ascents",
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
class LeastCoreResult:
    """A least-core payoff with its certificate and diagnostics.

    Attributes:
        payoff: ``{player: payment}``.
        x: payments in player order, shape ``(n,)``.
        epsilon: value of the LP over every coalition evaluated: a certified LOWER bound on the
            least-core value ``e*`` (equal to it when ``exact``).
        epsilon_upper: largest excess ``v(S) - x(S)`` of the returned payoff over every proper
            coalition evaluated: the payoff is in the ``epsilon_upper``-core of those coalitions.
        probe_excess: largest excess over the last round's fresh uniform probes, measured against
            that round's payoff before the probes joined the LP (out of sample; ``None`` when no
            probe ran). When ``status`` is ``CONVERGED`` that payoff is the one returned.
        violation_rate: 95% (Clopper-Pearson) upper confidence bound on the fraction of
            coalitions violated by that payoff beyond that round's LP level, from the same probes
            (``0.0`` when exact, ``None`` without probes).
        exact: certified optimal (every coalition evaluated, or an exact table).
        value_calls: distinct value-function calls made (each coalition at most once).
        lp_rounds: LP solves.
        status: ``Status.CONVERGED`` (stopping rule met), ``BUDGET_EXHAUSTED`` (partial but
            valid: the bounds above still hold), ``MAX_ITERATIONS``.
        mode: ``"exact"`` or ``"approximate"``.
        tie_break: the rule applied to pick ``x`` inside the least core.
        tight: coalitions with positive dual weight (the balancing collection certifying
            ``epsilon``), as frozensets of labels.
        duals: their dual weights, aligned with ``tight`` (they sum to 1 when ``e`` is free).
        levels: nucleolus stage levels ``e_1 >= e_2 >= ...`` (nucleolus only).
        history: one :class:`RoundInfo` per round.
        timings: seconds spent in ``value`` calls, ``lp`` solves, ``separation`` and ``total``.
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

    @property
    def gap(self) -> float:
        """``epsilon_upper - epsilon``: how far the certificate is from closing."""
        return self.epsilon_upper - self.epsilon

    def summary(self, players: Sequence[Hashable] | None = None) -> str:
        """A short human-readable report."""
        lines = [
            f"least core ({self.mode}, {self.status.value}): epsilon in "
            f"[{self.epsilon:.6g}, {self.epsilon_upper:.6g}]"
            + (" (certified optimal)" if self.exact else ""),
            f"value calls {self.value_calls}, LP rounds {self.lp_rounds}, "
            f"time {self.timings.get('total', float('nan')):.3f} s",
        ]
        for label in players or list(self.payoff):
            lines.append(f"  {label!s:>16}: {self.payoff[label]:.6g}")
        return "\n".join(lines)
