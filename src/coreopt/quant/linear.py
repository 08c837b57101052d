"""``QuantizedLinear``: a packed b-bit linear layer whose forward runs a packed low-bit kernel."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from coreopt.quant.format import QuantFormat, dequantize_codes, rtn
from coreopt.quant.kernels import (
    KERNELS,
    Int4Layout,
    apply_transform_batched,
    int4_available,
    int4_matmul,
    kernel_group,
    pack_int4,
)
from coreopt.quant.packing import pack_bits, unpack_bits
from coreopt.quant.transforms import (
    TRANSFORM_DTYPES,
    apply_blocks,
    dequantize_int8_blocks,
    int8_blocks,
    right_blocks,
)

_METADATA = ("scale", "zero", "transform", "transform_scale")
_SHARED = ("transform", "transform_scale")
"""The buffers a shared transform consists of (the int8 row scales only with int8 storage)."""

AUTO_INT4_ROWS = 16
"""With ``kernel="auto"`` on CPU, inputs of at most this many rows (tokens) run the int4 kernel,
larger ones dequantize per call and run a matmul in the compute dtype (measured on one core at
384 x 1536: the int4 kernel matches a float32 matmul at 16 rows and takes twice its time at 64;
per-call dequantization costs about 2.4 ms there and wins above about 128 rows)."""


@dataclass
class _Runtime:
    """A layer's runtime layouts for one (device, compute dtype, stored version), built on
    demand: the int4 kernel layout, per-group scales/zero points for per-call dequantization, the
    cached dense weight, the transposed transform blocks."""

    key: tuple[Any, ...]
    dtype: torch.dtype
    layout: Int4Layout | None = None
    scale_g: torch.Tensor | None = None
    zero_g: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    transform_t: torch.Tensor | None = None

    def kinds(self) -> list[str]:
        """The runtime paths whose layout is built."""
        out = [] if self.layout is None else ["int4"]
        out += [] if self.scale_g is None else ["dequant"]
        return out + ([] if self.weight is None else ["dense"])

    def nbytes(self) -> int:
        total = 0 if self.layout is None else self.layout.nbytes()
        for t in (self.scale_g, self.zero_g, self.weight, self.transform_t):
            if t is not None:
                total += t.numel() * t.element_size()
        return total


@dataclass(eq=False)
class _TransformShare:
    """What the layers sharing one transform hold in common: per buffer (``transform`` and, with
    int8 storage, ``transform_scale``) the last conversion of that tensor by a layer's
    ``_apply`` (a device move), so that the other layers take the same converted tensor instead
    of a copy of their own."""

    # buffer name -> (weakref to the tensor before the last conversion, the converted tensor)
    last: dict[str, tuple[Any, torch.Tensor]] = field(default_factory=dict)

    def __getstate__(self) -> dict[str, Any]:
        # the last conversion is a cache (and a weakref cannot be pickled): not saved
        return {"last": {}}


class QuantizedLinear(nn.Module):
    """``y = Ŵ (T x) + b`` with ``Ŵ`` stored as packed b-bit codes per group and ``T`` an optional
    block-diagonal input transform.

    Storage (all registered buffers, so ``state_dict``/safetensors see them):

    * ``qweight``: ``uint8`` bit planes, ``(out, in_pad / 8, bits)`` (exactly ``bits`` bits per
      weight, see :mod:`coreopt.quant.packing`);
    * ``scale``, ``zero``: ``(out, in_pad / group_size)`` in the format's ``scale_dtype``;
    * ``transform``: ``(in / block, block, block)`` in the format's ``scale_dtype``
      (``transform_dtype="float16"``), or symmetric ``int8`` codes (``transform_dtype="int8"``),
      or absent;
    * ``transform_scale``: with int8 codes only, one scale per block row, ``(in / block,
      block)`` in ``scale_dtype``: the blocks are ``T[j, r, :] = transform[j, r, :] ·
      transform_scale[j, r]`` (see :func:`~coreopt.quant.transforms.int8_blocks`);
    * ``bias``: the original bias (a frozen parameter), or absent.

    Layers that read the same input (q/k/v, gate/up) may share one ``transform`` tensor (and its
    ``transform_scale``) (:func:`share_transform`): the first layer of the group stores it (a
    persistent buffer, in its ``state_dict``), the others hold the same tensor as a
    non-persistent buffer, so it is saved, loaded and counted (:meth:`memory_bytes`,
    ``model_bytes``) once; ``transform_shared`` tells them apart. Each layer still applies it to
    its input in its own forward.

    ``in_pad`` is ``in_features`` rounded up to a multiple of ``group_size``: a layer whose input
    width is not a multiple of the group size is stored with zero columns appended (the padding
    costs storage only).

    **Runtime.** The stored buffers are what is saved; the forward runs on *runtime layouts*
    built from them at the first call on a device and cached (never saved; rebuilt after
    ``.to()``, ``load_state_dict`` or any in-place change of the stored buffers), chosen by
    ``kernel`` (see :mod:`coreopt.quant.kernels`): ``"auto"`` (default) runs torch's packed int4
    CPU kernel (every bit width; 8 bits as two 4-bit halves) for inputs of up to
    :data:`AUTO_INT4_ROWS` rows and, above that or off CPU, ``"dequant"`` (unpack and dequantize
    per call in the compute dtype, then one matmul); ``"dense"`` caches the dequantized weight;
    ``"reference"`` dequantizes in float32 on each call. ``compute_dtype`` is the activation dtype
    of the packed paths: ``None`` (default) computes ``float32`` inputs in ``bfloat16`` on CPU
    (the fast case: the int4 kernel is 10-25x slower in ``float32``) and everything else in the
    input's dtype; the output always has the input's dtype. An input that requires a gradient
    takes the reference path. Set both with :meth:`set_runtime` or, for a whole model,
    :func:`coreopt.quant.set_runtime`. Casting the layer (``.half()``, ``.to(torch.bfloat16)``)
    casts the bias only: codes, scales, zero points and transform keep their stored dtype.

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
    transform_scale: torch.Tensor | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        fmt: QuantFormat,
        *,
        bias: bool = True,
        transform_block: int = 0,
        transform_dtype: str = "float16",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if transform_dtype not in TRANSFORM_DTYPES:
            raise ValueError(
                f"transform_dtype={transform_dtype!r} is unknown; expected one of "
                f"{TRANSFORM_DTYPES}"
            )
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
        self.transform_dtype = transform_dtype if transform_block else "float16"
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
            int8 = self.transform_dtype == "int8"
            eye = torch.eye(
                transform_block, dtype=torch.int8 if int8 else fmt.scale_dtype, device=device
            )
            self.register_buffer("transform", eye.expand(k, -1, -1).clone())
            if int8:
                self.register_buffer(
                    "transform_scale",
                    torch.ones(k, transform_block, dtype=fmt.scale_dtype, device=device),
                )
        else:
            self.transform = None
        if "transform_scale" not in self._buffers:
            self.transform_scale = None
        if bias:
            self.bias: nn.Parameter | None = nn.Parameter(
                torch.zeros(out_features, dtype=dtype, device=device), requires_grad=False
            )
        else:
            self.register_parameter("bias", None)
        self.kernel = "auto"
        self.compute_dtype: torch.dtype | None = None
        self._runtime: _Runtime | None = None
        self._share: _TransformShare | None = None

    @property
    def transform_shared(self) -> bool:
        """Whether this layer holds a transform stored by another layer (see
        :func:`share_transform`): it is then left out of this layer's ``state_dict`` and
        :meth:`memory_bytes`."""
        return self.transform is not None and "transform" in self._non_persistent_buffers_set

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
        transform_scale: torch.Tensor | None = None,
        transform_dtype: str | None = None,
    ) -> QuantizedLinear:
        """Build from integer codes ``(out, in_pad)``, per-group ``scale``/``zero`` ``(out,
        in_pad / g)``, an optional bias and an optional transform ``(k, b, b)``.

        The transform is stored in ``transform_dtype`` (default: ``"int8"`` when
        ``transform_scale`` is given, else ``"float16"``, i.e. the format's ``scale_dtype``).
        For ``"int8"``, ``transform`` is either the int8 codes or the dequantized blocks
        ``q s``, with ``transform_scale`` ``(k, b)`` their row scales: the codes are then read
        back as ``round(T / s)`` (exact for blocks made by
        :func:`~coreopt.quant.transforms.store_transform`, checked), so the layer stores the
        very ``T_q`` its weight was fitted to; without ``transform_scale`` the blocks are
        rounded here (:func:`~coreopt.quant.transforms.int8_blocks`).

        Raises:
            ValueError: ``transform_scale`` that does not reproduce ``transform`` exactly.
        """
        out, n_pad = codes.shape
        n = n_pad if in_features is None else in_features
        block = 0 if transform is None else transform.shape[-1]
        dtype = bias.dtype if bias is not None else torch.float32
        if transform_dtype is None:
            transform_dtype = "int8" if transform_scale is not None else "float16"
        m = cls(
            n,
            out,
            fmt,
            bias=bias is not None,
            transform_block=block,
            transform_dtype=transform_dtype,
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
            if m.transform_dtype == "int8":
                assert m.transform_scale is not None
                q, s = _int8_codes(transform, transform_scale, fmt.scale_dtype)
                m.transform.copy_(q)
                m.transform_scale.copy_(s)
            else:
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

    def transform_blocks(self, dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
        """The stored transform's blocks ``T`` ``(in / block, block, block)`` in ``dtype``
        (int8 codes times their row scales, computed in float32), or ``None``."""
        if self.transform is None:
            return None
        if self.transform_scale is not None:
            return dequantize_int8_blocks(self.transform, self.transform_scale, dtype)
        return self.transform.to(dtype)

    def effective_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dense weight this layer applies to its raw input: ``Ŵ T``."""
        W = self.stored_weight(torch.float32)
        T = self.transform_blocks(torch.float32)
        if T is not None:
            W = right_blocks(W, T)
        return W.to(dtype)

    # ------------------------------------------------------------------ runtime
    def set_runtime(
        self, kernel: str = "auto", compute_dtype: torch.dtype | None = None
    ) -> QuantizedLinear:
        """Choose the runtime kernel (``"auto"``, ``"int4"``, ``"dequant"``, ``"dense"``,
        ``"reference"``) and the activation dtype it computes in (``None``: see the class
        docstring); drops the cached layouts. Returns ``self``."""
        if kernel not in KERNELS:
            raise ValueError(f"kernel={kernel!r} is unknown; expected one of {KERNELS}")
        if compute_dtype is not None and compute_dtype not in (
            torch.float32,
            torch.float16,
            torch.bfloat16,
        ):
            raise ValueError(
                f"compute_dtype={compute_dtype} must be None, torch.float32, float16 or bfloat16"
            )
        if kernel == "int4" and not kernel_group(self.fmt.group_size):
            raise ValueError(f"kernel='int4' needs a group size multiple of 32, got {self.fmt}")
        self.kernel = kernel
        self.compute_dtype = compute_dtype
        self._runtime = None
        return self

    def resolve_kernel(self, x: torch.Tensor) -> str:
        """The path the forward takes for input ``x``: ``"int4"``, ``"dequant"``, ``"dense"`` or
        ``"reference"``. ``"auto"`` on CPU is ``"int4"`` for at most :data:`AUTO_INT4_ROWS`
        rows (tokens) and ``"dequant"`` above (the int4 kernel's time grows with the rows, a
        bfloat16 matmul's hardly), ``"dequant"`` on other devices.

        Raises:
            ValueError: ``kernel="int4"`` on a device without the int4 kernel (CPU only).
        """
        if self.kernel == "reference" or (x.requires_grad and torch.is_grad_enabled()):
            return "reference"
        if self.kernel == "auto":
            if not int4_available(x.device):
                return "dequant"
            rows = x.numel() // max(x.shape[-1], 1)
            return "int4" if rows <= AUTO_INT4_ROWS else "dequant"
        if self.kernel == "int4" and not int4_available(x.device):
            raise ValueError(
                f"kernel='int4' runs on CPU only (torch's _weight_int4pack_mm_for_cpu); the input "
                f"is on {x.device}: use kernel='dequant', 'dense' or 'reference' there"
            )
        return self.kernel

    def resolve_compute_dtype(self, x: torch.Tensor) -> torch.dtype:
        """The activation dtype the packed paths compute in for input ``x``: ``compute_dtype``,
        else ``bfloat16`` for a ``float32`` input on CPU, else the input's dtype."""
        if self.compute_dtype is not None:
            return self.compute_dtype
        packed = self.kernel in ("auto", "int4", "dequant")
        if packed and x.dtype == torch.float32 and x.device.type == "cpu":
            return torch.bfloat16
        return x.dtype

    def _stored_key(self) -> tuple[Any, ...]:
        ts = [self.qweight, self.scale, self.zero]
        if self.transform is not None:
            ts.append(self.transform)
        if self.transform_scale is not None:
            ts.append(self.transform_scale)
        return tuple((t.data_ptr(), t._version) for t in ts)

    def runtime(self, kernel: str, device: torch.device, dtype: torch.dtype) -> _Runtime:
        """The cached runtime layouts on ``device`` in ``dtype``, with the one ``kernel`` needs
        built now if missing (everything is rebuilt when the stored buffers changed)."""
        key = (device, dtype, self._stored_key())
        rt = self._runtime
        if rt is None or rt.key != key:
            self._runtime = None  # free the old layouts before building new ones
            rt = _Runtime(key, dtype)
        with torch.inference_mode(False), torch.no_grad():
            if kernel == "int4" and rt.layout is None:
                rt.layout = pack_int4(
                    self.codes(), self.scale, self.zero, self.fmt.bits, self.fmt.group_size, dtype
                )
            elif kernel == "dequant" and rt.scale_g is None:
                rt.scale_g = self.scale.to(dtype).unsqueeze(-1).contiguous()
                rt.zero_g = self.zero.to(dtype).unsqueeze(-1).contiguous()
            elif kernel == "dense" and rt.weight is None:
                rt.weight = self.stored_weight(dtype).contiguous()
            T = None if rt.transform_t is not None else self.transform_blocks(dtype)
            if T is not None:
                rt.transform_t = T.transpose(1, 2).contiguous()
        self._runtime = rt
        return rt

    def runtime_bytes(self) -> int:
        """Bytes of the cached runtime layouts (0 before the first forward or on the reference
        path); the stored buffers (:meth:`memory_bytes`) stay in memory as well."""
        return 0 if self._runtime is None else self._runtime.nbytes()

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Any:
        # Device moves apply to every buffer; dtype casts only to the bias: the stored codes,
        # scales, zero points and transform keep their dtype (a bfloat16 cast would round the
        # float16 scales and silently change the stored weight).
        saved: dict[str, torch.Tensor] = {}
        for n in _METADATA:
            buf = self._buffers.get(n)
            if buf is not None:
                saved[n] = buf
        out = super()._apply(fn, recurse)
        for n, t in saved.items():
            new = self._buffers[n]
            if new is not None and new.dtype != t.dtype:
                self._buffers[n] = t.to(new.device)
        share = self._share
        for name in _SHARED if share is not None else ():
            assert share is not None
            new_t = self._buffers.get(name)
            old_t = saved.get(name)
            if new_t is None or old_t is None or new_t is old_t:
                continue
            # torch converts buffers module by module: a layer whose shared tensor another
            # member already converted the same way takes that one (one copy on the device)
            ref, res = share.last.get(name, (None, None))
            prev = ref() if ref is not None else None
            if (
                prev is old_t
                and res is not None
                and res.device == new_t.device
                and res.dtype == new_t.dtype
                and torch.equal(res, new_t)
            ):
                self._buffers[name] = res
            else:
                share.last[name] = (weakref.ref(old_t), new_t)
        self._runtime = None
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"input has {x.shape[-1]} features, the layer expects {self.in_features}"
            )
        kernel = self.resolve_kernel(x)
        if kernel == "reference":
            W = self.stored_weight(x.dtype)
            T = self.transform_blocks(x.dtype)
            if T is not None:
                x = apply_blocks(x, T)
            bias = None if self.bias is None else self.bias.to(x.dtype)
            return F.linear(x, W, bias)
        dtype = self.resolve_compute_dtype(x)
        rt = self.runtime(kernel, x.device, dtype)
        h = x.reshape(-1, self.in_features).to(dtype)
        if rt.transform_t is not None:
            h = apply_transform_batched(h, rt.transform_t)
        if kernel == "int4":
            assert rt.layout is not None
            y = int4_matmul(h, rt.layout).to(x.dtype)
            if self.bias is not None:
                y = y + self.bias.to(x.dtype)
        else:
            if kernel == "dense":
                assert rt.weight is not None
                W = rt.weight
            else:  # dequant: unpack (one table lookup) and (q - z) s in the compute dtype
                assert rt.scale_g is not None
                assert rt.zero_g is not None
                n, g = self.out_features, self.fmt.group_size
                q = self.codes().view(n, -1, g).to(dtype)
                W = ((q - rt.zero_g) * rt.scale_g).view(n, -1)[:, : self.in_features]
            bias = None if self.bias is None else self.bias.to(dtype)
            y = F.linear(h, W, bias).to(x.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    # ------------------------------------------------------------------ reporting
    def memory_bytes(self) -> int:
        """Bytes of every buffer and parameter this layer stores (a transform stored by another
        layer, see :func:`share_transform`, is not counted here)."""
        total = sum(
            b.numel() * b.element_size()
            for n, b in self._buffers.items()
            if b is not None and n not in self._non_persistent_buffers_set
        )
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
            "transform_dtype": self.transform_dtype,
            "bias_dtype": None
            if self.bias is None
            else str(self.bias.dtype).removeprefix("torch."),
        }

    def extra_repr(self) -> str:
        t = f", transform_block={self.transform_block}" if self.transform_block else ""
        t += ", transform_dtype='int8'" if self.transform_scale is not None else ""
        k = "" if self.kernel == "auto" else f", kernel={self.kernel!r}"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bits={self.fmt.bits}, group_size={self.fmt.group_size}, "
            f"bias={self.bias is not None}{t}{k}"
        )


def share_transform(layers: Sequence[QuantizedLinear], *, adopt: bool = False) -> None:
    """Make ``layers`` (that read the same input) hold one transform tensor, stored by the first.

    The first layer keeps its ``transform`` buffer (persistent: saved in its ``state_dict``); the
    others get the very same tensor as a non-persistent buffer, so the blocks are stored, saved
    and counted once. Every layer still applies it in its forward. A device move of the model
    keeps one tensor for the group.

    Args:
        layers: two or more :class:`QuantizedLinear` with transforms of the same shape and dtype
            and equal values (a group quantized with one shared transform); the first is the
            owner.
        adopt: the others take the owner's tensor whatever their own holds (loading, where only
            the owner's blocks are read from the file); shapes and dtypes are still checked.

    Raises:
        ValueError: fewer than two layers, a layer without a transform, or transforms that
            differ in shape, dtype, device or value (a layer's outputs would change).
    """
    if len(layers) < 2:
        raise ValueError("share_transform needs at least two layers")
    if layers[0].transform is None:
        raise ValueError("share_transform: the first layer has no transform")
    for m in layers[1:]:
        for name in _SHARED:
            owner, t = layers[0]._buffers.get(name), m._buffers.get(name)
            if owner is None and t is None:
                continue  # no row scales: float16 blocks
            if (
                owner is None
                or t is None
                or t.shape != owner.shape
                or t.dtype != owner.dtype
                or (not adopt and t.device != owner.device)
                or (not adopt and owner.device.type != "meta" and not torch.equal(t, owner))
            ):
                raise ValueError(
                    "share_transform: the layers' transforms differ (shape, dtype, storage, "
                    "device or value); only layers quantized with one shared transform can "
                    "share it"
                )
    share = _TransformShare()
    layers[0]._share = share
    names = [n for n in _SHARED if layers[0]._buffers.get(n) is not None]
    for n in names:
        layers[0]._non_persistent_buffers_set.discard(n)
    for m in layers[1:]:
        for n in names:
            m._buffers[n] = layers[0]._buffers[n]
            m._non_persistent_buffers_set.add(n)
        m._share = share
        m._runtime = None


def _int8_codes(
    T: torch.Tensor, scale: torch.Tensor | None, scale_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Int8 codes and row scales of transform blocks ``T`` (see :meth:`QuantizedLinear.
    from_codes`): ``T`` already int8 codes, or dequantized blocks read back against ``scale``
    (exactly), or float blocks rounded here when ``scale`` is ``None``."""
    if scale is None:
        if T.dtype == torch.int8:
            raise ValueError("int8 transform codes need their row scales (transform_scale)")
        return int8_blocks(T, scale_dtype)
    s = scale.to(scale_dtype)
    if T.dtype == torch.int8:
        return T, s
    q = torch.round(T.float() / s.float().unsqueeze(-1))
    if q.abs().max() > 127 or not torch.equal(
        dequantize_int8_blocks(q.to(torch.int8), s, torch.float32), T.float()
    ):
        raise ValueError(
            "transform_scale does not reproduce the transform blocks exactly: pass the blocks "
            "rounded by coreopt.quant.transforms.store_transform (or the int8 codes)"
        )
    return q.to(torch.int8), s


def pad_columns(W: torch.Tensor, multiple: int) -> torch.Tensor:
    """Append zero columns to ``W`` so its width is a multiple of ``multiple``."""
    n = W.shape[-1]
    pad = (-n) % multiple
    return F.pad(W, (0, pad)) if pad else W
