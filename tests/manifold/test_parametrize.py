import pytest
import torch
from torch import nn

from coreopt.manifold import UnknownMapError, orthogonal


def _orth_error(Q: torch.Tensor) -> float:
    m, n = Q.shape[-2:]
    G = Q.mT @ Q if m >= n else Q @ Q.mT
    return (G - torch.eye(min(m, n), dtype=Q.dtype)).abs().max().item()


@pytest.mark.parametrize("map_", ["cayley", "matrix_exp"])
@pytest.mark.parametrize(("fin", "fout"), [(5, 5), (3, 7), (7, 3)])
def test_weight_is_orthogonal_and_state_dict_round_trips(map_: str, fin: int, fout: int) -> None:
    torch.manual_seed(0)
    layer = orthogonal(nn.Linear(fin, fout).double(), "weight", map=map_)
    assert _orth_error(layer.weight) < 1e-12
    opt = torch.optim.Adam(layer.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        layer(torch.randn(4, fin, dtype=torch.float64)).square().sum().backward()
        opt.step()
    assert _orth_error(layer.weight) < 1e-12
    fresh = orthogonal(nn.Linear(fin, fout).double(), "weight", map=map_)
    state = layer.state_dict()
    assert "parametrizations.weight.original" in state
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.weight, layer.weight, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(6, 6), (8, 3), (3, 8), (2, 5, 5)])
def test_assigning_an_orthogonal_matrix_inverts_the_cayley_map(shape: tuple[int, ...]) -> None:
    module = nn.Module()
    module.weight = nn.Parameter(torch.randn(shape, dtype=torch.float64))
    orthogonal(module, "weight", batched=True)
    target = torch.linalg.qr(torch.randn(shape, dtype=torch.float64)).Q
    if shape[-2] < shape[-1]:
        target = torch.linalg.qr(torch.randn(*shape[:-2], shape[-1], shape[-2]).double()).Q.mT
    if shape[-1] == shape[-2]:  # the Cayley map reaches rotations only: make det = +1
        sign = torch.linalg.det(target).sign()
        target = target.clone()
        target[..., 0] *= sign.unsqueeze(-1)
    module.weight = target
    torch.testing.assert_close(module.weight, target, atol=1e-10, rtol=0)


def test_custom_map_and_errors() -> None:
    layer = orthogonal(nn.Linear(4, 4), map=lambda X: torch.linalg.qr(X).Q)
    assert _orth_error(layer.weight.double()) < 1e-5
    with pytest.raises(UnknownMapError, match="householder"):
        orthogonal(nn.Linear(4, 4), map="householder")
    with pytest.raises(ValueError, match="bias"):
        orthogonal(nn.Linear(4, 4), "bias")
    with pytest.raises(ValueError, match="no tensor attribute"):
        orthogonal(nn.Linear(4, 4), "nope")
    layer = orthogonal(nn.Linear(3, 3).double())
    reflection = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="eigenvalue"):
        layer.weight = reflection


@pytest.mark.parametrize("map_", ["cayley", "matrix_exp"])
@pytest.mark.parametrize(("cin", "cout"), [(2, 8), (1, 16)])
def test_conv_weight_is_constrained_as_the_flattened_matrix(map_: str, cin: int, cout: int) -> None:
    # The layer's operator on a patch is W.flatten(1), (out, in·k·k): its singular values are
    # all 1 (a per-kernel constraint leaves them far from 1).
    torch.manual_seed(0)
    conv = orthogonal(nn.Conv2d(cin, cout, 3).double(), "weight", map=map_)
    W = conv.weight
    assert W.shape == (cout, cin, 3, 3)
    sv = torch.linalg.svdvals(W.flatten(1))
    torch.testing.assert_close(sv, torch.ones_like(sv), atol=1e-10, rtol=0)
    # Patches through the conv: ||conv(x)|| over one output pixel equals ||patch|| when tall
    # (orthonormal columns), <= otherwise.
    x = torch.randn(5, cin, 3, 3, dtype=torch.float64)
    y = torch.nn.functional.conv2d(x, W).flatten(1)
    if cout >= cin * 9:
        torch.testing.assert_close(y.norm(dim=1), x.flatten(1).norm(dim=1))
    else:
        assert (y.norm(dim=1) <= x.flatten(1).norm(dim=1) * (1 + 1e-12)).all()
    # Assigning an orthogonal flattened matrix inverts the map.
    target = torch.linalg.qr(torch.randn(cin * 9, cout, dtype=torch.float64)).Q.T
    if cout >= cin * 9:
        target = torch.linalg.qr(torch.randn(cout, cin * 9, dtype=torch.float64)).Q
    if map_ == "cayley":
        conv.weight = target.reshape(cout, cin, 3, 3)
        torch.testing.assert_close(conv.weight.flatten(1), target, atol=1e-10, rtol=0)


def test_batched_constrains_each_trailing_slice() -> None:
    module = nn.Module()
    module.weight = nn.Parameter(torch.randn(3, 6, 4, dtype=torch.float64))
    orthogonal(module, "weight", batched=True)
    for Q in module.weight:
        assert _orth_error(Q) < 1e-12
    with pytest.raises(TypeError, match="batched"):
        orthogonal(nn.Linear(3, 3), batched="yes")  # type: ignore[arg-type]
