"""Scale invariance: a game in other units (x 1e-12 .. x 1e12) gets the same answer, scaled.

Every payoff is audited by brute force over all coalitions (an incidence matrix built here, not
the library's subset sums): its true requirement ``max_S v(S) - x(S)``.
"""

import numpy as np
import numpy.typing as npt
import pytest

import coreopt
from coreopt.game import exact_least_core, games, vectorized
from coreopt.status import Status

SCALES = [1e-12, 1e-9, 1e-6, 1.0, 1e6, 1e9, 1e12]
RULES = [None, "egalitarian", "nucleolus"]


def requirement(table: npt.NDArray[np.float64], x: npt.NDArray[np.float64]) -> float:
    """``max_S v(S) - x(S)`` over every proper coalition, by brute force."""
    n = x.shape[0]
    best = -np.inf
    for start in range(0, 1 << n, 1 << 16):  # chunks: n = 22 has 4M coalitions
        masks = np.arange(start, min(start + (1 << 16), 1 << n))
        inc = (masks[:, None] >> np.arange(n)) & 1
        ex = table[masks] - inc @ x
        ex[(masks == 0) | (masks == (1 << n) - 1)] = -np.inf
        best = max(best, float(ex.max()))
    return best


@pytest.mark.parametrize("rule", RULES)
def test_exact_mode_is_scale_invariant(rule: str | None) -> None:
    # the case: ~1e-9 values gave e*/scale 0.083 instead of 0.493 (absolute tolerances),
    # ~1e9 values crashed the egalitarian QP and the nucleolus
    game = games.pairwise(8, seed=0)
    table = game.table()
    base = exact_least_core(table, tie_break=rule)
    e_star = base.epsilon
    assert requirement(table, base.x) == pytest.approx(e_star, abs=1e-8)
    for c in SCALES:
        res = exact_least_core(c * table, tie_break=rule)
        assert res.exact
        assert res.status is Status.CONVERGED
        assert res.epsilon / c == pytest.approx(e_star, rel=1e-9, abs=1e-12)
        np.testing.assert_allclose(res.x / c, base.x, rtol=0, atol=1e-7 * np.abs(base.x).max())
        # the payoff meets every coalition at e* (the egalitarian slack is 1e-10 of the scale)
        assert requirement(c * table, res.x) / c == pytest.approx(e_star, rel=1e-8, abs=1e-9)
        assert res.epsilon_upper / c == pytest.approx(e_star, rel=1e-8, abs=1e-9)


@pytest.mark.parametrize("rule", RULES)
def test_least_core_exact_mode_through_the_value_function_is_scale_invariant(
    rule: str | None,
) -> None:
    game = games.coverage(7, seed=1)
    table = game.table()
    e_star = exact_least_core(table, tie_break=None).epsilon
    for c in (1e-12, 1e-9, 1e9, 1e12):
        res = coreopt.least_core(lambda s, c=c: c * game(s), 7, tie_break=rule, progress=False)
        assert res.exact
        assert res.epsilon / c == pytest.approx(e_star, rel=1e-9)
        assert requirement(c * table, res.x) / c == pytest.approx(e_star, rel=1e-8)


@pytest.mark.parametrize("rule", RULES)
def test_approximate_mode_is_scale_invariant(rule: str | None) -> None:
    n = 10
    game = games.coverage(n, seed=3)
    table = game.table()
    e_star = exact_least_core(table, tie_break=None).epsilon
    base: npt.NDArray[np.float64] | None = None
    for c in (1e-12, 1e-9, 1.0, 1e9, 1e12):
        res = coreopt.least_core(
            lambda s, c=c: c * game(s),
            n,
            budget=300,
            mode="approximate",
            tie_break=rule,
            progress=False,
        )
        assert res.mode == "approximate"
        assert res.value_calls <= 300
        truth = requirement(c * table, res.x) / c
        # certified lower bound, requirement over evaluated coalitions <= truth, close to e*
        assert res.epsilon / c <= e_star * (1 + 1e-9)
        assert res.epsilon_upper / c <= truth * (1 + 1e-9)
        assert truth <= e_star * (1 + 1e-3)
        # and the same payoff, up to the scale, at every scale
        if base is None:
            base = res.x / c
        np.testing.assert_allclose(res.x / c, base, rtol=0, atol=1e-7 * np.abs(base).max())
        if res.estimate is not None:
            assert res.estimate.level / c <= truth * (1 + 1e-9)


def _doubling_sums(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``x(S)`` for every mask S (bit i = player i), written here independently of the library."""
    out = np.zeros(1)
    for xi in x:
        out = np.concatenate([out, out + xi])
    return out


@pytest.mark.slow
def test_approximate_mode_above_20_players_is_audited_over_every_coalition() -> None:
    # n = 22: 4,194,303 proper coalitions; 3,000 calls see 0.07% of them. A coverage game whose
    # table is built here by OR-doubling of the players' fact sets (v(S) = facts covered).
    n, facts = 22, 40
    rng = np.random.default_rng(0)
    fact_sets = ((rng.random((n, facts)) < 0.12) * (1 << np.arange(facts))).sum(1)
    bits = np.zeros(1, dtype=np.int64)
    for i in range(n):
        bits = np.concatenate([bits, bits | fact_sets[i]])
    table = np.bitwise_count(bits).astype(np.float64)
    value = vectorized(lambda masks: table[masks], form="masks")
    res = coreopt.least_core(value, n, budget=3000, mode="approximate", progress=False)
    assert res.mode == "approximate"
    assert not res.certified
    assert res.value_calls <= 3000
    # the exact audit over every coalition: the payoff's true requirement
    truth = float((table - _doubling_sums(res.x))[1:-1].max())
    e_star = exact_least_core(table, tie_break=None).epsilon
    assert res.epsilon <= e_star + 1e-9 * table.max()  # certified lower bound
    assert res.epsilon_upper <= truth + 1e-9 * table.max()  # seen coalitions: a lower bound
    # measured: 3e-10 relative with the tie-broken payoff as each round's separation target, 5.0%
    # with the LP's own optimum as the target (n > enumerate_max_n); the equal split needs 38%
    # more than e*. Payoff quality at large n is issue 17 item 5; this bound catches a broken
    # solver, not a 5% one.
    assert truth <= e_star + 0.10 * abs(e_star)
    assert abs(res.x.sum() - table[-1]) <= 1e-9 * table.max()


@pytest.mark.parametrize("convention", ["nonnegative", "imputation", "normalize"])
def test_conventions_are_scale_invariant(convention: str) -> None:
    game = games.pairwise(7, seed=2)  # imputations exist: sum of v({i}) <= v(N)
    table = game.table() + (3.0 if convention == "normalize" else 0.0)  # v(∅) = 3 offset
    base = exact_least_core(table, tie_break="nucleolus", **{convention: True})
    for c in (1e-12, 1e-9, 1e9, 1e12):
        for mode, budget in (("exact", None), ("approximate", 80)):
            res = coreopt.least_core(
                lambda s, c=c: c * float(table[game.players.mask(s)]),
                7,
                budget=budget,
                mode=mode,
                tie_break="nucleolus",
                progress=False,
                **{convention: True},
            )
            if mode == "exact":
                assert res.epsilon / c == pytest.approx(base.epsilon, rel=1e-9, abs=1e-12)
                np.testing.assert_allclose(res.x / c, base.x, atol=1e-7 * np.abs(base.x).max())
            else:  # a certified lower bound at every scale
                assert res.epsilon / c <= base.epsilon + 1e-9 * np.abs(table).max()
            if convention == "nonnegative":
                assert res.x.min() >= -1e-9 * c * np.abs(table).max()
            if convention == "imputation":
                singles = np.array([table[1 << i] for i in range(7)])
                assert np.all(res.x / c >= singles - 1e-9 * np.abs(table).max())


def test_infeasible_message_is_in_the_games_terms() -> None:
    # the solver works in units of max |v|: its numbers must not leak into messages
    from coreopt.game import InfeasibleGameError

    table = games.coverage(7, seed=2).table()  # sum of v({i}) = 1.54 v(N)
    for c in (1e-9, 1.0, 1e9):
        with pytest.raises(InfeasibleGameError, match=r"1\.53694 times v\(N\)"):
            exact_least_core(c * table, imputation=True)
