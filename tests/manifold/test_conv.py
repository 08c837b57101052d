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
        # Training mode never forms Q (it solves against the batch): equal up to rounding.
        torch.testing.assert_close(layer(x), y_after, rtol=0, atol=1e-5)


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


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_torch_compile_matches_eager(backend: str) -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = CayleyConv2d(3, 4, 3, stride=2)
    compiled = torch.compile(layer, backend=backend, fullgraph=True)
    x = torch.randn(2, 3, 6, 8)
    y = compiled(x)
    torch.testing.assert_close(y, layer(x))
    y.sum().backward()
    assert layer.alpha.grad is not None
    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), layer(x))


@pytest.mark.parametrize(
    "backend", ["eager", "aot_eager", pytest.param("inductor", marks=pytest.mark.slow)]
)
@pytest.mark.parametrize(("cin", "cout", "s"), [(4, 4, 1), (3, 5, 2), (2, 5, 1)])
def test_compiled_eval_uses_the_cache_and_sees_parameter_updates(
    backend: str, cin: int, cout: int, s: int
) -> None:
    # A compiled graph cannot read the Python cache; an opaque op looks it up when the graph
    # runs, so it is reused across calls and invalidated by in-place parameter changes.
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = CayleyConv2d(cin, cout, 3, stride=s).eval()
    compiled = torch.compile(layer, backend=backend, fullgraph=True)
    x = torch.randn(2, cin, 6 * s, 8 * s)
    with torch.no_grad():
        y = compiled(x)
        assert len(layer._cache) == 1
        Q = layer._cache._entries[(6, 8)]
        torch.testing.assert_close(y, layer(x), rtol=1e-5, atol=1e-6)
        compiled(x)
        assert layer._cache._entries[(6, 8)] is Q  # reused, not recomputed
        layer.weight.mul_(-1.5)  # an in-place update (as optimizer.step or load_state_dict)
        y_new = compiled(x)
        assert layer._cache._entries[(6, 8)] is not Q
    torch.testing.assert_close(y_new, layer(x).detach(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(y_new, y)


def test_cached_spectrum_op_passes_opcheck() -> None:
    layer = CayleyConv2d(3, 5, 3, stride=2, groups=1).eval().requires_grad_(False)
    args = (layer.weight, layer.alpha, 4, 3, 1, 1, 1)
    torch.library.opcheck(torch.ops.coreopt.cayley_conv_spectrum.default, args)
    torch.testing.assert_close(
        torch.ops.coreopt.cayley_conv_spectrum(*args).mT, layer._compute_spectrum(4, 3)
    )


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


# The training forward never forms Q: it solves against the batch (3B < 2n) or applies M^{-1}
# (otherwise), with a hand-written backward; eval mode applies Q (cached or differentiable) with
# its own backward. Each is checked against finite differences over the input and every parameter.
GRAD_CASES = [
    # (in, out, k, stride, groups, B, H, W, mode)
    (4, 4, 3, 1, 1, 1, 5, 6, "train"),  # square, solve against the batch
    (2, 2, 3, 1, 1, 3, 4, 5, "train"),  # square, M^{-1} applied
    (4, 4, 3, 1, 2, 2, 4, 3, "train"),  # groups
    (2, 3, 2, 1, 1, 2, 3, 4, "train"),  # tall, M^{-1} applied
    (3, 6, 3, 1, 1, 1, 4, 4, "train"),  # tall, solve against the batch
    (6, 2, 3, 1, 1, 2, 3, 5, "train"),  # wide, M^{-1} applied
    (2, 3, 3, 2, 1, 1, 4, 6, "train"),  # stride 2: 8 -> 3, wide, solve against the batch
    (4, 6, 3, 1, 2, 1, 4, 4, "train"),  # groups, tall per group
    (3, 3, 3, 1, 1, 2, 5, 4, "eval"),
    (2, 5, 3, 1, 1, 2, 3, 4, "eval"),
]


@pytest.mark.parametrize(("cin", "cout", "k", "s", "g", "B", "H", "W", "mode"), GRAD_CASES)
def test_gradcheck_every_path(
    cin: int, cout: int, k: int, s: int, g: int, B: int, H: int, W: int, mode: str
) -> None:
    torch.manual_seed(0)
    layer = CayleyConv2d(cin, cout, k, stride=s, groups=g).double()
    with torch.no_grad():
        layer.bias.normal_()
    layer.train(mode == "train")
    names = [name for name, _ in layer.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())
    x = torch.randn(B, cin, H, W, dtype=torch.float64, requires_grad=True)

    def f(x: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(layer, dict(zip(names, ps, strict=True)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params), fast_mode=True)


@pytest.mark.parametrize(("cin", "cout", "k", "s", "H", "W"), CASES[:6])
def test_forward_operator_is_orthogonal_in_both_modes(
    cin: int, cout: int, k: int, s: int, H: int, W: int
) -> None:
    # The Jacobian tests above go through the backward; here the operator is materialised from
    # forward passes alone (the layer applied to every basis vector), in train and eval mode.
    torch.manual_seed(0)
    layer = CayleyConv2d(cin, cout, k, stride=s, bias=False).double()
    basis = torch.eye(cin * H * W, dtype=torch.float64).reshape(-1, cin, H, W)
    ops = []
    for mode in (True, False):
        layer.train(mode)
        with torch.no_grad():
            ops.append(layer(basis).reshape(basis.shape[0], -1).T)
        sv = torch.linalg.svdvals(ops[-1])
        assert (sv - 1).abs().max().item() < SV_TOL[torch.float64]
    torch.testing.assert_close(ops[0], ops[1], rtol=0, atol=1e-12)


def test_bias_gradient_and_value() -> None:
    torch.manual_seed(0)
    layer = CayleyConv2d(3, 3, 3).double()
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([1.0, -2.0, 0.5]))
        no_bias = CayleyConv2d(3, 3, 3, bias=False).double()
        no_bias.weight.copy_(layer.weight)
        no_bias.alpha.copy_(layer.alpha)
    for mode in (True, False):
        layer.train(mode)
        no_bias.train(mode)
        with torch.no_grad():
            diff = layer(x) - no_bias(x)
        torch.testing.assert_close(diff, layer.bias.view(1, -1, 1, 1).expand_as(diff))
        layer.zero_grad()
        G = torch.randn(2, 3, 5, 6, dtype=torch.float64)
        layer(x).backward(G)
        torch.testing.assert_close(layer.bias.grad, G.sum((0, 2, 3)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("cin", "cout", "s"), [(4, 4, 1), (3, 7, 1), (8, 3, 1), (4, 8, 2)])
def test_training_path_spectrum_is_unitary_and_equals_q(
    cin: int, cout: int, s: int, dtype: torch.dtype
) -> None:
    # The per-frequency matrices that training applies (LU solves, never Q) against Q_f.
    torch.manual_seed(0)
    layer = CayleyConv2d(cin, cout, 3, stride=s, dtype=dtype)
    Q = layer._compute_spectrum(6, 5)
    with torch.no_grad():
        for solve_batch in (True, False):
            T = layer._training_spectrum(6, 5, solve_batch)
            torch.testing.assert_close(T, Q, rtol=0, atol=10 * SV_TOL[dtype])
            sv = torch.linalg.svdvals(T.to(torch.complex128))
            assert (sv - 1).abs().max().item() < SV_TOL[dtype]
