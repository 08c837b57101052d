"""The Cayley map from skew-symmetric (skew-Hermitian) matrices to orthogonal (unitary) ones.

For a skew matrix A (A^H = -A), Q = (I + A)^{-1}(I - A) is orthogonal, and every orthogonal Q
without eigenvalue -1 arises this way. Rectangular isometries use the Schur-complement form
(derived in :func:`cayley`), which solves only a ``min(m, n)``-sized system: this is the form the
per-frequency convolution of Trockman & Kolter (ICLR 2021) needs.
"""

from __future__ import annotations

from typing import Any

import torch


def skew(W: torch.Tensor) -> torch.Tensor:
    """The skew-Hermitian part ``W - W^H`` of a batch of square matrices.

    Args:
        W: tensor of shape ``(..., n, n)``, real or complex.

    Returns:
        ``A`` of the same shape with ``A^H = -A``.
    """
    _check_matrix(W, "W")
    if W.shape[-1] != W.shape[-2]:
        raise ValueError(f"skew needs square matrices, got shape {tuple(W.shape)}")
    return W - W.mH


def cayley(A: torch.Tensor) -> torch.Tensor:
    """Cayley transform of a batch of (generalised) skew matrices, with orthonormal columns or rows.

    * Square ``A`` (``(..., n, n)``, skew: ``A^H = -A``): returns ``(I + A)^{-1}(I - A)``, unitary.
    * Tall ``A`` (``(..., m, n)``, ``m > n``): the upper ``n x n`` block ``U`` and lower block ``V``
      define the skew ``m x m`` matrix ``[[U - U^H, -V^H], [V, 0]]``; the first ``n`` columns of its
      Cayley transform are returned, an ``m x n`` isometry (``Q^H Q = I_n``). With
      ``M = I + U - U^H + V^H V`` they are ``[2 M^{-1} - I; -2 V M^{-1}]``, so only an
      ``n x n`` system is solved (Schur complement). Note that for tall input only ``U - U^H`` is
      used from the upper block, so ``U`` need not be skew.
    * Wide ``A`` (``m < n``): the transpose rule, ``cayley(A^T)^T`` (orthonormal rows).

    Uses ``torch.linalg.solve`` (LU), never an explicit inverse. Differentiable, with an analytic
    backward that reuses the output (``M^{-1} = (Q_top + I)/2``), so the backward costs a few
    batched matmuls and no second solve. Batched over leading dimensions;
    float32/float64/complex64/complex128; CPU and CUDA.

    Args:
        A: tensor of shape ``(..., m, n)``. For square input it must be skew (use :func:`skew`).

    Returns:
        ``Q`` of shape ``(..., m, n)``.

    Examples:
        >>> import torch
        >>> from coreopt.manifold import cayley, skew
        >>> Q = cayley(skew(torch.randn(5, 5, dtype=torch.float64)))
        >>> torch.allclose(Q.T @ Q, torch.eye(5, dtype=torch.float64))
        True
    """
    _check_matrix(A, "A")
    m, n = A.shape[-2], A.shape[-1]
    if m < n:
        return cayley(A.mT).mT
    out: torch.Tensor = _Cayley.apply(A)
    return out


def _cayley_forward(A: torch.Tensor) -> torch.Tensor:
    """``Q`` for a square or tall ``A`` (see :func:`cayley`)."""
    m, n = A.shape[-2], A.shape[-1]
    eye = torch.eye(n, dtype=A.dtype, device=A.device)
    if m == n:
        # (I + A) Q = (I - A); note Q + I = 2 (I + A)^{-1}, which the backward uses.
        return torch.linalg.solve(eye + A, eye - A)
    U, V = A[..., :n, :], A[..., n:, :]
    # Conjugates materialised (conj_physical), not lazy views: compiled graphs may run custom
    # ops (coreopt.manifold.conv's cached spectrum) with the lazy-conjugation key excluded.
    Vh = V.mT.conj_physical()
    M = eye + (U - U.mT.conj_physical()) + Vh @ V
    X = torch.linalg.solve(M, eye.expand_as(M))
    return torch.cat((2 * X - eye, -2 * (V @ X)), dim=-2)


class _Cayley(torch.autograd.Function):
    """The Cayley map of a square or tall ``A`` with an analytic backward.

    Both cases are ``Q = f(X)`` with ``X = M^{-1}`` recovered from the output, so the backward is
    a handful of batched matmuls and needs no second factorisation. With ``G`` the incoming
    gradient (PyTorch's conjugate-Wirtinger convention, so the real rules hold with ``^T -> ^H``):

    * square: ``Q = 2X - I``, ``M = I + A``: ``grad_A = -2 X^H G X^H``.
    * tall: ``Q = [2X - I; -2 V X]``, ``M = I + U - U^H + V^H V``: with
      ``G_X = 2 G_top - 2 V^H G_bot`` and ``G_M = -X^H G_X X^H``,
      ``grad_U = G_M - G_M^H`` and ``grad_V = -2 G_bot X^H + V (G_M + G_M^H)``.

    Forward mode (``jvp``): ``dX = -X dM X``; square ``dQ = 2 dX``, tall
    ``dQ = [2 dX; -2 (dV X + V dX)]``.

    Forward, backward and jvp are plain batched torch operations on the trailing two dimensions,
    so ``torch.func.vmap`` derives the batching rule by running them on batched tensors
    (``generate_vmap_rule``), and ``jacrev``, ``jacfwd`` and ``hessian`` work.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(A: torch.Tensor) -> torch.Tensor:
        return _cayley_forward(A)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        (A,) = inputs
        ctx.save_for_backward(A, output)
        ctx.save_for_forward(A, output)

    @staticmethod
    def backward(ctx: Any, G: torch.Tensor) -> torch.Tensor:
        A, Q = ctx.saved_tensors
        m, n = A.shape[-2], A.shape[-1]
        eye = torch.eye(n, dtype=Q.dtype, device=Q.device)
        Xh = ((Q[..., :n, :] + eye) / 2).mH.contiguous()  # X^H, X = M^{-1}
        G = G.contiguous()
        if m == n:
            return -2 * (Xh @ G @ Xh)
        V = A[..., n:, :]
        G_top, G_bot = G[..., :n, :], G[..., n:, :]
        G_M = -(Xh @ (2 * G_top - 2 * (V.mH @ G_bot)) @ Xh)
        grad_U = G_M - G_M.mH
        grad_V = -2 * (G_bot @ Xh) + V @ (G_M + G_M.mH)
        return torch.cat((grad_U, grad_V), dim=-2)

    @staticmethod
    def jvp(ctx: Any, dA: torch.Tensor) -> torch.Tensor:
        # dX = -X dM X: square dQ = 2 dX; tall dQ = [2 dX; -2 (dV X + V dX)].
        A, Q = ctx.saved_tensors
        m, n = A.shape[-2], A.shape[-1]
        eye = torch.eye(n, dtype=Q.dtype, device=Q.device)
        X = (Q[..., :n, :] + eye) / 2
        if m == n:
            return -2 * (X @ dA @ X)
        V, dU, dV = A[..., n:, :], dA[..., :n, :], dA[..., n:, :]
        dX = -(X @ (dU - dU.mH + dV.mH @ V + V.mH @ dV) @ X)
        return torch.cat((2 * dX, -2 * (dV @ X + V @ dX)), dim=-2)


def _check_matrix(X: torch.Tensor, name: str) -> None:
    if not isinstance(X, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(X).__name__}")
    if X.ndim < 2:
        raise ValueError(f"{name} must have shape (..., m, n), got {tuple(X.shape)}")
    if not (X.is_floating_point() or X.is_complex()):
        raise TypeError(f"{name} must be floating or complex, got {X.dtype}")
