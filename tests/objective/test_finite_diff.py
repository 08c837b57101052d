import pytest
import torch
from torch.func import functional_call, jvp

from coreopt.objective import central_difference, directional_derivative, perturbed


def small_mlp(seed: int, dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)).to(
        dtype
    )


def exact_directional(model: torch.nn.Module, x: torch.Tensor, direction: list[torch.Tensor]):
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach() for p in model.parameters())

    def f(*ps: torch.Tensor) -> torch.Tensor:
        return functional_call(model, dict(zip(names, ps, strict=True)), (x,))

    return jvp(f, params, tuple(direction))[1]


def unit_direction(model: torch.nn.Module, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    d = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in model.parameters()]
    norm = torch.sqrt(sum((t**2).sum() for t in d))
    return [t / norm for t in d]


@pytest.mark.parametrize(
    ("dtype", "eps", "atol"), [(torch.float64, 1e-5, 1e-9), (torch.float32, 1e-2, 2e-4)]
)
def test_matches_the_exact_jvp(dtype: torch.dtype, eps: float, atol: float) -> None:
    # Along a unit direction, central differences err by O(eps^2 |f'''|) plus rounding
    # O(ulp(f) / eps): eps=1e-5 in float64 gives ~1e-10; eps=1e-2 in float32 balances ~1e-5
    # truncation and ~1e-5 rounding.
    model = small_mlp(0, dtype)
    x = torch.randn(5, 6, dtype=dtype)
    direction = unit_direction(model, 1)
    exact = exact_directional(model, x, direction)
    approx = directional_derivative(lambda: model(x), list(model.parameters()), direction, eps)
    torch.testing.assert_close(approx, exact, atol=atol, rtol=0)


def test_error_shrinks_quadratically_with_eps() -> None:
    model = small_mlp(2, torch.float64)
    x = torch.randn(3, 6, dtype=torch.float64)
    direction = unit_direction(model, 3)
    exact = exact_directional(model, x, direction)
    errs = [
        (directional_derivative(lambda: model(x), list(model.parameters()), direction, e) - exact)
        .abs()
        .max()
        .item()
        for e in (1.0, 1e-1)
    ]
    assert errs[1] < errs[0] / 50  # ~100x for a second-order method


def test_copy_restore_is_bit_exact_and_subtract_is_close() -> None:
    model = small_mlp(3, torch.float32)
    before = [p.detach().clone() for p in model.parameters()]
    direction = [torch.randn_like(p) for p in model.parameters()]
    x = torch.randn(2, 6)
    directional_derivative(lambda: model(x), list(model.parameters()), direction, 0.37)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    directional_derivative(
        lambda: model(x), list(model.parameters()), direction, 0.37, restore="subtract"
    )
    for p, b in zip(model.parameters(), before, strict=True):
        # add then subtract 0.37*d: error bounded by a couple of ulps of the entries involved
        torch.testing.assert_close(p.detach(), b, atol=1e-6, rtol=1e-6)


def test_parameters_are_restored_when_fn_raises() -> None:
    w = torch.ones(3)
    seen: list[torch.Tensor] = []

    def fail_inside() -> None:
        with perturbed([w], [torch.ones(3)], 0.5):
            seen.append(w.clone())
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_inside()
    assert torch.equal(seen[0], torch.full((3,), 1.5))
    assert torch.equal(w, torch.ones(3))


def test_central_difference_on_a_cubic_is_exact_up_to_eps_squared() -> None:
    x = torch.tensor([1.0, 2.0], dtype=torch.float64)
    d = torch.tensor([1.0, -1.0], dtype=torch.float64)
    eps = 1e-3
    out = central_difference(lambda t: (t**3).sum(), x, d, eps)
    # d/de (x+ed)^3 summed = 3x^2·d; the central difference adds exactly eps^2 · sum(d^3)
    expected = (3 * x**2 * d).sum() + eps**2 * (d**3).sum()
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=0)


def test_bad_inputs() -> None:
    w = torch.zeros(3)
    with pytest.raises(ValueError, match="eps"):
        directional_derivative(lambda: w, [w], [w], eps=0)
    with pytest.raises(ValueError, match="shape"):
        directional_derivative(lambda: w, [w], [torch.zeros(4)])
    with pytest.raises(ValueError, match="2 direction"):
        directional_derivative(lambda: w, [w], [w, w])
    with pytest.raises(ValueError, match="shape"):
        central_difference(torch.sin, w, torch.zeros(2))
    with pytest.raises(ValueError, match="restore"):
        directional_derivative(lambda: w, [w], [w], restore="undo")  # type: ignore[arg-type]
