"""Runtime layouts for :class:`~coreopt.quant.QuantizedLinear`: packed low-bit matmuls.

The stored format (bit planes, exactly ``b`` bits per weight, see :mod:`coreopt.quant.packing`)
is compact on disk but no matmul reads it. At the first forward on a device, a layer repacks its
codes once into a *runtime layout* and keeps it (not saved, rebuilt after ``.to()`` or a load):

* ``"int4"`` (CPU): torch's weight-only kernel ``aten._weight_int4pack_mm_for_cpu``, which reads
  4-bit codes two per byte with one scale and one float offset per group of 32-256 inputs and
  computes ``y = x ((q - 8) s + m)ᵀ``. Our codes ``(q - z) s`` map exactly onto it: a ``b``-bit
  code (``b <= 4``) is stored as ``q + 8 - 2^(b-1)`` with ``m = (2^(b-1) - z) s`` (centred, so the
  offset stays small). An 8-bit code
  ``q = 16 h + l`` is split into two 4-bit codes along the input dimension: the kernel sees the
  input twice, ``[x, x]``, against ``[h | l]`` with scales ``16 s`` and ``s`` and offsets
  ``(128 - z) s`` and ``8 s``: still one call, exactly the stored weight. The kernel is fast with
  ``bfloat16`` activations (10-25x slower with ``float32``), so a ``float32`` input is computed in
  ``bfloat16`` by default and the output cast back (``compute_dtype`` changes it). The scales and
  offsets are held in the compute dtype, so in ``bfloat16`` the weight is the stored one up to
  ``bfloat16`` rounding of ``s`` and ``m`` (relative ``2^-9``).
* ``"dequant"``: unpack the codes and compute ``(q - z) s`` in the compute dtype on each call,
  then one matmul (no cached weight; for large batches, where the matmul dominates).
* ``"dense"``: the dequantized weight ``Ŵ`` cached in the compute dtype (the speed of an ordinary
  matmul in that dtype; ``2`` bytes per weight in ``bfloat16``), on any device.
* ``"reference"``: dequantize the whole weight on every call (what the layer did before; exact,
  differentiable, slow). Used whenever the input requires a gradient.

Runtime bytes (what the runtime layout holds in memory, on top of the stored buffers) and disk
bytes (the stored buffers) are reported separately by :func:`runtime_report`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

KERNELS: tuple[str, ...] = ("auto", "int4", "dequant", "dense", "reference")
"""Runtime kernels of :class:`~coreopt.quant.QuantizedLinear` (see the module docstring)."""

_INT4_GROUPS = (256, 128, 64, 32)


def int4_available(device: torch.device) -> bool:
    """Whether torch's CPU weight-only int4 kernel can run on ``device`` (CPU only)."""
    return device.type == "cpu" and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")


def kernel_group(group_size: int) -> int:
    """The largest group the int4 kernel accepts (256, 128, 64, 32) that divides ``group_size``;
    a format group of 512 is run as groups of 256 with repeated scales. 0 if none divides it."""
    for g in _INT4_GROUPS:
        if group_size % g == 0:
            return g
    return 0


@dataclass(frozen=True)
class Int4Layout:
    """Codes repacked for ``aten._weight_int4pack_mm_for_cpu``.

    Attributes:
        packed: ``uint8`` ``(n_pad, k_eff / 2)``, the kernel's own packing (``n_pad``: outputs
            rounded up to 16 with zero rows).
        scale_zeros: ``(k_eff / g, n_pad, 2)`` scales and offsets in the compute dtype.
        group: the kernel's group size ``g``.
        out_features: the real number of outputs (rows past it are sliced off).
        in_padded: the stored input width (the input is zero-padded to it).
        doubled: 8-bit codes split in two 4-bit halves (the input is repeated, ``k_eff = 2 k``).
    """

    packed: torch.Tensor
    scale_zeros: torch.Tensor
    group: int
    out_features: int
    in_padded: int
    doubled: bool

    def nbytes(self) -> int:
        """Bytes the layout holds."""
        return int(
            self.packed.numel() * self.packed.element_size()
            + self.scale_zeros.numel() * self.scale_zeros.element_size()
        )


def pack_int4(
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    bits: int,
    group_size: int,
    dtype: torch.dtype,
) -> Int4Layout:
    """Repack stored codes into the int4 kernel's layout.

    Args:
        codes: integer codes ``(out, in_pad)`` in ``[0, 2^bits)``.
        scale, zero: per-group scales and zero points ``(out, in_pad / group_size)``.
        bits: 2, 3, 4 or 8.
        group_size: the format's group size (a multiple of 32).
        dtype: compute dtype of the activations (``bfloat16`` is the fast one).

    Returns:
        An :class:`Int4Layout` whose :func:`int4_matmul` equals ``x Ŵᵀ`` with
        ``Ŵ = (codes - zero) scale`` (up to the rounding of scales and offsets to ``dtype``).

    Raises:
        ValueError: no kernel group divides ``group_size``, or ``bits`` is above 8.
    """
    g = kernel_group(group_size)
    if g == 0:
        raise ValueError(f"group_size={group_size} is not a multiple of 32: no int4 kernel group")
    if bits > 8:
        raise ValueError(f"bits={bits}: the int4 runtime handles codes of up to 8 bits")
    n, k = codes.shape
    rep = group_size // g
    s = scale.float().repeat_interleave(rep, dim=1)  # (n, k / g)
    z = zero.float().repeat_interleave(rep, dim=1)
    c = codes.to(torch.int32)
    if bits <= 4:
        # Centre the codes on the kernel's 8 so the offset stays small (|m| <= 2^(b-1) s): a
        # large offset cancelling a large (q - 8) s loses bits in a bfloat16 offset.
        shift = 8 - (1 << (bits - 1))
        halves = [(c + shift, s, ((1 << (bits - 1)) - z) * s)]
    else:
        halves = [(c >> 4, 16 * s, (128 - z) * s), (c & 15, s, 8 * s)]
    q = torch.cat([h[0] for h in halves], dim=1)
    sc = torch.cat([h[1] for h in halves], dim=1)
    off = torch.cat([h[2] for h in halves], dim=1)
    n_pad = -(-n // 16) * 16
    if n_pad != n:  # zero rows: code 8, scale 0, offset 0 -> weight 0
        q = F.pad(q, (0, 0, 0, n_pad - n), value=8)
        sc = F.pad(sc, (0, 0, 0, n_pad - n))
        off = F.pad(off, (0, 0, 0, n_pad - n))
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.contiguous(), 1)
    sz = torch.stack([sc.t(), off.t()], dim=-1).to(dtype).contiguous()
    return Int4Layout(packed, sz, g, n, k, bits > 4)


def int4_matmul(x: torch.Tensor, layout: Int4Layout) -> torch.Tensor:
    """``x Ŵᵀ`` for ``x`` of shape ``(m, in)`` (``in <= in_padded``) in the layout's compute
    dtype; returns ``(m, out_features)`` in that dtype."""
    k = layout.in_padded
    if x.shape[-1] != k:
        x = F.pad(x, (0, k - x.shape[-1]))
    if layout.doubled:
        x = torch.cat((x, x), dim=-1)
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(
        x.contiguous(), layout.packed, layout.group, layout.scale_zeros
    )
    n = layout.out_features
    return y if y.shape[-1] == n else y[:, :n]


def apply_transform_batched(x: torch.Tensor, Tt: torch.Tensor) -> torch.Tensor:
    """``x' = T x`` for a block-diagonal ``T`` given as its transposed blocks ``Tt`` ``(k, b, b)``
    (``Tt[j] = T_jᵀ``): one batched matmul over the ``k`` blocks, ``x`` of shape ``(m, k b)``."""
    k, b, _ = Tt.shape
    m = x.shape[0]
    xs = x.reshape(m, k, b).transpose(0, 1)  # (k, m, b)
    return torch.bmm(xs, Tt).transpose(0, 1).reshape(m, k * b)
