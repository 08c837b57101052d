"""Module layouts other than a plain ``nn.Linear`` that :func:`coreopt.quantize` meets.

* **GPT-2's** ``Conv1D`` (transformers): a linear layer whose weight is stored transposed,
  ``(in, out)``, computing ``x W + b``. It is replaced by the exact ``nn.Linear`` (weight ``Wᵀ``)
  before the layers are selected, so it is quantized like any linear layer; the ones left in float
  (skipped, head) are put back unchanged, so the float part of the checkpoint keeps its layout.
* **torch's** ``nn.MultiheadAttention``: its forward reads ``out_proj.weight`` as a tensor (and
  the input projection is a bare parameter, ``in_proj_weight``, not a module), so ``out_proj`` is
  left in float with the reason in ``report.skipped`` (an explicit ``targets=`` naming it is
  refused before any work).
* ``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer``: their feed-forward
  ``linear1``/``linear2`` are quantized; torch's fused inference path (eval mode,
  ``batch_first=True``) reads ``linear1.weight`` as a tensor, so those layers become
  :class:`TensorReadQuantizedLinear`, whose ``weight`` is the dequantized weight (computed when
  read: that fused path pays a dequantization per call, the layer's own forward runs the packed
  kernel).
"""

from __future__ import annotations

import torch
from torch import nn

from coreopt.quant.linear import QuantizedLinear

MHA_OUT_PROJ_REASON = (
    "out_proj of nn.MultiheadAttention: torch reads out_proj.weight as a tensor inside "
    "F.multi_head_attention_forward, so it stays in float (in_proj_weight is a bare parameter, "
    "never quantized)"
)


class TensorReadQuantizedLinear(QuantizedLinear):
    """A :class:`QuantizedLinear` whose parent reads ``.weight`` as a tensor (torch's fused
    transformer-layer path): ``weight`` is the dequantized effective weight ``Ŵ T`` in the bias's
    dtype (float32 without bias), computed on each read; the forward is the packed one."""

    @property
    def weight(self) -> torch.Tensor:
        dtype = self.bias.dtype if self.bias is not None else torch.float32
        return self.effective_weight(dtype)


def _is_conv1d(m: nn.Module) -> bool:
    w = getattr(m, "weight", None)
    return (
        type(m).__name__ == "Conv1D"
        and hasattr(m, "nf")
        and isinstance(w, torch.Tensor)
        and w.ndim == 2
    )


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def conv1d_as_linear(conv: nn.Module) -> nn.Linear:
    """The ``nn.Linear`` computing what a transformers ``Conv1D`` computes (weight ``(in, out)``
    transposed to ``(out, in)``; same device, dtype and bias)."""
    weight = conv.weight
    assert isinstance(weight, torch.Tensor)
    w = weight.detach()
    nx, nf = w.shape
    bias = getattr(conv, "bias", None)
    lin = nn.Linear(nx, nf, bias=bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        lin.weight.copy_(w.t())
        if bias is not None:
            lin.bias.copy_(bias.detach())
    lin.train(conv.training)
    return lin


def linearize_conv1d(model: nn.Module) -> dict[str, nn.Module]:
    """Replace every transformers ``Conv1D`` of ``model`` by the exact ``nn.Linear``; returns the
    replaced modules by name (for :func:`restore_conv1d`)."""
    found = {n: m for n, m in model.named_modules() if n and _is_conv1d(m)}
    for n, m in found.items():
        _set(model, n, conv1d_as_linear(m))
    return found


def restore_conv1d(model: nn.Module, originals: dict[str, nn.Module], keep: set[str]) -> None:
    """Put back the original ``Conv1D`` modules whose names are not in ``keep``."""
    for n, m in originals.items():
        if n not in keep:
            _set(model, n, m)


def tensor_read_linears(model: nn.Module) -> dict[str, str]:
    """``{name: reason}`` for the ``nn.Linear`` layers that cannot be replaced by a module because
    their parent reads their weight as a tensor (``nn.MultiheadAttention.out_proj``)."""
    out = {}
    for n, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention) and isinstance(m.out_proj, nn.Linear):
            out[f"{n}.out_proj" if n else "out_proj"] = MHA_OUT_PROJ_REASON
    return out


def exclude_tensor_reads(
    model: nn.Module, names: list[str], skipped: dict[str, str], explicit: bool
) -> tuple[list[str], dict[str, str]]:
    """Move the layers of :func:`tensor_read_linears` from ``names`` to ``skipped``.

    Raises:
        ValueError: ``explicit`` (the user named the targets) and one of them is such a layer.
    """
    reads = tensor_read_linears(model)
    bad = [n for n in names if n in reads]
    if bad and explicit:
        raise ValueError(f"targets: {bad[0]!r} cannot be quantized: {reads[bad[0]]}")
    skipped = {**skipped, **{n: reads[n] for n in bad}}
    return [n for n in names if n not in reads], skipped


def mark_tensor_reads(model: nn.Module) -> list[str]:
    """Turn the quantized ``linear1``/``linear2`` of torch's transformer layers into
    :class:`TensorReadQuantizedLinear` (their fused path reads ``.weight``); returns their names."""
    done = []
    for n, m in model.named_modules():
        if isinstance(m, nn.TransformerEncoderLayer | nn.TransformerDecoderLayer):
            for child in ("linear1", "linear2"):
                q = getattr(m, child, None)
                if type(q) is QuantizedLinear:
                    q.__class__ = TensorReadQuantizedLinear
                    done.append(f"{n}.{child}" if n else child)
    return done


def finish_quantized(model: nn.Module) -> None:
    """What :func:`coreopt.quantize` does last: :func:`mark_tensor_reads`, and for a transformers
    model the ``quantization_config`` that ``save_pretrained`` writes (:mod:`coreopt.quant.hf`)."""
    from coreopt.quant.hf import attach_config

    mark_tensor_reads(model)
    attach_config(model)
