"""Integer weight formats: b-bit asymmetric quantization per group of input columns.

A weight ``W`` of shape ``(out, in)`` is cut into groups of ``group_size`` consecutive input
columns. Each group ``w`` has a scale ``s > 0`` and a zero point ``z`` and is stored as integer
codes ``q = clamp(round(w / s) + z, 0, 2^b - 1)``; it dequantizes to ``(q - z) s``. The default
(min-max) fit takes ``s = (max(w, 0) - min(w, 0)) / (2^b - 1)`` and the *integer* zero point
``z = round(-min(w, 0) / s)``, so that ``0`` is always exactly representable (tiny weights round to
exactly zero, which matters for attention-sink channels, see ``docs/quant.md``). Scales and zero
points are stored as floats (``float16`` by default) and every function here rounds them to that
storage dtype *before* computing codes (scales upwards, which keeps ``|w - ŵ| <= s / 2`` for every
element), so what an optimizer sees is exactly what is stored.

Everything is plain torch and runs on any device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from coreopt.errors import CoreoptError

SUPPORTED_BITS: tuple[int, ...] = (2, 3, 4, 8)
"""Bit widths of the integer formats."""
SUPPORTED_GROUP_SIZES: tuple[int, ...] = (32, 64, 128)
"""Group sizes (input columns per scale/zero pair) the formats are tested with; any positive
multiple of 32 works."""


class UnsupportedFormatError(CoreoptError, ValueError):
    """Bits or group size outside what the packed formats support."""


@dataclass(frozen=True)
class QuantFormat:
    """A b-bit asymmetric per-group integer format.

    Attributes:
        bits: bits per weight, one of :data:`SUPPORTED_BITS`.
        group_size: input columns sharing one scale and zero point; a positive multiple of 32
            (32, 64 and 128 are the tested ones).
        scale_dtype: storage dtype of the scales and zero points (``float16``, ``bfloat16`` or
            ``float32``); 16-bit metadata costs ``32 / group_size`` bits per weight.
        zero_point: ``"integer"`` (default): ``z = round(-min(w, 0) / s)``, so ``0`` is exactly
            representable (tiny weights round to exactly 0); ``"float"``: ``z = -min(w, 0) / s``
            unrounded, the levels start at the group's minimum (the ``d q + m`` grid of GGUF's
            Q4_1, which a Q4_1 model's weights fit exactly), and ``0`` is in general not a level.
            Both store the same bytes (``z`` in ``scale_dtype``) and dequantize by ``(q - z) s``.

    Examples:
        >>> fmt = QuantFormat(bits=3, group_size=64)
        >>> fmt.levels, fmt.bits_per_weight
        (8, 3.5)
    """

    bits: int = 4
    group_size: int = 64
    scale_dtype: torch.dtype = torch.float16
    zero_point: Literal["integer", "float"] = "integer"

    def __post_init__(self) -> None:
        if (
            isinstance(self.bits, bool)
            or not isinstance(self.bits, int)
            or self.bits not in SUPPORTED_BITS
        ):
            raise UnsupportedFormatError(
                f"bits={self.bits!r} is not supported; expected one of {SUPPORTED_BITS}"
            )
        if (
            isinstance(self.group_size, bool)
            or not isinstance(self.group_size, int)
            or self.group_size < 32
            or self.group_size % 32
        ):
            raise UnsupportedFormatError(
                f"group_size={self.group_size!r} must be a positive multiple of 32 "
                f"(tested: {SUPPORTED_GROUP_SIZES})"
            )
        if self.scale_dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise UnsupportedFormatError(
                f"scale_dtype={self.scale_dtype} must be torch.float16, bfloat16 or float32"
            )
        if self.zero_point not in ("integer", "float"):
            raise UnsupportedFormatError(
                f"zero_point={self.zero_point!r} must be 'integer' or 'float'"
            )

    @property
    def levels(self) -> int:
        """Number of integer levels, ``2^bits``."""
        return 1 << self.bits

    @property
    def qmax(self) -> int:
        """Largest code, ``2^bits - 1``."""
        return (1 << self.bits) - 1

    @property
    def bits_per_weight(self) -> float:
        """Storage cost per weight including the scale and zero point of its group."""
        meta = 2 * torch.finfo(self.scale_dtype).bits
        return self.bits + meta / self.group_size


def _groups(W: torch.Tensor, group_size: int) -> torch.Tensor:
    """``(out, in)`` -> ``(out, in / group_size, group_size)`` (a view)."""
    out, n = W.shape
    if n % group_size:
        raise ValueError(
            f"in_features={n} is not a multiple of group_size={group_size}; pad the weight first"
        )
    return W.reshape(out, n // group_size, group_size)


def _store(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Round ``x`` to the storage dtype and back (exactly what will be stored)."""
    return x.to(dtype).to(x.dtype)


def _store_up(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Round ``x`` *up* to the storage dtype (a scale rounded down would break the RTN bound)."""
    s = x.to(dtype)
    up = torch.nextafter(s, torch.full_like(s, float("inf")))
    return torch.where(s.to(x.dtype) < x, up, s).to(x.dtype)


def _minmax_fit(
    lo: torch.Tensor,
    hi: torch.Tensor,
    fmt: QuantFormat,
    shrink: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The one min-max fit every quantizer here uses, from each group's smallest and largest
    element: the range ``[min(lo, 0), max(hi, 0)]`` (shrunk by ``shrink``), the raw scale
    ``(hi - lo) / (2^b - 1)`` (differentiable) and the stored scale (rounded *up* to the storage
    dtype; 1 where it underflows, i.e. all-zero groups).

    Returns:
        ``(lo, raw_scale, stored_scale, ok)``, all shaped like ``lo``; ``lo`` is the (shrunk)
        lower end of the range and ``ok`` is False where the scale underflowed.
    """
    lo = lo.clamp(max=0)
    hi = hi.clamp(min=0)
    if shrink is not None:
        lo = lo * shrink
        hi = hi * shrink
    raw = (hi - lo) / fmt.qmax
    stored = _store_up(raw.detach(), fmt.scale_dtype)
    ok = stored > 0
    return lo, raw, torch.where(ok, stored, torch.ones_like(stored)), ok


def minmax_params(
    W: torch.Tensor,
    fmt: QuantFormat,
    *,
    shrink: torch.Tensor | float | None = None,
    zero_point: Literal["integer", "float"] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of every group from its range (optionally shrunk), in storage precision.

    Args:
        W: ``(out, in)`` floating weight, ``in`` a multiple of ``fmt.group_size``.
        fmt: the format.
        shrink: factor in ``(0, 1]`` applied to the range (clipping); a float, or a tensor of shape
            ``(out, in / group_size)`` with one factor per group.
        zero_point: ``"integer"`` (0 exactly representable) or ``"float"`` (``z = -min / s``);
            ``None``: the format's (see :class:`QuantFormat`).

    Returns:
        ``(scale, zero)``, each ``(out, in / group_size)`` in ``W.dtype`` holding values exactly
        representable in ``fmt.scale_dtype``.
    """
    G = _groups(W, fmt.group_size)
    return range_params(G.amin(dim=-1), G.amax(dim=-1), fmt, shrink=shrink, zero_point=zero_point)


def range_params(
    lo: torch.Tensor,
    hi: torch.Tensor,
    fmt: QuantFormat,
    *,
    shrink: torch.Tensor | float | None = None,
    zero_point: Literal["integer", "float"] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`minmax_params` from each group's smallest (``lo``) and largest (``hi``) element,
    for callers that try several ``shrink`` factors on the same groups."""
    lo, _raw, scale, _ok = _minmax_fit(lo, hi, fmt, shrink)
    zero = -lo / scale
    if (zero_point or fmt.zero_point) == "integer":
        zero = zero.round()
    zero = _store(zero.clamp(0, fmt.qmax), fmt.scale_dtype)
    return scale, zero


def quantize_codes(
    W: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, fmt: QuantFormat
) -> torch.Tensor:
    """Integer codes ``clamp(round(W / s) + z, 0, 2^b - 1)`` as ``uint8``, shape of ``W``.

    ``round(W / s + z)`` (round half to even of the shifted value) is used, which equals
    ``round(W / s) + z`` for an integer zero point and is the nearest level for a float one.
    """
    G = _groups(W, fmt.group_size)
    q = torch.round(G / scale.unsqueeze(-1) + zero.unsqueeze(-1)).clamp_(0, fmt.qmax)
    return q.reshape(W.shape).to(torch.uint8)


def dequantize_codes(
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    group_size: int,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``(q - z) s`` per group; ``codes`` of shape ``(out, in)``, result in ``dtype`` (or the
    scale's dtype)."""
    dtype = dtype or scale.dtype
    out, n = codes.shape
    G = codes.reshape(out, n // group_size, group_size).to(dtype)
    W = (G - zero.to(dtype).unsqueeze(-1)) * scale.to(dtype).unsqueeze(-1)
    return W.reshape(out, n)


def rtn(
    W: torch.Tensor, fmt: QuantFormat, *, shrink: torch.Tensor | float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest with min-max scales: ``(codes, scale, zero)``.

    Every element satisfies ``|W - dequantize(codes)| <= scale / 2`` when ``shrink`` is ``None``.

    Examples:
        >>> import torch
        >>> W = torch.randn(8, 64)
        >>> fmt = QuantFormat(bits=4, group_size=32)
        >>> q, s, z = rtn(W, fmt)
        >>> err = (W - dequantize_codes(q, s, z, 32)).abs().reshape(8, 2, 32)
        >>> bool((err <= s.unsqueeze(-1) / 2 + 1e-6).all())
        True
    """
    scale, zero = minmax_params(W, fmt, shrink=shrink)
    return quantize_codes(W, scale, zero, fmt), scale, zero


def fake_quantize(
    W: torch.Tensor,
    fmt: QuantFormat,
    *,
    ste: bool = False,
    shrink: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Quantize and dequantize ``W`` (min-max RTN) in its own dtype.

    With ``ste=True`` the rounding is a straight-through estimator: the forward value is exactly the
    quantized weight, and the gradient flows through ``round`` as if it were the identity and
    through each group's scale, which depends on the group's extremes. Since ``(q - z) s =
    W + (q - y) s`` with ``y = W / s + z``, the gradient is ``∂L/∂W`` plus, at each group's largest
    and smallest element, ``± Σ_group (∂L/∂Ŵ ⊙ (q − y)) / (2^b − 1)``: transforms applied before
    the quantizer learn to shrink the groups' ranges. (A pure identity STE gives an orthogonal
    transform no gradient at all.) This closed form is implemented as one autograd node.
    """
    if ste and shrink is None:
        out: torch.Tensor = _FakeQuantSTE.apply(W, fmt)
        return out
    G = _groups(W, fmt.group_size)
    s_ = shrink.unsqueeze(-1) if isinstance(shrink, torch.Tensor) else shrink
    lo, raw, stored, ok = _minmax_fit(
        G.amin(dim=-1, keepdim=True), G.amax(dim=-1, keepdim=True), fmt, s_
    )
    # Forward value: the stored scale (1 where it underflows); gradient: through the range.
    scale = torch.where(ok, raw + (stored - raw.detach()), stored)
    x = G / scale
    zero = -lo / scale
    integer = fmt.zero_point == "integer"
    if ste:
        zq = zero.detach().round() if integer else zero.detach()
        zero = zero + (zq.clamp(0, fmt.qmax) - zero.detach())
        y = x + zero
        q = y + (y.detach().round().clamp(0, fmt.qmax) - y.detach())
    else:
        zero = (zero.round() if integer else zero).clamp(0, fmt.qmax)
        q = (x + zero).round().clamp(0, fmt.qmax)
    return ((q - zero) * scale).reshape(W.shape)


class _FakeQuantSTE(torch.autograd.Function):
    """Min-max fake quantization with the straight-through gradient of :func:`fake_quantize`."""

    @staticmethod
    def forward(W: torch.Tensor, fmt: QuantFormat) -> Any:
        G = _groups(W, fmt.group_size)
        lo_v, lo_i = G.min(dim=-1)
        hi_v, hi_i = G.max(dim=-1)
        lo, _raw, s, ok = _minmax_fit(lo_v, hi_v, fmt)
        s = s.unsqueeze(-1)
        z = -lo.unsqueeze(-1) / s
        z = (z.round() if fmt.zero_point == "integer" else z).clamp(0, fmt.qmax)
        y = G / s + z
        q = y.round().clamp(0, fmt.qmax)
        out = ((q - z) * s).reshape(W.shape)
        return out, q - y, lo_i, hi_i, (hi_v > 0) & ok, (lo_v < 0) & ok

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        _W, fmt = inputs
        _, r, lo_i, hi_i, hmask, lmask = output
        ctx.save_for_backward(r, lo_i, hi_i, hmask, lmask)
        ctx.qmax = fmt.qmax
        ctx.mark_non_differentiable(r, lo_i, hi_i, hmask, lmask)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor, *_: Any) -> tuple[torch.Tensor | None, None]:
        r, lo_i, hi_i, hmask, lmask = ctx.saved_tensors
        gG = grad.reshape(r.shape)
        ds = (gG * r).sum(-1) / ctx.qmax  # dL/d(range / qmax)
        out = gG.clone()
        out.scatter_add_(-1, hi_i.unsqueeze(-1), (ds * hmask).unsqueeze(-1))
        out.scatter_add_(-1, lo_i.unsqueeze(-1), (-ds * lmask).unsqueeze(-1))
        return out.reshape(grad.shape), None

    @classmethod
    def apply(cls, W: torch.Tensor, fmt: QuantFormat) -> torch.Tensor:
        out: torch.Tensor = super().apply(W, fmt)[0]
        return out
