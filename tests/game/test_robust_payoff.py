"""Approximate mode's payoff chosen against predicted excesses (coreopt.game.robust)."""

import sys
from pathlib import Path

import numpy as np
import pytest

import coreopt
from coreopt.game import LeastCoreConfig, games
from coreopt.game.coalitions import subset_sums
from coreopt.game.robust import (
    MIN_GAIN,
    predicted_requirement,
    prefix_predictions,
    prefix_probes,
    robust_payoff,
)
from coreopt.game.separation import Surrogate

# the exact audits by sorting that the scarce-budget benchmark table uses (independent of the
# solver: they enumerate the cheapest coalition of each size, or of each glove count)
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
try:
    from _least_core_large import glove_requirement, majority_requirement
finally:
    sys.path.pop(0)


def true_requirement(game: games.Game, x: np.ndarray) -> float:
    return float((game.table() - subset_sums(x))[1:-1].max())


def brute_predicted(s: Surrogate, x: np.ndarray, lo: float, hi: float) -> float:
    n = x.shape[0]
    best = -np.inf
    for m in range(1, (1 << n) - 1):
        z = np.array([(m >> i) & 1 for i in range(n)], dtype=float)
        v = s.intercept + z @ s.a + z @ np.triu(s.b, 1) @ z
        if s.g is not None:
            v += s.g[int(z.sum())]
        best = max(best, float(np.clip(v, lo, hi) - z @ x))
    return best


def test_predicted_requirement_is_exact_without_pairs_when_the_clip_is_loose() -> None:
    rng = np.random.default_rng(0)
    n = 10
    s = Surrogate(0.3, rng.normal(size=n), np.zeros((n, n)), np.cumsum(rng.normal(size=n + 1)))
    x = rng.normal(size=n)
    masks = [1, 2, 3]
    values = np.array([-100.0, 0.0, 100.0])  # clip range wide: never binds
    got = predicted_requirement(x, masks, values, s, np.random.default_rng(0))
    ref = max(brute_predicted(s, x, -100.0, 100.0), float((values - subset_sums(x)[masks]).max()))
    assert got == pytest.approx(ref, abs=1e-12)


def test_predicted_requirement_clips_to_the_values_seen() -> None:
    # a threshold game's linear fit extrapolates past v = 1; the clip stops it
    n = 8
    s = Surrogate(0.0, np.full(n, 0.4), np.zeros((n, n)), np.zeros(n + 1))
    x = np.full(n, 0.1)
    values = np.array([0.0, 1.0])
    got = predicted_requirement(x, [1, 0b1111], values, s, np.random.default_rng(0))
    assert got == pytest.approx(brute_predicted(s, x, 0.0, 1.0), abs=1e-12)
    assert got == pytest.approx(1.0 - 3 * 0.1)  # three players reach the clip


def test_predicted_requirement_with_pairs_is_a_surrogate_local_maximum() -> None:
    rng = np.random.default_rng(1)
    n = 9
    s = Surrogate(0.0, rng.normal(size=n), np.triu(rng.normal(size=(n, n)) * 0.3, 1), None)
    x = rng.normal(size=n) * 0.2
    values = np.array([-50.0, 50.0])
    x[2] = 100.0  # the known rows (both hold player 2) have low excess; the clip never binds
    got = predicted_requirement(x, [5, 6], values, s, np.random.default_rng(0))
    known = float((values - subset_sums(x)[[5, 6]]).max())
    ref = max(brute_predicted(s, x, -50.0, 50.0), known)
    assert ref > known  # the surrogate's maximum decides
    assert got <= ref + 1e-12
    assert got >= ref - 1e-9  # 64 random starts find the maximum at n = 9


def _flat_surrogate(n: int) -> Surrogate:
    return Surrogate(0.0, np.zeros(n), np.zeros((n, n)), None)


def test_robust_payoff_keeps_x0_unless_a_level_is_predicted_clearly_lower() -> None:
    n = 4
    s = _flat_surrogate(n)  # predicted requirement = the largest known excess
    masks = [0b0001, 0b0010]
    values = np.array([1.0, 1.0])
    x0 = np.array([0.0, 1.0, 0.5, 0.5])  # requirement 1.0 on {0}
    better = np.array([0.5, 0.5, 0.5, 0.5])  # requirement 0.5
    tried: list[float] = []

    def at_level(d: float) -> np.ndarray | None:
        tried.append(d)
        return better if d >= 0.05 else None  # lower levels "fail": skipped

    x, choice = robust_payoff(x0, at_level, masks, values, s, scale=1.0, seed=0)
    assert choice.delta == pytest.approx(0.05)
    np.testing.assert_array_equal(x, better)
    assert choice.predicted[0.0] == pytest.approx(1.0)
    assert choice.predicted[0.05] == pytest.approx(0.5)
    assert 0.005 in tried
    assert 0.005 not in choice.predicted

    # a gain below MIN_GAIN keeps the restricted point
    close = x0 + np.array([MIN_GAIN / 2, -MIN_GAIN / 2, 0.0, 0.0])
    x, choice = robust_payoff(x0, lambda d: close, masks, values, s, scale=1.0, seed=0)
    assert choice.delta == 0.0
    np.testing.assert_array_equal(x, x0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scarce_budget_payoff_needs_less_than_the_restricted_least_core_point(seed: int) -> None:
    # weighted voting n = 18 with 150 calls (8 per player): the restricted least core's point
    # swings on the players the rows say little about; measured 1.24-1.77 of v(N) without the
    # robust choice, 0.66-0.67 with it (the equal split needs about 0.67)
    n = 18
    game = games.random_weighted_voting(n, seed)
    on = coreopt.least_core(game, n, budget=150, mode="approximate", progress=False)
    off = coreopt.least_core(
        game, n, budget=150, mode="approximate", progress=False, robust_payoff=False
    )
    assert on.relaxation > 0
    assert off.relaxation == 0.0
    need_on, need_off = true_requirement(game, on.x), true_requirement(game, off.x)
    assert need_on < 0.7 < 1.2 < need_off
    # the reported requirement over the evaluated coalitions is the payoff's own
    assert on.epsilon_upper >= on.epsilon
    assert on.epsilon_upper <= need_on + 1e-9
    assert "level relaxed by" in on.summary()


def test_well_pinned_payoff_is_left_alone_by_default() -> None:
    # 600 calls at n = 18 (33 per player): above the threshold, the restricted point is returned
    game = games.random_weighted_voting(18, 1)
    res = coreopt.least_core(game, 18, budget=600, mode="approximate", progress=False)
    assert res.relaxation == 0.0


def test_robust_payoff_option_is_type_checked() -> None:
    with pytest.raises(TypeError, match="robust_payoff"):
        LeastCoreConfig(robust_payoff="yes")  # type: ignore[arg-type]


def test_a_real_probe_overrules_the_prediction() -> None:
    # the surrogate sees nothing wrong with x0; a paid-for coalition shows it needs 2.0
    n = 4
    s = _flat_surrogate(n)
    masks, values = [0b0001], np.array([0.0])
    x0 = np.full(n, 0.5)
    relaxed = np.zeros(n)

    def probe(x: np.ndarray, surrogate: Surrogate) -> float:
        assert surrogate is s  # the surrogate of the predictions, not a refit
        return 2.0 if x is x0 else 0.1

    x, choice = robust_payoff(x0, lambda d: relaxed, masks, values, s, 1.0, 0, probe=probe)
    np.testing.assert_array_equal(x, relaxed)
    assert choice.predicted[0.0] == pytest.approx(2.0)
    # without the probe the prediction keeps x0 (every level predicts the same)
    x, choice = robust_payoff(x0, lambda d: relaxed, masks, values, s, 1.0, 0)
    np.testing.assert_array_equal(x, x0)


def test_prefix_probes_are_prefixes_of_the_three_orders() -> None:
    n = 6
    s = Surrogate(0.0, np.array([1.0, 2.0, 3.0, 0.5, 1.0, 4.0]), np.zeros((n, n)), None)
    x = np.array([0.6, 0.5, 3.5, 0.1, 0.9, 1.0])
    got = prefix_probes(x, s, sizes=5)
    orders = [np.argsort(x - s.a, kind="stable"), np.argsort(x, kind="stable")]
    orders.append(np.argsort(x / s.a, kind="stable"))
    want = {sum(1 << int(i) for i in o[:k]) for o in orders for k in range(1, n)}
    assert set(got) <= want
    assert len(got) == len(set(got))
    assert 1 << 3 in got  # the cheapest player alone
    assert (1 << 5) | (1 << 1) in got  # the two largest a_i - x_i


def test_size_surrogate_prediction_alone_does_not_move_the_restricted_point() -> None:
    # a surrogate without pairs predicts v = 1 everywhere: x0 "needs" 1.0 (on {0}), the relaxed
    # point 0.75; the evaluated rows and the probe show x0 needs only 0.2: x0 is kept
    n = 4
    s = Surrogate(1.0, np.zeros(n), np.zeros((n, n)), None)
    masks, values = [0b0001, 0b1000], np.array([0.2, 1.0])
    x0 = np.array([0.0, 0.0, 0.0, 1.0])
    relaxed = np.full(n, 0.25)

    def probe(x: np.ndarray, surrogate: Surrogate) -> float:
        return 0.1

    kept, choice = robust_payoff(x0, lambda d: relaxed, masks, values, s, 1.0, 0, probe=probe)
    np.testing.assert_array_equal(kept, x0)
    assert choice.predicted[0.0] == pytest.approx(0.2)
    # the same prediction from a pairwise (quadratic) surrogate is trusted: x0 moves
    b = np.zeros((n, n))
    b[0, 1] = 1e-6
    pair = Surrogate(1.0, np.zeros(n), b, None)
    moved, choice = robust_payoff(x0, lambda d: relaxed, masks, values, pair, 1.0, 0, probe=probe)
    np.testing.assert_array_equal(moved, relaxed)
    assert choice.predicted[0.0] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("left", "right", "per_player"),
    [pytest.param(45, 55, 30, marks=pytest.mark.slow), (35, 45, 30), (35, 45, 10), (12, 18, 30)],
)
def test_glove_payoff_is_not_relaxed_on_a_false_alarm(
    left: int, right: int, per_player: int
) -> None:
    # e* = 0 and the restricted least core's point is exact. n = 80, 100 (the size surrogate):
    # its predicted excesses, which no coalition has, moved the payoff to one needing 0.93-1.29
    # (sampled search) when the prediction was trusted; n = 30 (the quadratic surrogate): a false
    # predicted gain of 1.3% of the scale moved it to one needing 0.47 with MIN_GAIN 0.2%
    n = left + right
    res = coreopt.least_core(
        games.glove(left, right), n, budget=per_player * n, mode="approximate", progress=False
    )
    assert res.relaxation == 0.0
    assert glove_requirement(left, res.x) < 1e-6


def voting_requirement(w: np.ndarray, quota: float, x: np.ndarray) -> float:
    """Exact ``max over proper S of v(S) - x(S)`` of a weighted voting game with integer
    weights: the cheapest coalition of each total weight by dynamic programming."""
    total = int(w.sum())
    cheapest = np.full(total + 1, np.inf)
    cheapest[0] = 0.0
    for wi, xi in zip(w.astype(int), x, strict=True):
        cheapest[wi:] = np.minimum(cheapest[wi:], cheapest[: total + 1 - wi] + xi)
    weights = np.arange(1, total)  # only the empty set weighs 0 and only N weighs the total
    return float(((weights >= quota).astype(float) - cheapest[1:total]).max())


def test_voting_requirement_audit_matches_enumeration() -> None:
    n = 10
    game = games.random_weighted_voting(n, 3)
    w, q = games.random_voting_weights(n, 3)
    x = np.random.default_rng(0).normal(0.1, 0.05, n)
    assert voting_requirement(w, q, x) == pytest.approx(true_requirement(game, x))


@pytest.mark.slow
def test_voting_above_the_quadratic_surrogate_is_pinned_by_uniform_probes() -> None:
    # n = 80, 3,000 calls: 0.534-0.542 of v(N) with mostly uniform probes (e* ≈ 0.498),
    # 0.616-0.628 with 32 surrogate candidates and 32 probes a round
    n = 80
    w, q = games.random_voting_weights(n, 1)
    res = coreopt.least_core(
        games.random_weighted_voting(n, 1), n, budget=3000, mode="approximate", progress=False
    )
    assert res.value_calls <= 3000
    assert voting_requirement(w, q, res.x) < 0.58


@pytest.mark.parametrize("budget", [300, 600, 1000])
def test_majority_payoff_is_tested_where_its_blocking_coalitions_are(budget: int) -> None:
    # majority(101): the blocking coalitions have 51 players. The judge's probe used to look at
    # geometric prefix sizes only (1, 3, 10, 32, 100 with 1,000 calls) and saw nothing of the
    # restricted point, which needed 0.807 of v(N); with 600 calls the relaxed levels were judged
    # on the size surrogate's prediction, which overstates them, and a small one needing 0.626
    # won. 300 calls (one size): the restricted point needed 3.29 on evidence alone before the
    # probe aimed at the predicted peak. Every run must return e* = 1 - 51/101 (the equal split)
    n = 101
    res = coreopt.least_core(
        games.majority(n), n, budget=budget, mode="approximate", progress=False
    )
    need = majority_requirement(res.x)  # by sorting: exact
    assert res.value_calls <= budget
    assert need == pytest.approx(1 - 51 / 101, abs=1e-6)


def test_prefix_probes_test_the_predicted_peak() -> None:
    # a threshold-like surrogate: v̂ jumps from 0 to 1 at 5 of 9 players (g), every player alike;
    # the excess along the cheapest-first order peaks at k = 5, which a geometric grid of two
    # sizes (1 and 8) misses
    n = 9
    g = np.array([0.0] * 5 + [1.0] * 5)
    s = Surrogate(0.0, np.zeros(n), np.zeros((n, n)), g)
    x = np.linspace(0.05, 0.2, n)
    got = prefix_probes(x, s, sizes=2, clip=(0.0, 1.0))
    assert 0b11111 in got  # the five cheapest players
    assert prefix_probes(x, s, sizes=1, clip=(0.0, 1.0)) == [0b11111]


def test_prefix_predictions_match_the_surrogate_on_each_prefix() -> None:
    rng = np.random.default_rng(3)
    n = 7
    s = Surrogate(
        0.3, rng.normal(size=n), np.triu(rng.normal(size=(n, n)), 1), rng.normal(size=n + 1)
    )
    order = rng.permutation(n)
    prefixes = [sum(1 << int(i) for i in order[:k]) for k in range(1, n)]
    got = prefix_predictions(np.zeros(n), s, order)
    np.testing.assert_allclose(got, s.predict(np.array(prefixes, dtype=np.int64)), rtol=1e-12)
