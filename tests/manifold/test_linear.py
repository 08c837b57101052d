import pytest
import torch

from coreopt.manifold import CayleyLinear


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("fin", "fout"), [(6, 6), (4, 9), (9, 4), (1, 3)])
def test_weight_is_orthogonal(
    fin: int, fout: int, dtype: torch.dtype, device: torch.device
) -> None:
    layer = CayleyLinear(fin, fout, device=device, dtype=dtype)
    Q = layer.orthogonal_weight()
    G = Q.T @ Q if fout >= fin else Q @ Q.T
    eye = torch.eye(min(fin, fout), dtype=dtype, device=device)
    # float32: one LU solve of a system with singular values >= 1 -> a few ulps (~1e-6).
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert (G - eye).abs().max() < tol
    y = layer(torch.randn(5, 2, fin, dtype=dtype, device=device))
    assert y.shape == (5, 2, fout)


def test_gradients_reach_every_parameter_and_alpha_exists_at_init() -> None:
    layer = CayleyLinear(5, 3)
    assert {n for n, _ in layer.named_parameters()} == {"weight", "alpha", "bias"}
    torch.testing.assert_close(layer.alpha.detach(), layer.weight.detach().norm())
    (layer(torch.randn(4, 5)) ** 3).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def test_eval_weight_is_never_stale() -> None:
    torch.manual_seed(0)
    layer = CayleyLinear(4, 4)
    x = torch.randn(3, 4)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer.eval()
    with torch.no_grad():
        before = layer(x)
        torch.testing.assert_close(layer(x), before, rtol=0, atol=0)
    opt.zero_grad()
    layer(x).sum().backward()
    opt.step()
    with torch.no_grad():
        after = layer(x)
        expected = torch.nn.functional.linear(x, layer._compute_weight(), layer.bias)
    torch.testing.assert_close(after, expected, rtol=0, atol=0)
    assert not torch.allclose(after, before)
    fresh = CayleyLinear(4, 4).eval()
    with torch.no_grad():
        fresh(x)
    fresh.load_state_dict(layer.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), after, rtol=0, atol=0)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\(\*, 4\)"):
        CayleyLinear(4, 2)(torch.randn(3, 5))
    with pytest.raises(ValueError, match="in_features"):
        CayleyLinear(0, 2)
