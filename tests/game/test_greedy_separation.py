"""Issue 17, item 5: the true-excess local search (``greedy_paths``) aimed at the round's payoff,
checked against enumeration of the game's full table (never against the solver's own report)."""

import numpy as np
import pytest

import coreopt
from coreopt.game import games
from coreopt.game.coalitions import all_masks, incidence
from coreopt.game.separation import fit_surrogate, greedy_paths


def _excess(table: np.ndarray, x: np.ndarray, m: int, n: int) -> float:
    return float(table[m] - sum(x[i] for i in range(n) if (m >> i) & 1))


@pytest.mark.parametrize("with_surrogate", [False, True])
def test_greedy_paths_end_at_local_maxima_of_the_true_excess(with_surrogate: bool) -> None:
    # every addition is evaluated (per_step = n) and every removal is: each end point must be a
    # 1-flip local maximum of v(S) - x(S), checked on the full table; no coalition is paid twice
    n = 12
    game = games.coverage(n, seed=2)
    table = game.table()
    grand = (1 << n) - 1
    rng = np.random.default_rng(0)
    x = rng.dirichlet(np.ones(n)) * table[grand]
    known: dict[int, float] = {}
    asked: list[int] = []

    def evaluate(masks: list[int]) -> None:
        asked.extend(masks)
        known.update((m, float(table[m])) for m in masks)

    surrogate = None
    if with_surrogate:
        masks = rng.choice(np.arange(1, grand), 300, replace=False)
        surrogate = fit_surrogate(masks, table[masks], n, kind="quadratic_size")
    starts = [1 << i for i in range(n)]
    ends = greedy_paths(evaluate, known.get, surrogate, x, starts, per_step=n, tol=1e-12)
    assert len(asked) == len(set(asked))
    assert ends
    tops = []
    for m in ends:
        here = _excess(table, x, m, n)
        tops.append(here)
        for i in range(n):
            nb = m ^ (1 << i)
            if nb not in (0, grand):
                assert _excess(table, x, nb, n) <= here + 1e-9, (m, nb)
    # best first, and at least as good as the best start
    assert tops == sorted(tops, reverse=True)
    assert tops[0] >= max(_excess(table, x, s, n) for s in starts) - 1e-12


def test_greedy_paths_respect_the_budget_of_the_evaluator() -> None:
    # an evaluator that stops paying after 25 coalitions: the paths end where the budget ran
    # out, every end point is a coalition that was paid for
    n = 14
    game = games.coverage(n, seed=1)
    table = game.table()
    known: dict[int, float] = {}

    def evaluate(masks: list[int]) -> None:
        for m in masks:
            if len(known) < 25:
                known[m] = float(table[m])

    x = np.full(n, table[-1] / n)
    ends = greedy_paths(evaluate, known.get, None, x, [1, 2, 4], per_step=3, tol=1e-12)
    assert len(known) == 25
    assert ends
    assert all(m in known for m in ends)


def test_greedy_search_alone_reaches_the_binding_region() -> None:
    # no surrogate candidates, probes or local search: the LP gets only v(N), the singletons,
    # the seeds and what the true-excess searches evaluate. Their payoff's requirement
    # (enumeration of all 65,534 proper coalitions) is within 12% of the exact e*, where the
    # seeds alone leave it 25% above
    n = 16
    game = games.coverage(n, seed=1)
    table = game.table()
    masks = all_masks(n)[1:-1]
    inc = incidence(masks, n)
    e_star = coreopt.least_core(game, n, mode="exact", tie_break=None, progress=False).epsilon
    over = {}
    for k in (0, 2):
        res = coreopt.least_core(
            game,
            n,
            budget=600,
            mode="approximate",
            enumerate_max_n=12,
            oracles=(),
            greedy_paths=k,
            confirm_probes=0,
            audit_probes=0,
            progress=False,
        )
        assert res.value_calls <= 600
        requirement = float((table[masks] - inc @ res.x).max())
        over[k] = (requirement - e_star) / abs(e_star)
    assert over[0] > 0.25
    assert over[2] < 0.12


def test_greedy_search_is_on_by_default_only_for_games_that_look_subadditive() -> None:
    # coverage (Σ v({i}) > v(N)) above enumerate_max_n: the default run is the run with
    # greedy_paths=4, pruned, and 8 candidates and probes a round; weighted voting: greedy_paths=0
    n = 22
    for family, expected in (("coverage", 4), ("voting", 0)):
        game = games.BENCHMARK_FAMILIES[family](n, 0)
        auto = coreopt.least_core(game, n, budget=300, mode="approximate", progress=False)
        batch = 8 if expected else 32
        explicit = coreopt.least_core(
            game,
            n,
            budget=300,
            mode="approximate",
            greedy_paths=expected,
            greedy_prune=bool(expected),
            batch_size=batch,
            probes=batch,
            progress=False,
        )
        assert np.array_equal(auto.x, explicit.x), family


def test_bad_greedy_options_are_refused() -> None:
    with pytest.raises(ValueError, match="greedy_paths"):
        coreopt.LeastCoreConfig(greedy_paths=-1)
    with pytest.raises(ValueError, match="greedy_per_step"):
        coreopt.LeastCoreConfig(greedy_per_step=0)
    with pytest.raises(TypeError, match="batch_size"):
        coreopt.LeastCoreConfig(batch_size=2.5)  # type: ignore[arg-type]
