import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from coreopt.manifold import CayleyConv2d, kernel_spectrum

# Tolerances on the singular values of the materialised Jacobian. The operator is orthogonal in
# exact arithmetic; rounding enters through the LU solve per frequency (well conditioned: I + A
# has singular values >= 1 for skew A) and two FFTs of length <= 100, each losing O(log n) ulps:
# measured ~3e-7 in float32 and ~2e-15 in float64, so 1e-5 and 1e-10 leave ample margin while
# still catching any structural error (a wrong conjugate frequency gives errors of order 1).
SV_TOL = {torch.float32: 1e-5, torch.float64: 1e-10}

# (in, out, kernel, stride, H, W): square/tall/wide channels, odd and non-square inputs, a kernel
# larger than the input (taps wrap), stride 2 and 3.
CASES = [
    (3, 3, 3, 1, 8, 8),
    (2, 5, 3, 1, 7, 6),
    (5, 2, 5, 1, 5, 9),
    (4, 4, 1, 1, 3, 3),
    (2, 2, 7, 1, 4, 5),
    (2, 3, 3, 2, 6, 8),
    (3, 6, 3, 2, 6, 10),
    (1, 4, 2, 3, 6, 9),
]


def _jacobian(layer: nn.Module, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    x = torch.randn(shape, dtype=dtype, device=layer.weight.device)
    J = torch.autograd.functional.jacobian(layer, x)
    return J.reshape(-1, x.numel())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("cin", "cout", "k", "s", "H", "W"), CASES)
def test_jacobian_singular_values_are_one(
    cin: int, cout: int, k: int, s: int, H: int, W: int, dtype: torch.dtype
) -> None:
    torch.manual_seed(0)
    layer = CayleyConv2d(cin, cout, k, stride=s, bias=False, dtype=dtype)
    J = _jacobian(layer, (cin, H, W), dtype)
    assert J.shape == (cout * (H // s) * (W // s), cin * H * W)
    sv = torch.linalg.svdvals(J.double())
    assert sv.numel() == min(J.shape)
    assert (sv - 1).abs().max().item() < SV_TOL[dtype]


@pytest.mark.parametrize(("groups", "dilation"), [(2, 1), (1, 2), (3, (1, 2))])
def test_groups_and_dilation_are_orthogonal_too(groups: int, dilation: int | tuple) -> None:
    layer = CayleyConv2d(6, 6, 3, bias=False, groups=groups, dilation=dilation).double()
    J = _jacobian(layer, (6, 5, 6), torch.float64)
    assert (torch.linalg.svdvals(J) - 1).abs().max().item() < 1e-10
    if groups > 1:  # block diagonal: no coupling between groups
        c = 6 // groups
        x = torch.zeros(1, 6, 5, 6, dtype=torch.float64)
        x[:, :c] = torch.randn(1, c, 5, 6, dtype=torch.float64)
        assert layer(x)[:, c:].abs().max() < 1e-12


def test_spectrum_is_the_circular_cross_correlation() -> None:
    # The per-frequency matrices reproduce nn.Conv2d with circular padding (odd kernels).
    w = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    x = torch.randn(2, 3, 7, 10, dtype=torch.float64)
    ref = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), w)
    Y = torch.einsum("uvoc,bcuv->bouv", kernel_spectrum(w, 7, 10), torch.fft.rfft2(x))
    torch.testing.assert_close(torch.fft.irfft2(Y, s=(7, 10)), ref)


def test_output_shapes_and_norm_preservation_on_changing_sizes() -> None:
    layer = CayleyConv2d(3, 8, 3, bias=False).double()
    for H, W in [(32, 32), (7, 9), (1, 1), (16, 5)]:
        x = torch.randn(2, 3, H, W, dtype=torch.float64)
        y = layer(x)
        assert y.shape == (2, 8, H, W)
        torch.testing.assert_close(y.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1))
    assert layer(torch.randn(3, 4, 4, dtype=torch.float64)).shape == (8, 4, 4)  # unbatched
    strided = CayleyConv2d(3, 4, 3, stride=2)
    assert strided(torch.randn(2, 3, 10, 6)).shape == (2, 4, 5, 3)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="divisible by 2"):
        CayleyConv2d(3, 3, 3, stride=2)(torch.randn(1, 3, 5, 6))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        CayleyConv2d(3, 3, 3)(torch.randn(1, 4, 5, 6))
    with pytest.raises(TypeError, match="dtype"):
        CayleyConv2d(3, 3, 3)(torch.randn(1, 3, 5, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="groups"):
        CayleyConv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="stride"):
        CayleyConv2d(3, 4, 3, stride=0)
    with pytest.raises(TypeError, match="kernel_size"):
        CayleyConv2d(3, 4, "3")  # type: ignore[arg-type]


def test_alpha_is_a_parameter_from_init_and_gradients_reach_everything() -> None:
    layer = CayleyConv2d(4, 6, 3, stride=2)
    names = {n for n, _ in layer.named_parameters()}
    assert names == {"weight", "alpha", "bias"}
    torch.testing.assert_close(layer.alpha.detach(), layer.weight.detach().norm())
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)  # built before any forward
    x = torch.randn(2, 4, 8, 6)
    (layer(x) ** 3).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name
    before = layer.alpha.detach().clone()
    opt.step()
    assert not torch.equal(before, layer.alpha.detach())


def test_gradcheck_float64() -> None:
    layer = CayleyConv2d(1, 2, 2, stride=1).double()
    x = torch.randn(1, 1, 3, 4, dtype=torch.float64, requires_grad=True)
    params = (layer.weight, layer.alpha)

    def f(x: torch.Tensor, w: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(layer, {"weight": w, "alpha": a}, (x,))

    assert torch.autograd.gradcheck(f, (x, *params), fast_mode=True)


def test_eval_cache_equals_fresh_and_is_invalidated_by_a_step() -> None:
    torch.manual_seed(0)
    layer = CayleyConv2d(4, 4, 3)
    x = torch.randn(2, 4, 6, 7)
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)
    layer.eval()
    with torch.no_grad():
        y_cached = layer(x)
        assert len(layer._cache) == 1
        y_again = layer(x)
    with torch.enable_grad():
        y_fresh = layer(x)  # parameters require grad: computed afresh, not from the cache
    torch.testing.assert_close(y_cached, y_fresh, rtol=0, atol=0)
    torch.testing.assert_close(y_again, y_cached, rtol=0, atol=0)
    with torch.no_grad():
        layer(torch.randn(2, 4, 5, 5))  # another size: another entry
        assert len(layer._cache) == 2

    # A training step (in eval mode even) changes the parameters in place: the cache is stale.
    opt.zero_grad()
    layer(x).square().sum().backward()
    opt.step()
    with torch.no_grad():
        y_after = layer(x)
    expected = layer._compute_spectrum(6, 7)
    torch.testing.assert_close(layer.spectrum(6, 7), expected, rtol=0, atol=0)
    assert not torch.allclose(y_after, y_cached)
    layer.train()
    assert len(layer._cache) == 0
    with torch.no_grad():
        torch.testing.assert_close(layer(x), y_after, rtol=0, atol=0)


def test_cache_invalidated_by_load_state_dict_and_checkpoint_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    a = CayleyConv2d(3, 5, 3, stride=2)
    b = CayleyConv2d(3, 5, 3, stride=2)
    x = torch.randn(2, 3, 8, 8)
    b.eval()
    with torch.no_grad():
        stale = b(x)
    path = tmp_path / "layer.pt"
    torch.save(a.state_dict(), path)
    b.load_state_dict(torch.load(path))
    assert len(b._cache) == 0
    a.eval()
    with torch.no_grad():
        torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)
        assert not torch.allclose(b(x), stale)
    # Copying the whole module works too (deepcopy keeps parameters and a cache of its own).
    c = copy.deepcopy(a)
    with torch.no_grad():
        torch.testing.assert_close(c(x), a(x), rtol=0, atol=0)


def test_no_cache_when_gradients_are_needed_in_eval() -> None:
    layer = CayleyConv2d(2, 2, 3).eval()
    x = torch.randn(1, 2, 4, 4)
    layer(x).sum().backward()
    assert layer.weight.grad is not None
    assert len(layer._cache) == 0
    layer.requires_grad_(False)
    x.requires_grad_(True)
    layer(x).sum().backward()  # frozen parameters: cache used, input gradients still flow
    assert len(layer._cache) == 1
    assert x.grad is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_devices_and_dtypes(device: torch.device, dtype: torch.dtype) -> None:
    layer = CayleyConv2d(3, 4, 3, stride=2, device=device, dtype=dtype)
    x = torch.randn(2, 3, 6, 10, device=device, dtype=dtype)
    y = layer(x)
    assert y.device.type == device.type
    assert y.dtype == dtype
    y.sum().backward()
    assert layer.weight.grad is not None


@pytest.mark.gpu
def test_cuda_matches_cpu() -> None:
    torch.manual_seed(0)
    layer = CayleyConv2d(4, 6, 3, stride=2).double()
    x = torch.randn(2, 4, 8, 10, dtype=torch.float64)
    gpu = copy.deepcopy(layer).cuda()
    torch.testing.assert_close(gpu(x.cuda()).cpu(), layer(x))
    J = _jacobian(gpu.float(), (4, 8, 10), torch.float32)
    assert (torch.linalg.svdvals(J.double()) - 1).abs().max().item() < SV_TOL[torch.float32]


def test_torch_compile_matches_eager() -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = CayleyConv2d(3, 4, 3, stride=2)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    x = torch.randn(2, 3, 6, 8)
    y = compiled(x)
    torch.testing.assert_close(y, layer(x))
    y.sum().backward()
    assert layer.alpha.grad is not None
    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), layer(x))


@pytest.mark.slow
def test_torch_compile_inductor() -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = CayleyConv2d(4, 4, 3)
    compiled = torch.compile(layer)
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(compiled(x), layer(x), rtol=1e-4, atol=1e-5)
    compiled(x).sum().backward()
    assert layer.weight.grad is not None
