"""Bit-plane packing of integer codes: exactly ``b`` bits per weight for every ``b`` (3 included).

Codes are taken 8 at a time; each chunk of 8 codes becomes ``b`` bytes, byte ``p`` holding bit
``p`` of the 8 codes (bit ``j`` of the byte is bit ``p`` of code ``j``). A row of ``n`` codes
(``n`` a multiple of 8) is stored in ``n / 8 * b`` bytes: ``b`` bits per code with no padding for
odd widths. Packing is a few broadcast shifts; unpacking is one table lookup
(:func:`torch.nn.functional.embedding` over a ``256 b x 8`` table) and a sum over the ``b`` planes,
on any device and with no custom kernel.
"""

from __future__ import annotations

import sys
import threading

import torch
import torch.nn.functional as F

_LUT_CACHE: dict[tuple[int, torch.device], torch.Tensor] = {}
_LUT_LOCK = threading.Lock()


_LITTLE_ENDIAN = sys.byteorder == "little"


def _lut(bits: int, device: torch.device) -> torch.Tensor:
    """Lookup table with ``256 * bits`` rows; row ``p * 256 + v`` holds the 8 bytes
    ``((v >> j) & 1) << p`` (``j < 8``), as one little-endian ``int64`` (shape ``(256 b, 1)``) or,
    on a big-endian host, as 8 ``uint8`` columns."""
    key = (bits, device)
    with _LUT_LOCK:
        t = _LUT_CACHE.get(key)
        if t is None:
            v = torch.arange(256).view(1, 256, 1)
            j = torch.arange(8).view(1, 1, 8)
            p = torch.arange(bits).view(bits, 1, 1)
            planes = ((v >> j) & 1) << p  # (bits, 256, 8)
            if _LITTLE_ENDIAN:
                t = (planes << (8 * j)).sum(-1).reshape(bits * 256, 1)
            else:
                t = planes.reshape(bits * 256, 8).to(torch.uint8)
            t = t.to(device)
            _LUT_CACHE[key] = t
    return t


def packed_shape(shape: tuple[int, ...], bits: int) -> tuple[int, ...]:
    """Shape of the packed tensor for codes of ``shape``: ``(..., n // 8, bits)``."""
    return (*shape[:-1], shape[-1] // 8, bits)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes in ``[0, 2^bits)`` into ``uint8`` bit planes.

    Args:
        codes: integer tensor of shape ``(..., n)`` with ``n`` a multiple of 8.
        bits: bits per code, 1 to 8.

    Returns:
        ``uint8`` tensor of shape ``(..., n // 8, bits)``: ``bits / 8`` bytes per code.

    Raises:
        ValueError: ``n`` is not a multiple of 8, ``bits`` is out of range, or a code does not fit.
        TypeError: ``codes`` is not an integer tensor.

    Examples:
        >>> import torch
        >>> codes = torch.randint(0, 8, (4, 64), dtype=torch.uint8)
        >>> packed = pack_bits(codes, 3)
        >>> tuple(packed.shape), packed.numel() * 8 / codes.numel()  # bits per code
        ((4, 8, 3), 3.0)
        >>> torch.equal(unpack_bits(packed, 3), codes)
        True
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an int in 1..8, got {bits!r}")
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise TypeError(f"codes must be an integer tensor, got {codes.dtype}")
    n = codes.shape[-1] if codes.ndim else 0
    if codes.ndim == 0 or n % 8:
        raise ValueError(f"the last dimension ({n}) must be a positive multiple of 8 to pack")
    c = codes.to(torch.int32)
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= (1 << bits)):
        raise ValueError(f"codes must lie in [0, {(1 << bits) - 1}] for bits={bits}")
    c = c.reshape(*codes.shape[:-1], n // 8, 1, 8)
    planes = torch.arange(bits, dtype=torch.int32, device=codes.device).view(bits, 1)
    bit = (c >> planes) & 1  # (..., n/8, bits, 8)
    weights = 1 << torch.arange(8, dtype=torch.int32, device=codes.device)
    return (bit * weights).sum(-1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: ``(..., n // 8, bits)`` ``uint8`` -> ``(..., n)`` codes."""
    if packed.dtype != torch.uint8 or packed.ndim < 2 or packed.shape[-1] != bits:
        raise ValueError(
            f"expected a uint8 tensor of shape (..., n/8, {bits}), got {packed.dtype} "
            f"{tuple(packed.shape)}"
        )
    offsets = torch.arange(bits, dtype=torch.int32, device=packed.device) * 256
    planes = F.embedding(packed.int() + offsets, _lut(bits, packed.device))
    if _LITTLE_ENDIAN:
        # One int64 per 8 codes: the planes' bytes never carry (their sum is at most 2^b - 1).
        words = planes.sum(-2)  # (..., n/8, 1) int64
        codes = words.view(torch.uint8)
    else:  # pragma: no cover - big-endian hosts
        codes = planes.sum(-2, dtype=torch.uint8)  # (..., n/8, 8)
    return codes.reshape(*packed.shape[:-2], packed.shape[-2] * 8).to(dtype)
