"""Separation building blocks against enumeration: surrogate fits, min-cut and MILP oracles."""

import numpy as np
import pytest

import coreopt
from coreopt.game import exact_least_core, games
from coreopt.game.coalitions import all_masks, incidence, subset_sums
from coreopt.game.separation import (
    Surrogate,
    SurrogateFit,
    best_by_mincut,
    fit_surrogate,
    top_by_ascent,
    top_by_enumeration,
    top_by_milp,
    top_by_size,
)


def test_incremental_surrogate_equals_a_full_refit() -> None:
    n = 9
    game = games.pairwise(n, seed=4)
    rng = np.random.default_rng(0)
    masks = rng.permutation(all_masks(n)[1:])[:200]
    values = game.values(masks)
    fit = SurrogateFit(n)
    fit.add(masks[:120].tolist(), values[:120].tolist())
    fit.add(masks[80:].tolist(), values[80:].tolist())  # overlapping rows are added once
    assert len(fit.seen) == 200
    inc, full = fit.fit(), fit_surrogate(masks, values, n)
    # same normal equations summed in another order: equal to rounding (1e-8 relative)
    np.testing.assert_allclose(inc.a, full.a, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(inc.b, full.b, rtol=1e-8, atol=1e-10)
    # a pairwise game is exactly quadratic: the surrogate reproduces every value up to the bias
    # of the small ridge term (1e-6 of the mean feature norm; measured 4e-5 on values of order 1)
    table = game.table()
    np.testing.assert_allclose(inc.predict(all_masks(n)), table, atol=1e-3 * np.abs(table).max())


def _random_surrogate(n: int, seed: int, supermodular: bool) -> tuple[Surrogate, np.ndarray]:
    rng = np.random.default_rng(seed)
    b = np.triu(rng.normal(0.0, 1.0, (n, n)), 1)
    if supermodular:
        b = np.abs(b) * (rng.random((n, n)) < 0.5)  # b >= 0, some pairs absent
    a = rng.normal(0.0, 1.0, n)
    x = rng.normal(0.0, 1.0, n) + b.sum(axis=1) / 2  # so that the optimum is a proper coalition
    return Surrogate(float(rng.normal()), a, b), x


def _enumerated_scores(surrogate: Surrogate, x: np.ndarray, proper: bool = True) -> np.ndarray:
    """``v̂(S) - x(S)`` for every mask by brute force (no doubling); ``proper``: ∅ and N at -inf."""
    n = surrogate.n
    masks = all_masks(n)
    inc = incidence(masks, n)
    scores = surrogate.intercept + inc @ (surrogate.a - x)
    scores = scores + np.einsum("ri,ij,rj->r", inc, surrogate.b, inc)
    if proper:
        scores[0] = scores[-1] = -np.inf
    return scores


@pytest.mark.parametrize("seed", range(8))
def test_mincut_finds_the_enumerated_maximiser_of_a_supermodular_surrogate(seed: int) -> None:
    surrogate, x = _random_surrogate(10, seed, supermodular=True)
    scores = _enumerated_scores(surrogate, x, proper=False)
    best = int(np.argmax(scores))  # over every mask: the min-cut's own problem
    got = best_by_mincut(surrogate, x)
    if best in (0, 1023):  # documented: no proper coalition to return
        assert got is None
        return
    assert got is not None
    # the exact maximiser (continuous random data: ties have probability zero)
    assert scores[got] == pytest.approx(scores[best], abs=1e-12)
    assert got == best


def test_mincut_declines_a_surrogate_that_is_not_supermodular() -> None:
    surrogate, x = _random_surrogate(8, 0, supermodular=False)
    assert (surrogate.b < 0).any()
    assert best_by_mincut(surrogate, x) is None


@pytest.mark.parametrize("supermodular", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_milp_returns_the_enumerated_top_k(seed: int, supermodular: bool) -> None:
    surrogate, x = _random_surrogate(9, 100 + seed, supermodular)
    scores = _enumerated_scores(surrogate, x)
    order = np.argsort(-scores, kind="stable")
    exclude = {int(order[1])}  # a known coalition is skipped, not returned
    got = top_by_milp(surrogate, x, 4, exclude)
    want = [int(m) for m in order[:5] if int(m) not in exclude][:4]
    assert got == want
    # the enumeration helper of the solver agrees too
    assert top_by_enumeration(surrogate, x, 4, exclude) == want


@pytest.mark.parametrize("solver", ["mincut", "milp"])
def test_least_core_runs_through_each_separation_oracle(solver: str) -> None:
    # a supermodular (convex) pairwise game: the fitted surrogate is supermodular, so min-cut runs
    n = 10
    rng = np.random.default_rng(3)
    b = np.triu(np.abs(rng.normal(0.0, 0.3, (n, n))), 1)
    a = rng.random(n)

    def values(m: np.ndarray) -> np.ndarray:
        inc = incidence(m, n)
        return np.asarray(inc @ a + np.einsum("ri,ij,rj->r", inc, b, inc))

    game = games.Game(games.Players(n), values)
    ref = exact_least_core(game, tie_break=None)
    calls: list[str] = []
    import coreopt.game.solver as solver_mod

    real = {"mincut": solver_mod.best_by_mincut, "milp": solver_mod.top_by_milp}[solver]

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(solver)
        return real(*args, **kwargs)  # type: ignore[operator]

    name = {"mincut": "best_by_mincut", "milp": "top_by_milp"}[solver]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(solver_mod, name, spy)
        res = coreopt.least_core(
            game, n, budget=500, mode="approximate", surrogate_solver=solver, progress=False
        )
    assert calls, f"the {solver} oracle was never called"
    assert res.epsilon <= ref.epsilon + 1e-9  # a certified lower bound
    # the payoff's true requirement over all 1023 coalitions, against the exact e*
    table = game.table()
    requirement = float((table - subset_sums(res.x))[1:-1].max())
    assert requirement <= ref.epsilon + 1e-6 * max(1.0, abs(ref.epsilon))


@pytest.mark.parametrize("seed", range(4))
def test_size_surrogate_is_maximised_exactly_by_sorting(seed: int) -> None:
    n = 10
    rng = np.random.default_rng(200 + seed)
    masks = all_masks(n)[1:]
    sizes = incidence(masks, n).sum(axis=1)
    values = (
        rng.normal(size=masks.size) + 3.0 * np.sqrt(sizes) + incidence(masks, n) @ rng.random(n)
    )
    surrogate = fit_surrogate(masks, values, n, kind="size")
    assert not surrogate.pairwise
    x = rng.normal(0.0, 0.5, n)
    scores = _enumerated_scores(surrogate, x)
    if surrogate.g is not None:  # the size term, by brute force too
        scores[1:-1] += surrogate.g[sizes[:-1].astype(int)]
    order = np.argsort(-scores, kind="stable")
    got = top_by_size(surrogate, x, 3, set())
    assert got[0] == int(order[0])
    # every candidate is the best coalition of its size
    for m in got:
        size = bin(m).count("1")
        same = [int(k) for k in order if bin(int(k)).count("1") == size]
        assert m == same[0]


@pytest.mark.parametrize("seed", range(4))
def test_surrogate_ascent_ends_at_local_maxima_and_finds_the_global_one(seed: int) -> None:
    surrogate, x = _random_surrogate(10, 300 + seed, supermodular=False)
    scores = _enumerated_scores(surrogate, x)
    best = int(np.argmax(scores))
    starts = [int(m) for m in np.random.default_rng(seed).integers(1, 1023, 64)]
    got = top_by_ascent(surrogate, x, 8, set(), starts)
    assert got
    assert scores[got[0]] == max(scores[m] for m in got)
    for m in got:  # no single flip improves an end point
        flips = [m ^ (1 << i) for i in range(10)]
        assert all(scores[f] <= scores[m] + 1e-12 for f in flips if f not in (0, 1023))
    assert got[0] == best  # 64 starts on 10 players reach the global maximum
    # a known end point is replaced by its best unknown neighbour, never returned
    again = top_by_ascent(surrogate, x, 8, {best}, starts)
    assert best not in again


@pytest.mark.parametrize("pairs", [False, True])
def test_top_flips_ranks_like_materialised_local_search(pairs: bool) -> None:
    from coreopt.game.separation import Surrogate, local_search, top_flips

    rng = np.random.default_rng(3)
    n = 12
    b = np.triu(rng.normal(size=(n, n)) * 0.2, 1) if pairs else np.zeros((n, n))
    s = Surrogate(0.1, rng.normal(size=n), b, np.cumsum(rng.normal(size=n + 1)))
    x = rng.normal(size=n) * 0.3
    bases = [int(m) for m in rng.integers(1, (1 << n) - 1, 6)]
    exclude = {bases[0] ^ 1, bases[1] ^ 4}
    flips = local_search(bases, n, exclude)
    z = np.array([[(m >> i) & 1 for i in range(n)] for m in flips], dtype=float)
    pred = s.predict(np.array(flips)) - z @ x
    want = [flips[i] for i in np.argsort(-pred, kind="stable")[:10]]
    got = top_flips(s, x, bases, 10, exclude)
    assert len(got) == 10
    assert not set(got) & exclude
    by_mask = dict(zip(flips, pred, strict=True))
    np.testing.assert_allclose([by_mask[m] for m in got], [by_mask[m] for m in want], atol=1e-9)
