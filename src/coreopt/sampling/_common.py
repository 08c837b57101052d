"""Shared internals of :mod:`coreopt.sampling`: errors, traces, argument checks, cached forwards."""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from coreopt.errors import BackendNotInstalledError, CoreoptError

IGNORE_INDEX = -100
"""Label value of positions that do not enter a loss (prompt tokens and padding)."""


def require_transformers() -> Any:
    """Import ``transformers`` or raise :class:`~coreopt.errors.BackendNotInstalledError`."""
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - transformers is part of the hf extra
        raise BackendNotInstalledError("transformers", "hf") from exc
    return transformers


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class VocabularyMismatchError(CoreoptError, ValueError):
    """Two models (or a model and its tokenizer) disagree about the vocabulary.

    Raised when the teacher's scores and the proxy's logits have different widths, when a token id
    is outside a model's embedding table, or when two tokenizers that must be the same differ.
    """


class GradientMismatchError(CoreoptError, ValueError):
    """A saved gradient does not fit the proxy: unknown parameter names, wrong shapes or a file
    that is not a gradient written by :func:`~coreopt.sampling.save_gradient`."""


# --------------------------------------------------------------------------------------------
# Traces
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trace:
    """A prompt and the completion that followed it, as token ids.

    Only the completion enters losses and detection scores; the prompt is context.

    Attributes:
        prompt: the prompt's token ids (a BOS token, if the model uses one, included).
        completion: the generated token ids (an end-of-sequence token, if any, included).
    """

    prompt: tuple[int, ...]
    completion: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt", tuple(int(t) for t in self.prompt))
        object.__setattr__(self, "completion", tuple(int(t) for t in self.completion))

    @property
    def ids(self) -> tuple[int, ...]:
        """``prompt + completion``."""
        return self.prompt + self.completion


TraceLike = Trace | tuple[Sequence[int], Sequence[int]]
"""A :class:`Trace` or a ``(prompt_ids, completion_ids)`` pair (lists, tuples or 1-d tensors)."""


def as_traces(traces: Iterable[TraceLike], *, name: str = "traces") -> list[Trace]:
    """Normalise ``traces`` to a list of :class:`Trace`; validates ids are non-negative ints."""
    out: list[Trace] = []
    for i, t in enumerate(traces):
        if isinstance(t, Trace):
            trace = t
        else:
            try:
                prompt, completion = t
            except (TypeError, ValueError):
                raise TypeError(
                    f"{name}[{i}] must be a Trace or a (prompt_ids, completion_ids) pair, "
                    f"got {type(t).__name__}"
                ) from None
            trace = Trace(_ids(prompt), _ids(completion))
        if any(x < 0 for x in trace.ids):
            raise ValueError(f"{name}[{i}] holds a negative token id")
        out.append(trace)
    return out


def _ids(x: Any) -> tuple[int, ...]:
    if isinstance(x, torch.Tensor):
        if x.dim() != 1:
            raise ValueError(f"token id tensors must be 1-d, got shape {tuple(x.shape)}")
        return tuple(int(v) for v in x.tolist())
    return tuple(int(v) for v in x)


def pad_left(
    sequences: Sequence[Sequence[int]], pad_token_id: int, *, device: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id sequences into ``(input_ids, attention_mask)`` for generation."""
    if not sequences:
        raise ValueError("no sequences to pad")
    width = max(len(s) for s in sequences)
    if width == 0:
        raise ValueError("every sequence is empty: generation needs at least one prompt token")
    ids = torch.full((len(sequences), width), int(pad_token_id), dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        if len(s):
            ids[i, width - len(s) :] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids.to(device), mask.to(device)


def pad_right(
    sequences: Sequence[Sequence[int]], pad_token_id: int, *, device: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id sequences into ``(input_ids, attention_mask)`` for teacher forcing."""
    if not sequences:
        raise ValueError("no sequences to pad")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), int(pad_token_id), dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------


def check_real(
    name: str, value: object, *, low: float | None = None, strict: bool = False
) -> float:
    """``value`` as a finite float, optionally ``>= low`` (``> low`` when ``strict``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if low is not None and (v < low or (strict and v == low)):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low:g}, got {value!r}")
    return v


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name}={value!r}; expected one of {', '.join(map(repr, choices))}")
    return str(value)


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


# --------------------------------------------------------------------------------------------
# Incremental forwards with a KV cache
# --------------------------------------------------------------------------------------------


def prompt_mask(input_ids: torch.Tensor, pad_token_id: int | None) -> torch.Tensor:
    """Attention mask of a left-padded batch: leading ``pad_token_id`` tokens are padding.

    Only *leading* pads are masked, so a pad id equal to the end-of-sequence id is safe as long
    as no prompt starts with it.
    """
    if pad_token_id is None:
        return torch.ones_like(input_ids)
    not_pad = (input_ids != pad_token_id).long()
    return (not_pad.cumsum(-1) > 0).long()


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


class CachedForward:
    """Next-token logits of a causal LM for a growing batch, with its own KV cache.

    Each call receives the whole ``input_ids`` so far. When they extend the ids of the previous
    call (same batch, same prefix), only the new tokens are fed through the model with the cached
    keys and values; otherwise the cache is rebuilt from the full ids (a new prompt, a reordered
    batch). Positions follow the attention mask, so left-padded prompts are handled.

    Args:
        model: a ``transformers`` causal LM (anything accepting ``input_ids``, ``attention_mask``,
            ``position_ids``, ``past_key_values`` and ``use_cache`` and returning ``.logits`` and
            ``.past_key_values``).
        runner: optional wrapper ``runner(fn)`` around each forward call (used to perturb the
            parameters in place during the call).
    """

    def __init__(self, model: torch.nn.Module, runner: Any = None) -> None:
        self.model = model
        self.runner = runner
        params = inspect.signature(model.forward).parameters
        self._logits_to_keep = "logits_to_keep" in params
        self.forwards = 0
        self.reset()

    def reset(self) -> None:
        """Forget the cache (the next call processes the full ids)."""
        self.cache: Any = None
        self.ids: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None
        self.next_pos: torch.Tensor | None = None

    def extends(self, input_ids: torch.Tensor) -> bool:
        """Whether ``input_ids`` continue the ids of the previous call."""
        prev = self.ids
        return (
            prev is not None
            and input_ids.shape[0] == prev.shape[0]
            and input_ids.shape[1] > prev.shape[1]
            and bool(torch.equal(input_ids[:, : prev.shape[1]], prev))
        )

    @torch.no_grad()
    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(batch, vocab)`` float32 logits of the next token after ``input_ids``."""
        if self.extends(input_ids):
            assert self.ids is not None
            assert self.mask is not None
            assert self.next_pos is not None
            new = input_ids[:, self.ids.shape[1] :]
            n = new.shape[1]
            mask = torch.cat([self.mask, self.mask.new_ones(new.shape[0], n)], dim=1)
            pos = self.next_pos[:, None] + torch.arange(n, device=new.device)
            cache = self.cache
        else:
            new = input_ids
            if attention_mask is None or attention_mask.shape != input_ids.shape:
                attention_mask = torch.ones_like(input_ids)
            mask = attention_mask.to(input_ids.device).long()
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            cache = None
        kwargs: dict[str, Any] = {
            "input_ids": new,
            "attention_mask": mask,
            "position_ids": pos,
            "past_key_values": cache,
            "use_cache": True,
        }
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = 1

        def forward() -> Any:
            return self.model(**kwargs)

        out = self.runner(forward) if self.runner is not None else forward()
        self.forwards += 1
        self.cache = out.past_key_values
        self.ids = input_ids.clone()
        self.mask = mask
        self.next_pos = pos[:, -1] + 1
        return out.logits[:, -1].float()
