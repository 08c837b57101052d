"""Issue 17, item 5: the marginal-gain bounds that prune the true-excess searches
(:class:`~coreopt.game.separation.MarginalIndex`), checked against brute force over every pair
of evaluated coalitions and against the full table of a submodular (coverage) game."""

import numpy as np
import pytest

import coreopt
from coreopt.game import games
from coreopt.game.coalitions import all_masks, incidence, subset_sums
from coreopt.game.separation import MarginalIndex, greedy_paths


def _edges(known: dict[int, float], n: int) -> list[tuple[int, int, float]]:
    """Every pair (T, T + j) of known coalitions, by brute force."""
    return [
        (t, j, known[t | (1 << j)] - known[t])
        for t in known
        for j in range(n)
        if not (t >> j) & 1 and (t | (1 << j)) in known
    ]


def _brute(known: dict[int, float], n: int, s: int) -> tuple[np.ndarray, np.ndarray]:
    up = np.full(n, np.inf)
    lo = np.full(n, -np.inf)
    for t, j, g in _edges(known, n):
        if t & ~s == 0:
            up[j] = min(up[j], g)
        if (s >> j) & 1 and (s & ~(1 << j)) & ~t == 0:
            lo[j] = max(lo[j], g)
    return up, lo


@pytest.mark.parametrize("n", [10, 70])
def test_bounds_equal_brute_force_over_every_pair(n: int) -> None:
    # any game (here a random one: not submodular): upper / lower / upper_without are the
    # min / max over exactly the pairs the definitions name; n = 70 takes the Python-int path
    rng = np.random.default_rng(3)
    w = 8  # coalitions within a window of 8 players, so that one-flip pairs are common
    pool = [int(rng.integers(1, 1 << w)) << int(rng.integers(0, n - w + 1)) for _ in range(150)]
    pool += [m ^ (1 << int(rng.integers(0, n))) for m in pool]  # plenty of one-flip pairs
    pool += [1 << i for i in range(n)]
    values = {m: float(rng.normal()) for m in pool if m}
    index = MarginalIndex(n)
    items = list(values.items())
    index.add([m for m, _ in items[:100]], [v for _, v in items[:100]])  # two batches
    index.add([m for m, _ in items[100:]], [v for _, v in items[100:]])
    known = {0: 0.0, **values}
    assert index.edges == len(_edges(known, n))
    for s in list(values)[:40]:
        up, lo = _brute(known, n, s)
        np.testing.assert_array_equal(index.upper(s), up)
        np.testing.assert_array_equal(index.lower(s), lo)
        ins = [i for i in range(n) if (s >> i) & 1][:4]
        without = index.upper_without(s, ins)
        for r, i in enumerate(ins):
            np.testing.assert_array_equal(without[r], _brute(known, n, s ^ (1 << i))[0])


def test_bounds_hold_on_a_submodular_game() -> None:
    # coverage is submodular: for every S (all 1,022 proper coalitions of 10 players), the
    # upper bound is >= the true marginal gain of each non-member and the lower bound <= the
    # true marginal of each member, from 200 random evaluated coalitions plus the singletons
    n = 10
    table = games.coverage(n, seed=4).table()
    rng = np.random.default_rng(0)
    seen = sorted({*rng.integers(1, (1 << n) - 1, 200).tolist(), *(1 << i for i in range(n))})
    index = MarginalIndex(n)
    index.add(seen, [float(table[m]) for m in seen])
    tight = 0
    for s in all_masks(n)[1:-1].tolist():
        up, lo = index.upper(s), index.lower(s)
        for j in range(n):
            gain = table[s | (1 << j)] - table[s & ~(1 << j)]
            if (s >> j) & 1:
                assert lo[j] <= gain + 1e-12
            else:
                assert up[j] >= gain - 1e-12
                tight += bool(up[j] - gain < 1e-12)
    assert tight > 100  # the bounds are not vacuous


def test_pruned_paths_end_at_the_same_kind_of_local_maxima_for_fewer_calls() -> None:
    # per_step = n: every addition and removal that can gain is tried; on a submodular game the
    # pruning skips only neighbours that cannot gain, so every end point is still a 1-flip local
    # maximum of v(S) - x(S) on the full table, and fewer coalitions are paid for
    n = 12
    table = games.coverage(n, seed=2).table()
    grand = (1 << n) - 1
    x = np.random.default_rng(1).dirichlet(np.ones(n)) * table[grand]
    paid = {}
    for prune in (False, True):
        known = {grand: float(table[grand]), **{1 << i: float(table[1 << i]) for i in range(n)}}
        known.update({grand ^ (1 << i): float(table[grand ^ (1 << i)]) for i in range(n)})
        asked: list[int] = []

        def evaluate(masks: list[int], known: dict[int, float] = known, asked: list = asked):
            asked.extend(masks)
            known.update((m, float(table[m])) for m in masks)

        index = None
        if prune:
            index = MarginalIndex(n)
            index.add(list(known), list(known.values()))
        # singletons climb by additions, large coalitions mostly by removals
        starts = [1 << i for i in range(n)] + [grand ^ (7 << i) for i in range(n - 2)]
        ends = greedy_paths(
            evaluate, known.get, None, x, starts, per_step=n, tol=1e-12, swaps=False, index=index
        )
        assert len(asked) == len(set(asked))
        for m in ends:
            here = table[m] - incidence([m], n)[0] @ x
            for i in range(n):
                nb = m ^ (1 << i)
                if nb not in (0, grand):
                    assert table[nb] - incidence([nb], n)[0] @ x <= here + 1e-9, (prune, m, nb)
        paid[prune] = len(asked)
    assert paid[True] < 0.8 * paid[False]


def test_least_core_with_pruned_searches() -> None:
    # through the solver (n = 16 above enumerate_max_n = 12, a coverage game: pruning is on by
    # default): within the budget, every value paid once, the same payoff as greedy_prune=True,
    # and a payoff whose requirement over all 65,534 proper coalitions (enumerated) is within 3%
    # of e*
    n = 16
    game = games.coverage(n, seed=0)
    table = game.table()
    e_star = coreopt.least_core(game, n, mode="exact", tie_break=None, progress=False).epsilon
    calls: list[int] = []

    def value(s: frozenset) -> float:
        m = sum(1 << i for i in s)
        calls.append(m)
        return float(table[m])

    opts = {"budget": 1500, "mode": "approximate", "enumerate_max_n": 12, "progress": False}
    res = coreopt.least_core(value, n, **opts)
    assert res.value_calls == len(calls) <= 1500
    assert len(set(calls)) == len(calls)
    explicit = coreopt.least_core(value, n, greedy_prune=True, **opts)
    np.testing.assert_array_equal(res.x, explicit.x)
    requirement = float((table - subset_sums(res.x))[1:-1].max())
    assert requirement <= e_star + 0.03 * abs(e_star)


def test_greedy_prune_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="greedy_prune"):
        coreopt.LeastCoreConfig(greedy_prune=1)  # type: ignore[arg-type]
