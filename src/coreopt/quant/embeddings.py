"""Embeddings and output head in 16 bits, so that the whole model shrinks.

:func:`coreopt.quantize` leaves embeddings (and a head tied to them) in floating point: in a small
LLM they are a large share of the model (SmolLM2-135M: a 49152 x 576 tied embedding, 113 MB in
float32 against 173 MB for the whole model at 4 bits). :func:`compress_embeddings` stores them in
``bfloat16`` or ``float16`` while the rest of the model keeps its dtype: the embedding returns
its rows in the model's dtype and the head multiplies in its own 16-bit dtype and returns the
model's dtype. A tied head stays tied (one tensor). Both survive ``save_quantized`` /
``load_quantized`` and ``save_pretrained`` / ``from_pretrained``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

HALF_DTYPES = (torch.bfloat16, torch.float16)


class HalfEmbedding(nn.Embedding):
    """An ``nn.Embedding`` whose table is stored in 16 bits; ``forward`` returns
    ``output_dtype`` (the dtype of the model around it)."""

    output_dtype: torch.dtype = torch.float32

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return super().forward(input).to(self.output_dtype)


class HalfLinear(nn.Linear):
    """An ``nn.Linear`` (an output head) whose weight is stored in 16 bits; it multiplies in
    that dtype and returns the input's dtype."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        w = self.weight
        b = None if self.bias is None else self.bias.to(w.dtype)
        return F.linear(input.to(w.dtype), w, b).to(input.dtype)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _head_tied_to(model: nn.Module, emb: nn.Embedding) -> list[str]:
    return [
        n
        for n, m in model.named_modules()
        if type(m) is nn.Linear and m.weight is emb.weight  # same Parameter object
    ]


def compress_embeddings(
    model: nn.Module,
    dtype: torch.dtype = torch.bfloat16,
    *,
    include_head: bool = True,
) -> dict[str, str]:
    """Store ``model``'s embeddings (and output head) in ``dtype`` (``bfloat16`` or
    ``float16``), in place.

    Every float ``nn.Embedding`` becomes a :class:`HalfEmbedding`; an ``nn.Linear`` sharing its
    weight (a tied LM head) becomes a :class:`HalfLinear` sharing the converted weight; with
    ``include_head``, the output head of a transformers model (``get_output_embeddings()``) is
    converted too when it is untied. Call it after :func:`coreopt.quantize` (quantize never
    touches embeddings; a :class:`HalfLinear` head is not quantized).

    Returns:
        ``{module name: "embedding" | "head"}`` for every converted module.

    Raises:
        ValueError: ``dtype`` is not ``bfloat16`` or ``float16``.

    Examples:
        >>> import torch
        >>> emb = torch.nn.Embedding(100, 16)
        >>> net = torch.nn.Sequential(emb)
        >>> compress_embeddings(net)
        {'0': 'embedding'}
        >>> net[0].weight.dtype, net(torch.tensor([1, 2])).dtype
        (torch.bfloat16, torch.float32)
    """
    if dtype not in HALF_DTYPES:
        raise ValueError(f"dtype must be torch.bfloat16 or torch.float16, got {dtype}")
    done: dict[str, str] = {}
    head = None
    get = getattr(model, "get_output_embeddings", None)
    if include_head and callable(get):
        head = get()
    for name, m in list(model.named_modules()):
        if type(m) is not nn.Embedding or not m.weight.is_floating_point():
            continue
        tied = _head_tied_to(model, m)
        out_dtype = m.weight.dtype
        with torch.no_grad():
            m.weight.data = m.weight.data.to(dtype)
        m.__class__ = HalfEmbedding
        m.output_dtype = out_dtype  # type: ignore[assignment]
        done[name] = "embedding"
        for h in tied:
            model.get_submodule(h).__class__ = HalfLinear
            done[h] = "head"
    if type(head) is nn.Linear and head.weight.is_floating_point():
        with torch.no_grad():
            head.weight.data = head.weight.data.to(dtype)
        head.__class__ = HalfLinear
        for n, m in model.named_modules():
            if m is head:
                done[n] = "head"
    from coreopt.quant.hf import attach_config

    attach_config(model)
    return dict(sorted(done.items()))


def half_module_configs(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{name: {"kind", "dtype", "output_dtype"}}`` of the 16-bit embeddings and heads of
    ``model`` (saved next to the quantized layers' configurations)."""
    out: dict[str, dict[str, Any]] = {}
    for n, m in model.named_modules():
        if isinstance(m, HalfEmbedding):
            out[n] = {
                "kind": "embedding",
                "dtype": str(m.weight.dtype).removeprefix("torch."),
                "output_dtype": str(m.output_dtype).removeprefix("torch."),
            }
        elif isinstance(m, HalfLinear):
            out[n] = {"kind": "head", "dtype": str(m.weight.dtype).removeprefix("torch.")}
    return out


def rebuild_half_modules(model: nn.Module, configs: dict[str, dict[str, Any]]) -> None:
    """Turn the listed modules of a freshly built ``model`` into their 16-bit versions (before
    the tensors are loaded), keeping ties between an embedding and its head.

    Raises:
        ValueError: a listed module is missing or is not an ``nn.Embedding`` / ``nn.Linear``.
    """
    for name, cfg in configs.items():
        try:
            m = model.get_submodule(name)
        except AttributeError:
            m = None
        dtype = getattr(torch, cfg["dtype"], None)
        if not isinstance(dtype, torch.dtype) or dtype not in HALF_DTYPES:
            raise ValueError(f"{name!r}: dtype {cfg['dtype']!r} is not a 16-bit float dtype")
        want = nn.Embedding if cfg["kind"] == "embedding" else nn.Linear
        if not isinstance(m, want):
            raise ValueError(
                f"the checkpoint stores {name!r} as a 16-bit {cfg['kind']}, which is not an "
                f"{want.__name__} in this model"
            )
        if m.weight.dtype != dtype:
            with torch.no_grad():
                m.weight.data = m.weight.data.to(dtype)
        if cfg["kind"] == "embedding":
            m.__class__ = HalfEmbedding
            out = getattr(torch, cfg.get("output_dtype", "float32"))
            m.output_dtype = out
        else:
            m.__class__ = HalfLinear
