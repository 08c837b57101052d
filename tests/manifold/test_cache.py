"""The eval-mode cache of the Cayley layers sees every write, also those through ``.data``."""

from collections.abc import Callable

import pytest
import torch

from coreopt.manifold import CayleyConv2d, CayleyLinear


def _conv() -> tuple[torch.nn.Module, torch.Tensor]:
    return CayleyConv2d(4, 4, 3).double(), torch.randn(2, 4, 6, 7, dtype=torch.float64)


def _linear() -> tuple[torch.nn.Module, torch.Tensor]:
    return CayleyLinear(5, 5).double(), torch.randn(3, 5, dtype=torch.float64)


WRITES: dict[str, Callable[[torch.nn.Module], None]] = {
    "weight.data.copy_": lambda m: m.weight.data.copy_(torch.randn_like(m.weight)),
    "alpha.data.fill_": lambda m: m.alpha.data.fill_(0.3 * float(m.alpha)),
    "weight.data.clamp_": lambda m: m.weight.data.clamp_(-0.01, 0.01),
    "ema lerp_ on .data": lambda m: m.weight.data.lerp_(torch.randn_like(m.weight), 0.5),
}


@pytest.mark.parametrize("make", [_conv, _linear], ids=["conv", "linear"])
@pytest.mark.parametrize("write", list(WRITES), ids=list(WRITES))
def test_writes_through_data_invalidate_the_eval_cache(
    make: Callable[[], tuple[torch.nn.Module, torch.Tensor]], write: str
) -> None:
    torch.manual_seed(0)
    layer, x = make()
    layer.eval()
    with torch.no_grad():
        before = layer(x)
        assert len(layer._cache) == 1
    WRITES[write](layer)
    # An independent reference: a fresh layer holding the written parameters (empty cache).
    fresh, _ = make()
    fresh.load_state_dict(layer.state_dict())
    fresh.eval()
    with torch.no_grad():
        after = layer(x)
        expected = fresh(x)
    assert not torch.allclose(before, expected)
    torch.testing.assert_close(after, expected, rtol=0, atol=1e-12)


def test_unchanged_parameters_reuse_the_cached_weight() -> None:
    layer, x = _conv()
    layer.eval()
    with torch.no_grad():
        layer(x)
        Q = layer._cache._entries[(6, 7)]
        layer(x)
    assert layer._cache._entries[(6, 7)] is Q


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_refused_with_a_clear_message(dtype: torch.dtype) -> None:
    with pytest.raises(TypeError, match="float32 or float64"):
        CayleyConv2d(4, 4, 3, dtype=dtype)
    with pytest.raises(TypeError, match="float32 or float64"):
        CayleyLinear(4, 4, dtype=dtype)
    # Cast after construction: refused at the first forward, not with a bare torch error.
    conv = CayleyConv2d(4, 4, 3).to(dtype)
    with pytest.raises(TypeError, match="CayleyConv2d parameters must be float32"):
        conv(torch.randn(1, 4, 6, 6, dtype=dtype))
    lin = CayleyLinear(4, 4).to(dtype)
    with pytest.raises(TypeError, match="CayleyLinear parameters must be float32"):
        lin(torch.randn(2, 4, dtype=dtype))
