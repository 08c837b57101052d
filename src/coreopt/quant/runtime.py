"""Whole-model runtime settings of quantized layers, and what they cost in memory."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn

from coreopt.quant.linear import QuantizedLinear


@dataclass(frozen=True)
class RuntimeReport:
    """Memory of a quantized model, on disk and at run time.

    Attributes:
        disk_bytes: bytes of every parameter and buffer that ``state_dict`` holds (what
            :func:`~coreopt.quant.save_quantized` writes, up to the file header; shared tensors
            once): packed codes at exactly ``b`` bits, scales, transforms, float layers.
        runtime_bytes: bytes of the runtime layouts built by the quantized layers (int4 kernel
            layouts, cached dense weights, transforms in the compute dtype), held in memory *on
            top of* ``disk_bytes``.
        kernels: ``{path: number of layers}`` of the runtime layouts currently built
            (``"int4"``, ``"dequant"``, ``"dense"``).
    """

    disk_bytes: int
    runtime_bytes: int
    kernels: dict[str, int] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        """``disk_bytes + runtime_bytes``: what the model holds in memory while it runs."""
        return self.disk_bytes + self.runtime_bytes


def quantized_layers(model: nn.Module) -> list[QuantizedLinear]:
    """Every :class:`QuantizedLinear` of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, QuantizedLinear)]


def set_runtime(
    model: nn.Module,
    kernel: str = "auto",
    compute_dtype: torch.dtype | None = None,
    *,
    example: torch.Tensor | None = None,
) -> RuntimeReport:
    """Choose the runtime kernel and activation dtype of every quantized layer of ``model``.

    Args:
        model: a model holding :class:`QuantizedLinear` layers.
        kernel: ``"auto"`` (on CPU the int4 kernel for up to 16 rows, per-call dequantization
            above; per-call dequantization elsewhere), ``"int4"``, ``"dequant"``, ``"dense"``
            (cached dequantized weight) or ``"reference"`` (float32 dequantization per call,
            differentiable); see :mod:`coreopt.quant.kernels`.
        compute_dtype: activation dtype of the kernel, or ``None`` (on CPU, ``float32`` inputs
            run the int4 and dequant paths in ``bfloat16``; otherwise the input's dtype).
        example: optional input batch; when given, ``model(example)`` runs once under
            ``torch.inference_mode`` so every layout is built now rather than at the first call.

    Returns:
        The :class:`RuntimeReport` after the change (runtime bytes are 0 until layouts are built).

    Raises:
        ValueError: ``model`` has no quantized layer, or an unknown kernel / dtype.

    Examples:
        >>> import torch
        >>> from coreopt.quant import QuantFormat, QuantizedLinear
        >>> net = torch.nn.Sequential(
        ...     QuantizedLinear.from_linear(torch.nn.Linear(64, 32), QuantFormat(4, 32))
        ... )
        >>> rep = set_runtime(net, "int4", example=torch.randn(1, 64))
        >>> rep.kernels, rep.runtime_bytes > 0
        ({'int4': 1}, True)
    """
    layers = quantized_layers(model)
    if not layers:
        raise ValueError("model has no QuantizedLinear layer; quantize it first")
    for layer in layers:
        layer.set_runtime(kernel, compute_dtype)
    if example is not None:
        with torch.inference_mode():
            model(example)
    return runtime_report(model)


def runtime_report(model: nn.Module) -> RuntimeReport:
    """Disk and runtime bytes of ``model`` and the kernels its quantized layers built."""
    from coreopt.quant.quantize import model_bytes

    layers = quantized_layers(model)
    kinds = Counter(k for m in layers if m._runtime is not None for k in m._runtime.kinds())
    return RuntimeReport(
        model_bytes(model), sum(m.runtime_bytes() for m in layers), dict(sorted(kinds.items()))
    )
