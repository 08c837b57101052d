"""Approximate mode's last step: choose the returned payoff against predicted excesses.

When the budget leaves most coalitions unseen (n = 100 with 3,000 calls), the minimum-norm point
of the *restricted* least core is fitted to the coalitions evaluated: it meets them at the
restricted optimum ``ε`` but swings by chance on the players they say little about, and the
unseen coalitions made of the players it underpays need far more. Measured by an exact MILP
audit (benchmarks/RESULTS.md): on weighted voting n = 200 with 3,000 calls its true requirement
was 0.99 of ``v(N)`` where the equal split needs 0.68; on coverage n = 100, 47.0 where the equal
split needs 31.1.

Relaxing the level trades the two: the minimum-norm point at ``ε + δ`` moves towards the equal
split (``δ → ∞``) while its excess over the evaluated coalitions stays at most ``ε + δ``. Among
``δ = 0`` and :data:`RELAXED_LEVELS` (relative to the value scale), :func:`robust_payoff` keeps
the point whose *predicted* requirement is lowest: the larger of its largest excess over the
evaluated coalitions and the surrogate's largest predicted excess ``max_S v̂(S) - x(S)`` (the
"minimax against the surrogate's predicted excesses" choice). ``δ = 0`` is kept unless a relaxed
level is predicted lower by more than :data:`MIN_GAIN` of the value scale. The grid, the margin and
the use of the surrogate are our choices, not the paper's (Harris, Prasad & Trockman 2026 state
the restricted least core; they do not say which of its points to return when the budget runs
out).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from coreopt.game.coalitions import incidence
from coreopt.game.separation import Surrogate, top_by_ascent

RELAXED_LEVELS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
"""``δ`` tried above the restricted optimum, as fractions of the value scale ``max(1, max |v|)``
(values normalised by the largest ``|v|`` seen while seeding, so the scale is ~1)."""

MIN_GAIN = 0.02
"""A relaxed level replaces ``δ = 0`` only when its predicted requirement is lower by more than
this fraction of the value scale (surrogate noise must not move an answer that is already good).
Measured (benchmarks/RESULTS.md): on glove games with 30 calls per player (n = 30-60, where
``e* = 0`` and ``δ = 0`` is exact) the quadratic surrogate predicted false gains of 0.6-1.8% of
the scale with one BLAS thread, and 0.2% let three of five move to payoffs needing 2.7-3.9% of
``v(N)``; the gains that were real were larger (weighted voting n = 40 with 1,200 calls: 2.4%
and 4.6%; n = 16, 18 with 150 calls: 20-110%). The margin is thin: with two BLAS threads (the
fit's last digits depend on the summation order) glove(18, 22)'s false gain is 2.04% and it
still moves."""

ASCENT_STARTS = 64
"""Random starts (of uniformly random size) of the surrogate ascent, besides the evaluated
coalitions of largest excess."""


@dataclass(frozen=True)
class PayoffChoice:
    """What :func:`robust_payoff` compared (normalised units, like the solver's).

    Attributes:
        delta: the level relaxation chosen (``0.0``: the restricted least core's point).
        predicted: predicted requirement of each level tried, ``{delta: requirement}``.
    """

    delta: float
    predicted: dict[float, float]


def _orders(x: npt.NDArray[np.float64], a: npt.NDArray[np.float64]) -> list[npt.NDArray[np.intp]]:
    """Players by largest ``a_i - x_i``, by smallest ``x_i`` and by smallest ``x_i / a_i``
    (``a_i <= 0`` last): the prefixes that :func:`predicted_requirement` and
    :func:`prefix_probes` look at."""
    ratio = np.where(a > 0, x / np.maximum(a, 1e-300), np.inf)
    return [np.argsort(key, kind="stable") for key in (x - a, x, ratio)]


def known_excesses(
    x: npt.NDArray[np.float64], masks: list[int], values: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """``v(S) - x(S)`` over the evaluated coalitions ``masks`` (values shape ``(R,)``)."""
    return values - incidence(masks, x.shape[0]) @ x


def predicted_requirement(
    x: npt.NDArray[np.float64],
    masks: list[int],
    values: npt.NDArray[np.float64],
    surrogate: Surrogate,
    rng: np.random.Generator,
) -> float:
    """``max(max_{S evaluated} v(S) - x(S), max_S clip(v̂(S)) - x(S))`` for a payoff ``x``
    (shape ``(n,)``), ``v̂`` clipped to the range of the values seen (a linear surrogate
    extrapolates past it: on weighted voting it predicts ``v̂ > 1`` for large coalitions).
    Without pairwise terms the surrogate's maximum is taken per size over the players of largest
    ``a_i - x_i``, the cheapest and the cheapest per unit of ``a_i``; with them, over the
    steepest-ascent local maxima from the evaluated coalitions of largest excess and
    ``ASCENT_STARTS`` random ones."""
    n = x.shape[0]
    known_ex = known_excesses(x, masks, values)
    best = float(known_ex.max()) if known_ex.size else -np.inf
    if n < 2 or not values.size:
        return best
    lo, hi = float(values.min()), float(values.max())
    if not surrogate.pairwise:
        # per size k, the first k players of three orders: largest a_i - x_i (the unclipped
        # maximiser), smallest x_i and smallest x_i / a_i (cheap coalitions, which win once v̂
        # reaches the clip: a threshold game's blocking coalitions)
        for order in _orders(x, surrogate.a):
            best = max(best, float(_prefix_excesses(x, surrogate, order, lo, hi).max()))
        return best
    top = [masks[i] for i in np.argsort(-known_ex, kind="stable")[:32].tolist()]
    starts = top + [
        int(sum(1 << int(i) for i in rng.choice(n, int(rng.integers(1, n)), replace=False)))
        for _ in range(ASCENT_STARTS)
    ]
    ends = top_by_ascent(surrogate, x, len(starts), set(), starts)
    if ends:
        pred = np.clip(surrogate.predict(ends), lo, hi)
        best = max(best, float((pred - incidence(ends, n) @ x).max()))
    return best


def prefix_predictions(
    x: npt.NDArray[np.float64], surrogate: Surrogate, order: npt.NDArray[np.intp]
) -> npt.NDArray[np.float64]:
    """``v̂`` of the prefixes of ``order``: entry ``k - 1`` is the surrogate's value of the first
    ``k`` players, ``k = 1 .. n - 1`` (shape ``(n - 1,)``; pairwise terms included)."""
    n = x.shape[0]
    pred = surrogate.intercept + np.cumsum(surrogate.a[order])[: n - 1]
    if surrogate.pairwise:
        sym = surrogate.b + surrogate.b.T
        # the pair terms player k adds to the first k - 1: row k of the lower triangle
        pred = pred + np.cumsum(np.tril(sym[np.ix_(order, order)], -1).sum(axis=1))[: n - 1]
    if surrogate.g is not None:
        pred = pred + surrogate.g[1:n]
    return np.asarray(pred, dtype=np.float64)


def _prefix_excesses(
    x: npt.NDArray[np.float64],
    surrogate: Surrogate,
    order: npt.NDArray[np.intp],
    lo: float,
    hi: float,
) -> npt.NDArray[np.float64]:
    """``clip(v̂, lo, hi) - x`` of the prefixes of ``order`` (entry ``k - 1``: the first ``k``
    players, ``k = 1 .. n - 1``)."""
    pred = np.clip(prefix_predictions(x, surrogate, order), lo, hi)
    return np.asarray(pred - np.cumsum(x[order])[: x.shape[0] - 1], dtype=np.float64)


def prefix_probes(
    x: npt.NDArray[np.float64],
    surrogate: Surrogate,
    sizes: int,
    clip: tuple[float, float] | None = None,
) -> list[int]:
    """Coalitions worth paying for to test a payoff ``x`` (shape ``(n,)``): prefixes (the first
    ``k`` players) of three orders: largest ``a_i - x_i`` (the surrogate's best), smallest
    ``x_i`` and smallest ``x_i / a_i`` (the cheapest coalitions; a threshold game's blocking
    coalitions are among them). Each order gets ``sizes`` sizes ``k``: the one where the
    surrogate predicts the largest excess ``clip(v̂) - x`` along it (``clip``: the range of the
    values seen, as in :func:`predicted_requirement`), then sizes spread geometrically over
    ``1 .. n - 1``. The predicted size matters where the excess peaks in the middle: the
    blocking coalitions of majority(101) have 51 players, which a geometric grid of 5 sizes
    (1, 3, 10, 32, 100) never probes (its payoff needed 0.807 of ``v(N)`` and was kept; e* =
    0.495). Distinct masks, the orders interleaved size by size."""
    n = x.shape[0]
    if n < 3 or sizes < 1:
        return []
    lo, hi = clip if clip is not None else (-np.inf, np.inf)
    grid = np.unique(np.geomspace(1, n - 1, sizes).round().astype(int)).tolist()
    per_order: list[list[int]] = []
    for order in _orders(x, surrogate.a):
        peak = int(np.argmax(_prefix_excesses(x, surrogate, order, lo, hi))) + 1
        ks = list(dict.fromkeys([peak, *grid]))[: len(grid)]
        bits = np.cumsum(np.array([1 << int(i) for i in order], dtype=object)).tolist()
        per_order.append([int(bits[k - 1]) for k in ks])
    out: list[int] = []
    for j in range(max(len(p) for p in per_order)):
        for masks in per_order:
            if j < len(masks) and masks[j] not in out:
                out.append(masks[j])
    return out


def robust_payoff(
    x0: npt.NDArray[np.float64],
    at_level: Callable[[float], npt.NDArray[np.float64] | None],
    masks: list[int],
    values: npt.NDArray[np.float64],
    surrogate: Surrogate,
    scale: float,
    seed: int,
    probe: Callable[[npt.NDArray[np.float64], Surrogate], float] | None = None,
) -> tuple[npt.NDArray[np.float64], PayoffChoice]:
    """The payoff of lowest predicted requirement among ``x0`` and the relaxed-level points.

    Args:
        x0: the restricted least core's tie-broken payoff (``δ = 0``), shape ``(n,)``.
        at_level: ``δ ↦`` the minimum-norm payoff at the restricted optimum plus ``δ`` (``None``
            when it cannot be computed: that level is skipped).
        masks, values: the evaluated proper coalitions and their (normalised) values.
        surrogate: fitted on them (:class:`~coreopt.game.separation.Surrogate`).
        scale: the value scale ``max(1, max |v|)``.
        seed: seeds the ascent's random starts (same answer on any machine).
        probe: ``(x, surrogate) ↦`` the largest TRUE excess of ``x`` over a few coalitions paid
            for now (:func:`prefix_probes` of ``surrogate``, the one given here), or ``None``:
            then only ``δ = 0``, the level of lowest predicted requirement and the largest level
            computed are candidates, and each one's requirement is the larger of the prediction
            and the probe (real calls can show what the surrogate misses: a threshold game's
            cheap blocking coalitions). For a surrogate without pairwise terms (the ``"size"``
            one the solver fits above 60 players) each candidate's requirement is only what real
            coalitions show (the evaluated ones and the probe's): a relaxed level must beat
            evidence paid for, and is judged on it too, not on that surrogate's prediction,
            whose excesses on glove games (n = 80, 100) no coalition had and moved exact
            payoffs, and which overstated the relaxed points of majority(101) (0.56-0.80 of
            ``v(N)`` predicted where they need 0.495; benchmarks/RESULTS.md). The probe aims at
            the size where the surrogate predicts the largest excess along each order, so even
            a probe of one size tests the coalitions that matter.

    Returns:
        ``(x, choice)``: ``x0`` itself unless a relaxed level's requirement is lower by more
        than ``MIN_GAIN · scale``.
    """
    rng_seed = np.random.SeedSequence(seed)

    def predict(x: npt.NDArray[np.float64]) -> float:
        # the same random starts for every level: the levels are compared on equal terms
        return predicted_requirement(x, masks, values, surrogate, np.random.default_rng(rng_seed))

    points = {0.0: x0}
    predicted = {0.0: predict(x0)}
    for rel in RELAXED_LEVELS:
        d = rel * scale
        x = at_level(d)
        if x is not None:
            points[d], predicted[d] = x, predict(x)
    judged = dict(predicted)
    candidates = list(points)
    if probe is not None:
        lowest = min((d for d in points if d > 0), key=lambda d: predicted[d], default=None)
        candidates = list(
            dict.fromkeys([0.0, *([lowest] if lowest is not None else []), max(points)])
        )
        for d in candidates:
            shown = probe(points[d], surrogate)
            if not surrogate.pairwise:
                known = known_excesses(points[d], masks, values)
                judged[d] = max(float(known.max()) if known.size else -np.inf, shown)
            else:
                judged[d] = max(predicted[d], shown)
    best_d = 0.0
    best = judged[0.0] - MIN_GAIN * scale  # a relaxed level must beat δ = 0 by this margin
    for d in candidates:
        if d > 0 and judged[d] < best:
            best_d, best = d, judged[d]
    return points[best_d], PayoffChoice(best_d, judged)
