"""Issue 17, item 5: the opt-in search options for submodular games (``surrogate=
"quadratic_size"``, ``probe_sizes="sized"``, ``neighbourhood_ascent``), each checked against an
independent reference (an exact least-squares fit, the recorded calls, enumeration)."""

import numpy as np
import pytest

import coreopt
from coreopt.game import games, vectorized
from coreopt.game.coalitions import all_masks, incidence
from coreopt.game.separation import SurrogateFit, _size_basis, fit_surrogate

OPTIONS = {"surrogate": "quadratic_size", "probe_sizes": "sized", "neighbourhood_ascent": 1}


def _recorder(game: games.Game) -> tuple[object, list[int]]:
    """The game as a vectorized (masks) value function that records every coalition asked."""
    calls: list[int] = []

    def fn(masks: np.ndarray) -> np.ndarray:
        calls.extend(int(m) for m in np.asarray(masks).tolist())
        return game.values(np.asarray(masks, dtype=np.int64))

    return vectorized(fn, form="masks"), calls


@pytest.mark.parametrize("incremental", [False, True])
def test_quadratic_size_surrogate_recovers_pairs_plus_a_size_curve(incremental: bool) -> None:
    # v(S) = c + a·1_S + Σ b_ij + h(|S|) with h a combination of the size hinges: the
    # quadratic_size kind represents it exactly, so a fit on every coalition of n = 9 reproduces
    # it (the plain quadratic kind cannot: h is not pairwise)
    n = 9
    rng = np.random.default_rng(1)
    a = rng.normal(size=n)
    b = np.triu(rng.normal(size=(n, n)), 1)
    h = _size_basis(np.arange(n + 1, dtype=np.float64), n) @ rng.normal(size=8) * 3
    masks = all_masks(n)[1:]
    inc = incidence(masks, n)
    y = 0.5 + inc @ a + np.einsum("ri,ij,rj->r", inc, b, inc) + h[inc.sum(axis=1).astype(int)]
    if incremental:
        fit = SurrogateFit(n, "quadratic_size", ridge=1e-10)
        fit.add(masks.tolist(), y.tolist())
        sur = fit.fit()
    else:
        sur = fit_surrogate(masks, y, n, kind="quadratic_size", ridge=1e-10)
    np.testing.assert_allclose(sur.predict(masks), y, atol=1e-6)
    plain = fit_surrogate(masks, y, n, kind="quadratic", ridge=1e-10)
    assert np.abs(plain.predict(masks) - y).max() > 1e-2


def test_sized_probes_reach_small_coalitions_that_uniform_probes_never_draw() -> None:
    # probes only: with uniform probes at n = 30 a coalition of <= 5 players has probability
    # ~1.6e-4 per draw; sized probes draw sizes uniformly on 1..29
    n = 30
    game = games.coverage(n, seed=3)
    sizes = {}
    for kind in ("uniform", "sized"):
        fn, calls = _recorder(game)
        coreopt.least_core(
            fn,
            n,
            budget=600,
            mode="approximate",
            oracles=("probes",),
            probe_sizes=kind,
            greedy_paths=0,
            confirm_probes=0,
            audit_probes=0,
            robust_payoff=False,  # its prefix probes would add small coalitions of their own
            seeds=("singletons",),
            progress=False,
        )
        s = np.array([bin(m).count("1") for m in calls])
        sizes[kind] = int(((s >= 2) & (s <= 5)).sum())
    assert sizes["uniform"] == 0
    assert sizes["sized"] >= 20


def test_neighbourhood_ascent_evaluates_whole_neighbourhoods_of_the_best_coalitions() -> None:
    # with the ascent on, some coalition other than N has every proper 1-flip neighbour
    # evaluated (counted on the recorded calls); with it off (probes only) none has
    n = 24
    game = games.coverage(n, seed=4)
    grand = (1 << n) - 1
    full = {}
    for k in (0, 1):
        fn, calls = _recorder(game)
        coreopt.least_core(
            fn,
            n,
            budget=900,
            mode="approximate",
            oracles=("probes",),
            neighbourhood_ascent=k,
            greedy_paths=0,
            confirm_probes=0,
            audit_probes=0,
            progress=False,
        )
        seen = set(calls)
        assert len(seen) == len(calls)  # never evaluated twice
        full[k] = sum(
            all((m ^ (1 << i)) in seen for i in range(n) if (m ^ (1 << i)) not in (0, grand))
            for m in seen
            if m != grand and bin(m).count("1") > 1
        )
    assert full[0] == 0
    assert full[1] >= 3


@pytest.mark.parametrize("family", ["coverage", "voting"])
def test_options_keep_the_bounds_honest_against_enumeration(family: str) -> None:
    # n = 14, 1,500 of 16,383 calls: epsilon is a lower bound on the exact e* and epsilon_upper
    # a lower bound on the payoff's true requirement (both from the full table), the budget holds
    n = 14
    game = games.BENCHMARK_FAMILIES[family](n, 2)
    table = game.table()
    exact = coreopt.least_core(game, n, mode="exact", progress=False)
    res = coreopt.least_core(
        game, n, budget=1500, mode="approximate", enumerate_max_n=10, progress=False, **OPTIONS
    )
    assert res.value_calls <= 1500
    masks = all_masks(n)[1:-1]
    requirement = float((table[masks] - incidence(masks, n) @ res.x).max())
    tol = 1e-9 * max(1.0, float(np.abs(table).max()))
    assert res.epsilon <= exact.epsilon + tol
    assert res.epsilon_upper <= requirement + tol
    assert requirement >= exact.epsilon - tol
    assert abs(res.x.sum() - table[-1]) <= tol


def test_options_rerun_bit_identical() -> None:
    n = 30
    game = games.coverage(n, seed=5)
    runs = [
        coreopt.least_core(game, n, budget=700, mode="approximate", progress=False, **OPTIONS)
        for _ in range(2)
    ]
    assert np.array_equal(runs[0].x, runs[1].x)
    assert runs[0].value_calls == runs[1].value_calls <= 700


def test_bad_probe_sizes_is_refused() -> None:
    with pytest.raises(ValueError, match="probe_sizes"):
        coreopt.LeastCoreConfig(probe_sizes="small")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="neighbourhood_ascent"):
        coreopt.LeastCoreConfig(neighbourhood_ascent=-1)


@pytest.mark.parametrize("family", ["coverage", "voting"])
def test_auto_aims_the_search_only_at_games_whose_singletons_outweigh_the_grand_coalition(
    family: str,
) -> None:
    # the rule, computed here from the game itself: Σ v({i}) > v(N) (coverage: yes; weighted
    # voting: no single player wins). The default run makes exactly the calls of the run with
    # the options the rule picks, in the same order
    n = 26
    game = games.BENCHMARK_FAMILIES[family](n, 1)
    singles = sum(game.value_of_mask(1 << i) for i in range(n))
    aimed = singles > game.value_of_mask((1 << n) - 1)
    assert aimed == (family == "coverage")
    aimed_options = {
        "surrogate": "quadratic_size",
        "probe_sizes": "sized",
        "neighbourhood_ascent": 0,
        "greedy_paths": 4,
        "greedy_prune": True,
        "batch_size": 8,
        "probes": 8,
    }
    uniform_options = {
        "surrogate": "quadratic",
        "probe_sizes": "uniform",
        "neighbourhood_ascent": 0,
        "greedy_paths": 0,
        "greedy_prune": False,
        "batch_size": 32,
        "probes": 32,
    }
    explicit = aimed_options if aimed else uniform_options
    other = uniform_options if aimed else aimed_options
    runs = {}
    for name, opts in (("auto", {}), ("explicit", explicit), ("other", other)):
        fn, calls = _recorder(game)
        res = coreopt.least_core(fn, n, budget=800, mode="approximate", progress=False, **opts)
        runs[name] = (calls, res.x)
    assert runs["auto"][0] == runs["explicit"][0]
    assert np.array_equal(runs["auto"][1], runs["explicit"][1])
    assert runs["auto"][0] != runs["other"][0]


def test_aimed_search_decides_the_same_in_any_units() -> None:
    # a coverage game (aimed) in units 1e-12 .. 1e12 makes the same calls in the same order and
    # returns the same payoff, scaled (the rule's margin is relative)
    n = 24
    game = games.coverage(n, seed=6)
    base_calls: list[int] | None = None
    base_x = None
    for c in (1e-12, 1.0, 1e12):
        scaled = games.Game(game.players, lambda m, c=c: c * game.values(m))
        fn, calls = _recorder(scaled)
        res = coreopt.least_core(fn, n, budget=700, mode="approximate", progress=False)
        if base_calls is None:
            base_calls, base_x = calls, res.x / c
            continue
        assert calls == base_calls
        np.testing.assert_allclose(res.x / c, base_x, rtol=0, atol=1e-7 * np.abs(base_x).max())
