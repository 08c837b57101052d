"""``QuantizedLinear``: a packed b-bit linear layer with a dequantizing forward."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from coreopt.quant.format import QuantFormat, dequantize_codes, rtn
from coreopt.quant.packing import pack_bits, unpack_bits
from coreopt.quant.transforms import apply_blocks, right_blocks


class QuantizedLinear(nn.Module):
    """``y = Ŵ (T x) + b`` with ``Ŵ`` stored as packed b-bit codes per group and ``T`` an optional
    block-diagonal input transform.

    Storage (all registered buffers, so ``state_dict``/safetensors see them):

    * ``qweight``: ``uint8`` bit planes, ``(out, in_pad / 8, bits)`` (exactly ``bits`` bits per
      weight, see :mod:`coreopt.quant.packing`);
    * ``scale``, ``zero``: ``(out, in_pad / group_size)`` in the format's ``scale_dtype``;
    * ``transform``: ``(in / block, block, block)`` in the format's ``scale_dtype``, or absent;
    * ``bias``: the original bias (a frozen parameter), or absent.

    ``in_pad`` is ``in_features`` rounded up to a multiple of ``group_size``: a layer whose input
    width is not a multiple of the group size is stored with zero columns appended (the padding
    costs storage only). The forward dequantizes the whole weight in the input's dtype on the
    input's device (CPU, CUDA, any torch device) and calls :func:`torch.nn.functional.linear`.

    Examples:
        >>> import torch
        >>> lin = torch.nn.Linear(64, 16)
        >>> q = QuantizedLinear.from_linear(lin, QuantFormat(bits=8, group_size=32))
        >>> x = torch.randn(3, 64)
        >>> torch.allclose(q(x), lin(x), atol=0.05)
        True
    """

    qweight: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    transform: torch.Tensor | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        fmt: QuantFormat,
        *,
        bias: bool = True,
        transform_block: int = 0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(
                f"in_features and out_features must be positive, got {in_features}, {out_features}"
            )
        g = fmt.group_size
        self.in_features = in_features
        self.out_features = out_features
        self.fmt = fmt
        self.in_padded = -(-in_features // g) * g
        if transform_block and in_features % transform_block:
            raise ValueError(
                f"transform block {transform_block} does not divide in_features={in_features}"
            )
        self.transform_block = int(transform_block)
        self.register_buffer(
            "qweight",
            torch.zeros(
                out_features, self.in_padded // 8, fmt.bits, dtype=torch.uint8, device=device
            ),
        )
        ng = self.in_padded // g
        self.register_buffer(
            "scale", torch.ones(out_features, ng, dtype=fmt.scale_dtype, device=device)
        )
        self.register_buffer(
            "zero", torch.zeros(out_features, ng, dtype=fmt.scale_dtype, device=device)
        )
        if transform_block:
            k = in_features // transform_block
            eye = torch.eye(transform_block, dtype=fmt.scale_dtype, device=device)
            eye = eye.expand(k, -1, -1).clone()
            self.register_buffer("transform", eye)
        else:
            self.transform = None
        if bias:
            self.bias: nn.Parameter | None = nn.Parameter(
                torch.zeros(out_features, dtype=dtype, device=device), requires_grad=False
            )
        else:
            self.register_parameter("bias", None)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_codes(
        cls,
        codes: torch.Tensor,
        scale: torch.Tensor,
        zero: torch.Tensor,
        fmt: QuantFormat,
        *,
        in_features: int | None = None,
        bias: torch.Tensor | None = None,
        transform: torch.Tensor | None = None,
    ) -> QuantizedLinear:
        """Build from integer codes ``(out, in_pad)``, per-group ``scale``/``zero`` ``(out,
        in_pad / g)``, an optional bias and an optional transform ``(k, b, b)``."""
        out, n_pad = codes.shape
        n = n_pad if in_features is None else in_features
        block = 0 if transform is None else transform.shape[-1]
        dtype = bias.dtype if bias is not None else torch.float32
        m = cls(
            n,
            out,
            fmt,
            bias=bias is not None,
            transform_block=block,
            dtype=dtype,
            device=codes.device,
        )
        if m.in_padded != n_pad:
            raise ValueError(f"codes have {n_pad} columns, expected {m.in_padded}")
        m.qweight.copy_(pack_bits(codes, fmt.bits))
        m.scale.copy_(scale.to(fmt.scale_dtype))
        m.zero.copy_(zero.to(fmt.scale_dtype))
        if transform is not None:
            assert m.transform is not None
            m.transform.copy_(transform.to(fmt.scale_dtype))
        if bias is not None:
            assert m.bias is not None
            m.bias.data.copy_(bias.detach())
        return m

    @classmethod
    def from_linear(cls, linear: nn.Linear, fmt: QuantFormat) -> QuantizedLinear:
        """Round-to-nearest quantization of an ``nn.Linear`` (min-max scales, no transform)."""
        W = linear.weight.detach().float()
        W = pad_columns(W, fmt.group_size)
        codes, scale, zero = rtn(W, fmt)
        return cls.from_codes(
            codes, scale, zero, fmt, in_features=linear.in_features, bias=linear.bias
        )

    # ------------------------------------------------------------------ weights
    @property
    def bits(self) -> int:
        return self.fmt.bits

    @property
    def group_size(self) -> int:
        return self.fmt.group_size

    def codes(self) -> torch.Tensor:
        """The unpacked integer codes, ``(out, in_pad)`` ``uint8``."""
        return unpack_bits(self.qweight, self.fmt.bits)

    def stored_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dequantized stored weight ``Ŵ`` (``(out, in)``; acts on ``T x``)."""
        W = dequantize_codes(
            unpack_bits(self.qweight, self.fmt.bits),
            self.scale,
            self.zero,
            self.fmt.group_size,
            torch.float32,
        )
        return W[:, : self.in_features].to(dtype)

    def effective_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dense weight this layer applies to its raw input: ``Ŵ T``."""
        W = self.stored_weight(torch.float32)
        if self.transform is not None:
            W = right_blocks(W, self.transform.float())
        return W.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        W = self.stored_weight(x.dtype)
        if self.transform is not None:
            x = apply_blocks(x, self.transform.to(x.dtype))
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, W, bias)

    # ------------------------------------------------------------------ reporting
    def memory_bytes(self) -> int:
        """Bytes of every buffer and parameter this layer stores."""
        total = sum(b.numel() * b.element_size() for b in self.buffers(recurse=False))
        if self.bias is not None:
            total += self.bias.numel() * self.bias.element_size()
        return int(total)

    def config_dict(self) -> dict[str, Any]:
        """What is needed to rebuild an empty layer of this shape (saved as metadata)."""
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bits": self.fmt.bits,
            "group_size": self.fmt.group_size,
            "scale_dtype": str(self.fmt.scale_dtype).removeprefix("torch."),
            "bias": self.bias is not None,
            "transform_block": self.transform_block,
            "bias_dtype": None
            if self.bias is None
            else str(self.bias.dtype).removeprefix("torch."),
        }

    def extra_repr(self) -> str:
        t = f", transform_block={self.transform_block}" if self.transform_block else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bits={self.fmt.bits}, group_size={self.fmt.group_size}, "
            f"bias={self.bias is not None}{t}"
        )


def pad_columns(W: torch.Tensor, multiple: int) -> torch.Tensor:
    """Append zero columns to ``W`` so its width is a multiple of ``multiple``."""
    n = W.shape[-1]
    pad = (-n) % multiple
    return F.pad(W, (0, pad)) if pad else W
