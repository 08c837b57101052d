import math

import pytest
import torch

import coreopt
from coreopt.errors import NonFiniteError
from coreopt.manifold import cayley, skew
from coreopt.objective import MinimizeConfig, minimize
from coreopt.status import Status


def procrustes_problem(n: int, m: int, seed: int, dtype: torch.dtype, device: torch.device):
    """B = Q0 A + noise with Q0 a rotation reachable by the Cayley map; returns A, B, Q*."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, m, generator=g, dtype=dtype)
    Q0 = cayley(skew(0.3 * torch.randn(n, n, generator=g, dtype=dtype)))
    B = Q0 @ A + 0.05 * torch.randn(n, m, generator=g, dtype=dtype)
    U, _, Vh = torch.linalg.svd(B @ A.T)
    Q_star = U @ Vh  # closed form of argmin_{Q orthogonal} ||Q A - B||_F
    assert torch.det(Q_star) > 0  # so the Cayley parametrization (SO(n)) can reach it
    return A.to(device), B.to(device), Q_star.to(device)


def test_procrustes_through_cayley_parametrization_matches_closed_form(
    device: torch.device,
) -> None:
    A, B, Q_star = procrustes_problem(8, 20, seed=0, dtype=torch.float64, device=device)

    def loss(Q: torch.Tensor) -> torch.Tensor:
        return (Q @ A - B).pow(2).sum()

    res = minimize(
        loss,
        torch.zeros(8, 8, dtype=torch.float64, device=device),
        parametrization=lambda W: cayley(skew(W)),
        lr=0.05,
        steps=4000,
        patience=200,
        progress=False,
    )
    Q = res.params
    eye = torch.eye(8, dtype=torch.float64, device=device)
    # The Cayley map is exactly orthogonal up to the LU solve's rounding (~1e-15 in float64).
    torch.testing.assert_close(Q.T @ Q, eye, atol=1e-12, rtol=0)
    # The minimiser is unique and the problem is well conditioned (A has full row rank), so a
    # loss within ~1e-12 of the optimum puts Q within ~1e-6 of Q*.
    torch.testing.assert_close(Q, Q_star, atol=1e-6, rtol=0)
    assert res.loss == pytest.approx(loss(Q_star).item(), rel=1e-10)
    assert res.loss == pytest.approx(loss(Q).item(), rel=1e-12)
    assert res.initial_loss == pytest.approx(loss(eye).item())
    assert res.converged
    assert res.evaluations == len(res.history)
    assert res.wall_time > 0


def test_lbfgs_solves_least_squares_to_the_normal_equations() -> None:
    g = torch.Generator().manual_seed(1)
    X = torch.randn(50, 5, generator=g, dtype=torch.float64)
    y = torch.randn(50, generator=g, dtype=torch.float64)
    w_star = torch.linalg.lstsq(X, y.unsqueeze(1)).solution.squeeze(1)
    res = minimize(
        lambda w: (X @ w - y).pow(2).sum(),
        torch.zeros(5, dtype=torch.float64),
        optimizer="lbfgs",
        lr=1.0,
        steps=50,
        tol=0.0,  # count any strict decrease as progress: we want rounding-level accuracy
        patience=5,
        progress=False,
    )
    # Strongly convex quadratic: the loss resolves the minimiser only to ~sqrt(float64 eps) ≈ 1e-8
    # (a smaller error changes the loss by less than its rounding), so that is what we ask.
    torch.testing.assert_close(res.params, w_star, atol=1e-7, rtol=0)


def test_structure_is_preserved_and_inputs_are_not_modified() -> None:
    start = {"a": torch.tensor([5.0]), "b": torch.tensor([[-4.0, 1.0]])}
    before = {k: v.clone() for k, v in start.items()}
    res = minimize(
        lambda p: (p["a"] - 1).pow(2).sum() + (p["b"] + 2).pow(2).sum(),
        start,
        optimizer="lbfgs",
        lr=1.0,
        steps=30,
        progress=False,
    )
    assert set(res.params) == {"a", "b"}
    torch.testing.assert_close(res.params["a"], torch.tensor([1.0]))
    torch.testing.assert_close(res.params["b"], torch.tensor([[-2.0, -2.0]]))
    for k in start:
        assert torch.equal(start[k], before[k])
        assert not res.params[k].requires_grad


def test_parametrization_per_entry_and_raw_params() -> None:
    # x = exp(r) > 0 everywhere; the unconstrained minimiser of (x + 1)^2 is x -> 0+
    res = minimize(
        lambda p: (p[0] + 1).pow(2).sum() + (p[1] - 3).pow(2).sum(),
        [torch.zeros(1), torch.zeros(1)],
        parametrization=[torch.exp, None],
        lr=0.1,
        steps=300,
        patience=None,
        progress=False,
    )
    assert res.params[0].item() > 0
    assert res.params[0].item() < 0.05
    torch.testing.assert_close(res.params[0], torch.exp(res.raw_params[0]))
    torch.testing.assert_close(res.params[1], torch.tensor([3.0]), atol=1e-3, rtol=0)


def test_early_stopping_on_a_flat_objective() -> None:
    res = minimize(lambda x: 0 * x.sum() + 1.0, torch.zeros(3), patience=5, progress=False)
    assert res.status is Status.CONVERGED
    # step 0 sets the reference; steps 1..5 show no improvement; stop after evaluating step 5
    assert res.steps == 5
    assert len(res.history) == 6


def test_target_and_callback_stop() -> None:
    res = minimize(
        lambda x: (x - 3).pow(2).sum(), torch.zeros(1), target=1e-4, lr=0.1, progress=False
    )
    assert res.status is Status.TARGET_REACHED
    assert res.loss <= 1e-4
    seen: list[int] = []

    def cb(step: int, loss: float, params: torch.Tensor) -> bool:
        seen.append(step)
        assert isinstance(params, torch.Tensor)
        return step == 3

    res = minimize(lambda x: (x - 3).pow(2).sum(), torch.zeros(1), callback=cb, progress=False)
    assert res.status is Status.STOPPED_BY_CALLBACK
    assert seen == [0, 1, 2, 3]
    assert res.steps == 3


def test_keep_best_returns_the_best_iterate_of_a_diverging_run() -> None:
    # plain gradient descent with step 1.5 on x^2 maps x -> -2x: the loss grows 4x per step
    kwargs = {
        "optimizer": lambda ps: torch.optim.SGD(ps, lr=1.5),
        "steps": 8,
        "patience": None,
        "progress": False,
    }
    x0 = torch.tensor([1.0])
    best = minimize(lambda x: x.pow(2).sum(), x0, **kwargs)
    assert best.history[-1] > best.history[0]  # it really diverged
    assert best.best_step == 0
    assert best.loss == pytest.approx(1.0)
    torch.testing.assert_close(best.params, x0)
    last = minimize(lambda x: x.pow(2).sum(), x0, keep_best=False, **kwargs)
    assert last.loss == pytest.approx(last.history[-1])
    assert last.best_step == 8
    assert last.params.pow(2).sum().item() == pytest.approx(last.history[-1])


def test_lbfgs_keep_best_returns_the_point_that_was_evaluated() -> None:
    res = minimize(
        lambda x: (x - 2).pow(4).sum(),
        torch.zeros(2),
        optimizer="lbfgs",
        lr=1.0,
        steps=7,
        patience=None,
        progress=False,
    )
    assert res.loss == pytest.approx((res.params - 2).pow(4).sum().item(), rel=1e-6)


def test_nan_raises_and_keeps_the_best_finite_iterate() -> None:
    calls = 0

    def f(x: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        value = (x - 1).pow(2).sum()
        return value * math.nan if calls > 4 else value

    with pytest.raises(NonFiniteError, match="step 4") as info:
        minimize(f, torch.zeros(2), lr=0.1, progress=False)
    partial = info.value.result
    assert partial is not None
    assert partial.status is Status.NON_FINITE
    assert partial.best_step == 3
    assert math.isfinite(partial.loss)
    assert partial.loss < partial.initial_loss

    with pytest.raises(NonFiniteError) as info:
        minimize(lambda x: x.sum() * math.inf, torch.zeros(2), progress=False)
    assert info.value.result is None


def test_steps_zero_evaluates_the_start() -> None:
    res = minimize(lambda x: x.pow(2).sum(), torch.tensor([2.0]), steps=0, progress=False)
    assert res.steps == 0
    assert res.loss == 4.0
    assert res.status is Status.MAX_ITERATIONS


def test_dtype_override_and_custom_optimizer_factory() -> None:
    made: list[torch.optim.Optimizer] = []

    def factory(params: list[torch.Tensor]) -> torch.optim.Optimizer:
        opt = torch.optim.SGD(params, lr=0.1)
        made.append(opt)
        return opt

    res = minimize(
        lambda x: (x - 1).pow(2).sum(),
        torch.zeros(2),
        optimizer=factory,
        dtype="float64",
        steps=200,
        progress=False,
    )
    assert len(made) == 1
    assert res.params.dtype == torch.float64
    torch.testing.assert_close(res.params, torch.ones(2, dtype=torch.float64))


def test_cosine_schedule_decays_the_learning_rate() -> None:
    lrs: list[float] = []
    holder: dict[str, torch.optim.Optimizer] = {}

    def factory(params: list[torch.Tensor]) -> torch.optim.Optimizer:
        holder["opt"] = torch.optim.SGD(params, lr=0.2)
        return holder["opt"]

    def cb(step: int, loss: float, params: torch.Tensor) -> None:
        lrs.append(holder["opt"].param_groups[0]["lr"])

    minimize(
        lambda x: x.pow(2).sum(),
        torch.ones(1),
        optimizer=factory,
        lr_schedule="cosine",
        steps=10,
        patience=None,
        callback=cb,
        progress=False,
    )
    assert lrs[0] == pytest.approx(0.2)
    assert lrs == sorted(lrs, reverse=True)
    assert lrs[-1] < 0.01


def test_loss_not_depending_on_params_is_an_error() -> None:
    with pytest.raises(ValueError, match="does not depend"):
        minimize(lambda x: torch.tensor(1.0), torch.zeros(2), progress=False)


def test_non_scalar_loss_is_an_error() -> None:
    with pytest.raises(ValueError, match="scalar"):
        minimize(lambda x: x * 2, torch.zeros(2), progress=False)


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("steps", -1, ValueError),
        ("steps", 2.5, ValueError),
        ("optimizer", "newton", ValueError),
        ("optimizer", 3, TypeError),
        ("lr", 0.0, ValueError),
        ("lr", math.nan, ValueError),
        ("lr_schedule", "linear", ValueError),
        ("patience", 0, ValueError),
        ("tol", -1.0, ValueError),
        ("max_grad_norm", 0.0, ValueError),
    ],
)
def test_config_validation_names_the_field(field: str, value: object, error: type) -> None:
    with pytest.raises(error, match=field):
        MinimizeConfig(**{field: value})  # type: ignore[arg-type]


def test_unknown_override_is_rejected() -> None:
    with pytest.raises(TypeError, match="stepz"):
        minimize(lambda x: x.sum(), torch.zeros(1), stepz=3)


def test_progress_bar_can_be_turned_off(capsys: pytest.CaptureFixture[str]) -> None:
    minimize(lambda x: x.pow(2).sum(), torch.ones(1), steps=5, progress=True, desc="fit-xyz")
    assert "fit-xyz" in capsys.readouterr().err
    minimize(lambda x: x.pow(2).sum(), torch.ones(1), steps=5, progress=False, desc="fit-xyz")
    assert "fit-xyz" not in capsys.readouterr().err


def test_top_level_alias() -> None:
    assert coreopt.minimize is minimize


@pytest.mark.gpu
def test_cuda_device_override_moves_parameters() -> None:
    A, B, Q_star = procrustes_problem(
        8, 20, seed=2, dtype=torch.float32, device=torch.device("cuda")
    )
    res = minimize(
        lambda Q: (Q @ A - B).pow(2).sum(),
        torch.zeros(8, 8),
        device="cuda",
        parametrization=lambda W: cayley(skew(W)),
        lr=0.05,
        steps=3000,
        progress=False,
    )
    assert res.params.device.type == "cuda"
    # float32: Cayley orthogonality to ~1e-6, minimiser to ~1e-4 (loss rounding ~1e-7 relative)
    torch.testing.assert_close(res.params, Q_star, atol=2e-4, rtol=0)
