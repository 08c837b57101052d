import pytest
import torch

from coreopt.manifold import GroupSort, L2NormPool2d, MaxMin, SpaceToDepth


@pytest.mark.parametrize("module", [GroupSort(2), GroupSort(4), MaxMin(), SpaceToDepth(2)])
def test_norm_preserving_permutations(module: torch.nn.Module) -> None:
    x = torch.randn(3, 8, 4, 6, dtype=torch.float64)
    y = module(x)
    torch.testing.assert_close(y.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1))
    torch.testing.assert_close(y.flatten().sort().values, x.flatten().sort().values)


def test_groupsort_sorts_each_group_descending() -> None:
    x = torch.tensor([[1.0, 3.0, 5.0, 2.0, 0.0, 4.0]])
    torch.testing.assert_close(GroupSort(3, dim=-1)(x), torch.tensor([[5.0, 3, 1, 4, 2, 0]]))
    torch.testing.assert_close(MaxMin(dim=-1)(x), torch.tensor([[3.0, 1, 5, 2, 4, 0]]))
    with pytest.raises(ValueError, match="divisible"):
        GroupSort(4, dim=-1)(x)


@pytest.mark.parametrize("k", [2, None])
def test_l2_pool_preserves_norm_and_is_1_lipschitz(k: int | None) -> None:
    pool = L2NormPool2d(k)
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    d = 1e-2 * torch.randn_like(x)
    torch.testing.assert_close(pool(x).flatten(1).norm(dim=1), x.flatten(1).norm(dim=1))
    assert ((pool(x + d) - pool(x)).flatten(1).norm(dim=1) <= d.flatten(1).norm(dim=1)).all()
    z = torch.zeros(1, 1, 2, 2, requires_grad=True)
    L2NormPool2d(2)(z).sum().backward()
    assert torch.isfinite(z.grad).all()


def test_bad_shapes() -> None:
    with pytest.raises(ValueError, match="divisible"):
        L2NormPool2d(2)(torch.randn(1, 1, 3, 4))
    with pytest.raises(ValueError, match="divisible"):
        SpaceToDepth(2)(torch.randn(1, 1, 3, 4))
