import pytest
import torch

from coreopt.objective import Objective, vmap_objective
from coreopt.objective.protocol import flatten_params, match_structure, scalar_loss


def test_flatten_round_trips_each_structure() -> None:
    a, b = torch.zeros(2), torch.ones(3)
    for params in (a, [a, b], (a, b), {"a": a, "b": b}):
        flat, rebuild = flatten_params(params)
        again = rebuild(flat)
        assert type(again) is type(params)
        flat2, _ = flatten_params(again)
        assert all(x is y for x, y in zip(flat, flat2, strict=True))


@pytest.mark.parametrize(
    ("params", "error", "match"),
    [
        ([], ValueError, "empty"),
        ({"w": [1.0]}, TypeError, r"params\['w'\]"),
        ([torch.zeros(2, dtype=torch.int64)], TypeError, "int64"),
        ("weights", TypeError, "str"),
    ],
)
def test_flatten_rejects_bad_params(params: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        flatten_params(params)  # type: ignore[arg-type]


def test_match_structure_broadcasts_and_checks() -> None:
    params = {"a": torch.zeros(1), "b": torch.zeros(1)}
    assert match_structure(None, params, "x") == [None, None]
    assert match_structure(abs, params, "x") == [abs, abs]
    assert match_structure({"b": abs}, params, "x") == [None, abs]
    with pytest.raises(ValueError, match="unknown parameters"):
        match_structure({"c": abs}, params, "x")
    with pytest.raises(ValueError, match="2 entries"):
        match_structure([abs, abs], [torch.zeros(1)], "x")


def test_scalar_loss_validation() -> None:
    assert scalar_loss(torch.tensor([3.0])).shape == ()
    with pytest.raises(ValueError, match="scalar"):
        scalar_loss(torch.zeros(3))
    with pytest.raises(TypeError, match="Tensor"):
        scalar_loss(3.0)
    with pytest.raises(TypeError, match="complex"):
        scalar_loss(torch.tensor(1j))


def test_vmap_objective_matches_a_loop() -> None:
    g = torch.Generator().manual_seed(0)
    A = torch.randn(4, 3, generator=g)
    batch = torch.randn(7, 3, generator=g)

    def f(x: torch.Tensor) -> torch.Tensor:
        return (A @ x).pow(2).sum()

    assert isinstance(f, Objective)
    out = vmap_objective(f)(batch)
    assert out.shape == (7,)
    torch.testing.assert_close(out, torch.stack([f(x) for x in batch]))
