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


TRANSFORM_DTYPES: tuple[str, ...] = ("float16", "int8")
"""Storage formats of a layer's input transform (see :func:`store_transform`)."""

INT8_MAX = 127
"""Largest code of the symmetric int8 transform storage (codes in ``[-127, 127]``)."""


def transform_storage_bits(
    in_features: int, block: int, transform_dtype: str, meta_bits: int
) -> int:
    """Stored bits of one block-diagonal transform of ``in_features / block`` blocks ``b x b``.

    ``"float16"``: ``in · b`` numbers in the metadata dtype (``meta_bits`` each, 16 for float16);
    ``"int8"``: ``in · b`` 8-bit codes plus one row scale per block row, ``in`` numbers in the
    metadata dtype: ``in · b · 8 + in · meta_bits``.

    Examples:
        >>> transform_storage_bits(384, 64, "float16", 16) / (384 * 384)  # MiniLM, 64 x 64 blocks
        2.6666666666666665
        >>> transform_storage_bits(384, 64, "int8", 16) / (384 * 384)
        1.375
    """
    if transform_dtype == "float16":
        return in_features * block * meta_bits
    if transform_dtype == "int8":
        return in_features * block * 8 + in_features * meta_bits
    raise ValueError(
        f"transform_dtype={transform_dtype!r} is unknown; expected one of {TRANSFORM_DTYPES}"
    )


def int8_blocks(
    T: torch.Tensor, scale_dtype: torch.dtype = torch.float16
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 storage of transform blocks ``T`` ``(k, b, b)``: ``(codes, scale)``.

    One scale per block *row* (row ``r`` of block ``j`` makes output feature ``j b + r`` of
    ``x' = T x``): ``s = absmax(T[j, r, :]) / 127`` rounded *up* to ``scale_dtype`` (so no code
    is clipped and ``|T - q s| <= s / 2`` for every element), 1 for an all-zero row; codes
    ``q = round(T / s)`` in ``[-127, 127]``. Returns ``codes`` ``(k, b, b)`` ``int8`` and
    ``scale`` ``(k, b)`` in ``scale_dtype``. (CafeQ learns the transform; storing it in int8 with
    row scales is our choice.)

    Examples:
        >>> import torch
        >>> T = torch.randn(2, 4, 4)
        >>> q, s = int8_blocks(T)
        >>> err = (T - dequantize_int8_blocks(q, s)).abs()
        >>> bool((err <= s.float().unsqueeze(-1) / 2).all())
        True
    """
    T = T.detach().float()
    raw = T.abs().amax(dim=-1) / INT8_MAX
    s = raw.to(scale_dtype)
    up = torch.nextafter(s, torch.full_like(s, float("inf")))
    s = torch.where(s.float() < raw, up, s)
    s = torch.where(s.float() > 0, s, torch.ones_like(s))
    codes = torch.round(T / s.float().unsqueeze(-1)).clamp_(-INT8_MAX, INT8_MAX)
    return codes.to(torch.int8), s


def dequantize_int8_blocks(
    codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The blocks ``q s`` ``(k, b, b)`` of int8 ``codes`` ``(k, b, b)`` and row scales
    ``(k, b)``, computed in float32 (exact: a 7-bit code times an 11-bit float16 scale) and cast
    to ``dtype``."""
    return (codes.float() * scale.float().unsqueeze(-1)).to(dtype)


def store_transform(
    T: torch.Tensor, transform_dtype: str = "float16", scale_dtype: torch.dtype = torch.float16
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``T`` ``(k, b, b)`` rounded to its stored form: ``(T_q, row_scale)``.

    ``"float16"``: ``T`` rounded to ``scale_dtype`` (float16 by default), no row scale;
    ``"int8"``: :func:`int8_blocks`, ``T_q = q s`` and the row scales ``(k, b)``. ``T_q`` is in
    ``T``'s dtype (float32 for float16 inputs) and holds exactly what a layer stores: the
    quantizers fit the weight ``W T_q⁻¹`` to it, never to ``T``.
    """
    dtype = T.dtype if T.dtype in (torch.float32, torch.float64) else torch.float32
    if transform_dtype == "float16":
        return T.to(scale_dtype).to(dtype), None
    if transform_dtype == "int8":
        q, s = int8_blocks(T, scale_dtype)
        return dequantize_int8_blocks(q, s, dtype), s
    raise ValueError(
        f"transform_dtype={transform_dtype!r} is unknown; expected one of {TRANSFORM_DTYPES}"
    )
