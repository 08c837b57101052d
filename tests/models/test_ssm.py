import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from coreopt.init import mimetic_ssm_, verify
from coreopt.models import Mamba2Mixer, ssd_chunked, ssd_naive


def _inputs(b: int, L: int, H: int, P: int, G: int, N: int, seed: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, L, H, P, generator=g, dtype=dtype)
    dt = torch.rand(b, L, H, generator=g, dtype=dtype) * 0.5
    A = -torch.rand(H, generator=g, dtype=dtype) * 3
    B = torch.randn(b, L, G, N, generator=g, dtype=dtype)
    C = torch.randn(b, L, G, N, generator=g, dtype=dtype)
    return x, dt, A, B, C


@settings(max_examples=25, deadline=None)
@given(
    L=st.integers(1, 40),
    chunk=st.integers(1, 16),
    G=st.sampled_from([1, 2]),
    P=st.integers(1, 4),
    N=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_chunked_dual_form_equals_the_recurrence(
    L: int, chunk: int, G: int, P: int, N: int, seed: int
) -> None:
    x, dt, A, B, C = _inputs(2, L, 4, P, G, N, seed, torch.float64)
    s0 = torch.randn(2, 4, P, N, dtype=torch.float64)
    y1, S1 = ssd_naive(x, dt, A, B, C, s0)
    y2, S2 = ssd_chunked(x, dt, A, B, C, chunk, s0)
    torch.testing.assert_close(y2, y1, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(S2, S1, rtol=1e-10, atol=1e-10)


def test_chunked_form_float32_and_gradients(device: torch.device) -> None:
    x, dt, A, B, C = (t.to(device) for t in _inputs(2, 33, 4, 3, 2, 5, 0, torch.float32))
    A.requires_grad_(True)
    y1, _ = ssd_naive(x, dt, A, B, C)
    y2, _ = ssd_chunked(x, dt, A, B, C, 8)
    torch.testing.assert_close(y2, y1, rtol=1e-4, atol=1e-4)
    (g1,) = torch.autograd.grad(y1.square().sum(), A)
    (g2,) = torch.autograd.grad(y2.square().sum(), A)
    torch.testing.assert_close(g2, g1, rtol=1e-3, atol=1e-3)


def test_mixer_chunked_equals_naive_and_is_causal() -> None:
    torch.manual_seed(0)
    m = Mamba2Mixer(32, d_state=8, headdim=8, ngroups=2, chunk_size=8).double()
    u = torch.randn(2, 21, 32, dtype=torch.float64)
    y = m(u)
    torch.testing.assert_close(y, m(u, naive=True), rtol=1e-10, atol=1e-10)
    u2 = u.clone()
    u2[:, 15:] = torch.randn(2, 6, 32, dtype=torch.float64)
    torch.testing.assert_close(m(u2)[:, :15], y[:, :15])  # the future does not leak back
    # default init (mamba-ssm): -A in [1, 16], softplus(dt_bias) in [1e-3, 1e-1]
    assert m.A_log.exp().min() >= 1
    assert m.A_log.exp().max() <= 16
    assert not verify(m).ok  # the default init is not the mimetic one
    mimetic_ssm_(m, seed=0)
    assert verify(m).ok
    torch.testing.assert_close(m(u), m(u, naive=True), rtol=1e-10, atol=1e-10)
