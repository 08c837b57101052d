"""Block-diagonal input transforms: Hadamard, random signs, and their application.

A transform ``T = blockdiag(T_1, ..., T_k)`` with ``b x b`` blocks acts on a layer's input:
the runtime computes ``x' = T x`` (``b`` multiply-adds per input feature and token, that is a
relative overhead ``b / out_features`` over the matmul) and the stored weight is
``W' = W T^{-1}``, so ``W' x' = W x``. Blocks are stored as a ``(k, b, b)`` tensor.
"""

from __future__ import annotations

import math

import torch


def hadamard(
    n: int, *, dtype: torch.dtype = torch.float32, device: torch.device | None = None
) -> torch.Tensor:
    """The orthonormal Sylvester Hadamard matrix of order ``n`` (a power of two), ``H Hᵀ = I``.

    Examples:
        >>> import torch
        >>> H = hadamard(8, dtype=torch.float64)
        >>> torch.allclose(H @ H.T, torch.eye(8, dtype=torch.float64))
        True
    """
    if n < 1 or n & (n - 1):
        raise ValueError(f"hadamard needs a power of two, got {n}")
    H = torch.ones(1, 1, dtype=torch.float64)
    while H.shape[0] < n:
        H = torch.cat((torch.cat((H, H), 1), torch.cat((H, -H), 1)), 0)
    return (H / math.sqrt(n)).to(dtype=dtype, device=device)


def random_block_orthogonal(
    n_blocks: int,
    block: int,
    *,
    kind: str = "hadamard",
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
) -> torch.Tensor:
    """``n_blocks`` random orthogonal ``block x block`` matrices, shape ``(n_blocks, b, b)``.

    ``kind="hadamard"``: ``H diag(s)`` with independent random signs ``s`` per block (QuaRot's
    randomised Hadamard; ``block`` must be a power of two). ``kind="haar"``: Haar-random orthogonal
    blocks (QR of a Gaussian matrix with sign correction), for any block size. ``kind="identity"``.
    """
    if kind == "identity":
        eye = torch.eye(block, dtype=dtype, device=device)
        return eye.expand(n_blocks, block, block).clone()
    if kind == "hadamard":
        H = hadamard(block, dtype=torch.float64)
        signs = torch.randint(0, 2, (n_blocks, 1, block), generator=generator).to(torch.float64)
        return (H * (2 * signs - 1)).to(dtype=dtype, device=device)
    if kind == "haar":
        G = torch.randn(n_blocks, block, block, generator=generator, dtype=torch.float64)
        Q, R = torch.linalg.qr(G)
        Q = Q * torch.sign(torch.diagonal(R, dim1=-2, dim2=-1)).unsqueeze(-2)
        return Q.to(dtype=dtype, device=device)
    raise ValueError(f"kind={kind!r} is unknown; use 'hadamard', 'haar' or 'identity'")


def apply_blocks(x: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """``x' = T x`` for a block-diagonal ``T`` of shape ``(k, b, b)``, on the last dim of ``x``."""
    k, b, _ = T.shape
    xs = x.reshape(*x.shape[:-1], k, b)
    return torch.einsum("...kj,kij->...ki", xs, T).reshape(x.shape)


def right_blocks(W: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """``W @ blockdiag(T)`` for ``W`` of shape ``(out, k b)`` and ``T`` of shape ``(k, b, b)``."""
    k, b, _ = T.shape
    out = torch.einsum("okj,kji->oki", W.reshape(W.shape[0], k, b), T)
    return out.reshape(W.shape)


def block_diag(T: torch.Tensor) -> torch.Tensor:
    """The dense ``(k b, k b)`` matrix of the blocks ``(k, b, b)``."""
    return torch.block_diag(*T.unbind(0))
