import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from coreopt.manifold import cayley, skew

# Tolerances: the Cayley map is orthogonal in exact arithmetic; one LU solve of a well-conditioned
# system (I + A has singular values >= 1 for skew A) loses a few ulps: ~1e-6 in float32,
# ~1e-14 in float64.
TOL = {torch.float32: 2e-5, torch.float64: 1e-12, torch.complex64: 2e-5, torch.complex128: 1e-12}
DTYPES = list(TOL)


def _orthonormality_error(Q: torch.Tensor) -> float:
    m, n = Q.shape[-2:]
    G = Q.mH @ Q if m >= n else Q @ Q.mH
    eye = torch.eye(min(m, n), dtype=Q.dtype, device=Q.device)
    return (G - eye).abs().max().item()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 5), (3, 7, 7), (9, 4), (2, 4, 9), (1, 1), (6, 1)])
def test_columns_or_rows_are_orthonormal(
    shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> None:
    g = torch.Generator().manual_seed(0)
    W = torch.randn(shape, generator=g, dtype=dtype).to(device)
    A = skew(W) if shape[-1] == shape[-2] else W
    Q = cayley(A)
    assert Q.shape == A.shape
    assert Q.dtype == dtype
    assert _orthonormality_error(Q) < TOL[dtype]


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(1, 12),
    n=st.integers(1, 12),
    batch=st.integers(0, 3),
    scale=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_shapes_and_scales(m: int, n: int, batch: int, scale: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    shape = (batch, m, n) if batch else (m, n)
    W = scale * torch.randn(shape, generator=g, dtype=torch.float64)
    Q = cayley(skew(W) if m == n else W)
    assert _orthonormality_error(Q) < 1e-9  # float64, condition of I + A grows with scale


def test_square_case_is_the_textbook_formula() -> None:
    A = skew(torch.randn(6, 6, dtype=torch.float64))
    eye = torch.eye(6, dtype=torch.float64)
    expected = torch.linalg.inv(eye + A) @ (eye - A)
    torch.testing.assert_close(cayley(A), expected, atol=1e-13, rtol=0)
    torch.testing.assert_close(cayley(torch.zeros(4, 4)), torch.eye(4))


def test_tall_case_equals_first_columns_of_the_full_skew_matrix() -> None:
    # The Schur-complement shortcut must agree with the Cayley map of the embedded skew matrix.
    m, n = 9, 4
    W = torch.randn(m, n, dtype=torch.complex128)
    U, V = W[:n], W[n:]
    full = torch.zeros(m, m, dtype=W.dtype)
    full[:n, :n] = U - U.mH
    full[n:, :n] = V
    full[:n, n:] = -V.mH
    assert torch.allclose(full.mH, -full)
    torch.testing.assert_close(cayley(W), cayley(full)[:, :n], atol=1e-12, rtol=0)


def test_wide_case_is_the_transpose_of_the_tall_case() -> None:
    W = torch.randn(3, 8, dtype=torch.float64)
    torch.testing.assert_close(cayley(W), cayley(W.mT).mT)


def test_gradients_flow_and_match_finite_differences() -> None:
    W = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    target = torch.randn(7, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda w: (cayley(w) * target).sum(), (W,))


def test_inverse_map_recovers_the_skew_matrix() -> None:
    # For orthogonal Q without eigenvalue -1, A = (I - Q)(I + Q)^{-1} inverts the map.
    A = skew(0.5 * torch.randn(5, 5, dtype=torch.float64))
    Q = cayley(A)
    eye = torch.eye(5, dtype=torch.float64)
    A_back = torch.linalg.solve(eye + Q, eye - Q, left=False)
    torch.testing.assert_close(A_back, A, atol=1e-12, rtol=0)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="square"):
        skew(torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"\(\.\.\., m, n\)"):
        cayley(torch.zeros(3))
    with pytest.raises(TypeError, match="floating"):
        cayley(torch.zeros(3, 3, dtype=torch.int64))


@pytest.mark.parametrize("shape", [(4, 4), (6, 3), (3, 6)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_vmap_matches_the_loop(shape: tuple[int, int], dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    W = torch.randn(5, 2, *shape, generator=g, dtype=dtype)
    A = skew(W) if shape[0] == shape[1] else W
    loop = torch.stack([torch.stack([cayley(a) for a in row]) for row in A])
    torch.testing.assert_close(torch.func.vmap(cayley)(A), loop, rtol=0, atol=1e-14)
    torch.testing.assert_close(
        torch.func.vmap(torch.func.vmap(cayley), in_dims=1, out_dims=1)(A), loop, rtol=0, atol=1e-14
    )
    # The backward runs batched too: per-sample gradients.
    T = torch.randn(shape, generator=g, dtype=torch.float64)

    def loss(a: torch.Tensor) -> torch.Tensor:
        q = cayley(a)
        return ((q.real if q.is_complex() else q) * T).sum()

    per_sample = torch.func.vmap(torch.func.vmap(torch.func.grad(loss)))(A)
    expected = torch.stack([torch.stack([torch.func.grad(loss)(a) for a in row]) for row in A])
    torch.testing.assert_close(per_sample, expected, rtol=0, atol=1e-13)


@pytest.mark.parametrize("shape", [(4, 4), (6, 3), (3, 6)])
def test_forward_mode_jacobian_matches_reverse_mode(shape: tuple[int, int]) -> None:
    W = torch.randn(shape, dtype=torch.float64)
    A = skew(W) if shape[0] == shape[1] else W
    J_fwd = torch.func.jacfwd(cayley)(A)
    J_rev = torch.func.jacrev(cayley)(A)
    torch.testing.assert_close(J_fwd, J_rev, rtol=0, atol=1e-12)
    dA = torch.randn(shape, dtype=torch.float64)
    eps = 1e-6
    fd = (cayley(A + eps * dA) - cayley(A - eps * dA)) / (2 * eps)
    _, tangent = torch.func.jvp(cayley, (A,), (dA,))
    torch.testing.assert_close(tangent, fd, rtol=0, atol=1e-8)
