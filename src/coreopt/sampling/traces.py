"""Traces (prompt and completion token ids), padding and attention masks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

IGNORE_INDEX = -100
"""Label value of positions that do not enter a loss (prompt tokens and padding)."""


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


def prompt_mask(input_ids: torch.Tensor, pad_token_id: int | None) -> torch.Tensor:
    """Attention mask of a left-padded batch: leading ``pad_token_id`` tokens are padding.

    Only *leading* pads are masked, so a pad id equal to the end-of-sequence id is safe as long
    as no prompt starts with it.
    """
    if pad_token_id is None:
        return torch.ones_like(input_ids)
    not_pad = (input_ids != pad_token_id).long()
    return (not_pad.cumsum(-1) > 0).long()
