"""A value function raising BudgetExhaustedError ends least_core with a partial result."""

from __future__ import annotations

import asyncio

import pytest

import coreopt
from coreopt.errors import BudgetExhaustedError
from coreopt.game import games
from coreopt.status import Status


def limited(game, limit: int, *, is_async: bool = False):
    calls = {"n": 0}

    def v(coalition: frozenset) -> float:
        if calls["n"] >= limit:
            raise BudgetExhaustedError("spent")
        calls["n"] += 1
        return game(coalition)

    async def av(coalition: frozenset) -> float:
        await asyncio.sleep(0)
        return v(coalition)

    return (av if is_async else v), calls


@pytest.mark.parametrize("is_async", [False, True])
@pytest.mark.parametrize("mode", ["exact", "approximate"])
def test_budget_error_gives_a_partial_valid_result(mode: str, is_async: bool) -> None:
    game = games.coverage(8, seed=0)
    v, calls = limited(game, 40, is_async=is_async)
    res = coreopt.least_core(v, 8, mode=mode, progress=False, retries=3)
    assert res.status == Status.BUDGET_EXHAUSTED
    assert not res.exact
    assert res.value_calls == calls["n"] == 40
    full = coreopt.least_core(game, 8, progress=False)
    assert res.epsilon <= full.epsilon + 1e-9  # still a certified lower bound
    assert sum(res.payoff.values()) == pytest.approx(game(frozenset(range(8))))


def test_budget_error_before_the_seeds_carries_the_values() -> None:
    game = games.coverage(6, seed=0)
    v, _ = limited(game, 3)
    with pytest.raises(BudgetExhaustedError) as info:
        coreopt.least_core(v, 6, mode="approximate", progress=False)
    assert len(info.value.values) == 3
    res = coreopt.least_core(game, 6, progress=False, known_values=info.value.values)
    assert res.value_calls == 2**6 - 1 - 3  # resumed: paid only for the rest
