"""Export a quantized Llama-family model to GGUF (llama.cpp's format), without re-rounding.

A coreopt layer stores ``Ŵ = (q - z) s`` per group of ``g`` input columns (``g`` a multiple of
32, ``z`` an integer). GGUF's ``Q4_1`` block holds 32 weights as 4-bit codes ``q`` with an fp16
scale ``d`` and an fp16 offset ``m``, ``w = d q + m``: a 2-, 3- or 4-bit layer is written exactly
as ``Q4_1`` with ``d = s`` and ``m = -z s`` (``m`` rounded to fp16: a relative ``2^-11`` of one
group's offset). The codes are copied, not re-rounded. 3-bit codes take 4 bits there (5 bits per
weight with the block's scale and offset, against 3.5 stored by coreopt at ``g = 64``).

What cannot be exported, and why:

* layers with a **runtime input transform** (``method="cafeq"`` with learned or Hadamard blocks,
  ``method="hadamard"``): llama.cpp has no per-layer input transform, and folding ``T`` into the
  weight and re-rounding loses what the transform bought. Quantize with ``transform="identity"``
  (the dual transforms are folded into the weights offline and the data-free GPTQ rounding is
  kept) or ``method="rtn"``; :func:`export_gguf` raises otherwise;
* **8-bit** layers: GGUF's 8-bit weight block (``Q8_0``) is symmetric (no offset), so coreopt's
  asymmetric codes do not fit; they are written as float16 (``ggml`` ``F16``, dequantized);
* input widths that are not a multiple of 32 (GGUF blocks), and architectures other than Llama's
  (``LlamaForCausalLM``: Llama, SmolLM, Mistral without sliding window): refused with the reason.

The other tensors (embeddings, norms, an untied head) are written in float32, or in their own
16-bit dtype. Tokenizer metadata is copied from a GGUF of the same base model (``tokenizer_from``)
when given; without it the file holds the weights and the architecture only (enough for
transformers' GGUF loader, not for llama.cpp, which needs the tokenizer).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from coreopt.errors import BackendNotInstalledError
from coreopt.quant.linear import QuantizedLinear

BLOCK = 32


@dataclass(frozen=True)
class GGUFExport:
    """What :func:`export_gguf` wrote.

    Attributes:
        path: the file.
        tensors: ``{gguf tensor name: ggml type name}``.
        bytes: the file's size.
        notes: ``{layer: note}`` for layers not written exactly as stored (8-bit as F16).
    """

    path: str
    tensors: dict[str, str]
    bytes: int
    notes: dict[str, str] = field(default_factory=dict)


def _gguf() -> Any:
    try:
        import gguf
    except ImportError as exc:  # pragma: no cover - gguf ships with coreopt[hf]
        raise BackendNotInstalledError("gguf", "hf") from exc
    return gguf


def q4_1_blocks(layer: QuantizedLinear) -> np.ndarray:
    """The layer's codes as GGUF ``Q4_1`` blocks: ``uint8`` ``(out, in / 32 * 20)``.

    Raises:
        ValueError: ``bits > 4``, a transform, or ``in_features`` not a multiple of 32.
    """
    if layer.fmt.bits > 4:
        raise ValueError(f"Q4_1 holds codes of at most 4 bits, the layer has {layer.fmt.bits}")
    if layer.transform is not None:
        raise ValueError("the layer has a runtime input transform, which GGUF cannot express")
    n, k = layer.out_features, layer.in_features
    if k % BLOCK:
        raise ValueError(f"in_features={k} is not a multiple of the GGUF block ({BLOCK})")
    rep = layer.fmt.group_size // BLOCK
    q = layer.codes()[:, :k].to(torch.uint8).reshape(n, k // BLOCK, BLOCK)
    s = layer.scale.float().repeat_interleave(rep, dim=1)[:, : k // BLOCK]
    z = layer.zero.float().repeat_interleave(rep, dim=1)[:, : k // BLOCK]
    d = s.to(torch.float16)
    m = (-z * s).to(torch.float16)
    nib = (q[..., :16] | (q[..., 16:] << 4)).contiguous()  # ggml: low nibbles first half
    head = torch.stack([d, m], dim=-1).contiguous().view(torch.uint8)  # (n, blocks, 4)
    blocks = torch.cat([head, nib], dim=-1)  # (n, blocks, 20)
    return blocks.reshape(n, -1).cpu().numpy()


def _permute_rope_rows(t: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reorder the rows of a q/k projection from transformers' rotary layout (each head's rows
    as [first halves of the rotary pairs, second halves]) to ggml's (pairs adjacent)."""
    rows = t.shape[0]
    d = rows // n_head
    return t.reshape(n_head, 2, d // 2, *t.shape[1:]).transpose(1, 2).reshape(t.shape)


_LAYER_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def _gguf_name(name: str) -> str | None:
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    if name == "lm_head.weight":
        return "output.weight"
    parts = name.split(".")
    if len(parts) >= 5 and parts[:2] == ["model", "layers"]:
        mod = ".".join(parts[3:-1])
        if mod in _LAYER_NAMES:
            return f"blk.{parts[2]}.{_LAYER_NAMES[mod]}.{parts[-1]}"
    return None


def export_gguf(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    tokenizer_from: str | os.PathLike[str] | None = None,
) -> GGUFExport:
    """Write a quantized ``LlamaForCausalLM`` to a GGUF file (see the module docstring).

    Args:
        model: a transformers ``LlamaForCausalLM`` quantized by :func:`coreopt.quantize` without
            runtime transforms (``transform="identity"`` or ``method="rtn"``).
        path: the ``.gguf`` file to write.
        tokenizer_from: a GGUF file of the same base model whose ``tokenizer.*`` metadata is
            copied (llama.cpp needs it; transformers' GGUF loader does not).

    Returns:
        A :class:`GGUFExport`.

    Raises:
        ValueError: another architecture, a layer with a runtime transform (all such layers are
            named), an input width not a multiple of 32, or an unexpected tensor.
    """
    gguf = _gguf()
    cfg = getattr(model, "config", None)
    if cfg is None or type(model).__name__ != "LlamaForCausalLM":
        raise ValueError(
            f"export_gguf writes Llama-family models (LlamaForCausalLM); got {type(model).__name__}"
        )
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    with_t = [n for n, m in quantized.items() if m.transform is not None]
    if with_t:
        raise ValueError(
            f"{len(with_t)} layers have runtime input transforms ({with_t[0]!r}, ...), which GGUF "
            "cannot express: quantize with transform='identity' (dual transforms folded, GPTQ "
            "rounding kept) or method='rtn' to export"
        )
    n_head = int(cfg.num_attention_heads)
    n_kv = int(getattr(cfg, "num_key_value_heads", None) or n_head)
    writer = gguf.GGUFWriter(os.fspath(path), arch="llama")
    writer.add_context_length(int(cfg.max_position_embeddings))
    writer.add_embedding_length(int(cfg.hidden_size))
    writer.add_block_count(int(cfg.num_hidden_layers))
    writer.add_feed_forward_length(int(cfg.intermediate_size))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    theta = getattr(cfg, "rope_theta", None)
    if theta is None:
        theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    writer.add_rope_freq_base(float(theta))
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head)
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(int(cfg.vocab_size))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_1)
    if tokenizer_from is not None:
        _copy_tokenizer(gguf, writer, tokenizer_from)

    types: dict[str, str] = {}
    notes: dict[str, str] = {}
    Q4_1 = gguf.GGMLQuantizationType.Q4_1

    def rope_rows(gname: str, t: torch.Tensor) -> torch.Tensor:
        if gname.endswith("attn_q.weight"):
            return _permute_rope_rows(t, n_head)
        if gname.endswith("attn_k.weight"):
            return _permute_rope_rows(t, n_kv)
        return t

    for lname, layer in quantized.items():
        gname = _gguf_name(f"{lname}.weight")
        if gname is None:
            raise ValueError(f"{lname!r} has no GGUF name in the Llama layout")
        if layer.bias is not None:
            raise ValueError(f"{lname!r} has a bias, which the Llama GGUF layout does not hold")
        if layer.fmt.bits <= 4:
            blocks = torch.from_numpy(q4_1_blocks(layer))
            data = rope_rows(gname, blocks).numpy()
            writer.add_tensor(gname, data, raw_dtype=Q4_1)
            types[gname] = "Q4_1"
        else:
            W = rope_rows(gname, layer.stored_weight(torch.float32)).to(torch.float16)
            writer.add_tensor(gname, W.cpu().numpy())
            types[gname] = "F16"
            notes[lname] = "8-bit asymmetric codes do not fit Q8_0: written as F16"
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    for pname, p in model.named_parameters():
        owner = pname.rpartition(".")[0]
        if owner in quantized:
            continue
        if pname == "lm_head.weight" and tied:
            continue  # llama.cpp reads token_embd for a missing output.weight
        gname = _gguf_name(pname)
        if gname is None:
            raise ValueError(f"{pname!r} has no GGUF name in the Llama layout")
        t = p.detach().cpu()
        if t.dtype == torch.bfloat16:
            data = t.view(torch.int16).numpy()  # bit pattern, written as BF16
            writer.add_tensor(
                gname, data, raw_shape=list(t.shape), raw_dtype=gguf.GGMLQuantizationType.BF16
            )
            types[gname] = "BF16"
        else:
            arr = t.numpy() if t.dtype == torch.float16 else t.float().numpy()
            writer.add_tensor(gname, arr)
            types[gname] = "F16" if t.dtype == torch.float16 else "F32"
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return GGUFExport(os.fspath(path), types, os.path.getsize(path), notes)


def _copy_tokenizer(gguf: Any, writer: Any, source: str | os.PathLike[str]) -> None:
    reader = gguf.GGUFReader(os.fspath(source))
    for key, f in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = f.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            sub = f.types[-1]
            if sub == gguf.GGUFValueType.STRING:
                vals = [bytes(f.parts[i]).decode("utf-8", "surrogateescape") for i in f.data]
            else:
                vals = [f.parts[i].tolist()[0] for i in f.data]
            writer.add_array(key, vals)
        elif vtype == gguf.GGUFValueType.STRING:
            writer.add_string(key, bytes(f.parts[f.data[0]]).decode("utf-8"))
        else:
            writer.add_key_value(key, f.parts[f.data[0]].tolist()[0], vtype)
