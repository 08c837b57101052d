"""Exact least core on games with closed-form answers (derived in coreopt.game.games), and LP
certificates."""

import math

import numpy as np
import pytest

from coreopt.game import InfeasibleGameError, LeastCoreConfig, exact_least_core, games
from coreopt.game.coalitions import incidence, subset_sums

# The LP is solved by HiGHS's dual simplex to feasibility 1e-10; answers on well-scaled games are
# exact to ~1e-12, so 1e-9 is a safe bound that still catches any modelling error.
TOL = 1e-9

KNOWN = [
    games.glove(1, 1),
    games.glove(2, 2),
    games.glove(3, 3),
    games.majority(3),
    games.majority(6),
    games.majority(9),
    games.unanimity(4),
    games.unanimity(7),
    games.additive([1.0, 2.0, -0.5, 3.0]),
    games.miner(6),
    games.symmetric(lambda s: s**1.5, 7),
    games.symmetric(lambda s: math.log1p(s), 9),
]


@pytest.mark.parametrize("game", KNOWN, ids=lambda g: g.name)
def test_known_least_core_values(game: games.Game) -> None:
    res = exact_least_core(game, tie_break=None)
    assert game.epsilon is not None
    assert res.epsilon == pytest.approx(game.epsilon, abs=TOL)
    assert res.exact
    assert res.value_calls == 0
    # the returned payoff is efficient and meets every proper coalition within epsilon
    table = game.table()
    assert res.x.sum() == pytest.approx(table[-1], abs=TOL)
    excess = table - subset_sums(res.x)
    assert excess[1:-1].max() <= res.epsilon + TOL
    assert res.epsilon_upper == pytest.approx(res.epsilon, abs=TOL)
    if game.payoff_unique:
        np.testing.assert_allclose(res.x, game.payoff, atol=1e-8)


@pytest.mark.parametrize("game", [g for g in KNOWN if g.payoff is not None], ids=lambda g: g.name)
@pytest.mark.parametrize("rule", ["egalitarian", "nucleolus"])
def test_tie_breaks_pick_the_closed_form_point(game: games.Game, rule: str) -> None:
    # Every game here with a closed-form payoff has it as its egalitarian and nucleolus point:
    # unique least cores trivially; symmetric games because both rules pick a unique point that
    # the symmetry must fix (the equal split); glove(k, k) and miner(6): see the test below.
    assert game.payoff is not None
    res = exact_least_core(game, tie_break=rule)
    np.testing.assert_allclose(res.x, game.payoff, atol=1e-5)


@pytest.mark.parametrize(
    ("game", "split"),
    [(games.glove(2, 2), 0.5), (games.glove(3, 3), 0.5), (games.miner(6), 0.5)],
    ids=lambda g: getattr(g, "name", ""),
)
@pytest.mark.parametrize("rule", ["egalitarian", "nucleolus"])
def test_balanced_glove_and_miner_get_the_equal_split(
    game: games.Game, split: float, rule: str
) -> None:
    # Derived by hand, independently of games.py: in glove(k, k) every left-right pair has
    # v = 1, and summing the pairs of a perfect matching gives x(N) = k >= k (1 - e), so e* = 0
    # and every pair is tight: x_L + x_R = 1 for all pairs forces x = (t,..,t, 1-t,..,1-t). The
    # singletons' excesses are -t and -(1 - t): the nucleolus maximises min(t, 1 - t), and the
    # minimum norm point minimises k t^2 + k (1 - t)^2: both give t = 1/2. In miner(6)
    # (v(S) = floor(|S| / 2)) the same matching argument gives e* = 0 with x_i + x_j = 1 for all
    # pairs, whose only solution is x_i = 1/2.
    n = game.players.n
    res = exact_least_core(game, tie_break=rule)
    np.testing.assert_allclose(res.x, np.full(n, split), atol=1e-7)
    assert res.epsilon == pytest.approx(0.0, abs=TOL)
    # brute force: the equal split's requirement over every proper coalition is e* = 0
    assert (game.table() - subset_sums(np.full(n, split)))[1:-1].max() == pytest.approx(0.0)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("family", ["coverage", "pairwise", "voting"])
def test_generation_matches_the_full_lp(family: str, seed: int) -> None:
    game = games.BENCHMARK_FAMILIES[family](9, seed)
    fast = exact_least_core(game, tie_break=None)
    full = exact_least_core(game, tie_break=None, method="full")
    assert fast.epsilon == pytest.approx(full.epsilon, abs=TOL)


def test_certificate_duals_form_a_balancing_collection() -> None:
    # LP duality: sum of dual weights on coalition rows is 1 (e is free), and
    # e* = sum_S y_S v(S) - (sum_S y_S |S| / n)... checked through complementary slackness.
    game = games.pairwise(8, seed=3)
    res = exact_least_core(game, tie_break=None)
    table = game.table()
    masks = np.array([game.players.mask(c) for c in res.tight])
    assert res.duals.sum() == pytest.approx(1.0, abs=1e-9)
    assert np.all(res.duals > 0)
    # complementary slackness: every coalition with positive weight is tight
    np.testing.assert_allclose(table[masks] - incidence(masks, 8) @ res.x, res.epsilon, atol=1e-9)
    # dual feasibility: sum_S y_S 1_S is constant across players (the grand row's multiplier)
    weights = res.duals @ incidence(masks, 8)
    np.testing.assert_allclose(weights, weights[0], atol=1e-9)


def test_scaling_and_permutation_properties() -> None:
    game = games.pairwise(7, seed=1)
    table = game.table()
    base = exact_least_core(table, tie_break="nucleolus")
    scaled = exact_least_core(3.0 * table, tie_break="nucleolus")
    assert scaled.epsilon == pytest.approx(3 * base.epsilon, abs=1e-9)
    np.testing.assert_allclose(scaled.x, 3 * base.x, atol=1e-8)
    # relabel: new player j is old player perm[j]; the (unique) nucleolus permutes with them
    perm = np.array([3, 0, 6, 1, 5, 2, 4])
    inc = incidence(np.arange(1 << 7), 7)  # rows: new masks
    old_masks = (inc * (1 << perm)).sum(1).astype(np.int64)
    permuted = exact_least_core(table[old_masks], tie_break="nucleolus")
    assert permuted.epsilon == pytest.approx(base.epsilon, abs=1e-9)
    np.testing.assert_allclose(permuted.x, base.x[perm], atol=1e-7)


def test_egalitarian_matches_cvxpy_reference() -> None:
    cp = pytest.importorskip("cvxpy")
    game = games.coverage(8, seed=2)
    table = game.table()
    res = exact_least_core(table, tie_break="egalitarian")
    level = res.epsilon + LeastCoreConfig().tie_slack * max(1.0, np.abs(table).max())
    x = cp.Variable(8)
    A = incidence(np.arange(1, 255), 8)
    cp.Problem(
        cp.Minimize(cp.sum_squares(x)), [A @ x >= table[1:255] - level, cp.sum(x) == table[255]]
    ).solve(solver=cp.CLARABEL)
    # interior-point reference accurate to ~1e-7; ours is polished to ~1e-12
    np.testing.assert_allclose(res.x, x.value, atol=1e-6)


def test_nucleolus_is_lexicographically_best() -> None:
    game = games.pairwise(6, seed=4)
    table = game.table()
    nuc = exact_least_core(table, tie_break="nucleolus")
    assert nuc.levels == sorted(nuc.levels, reverse=True)

    def sorted_excess(x: np.ndarray) -> np.ndarray:
        return np.sort((table - subset_sums(x))[1:-1])[::-1]

    ref = sorted_excess(nuc.x)
    rng = np.random.default_rng(0)
    others = [exact_least_core(table, tie_break=t).x for t in (None, "egalitarian")]
    others += [nuc.x + 1e-3 * (d - d.mean()) for d in rng.normal(size=(50, 6))]
    for x in others:
        diff = sorted_excess(x) - ref
        first = diff[np.abs(diff) > 1e-9]
        assert first.size == 0 or first[0] > 0  # no point beats the nucleolus lexicographically


def test_known_nucleoli() -> None:
    np.testing.assert_allclose(
        exact_least_core(games.glove(1, 2), tie_break="nucleolus").x, [1, 0, 0], atol=1e-9
    )
    vote = games.weighted_voting([4, 3, 2, 1], quota=6)
    np.testing.assert_allclose(
        exact_least_core(vote, tie_break="nucleolus").x, [1 / 3, 1 / 3, 1 / 3, 0], atol=1e-9
    )


def test_conventions() -> None:
    unanimity = games.unanimity(4)
    # all coalitions: the grand row forces e >= 0
    assert exact_least_core(unanimity, proper=False).epsilon == pytest.approx(0.0, abs=TOL)
    # nonnegative payments bind when the unconstrained least core pays someone a negative amount
    table = np.array([0, 5, 0, 1, 0, 0, 0, 1.0])  # v({0}) = 5 > v(N) = 1
    free = exact_least_core(table, tie_break=None)
    assert free.x.min() < 0
    nonneg = exact_least_core(table, nonnegative=True, tie_break=None)
    assert nonneg.x.min() >= -TOL
    assert nonneg.epsilon >= free.epsilon - TOL
    # imputations infeasible: sum of singletons exceeds v(N)
    with pytest.raises(InfeasibleGameError, match="infeasible"):
        exact_least_core(table, imputation=True)
    # normalisation subtracts v(empty)
    shifted = games.glove(1, 1).table() + 2.0
    assert exact_least_core(shifted, normalize=True).epsilon == pytest.approx(-0.5, abs=TOL)


def test_bad_tables() -> None:
    with pytest.raises(ValueError, match="2\\*\\*n"):
        exact_least_core(np.zeros(6))
    with pytest.raises(ValueError, match="non-finite"):
        exact_least_core(np.array([0, 1, np.nan, 1.0]))
    with pytest.raises(ValueError, match="players"):
        exact_least_core(np.zeros(8), players=["a", "b"])


@pytest.mark.slow
def test_n20_table_is_fast_and_exact() -> None:
    game = games.pairwise(20, seed=0)
    res = exact_least_core(game, tie_break=None)
    excess = game.table() - subset_sums(res.x)
    assert excess[1:-1].max() == pytest.approx(res.epsilon, abs=1e-9)
