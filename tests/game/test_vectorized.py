"""Vectorized value functions: one call per batch, same answers as per-coalition calls."""

import numpy as np
import pytest

import coreopt
from coreopt.errors import NonFiniteError
from coreopt.game import ValueFunctionError, exact_least_core, games, vectorized
from coreopt.game.coalitions import incidence


class Recording:
    """A vectorized table lookup that records every mask it was asked for."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = table
        self.asked: list[int] = []
        self.batches = 0

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        self.batches += 1
        self.asked += masks.tolist()
        return self.table[masks]


def test_exact_mode_matches_per_coalition_calls_in_one_batch() -> None:
    game = games.pairwise(10, seed=3)
    rec = Recording(game.table())
    res = coreopt.least_core(vectorized(rec, form="masks"), 10, progress=False)
    ref = coreopt.least_core(lambda s: game(s), 10, progress=False)
    assert res.exact
    assert res.value_calls == ref.value_calls == 2**10 - 1
    assert sorted(rec.asked) == list(range(1, 2**10))  # each proper or grand coalition once
    assert rec.batches == 2  # v(N) and the singletons first, then everything else
    # same values and the same deterministic solver: identical LP value and payoff
    assert res.epsilon == pytest.approx(ref.epsilon, abs=1e-12)
    np.testing.assert_allclose(res.x, ref.x, atol=1e-9)


def test_incidence_rows_follow_the_player_order() -> None:
    labels = ["c", "a", "b"]
    weight = {"a": 1.0, "b": 10.0, "c": 100.0}
    seen: list[tuple[tuple[bool, ...], float]] = []

    def additive(rows: np.ndarray) -> np.ndarray:
        assert rows.dtype == bool
        assert rows.shape[1] == 3
        out = rows @ np.array([weight[p] for p in labels])
        seen.extend(zip(map(tuple, rows.tolist()), out.tolist(), strict=True))
        return out

    res = coreopt.least_core(vectorized(additive), labels, progress=False)
    # an additive game: e* = 0 and the unique least-core point pays each player its weight
    assert res.payoff == pytest.approx(weight)
    assert res.epsilon == pytest.approx(0.0, abs=1e-9)
    assert len(seen) == 7


def test_game_objects_are_evaluated_vectorized_and_agree_with_the_reference() -> None:
    game = games.coverage(12, seed=2)
    res = coreopt.least_core(game, 12, progress=False, mode="exact")
    ref = exact_least_core(game)
    assert res.epsilon == pytest.approx(ref.epsilon, abs=1e-9)


def test_approximate_mode_never_asks_twice_and_respects_the_budget() -> None:
    game = games.coverage(14, seed=0)
    rec = Recording(game.table())
    res = coreopt.least_core(
        vectorized(rec, form="masks"), 14, budget=1500, mode="approximate", progress=False
    )
    assert len(rec.asked) == len(set(rec.asked)) == res.value_calls <= 1500
    assert res.epsilon <= exact_least_core(game).epsilon + 1e-9


def test_non_finite_value_names_the_coalition_and_keeps_the_rest() -> None:
    def values(rows: np.ndarray) -> np.ndarray:
        out = rows.sum(axis=1).astype(float)
        out[(rows == [True, True, False, False]).all(axis=1)] = np.nan
        return out

    with pytest.raises(NonFiniteError, match=r"\['0', '1'\]") as err:
        coreopt.least_core(vectorized(values), 4, progress=False)
    paid = err.value.result
    assert frozenset({0, 1, 2, 3}) in paid  # v(N) and the singletons came first and are kept
    assert all(paid[frozenset({i})] == 1.0 for i in range(4))


def test_wrong_output_shape_and_failures_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="one value per row"):
        coreopt.least_core(vectorized(lambda rows: rows.sum()), 3, progress=False)
    calls = []

    def broken(rows: np.ndarray) -> np.ndarray:
        calls.append(len(rows))
        raise RuntimeError("backend down")

    with pytest.raises(ValueFunctionError, match="batch of 4 coalitions"):
        coreopt.least_core(vectorized(broken), 3, progress=False, retry_delay=0.0, retries=1)
    assert calls == [4, 4]  # one retry of the same batch, then the error

    async def later(rows: np.ndarray) -> np.ndarray:
        return rows.sum(axis=1)

    with pytest.raises(TypeError, match="synchronous"):
        vectorized(later)
    np.testing.assert_array_equal(incidence([5], 3), [[1.0, 0.0, 1.0]])
