"""What :mod:`coreopt.sampling` reads from models and tokenizers: device, vocabulary sizes,
tokenizer identity, the pad id."""

from __future__ import annotations

from typing import Any

import torch

from coreopt.sampling.errors import VocabularyMismatchError


def model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def output_vocab_size(model: torch.nn.Module) -> int:
    """Width of a causal LM's logits (the rows of its output embedding)."""
    get = getattr(model, "get_output_embeddings", None)
    emb = get() if callable(get) else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        return int(emb.weight.shape[0])
    config = getattr(model, "config", None)
    size = getattr(config, "vocab_size", None) if config is not None else None
    if size is None:
        raise TypeError(
            f"cannot tell the vocabulary size of {type(model).__name__}: it has neither "
            "get_output_embeddings() nor config.vocab_size"
        )
    return int(size)


def input_vocab_size(model: torch.nn.Module) -> int:
    """Rows of a causal LM's input embedding (the largest token id it accepts, plus one)."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        return int(emb.weight.shape[0])
    return output_vocab_size(model)


def same_tokenizer(a: Any, b: Any) -> bool:
    """Whether two tokenizers map the same strings to the same ids (``get_vocab()`` equal)."""
    return bool(a.get_vocab() == b.get_vocab())


def check_same_tokenizer(a: Any, b: Any, *, names: tuple[str, str] = ("teacher", "proxy")) -> None:
    """Raise :class:`VocabularyMismatchError` unless ``a`` and ``b`` have identical vocabularies."""
    va, vb = a.get_vocab(), b.get_vocab()
    if va == vb:
        return
    only_a = len(set(va) - set(vb))
    only_b = len(set(vb) - set(va))
    moved = sum(1 for s in set(va) & set(vb) if va[s] != vb[s])
    raise VocabularyMismatchError(
        f"the {names[0]} and {names[1]} tokenizers differ ({len(va)} vs {len(vb)} tokens; "
        f"{only_a} only in the {names[0]}'s, {only_b} only in the {names[1]}'s, {moved} shared "
        f"strings with different ids). Antidistillation sampling feeds the teacher's token ids to "
        f"the proxy, so both must share one tokenizer; for detection across tokenizers build a "
        f"VocabMapping.from_tokenizers(...)"
    )


def config_pad_id(model: Any) -> int | None:
    """The id that left-pads prompts for ``model``, read from its configuration.

    ``config.pad_token_id``, else ``generation_config.pad_token_id``, else the (first)
    ``eos_token_id`` of either — what ``transformers``' ``generate`` itself pads with when no pad
    id is set — else ``None``.
    """
    configs = [getattr(model, "config", None), getattr(model, "generation_config", None)]
    for attr in ("pad_token_id", "eos_token_id"):
        for cfg in configs:
            value = getattr(cfg, attr, None)
            if isinstance(value, list | tuple):
                value = value[0] if value else None
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return None
