"""The solver's arithmetic on one BLAS thread, the value function on the caller's threads."""

import numpy as np
import pytest
from threadpoolctl import ThreadpoolController, threadpool_limits

import coreopt
from coreopt.game import games


def blas_threads() -> int:
    libs = [c for c in ThreadpoolController().lib_controllers if c.user_api == "blas"]
    return max((c.num_threads for c in libs), default=0)


needs_two = pytest.mark.skipif(blas_threads() < 2, reason="needs a BLAS with 2 threads")


@needs_two
def test_the_same_payoff_with_one_or_two_blas_threads() -> None:
    # measured before the limit: exact (relaxation 0) with one OpenBLAS thread, relaxed by 0.18
    # (a payoff needing 1.3% of v(N)) with two; coverage n = 40 differed by 0.55 per player
    game = games.glove(18, 22)
    runs = []
    for threads in (1, 2):
        with threadpool_limits(limits=threads, user_api="blas"):
            runs.append(
                coreopt.least_core(game, 40, budget=1200, mode="approximate", progress=False)
            )
    np.testing.assert_array_equal(runs[0].x, runs[1].x)
    assert runs[0].relaxation == runs[1].relaxation


@needs_two
def test_value_function_runs_on_the_callers_blas_threads() -> None:
    seen: list[int] = []
    game = games.coverage(12, seed=0)

    def value(coalition: frozenset[int]) -> float:
        seen.append(blas_threads())
        return float(game.value_of_mask(sum(1 << i for i in coalition)))

    with threadpool_limits(limits=2, user_api="blas"):
        coreopt.least_core(value, 12, mode="exact", progress=False)
        assert blas_threads() == 2  # restored after the call
    assert seen
    assert set(seen) == {2}
