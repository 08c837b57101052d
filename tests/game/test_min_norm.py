"""The egalitarian tie-break's minimum-norm QP: the active-set polish against cvxpy/Clarabel.

``_polish`` must return the exact minimum-norm point whatever active set it starts from (the
first solver's multipliers only guide it), and must refuse (``None``) rather than return a point
it cannot certify.
"""

import cvxpy as cp
import numpy as np
import pytest

from coreopt.game.generation import _polish, _qp_highs, _qp_ldp


def _instance(n: int, rows: int, seed: int):
    rng = np.random.default_rng(seed)
    inc = (rng.random((rows, n)) < 0.35).astype(float)
    inc = inc[inc.sum(axis=1) > 0]
    grand = float(n)
    # feasible by construction (x0 satisfies every row), far from the equal split so that some
    # rows bind at the minimum-norm point
    x0 = rng.gamma(0.5, 2.0, n)
    x0 *= grand / x0.sum()
    rhs = inc @ x0 - np.abs(rng.normal(0.0, 0.3, inc.shape[0]))
    return inc, rhs, grand


def _reference(inc, rhs, grand):
    x = cp.Variable(inc.shape[1])
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x)), [cp.sum(x) == grand, inc @ x >= rhs])
    prob.solve(solver=cp.CLARABEL)
    assert prob.status == "optimal"
    return np.asarray(x.value)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("start", ["highs", "binding", "plus_slack_rows", "minus_binding_rows"])
def test_polish_reaches_the_minimum_norm_point_from_a_near_active_set(
    seed: int, start: str
) -> None:
    """Started from HiGHS's multipliers, the true binding set, or that set with non-binding rows
    added (they must leave) or binding rows removed (they must join): the same optimum."""
    n = 30
    inc, rhs, grand = _instance(n, 90, seed)
    ref = _reference(inc, rhs, grand)
    binding = (inc @ ref - rhs < 1e-6).astype(float)
    assert binding.sum() >= 5  # the instance has an active set to find
    first = np.arange(len(rhs))
    dual = {
        "highs": _qp_highs(n, grand, inc, rhs)[1],  # type: ignore[index]
        "binding": binding,
        "plus_slack_rows": binding + (first < 8) * (1 - binding),
        "minus_binding_rows": binding * (np.cumsum(binding) > 3),
    }[start]
    x = _polish(n, grand, inc, rhs, dual, 1e-9)
    assert x is not None
    # optimal: feasible to machine precision and no larger than the interior-point optimum (the
    # problem is strictly convex, so that pins the point)
    assert float(np.min(inc @ x - rhs)) >= -1e-9
    assert abs(x.sum() - grand) < 1e-9
    assert float(x @ x) <= float(ref @ ref) + 1e-9
    np.testing.assert_allclose(x, ref, atol=1e-3)


def test_polish_refuses_an_infeasible_system() -> None:
    n = 4
    rows = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    rhs = np.full(4, 2.0)  # x_i >= 2 for all i with sum x = 4: infeasible
    assert _polish(n, 4.0, rows, rhs, np.ones(4), 1e-9) is None


def test_min_norm_qps_are_exact_and_bounded_in_work(monkeypatch) -> None:
    # the per-round target QP (warm HiGHS) equals the cvxpy reference; with its active-set
    # iteration limit forced down to 1, a solve that needs more ends (None: the caller falls
    # back to the LP's vertex) instead of running on: the limit counts work, not seconds
    import coreopt.game.generation as generation

    inc, rhs, grand = _instance(12, 60, 4)
    masks = [int(sum(1 << i for i in np.flatnonzero(row))) for row in inc]
    qp = generation.IncrementalMinNorm(12, grand, np.full(12, -np.inf))
    qp.add_rows(masks, rhs.tolist())
    x = qp.solve(0.0)
    assert x is not None
    np.testing.assert_allclose(x, _reference(inc, rhs, grand), atol=1e-6)
    monkeypatch.setattr(generation, "QP_ITERATION_LIMIT", 1)
    monkeypatch.setattr(generation, "QP_ITERATIONS_PER_PLAYER", 0)
    capped = generation.IncrementalMinNorm(12, grand, np.full(12, -np.inf))
    capped.add_rows(masks, rhs.tolist())
    assert capped.solve(0.0) is None
    # the final tie-break's cold solve too: HiGHS gives up, so the caller's fallback runs
    assert generation._qp_highs(12, grand, inc, rhs) is None
    monkeypatch.undo()
    x_cold = generation._qp_highs(12, grand, inc, rhs)
    assert x_cold is not None
    np.testing.assert_allclose(x_cold[0], x, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_least_distance_program_is_the_minimum_norm_point(seed: int) -> None:
    # NNLS on the least-distance form against the interior-point reference; its multipliers are
    # positive exactly on binding rows (what the polish starts from)
    n = 30
    inc, rhs, grand = _instance(n, 90, seed)
    ref = _reference(inc, rhs, grand)
    got = _qp_ldp(n, grand, inc, rhs)
    assert got is not None
    x, lam = got
    assert float(np.min(inc @ x - rhs)) >= -1e-9
    assert abs(x.sum() - grand) < 1e-9
    assert float(x @ x) <= float(ref @ ref) + 1e-9  # feasible and no larger: the optimum
    np.testing.assert_allclose(x, ref, atol=1e-3)  # (Clarabel is ~1e-5 accurate here)
    assert np.all(lam >= 0)
    assert np.all(np.abs(inc @ x - rhs)[lam > 1e-9] < 1e-8)  # complementary slackness


def test_least_distance_program_refuses_an_infeasible_system() -> None:
    rows = np.eye(4)
    assert _qp_ldp(4, 4.0, rows, np.full(4, 2.0)) is None  # x_i >= 2, sum x = 4


def test_min_norm_is_solved_without_highs(monkeypatch) -> None:
    # the least-distance program answers; HiGHS's QP (45 s where NNLS took 1.2 s at n = 500)
    # is only a fallback
    import coreopt.game.generation as generation
    from coreopt.game.rows import ExplicitRows

    def no_highs(*args: object) -> None:
        raise AssertionError("HiGHS's QP was called")

    monkeypatch.setattr(generation, "_qp_highs", no_highs)
    n = 30
    inc, rhs, grand = _instance(n, 90, 5)
    masks = np.array([int(sum(1 << i for i in np.flatnonzero(row))) for row in inc])
    source = ExplicitRows(n, masks, rhs)
    x = generation._min_norm(n, grand, np.full(n, -np.inf), masks, source, 0.0, 1e-9)
    ref = _reference(inc, rhs, grand)
    assert float(np.min(inc @ x - rhs)) >= -1e-9
    assert float(x @ x) <= float(ref @ ref) + 1e-9
    np.testing.assert_allclose(x, ref, atol=1e-3)


def test_polish_solves_by_qr_where_the_normal_equations_miss(monkeypatch) -> None:
    # at n = 1,000 an active set of 999 rows made (A A^T) lam = b miss A x = b by 7e-9 (condition
    # number 1.5e16) and the polish gave up; the QR of A^T must then give the optimum. Here the
    # normal equations are made to miss outright
    n = 30
    inc, rhs, grand = _instance(n, 90, 1)
    ref = _reference(inc, rhs, grand)
    binding = (inc @ ref - rhs < 1e-6).astype(float)
    real = np.linalg.lstsq

    def missing(a, b, rcond=None):  # type: ignore[no-untyped-def]
        out = real(a, b, rcond=rcond)
        return (out[0] * 0.5, *out[1:])

    monkeypatch.setattr(np.linalg, "lstsq", missing)
    x = _polish(n, grand, inc, rhs, binding, 1e-9)
    assert x is not None
    assert float(np.min(inc @ x - rhs)) >= -1e-9
    assert abs(x.sum() - grand) < 1e-9
    assert float(x @ x) <= float(ref @ ref) + 1e-9
