"""Approximate mode beyond 62 players (Python-int coalitions), audited independently, and
reproducibility (the same game, budget and seed give bit-identical payoffs)."""

import numpy as np
import pytest

import coreopt
from coreopt.game import games, vectorized
from coreopt.game.coalitions import incidence


def _symmetric_requirement(f: np.ndarray, x: np.ndarray) -> float:
    """``max over proper S of f(|S|) - x(S)`` by sorting: for each size s the worst coalition is
    the s players paid least (independent of the library's separation)."""
    n = x.shape[0]
    cheapest = np.cumsum(np.sort(x))[: n - 1]
    return float(np.max(f[1:n] - cheapest))


@pytest.mark.parametrize("n", [100, pytest.param(200, marks=pytest.mark.slow)])
def test_additive_game_beyond_64_players_pays_each_its_weight(n: int) -> None:
    # e* = 0 and the unique least-core point is x = a (additive game): the singletons and the
    # efficiency row pin it, whatever the separation does (up to the tie-break's slack, 1e-10
    # of the scale per coalition, spread over n players)
    a = np.random.default_rng(n).random(n)
    game = games.additive(a.tolist())
    res = coreopt.least_core(game, n, budget=2 * n + 50, mode="approximate", progress=False)
    assert res.value_calls <= 2 * n + 50
    np.testing.assert_allclose(res.x, a, rtol=0, atol=1e-7)
    assert abs(res.epsilon) <= 1e-9
    assert set(res.payoff) == set(range(n))


def test_symmetric_game_at_101_players_is_audited_over_every_coalition() -> None:
    # majority(101): v(S) = 1 iff |S| >= 51; e* = 1 - 51/101 with the equal split
    n = 101
    game = games.majority(n)
    f = np.array([float(s >= 51) for s in range(n + 1)])
    res = coreopt.least_core(game, n, budget=600, mode="approximate", progress=False)
    assert res.value_calls <= 600
    e_star = 1 - 51 / 101
    truth = _symmetric_requirement(f, res.x)
    assert res.epsilon <= e_star + 1e-9  # a certified lower bound
    assert res.epsilon_upper <= truth + 1e-9  # the evaluated coalitions: a lower bound on truth
    # the payoff's quality is NOT asserted here: with 600 calls it needs 0.626 against
    # e* = 0.495 (0.495 with 300 and 1,500 calls; see RESULTS.md, session 6)
    assert truth >= e_star - 1e-9
    assert abs(res.x.sum() - 1.0) <= 1e-9


def test_vectorized_masks_beyond_62_players_are_python_ints() -> None:
    n = 70
    seen: list[type] = []

    def count(masks: np.ndarray) -> np.ndarray:
        seen.append(type(masks[0]))
        assert masks.dtype == object
        return incidence(masks, n).sum(axis=1) ** 1.5

    res = coreopt.least_core(
        vectorized(count, form="masks"), n, budget=400, mode="approximate", progress=False
    )
    assert res.value_calls <= 400
    assert seen
    assert all(t is int for t in seen)


@pytest.mark.parametrize("family", ["coverage", "voting"])
def test_same_game_budget_and_seed_give_bit_identical_payoffs(family: str) -> None:
    # n = 40: the MILP-free separation (surrogate ascent) and HiGHS with one thread; no limit in
    # seconds anywhere, so two runs agree to the last bit whatever the machine's load
    game = games.BENCHMARK_FAMILIES[family](40, 0)
    runs = [
        coreopt.least_core(game, 40, budget=300, mode="approximate", progress=False, seed=3)
        for _ in range(2)
    ]
    assert runs[0].value_calls == runs[1].value_calls
    assert np.array_equal(runs[0].x, runs[1].x)
    assert runs[0].epsilon == runs[1].epsilon
