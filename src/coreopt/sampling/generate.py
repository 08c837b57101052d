"""A batched sampling loop with KV caches for the teacher and for every proxy of the processor."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from coreopt.sampling._checks import check_real
from coreopt.sampling._forward import CachedForward
from coreopt.sampling._models import model_device
from coreopt.sampling.traces import Trace, pad_left


@dataclass(frozen=True)
class GenerationResult:
    """What :func:`generate` returns.

    Attributes:
        sequences: ``(B, T0 + steps)`` token ids: the left-padded prompts, then the new tokens
            (``pad_token_id`` after a row's end-of-sequence token).
        attention_mask: ``(B, T0)`` mask of the prompts (1: token, 0: left padding).
        completions: per row, the new tokens up to and including the first end-of-sequence.
        finished: ``(B,)`` bool, whether the row produced an end-of-sequence token.
        steps: sampling steps run (teacher forward passes after the prompt).
        seconds: wall-clock time of the loop.
    """

    sequences: torch.Tensor
    attention_mask: torch.Tensor
    completions: list[list[int]]
    finished: torch.Tensor
    steps: int
    seconds: float

    @property
    def prompt_length(self) -> int:
        """``T0``, the padded prompt width."""
        return int(self.attention_mask.shape[1])

    @property
    def new_tokens(self) -> int:
        """Tokens generated over all rows (up to each row's end-of-sequence)."""
        return sum(len(c) for c in self.completions)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("nan")

    def prompts(self) -> list[list[int]]:
        """The prompts without their padding."""
        rows = self.sequences[:, : self.prompt_length].tolist()
        mask = self.attention_mask.tolist()
        return [
            [t for t, m in zip(r, mr, strict=True) if m] for r, mr in zip(rows, mask, strict=True)
        ]

    def traces(self) -> list[Trace]:
        """``Trace(prompt, completion)`` per row."""
        return [
            Trace(tuple(p), tuple(c)) for p, c in zip(self.prompts(), self.completions, strict=True)
        ]


def _top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
    probs = torch.softmax(sorted_logits, dim=-1)
    cum = probs.cumsum(-1)
    drop = cum - probs > top_p  # keep the smallest prefix whose mass reaches top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)


@torch.no_grad()
def generate(
    teacher: torch.nn.Module,
    prompts: Sequence[Sequence[int]] | torch.Tensor,
    *,
    processor: Any = None,
    max_new_tokens: int = 64,
    attention_mask: torch.Tensor | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    do_sample: bool = True,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> GenerationResult:
    """Sample continuations of a batch of prompts, one teacher forward per step with a KV cache.

    Each step runs the teacher on the new token only (cached keys/values), passes its logits
    through ``processor`` (which runs its own proxies, each with its own KV cache), and draws the
    next token from the softmax of the result (or its argmax with ``do_sample=False``). Rows that
    emitted an end-of-sequence token get ``pad_token_id`` from then on; the loop stops when
    every row has finished or after ``max_new_tokens`` steps.

    Args:
        teacher: a ``transformers`` causal LM.
        prompts: a list of token-id lists (left-padded here), or a ``(B, T)`` tensor of
            left-padded ids (then pass ``attention_mask``, or ``pad_token_id`` to infer it).
        processor: a processor of :mod:`coreopt.sampling` (or any ``transformers`` logits
            processor, called as ``processor(input_ids, scores)``); ``None``: temperature sampling.
        max_new_tokens: most tokens to generate per row.
        attention_mask: mask of a tensor of prompts.
        eos_token_id: end-of-sequence id(s) (default: the teacher config's).
        pad_token_id: id for left padding and after end-of-sequence (default: the config's pad
            id, else the first end-of-sequence id, else 0).
        temperature: ``τ`` when ``processor`` is ``None`` (processors carry their own).
        top_p: nucleus sampling on the processed logits (1.0: off).
        do_sample: sample (``True``) or take the argmax.
        seed: seed of a fresh generator (ignored when ``generator`` is given).
        generator: the ``torch.Generator`` to sample with (on the teacher's device).
        progress: a ``tqdm`` bar over steps.

    Returns:
        A :class:`GenerationResult`.
    """
    from coreopt.sampling.processors import TemperatureProcessor

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens!r}")
    top_p = check_real("top_p", top_p, low=0.0, strict=True)
    if top_p > 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    device = model_device(teacher)
    config = getattr(teacher, "config", None)
    if eos_token_id is None:
        eos_token_id = getattr(config, "eos_token_id", None)
    eos = (
        []
        if eos_token_id is None
        else (
            [int(eos_token_id)] if isinstance(eos_token_id, int) else [int(e) for e in eos_token_id]
        )
    )
    if pad_token_id is None:
        pad_token_id = getattr(config, "pad_token_id", None)
        if pad_token_id is None:
            pad_token_id = eos[0] if eos else 0
    if isinstance(prompts, torch.Tensor):
        ids = prompts.to(device)
        if ids.dim() != 2:
            raise ValueError(f"prompts must be a (B, T) tensor, got shape {tuple(ids.shape)}")
        if attention_mask is None:
            from coreopt.sampling.traces import prompt_mask

            attention_mask = prompt_mask(ids, pad_token_id)
        mask = attention_mask.to(device).long()
    else:
        ids, mask = pad_left(list(prompts), pad_token_id, device=device)
    if processor is None:
        processor = TemperatureProcessor(temperature)
    if generator is None:
        generator = torch.Generator(device=device)
        # without a seed, draw one from torch's global generator (reproducible under
        # torch.manual_seed, and unlike torch.seed() it does not reseed the global generator)
        generator.manual_seed(int(torch.randint(0, 2**62, ()).item()) if seed is None else seed)
    begin = getattr(processor, "begin", None)
    if callable(begin):
        begin(mask)
    teacher.eval()
    forward = CachedForward(teacher)
    eos_t = torch.tensor(eos, dtype=torch.long, device=device)
    b = ids.shape[0]
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    prompt_mask_ = mask
    steps = 0
    start = time.perf_counter()
    for _ in tqdm(range(max_new_tokens), desc="generate", unit="tok", disable=not progress):
        scores = forward(ids, mask if steps == 0 else None)
        logits = processor(ids, scores)
        if top_p < 1.0:
            logits = _top_p(logits, top_p)
        if do_sample:
            probs = torch.softmax(logits.float(), dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
        else:
            nxt = logits.argmax(-1)
        nxt = torch.where(finished, torch.full_like(nxt, pad_token_id), nxt)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        steps += 1
        if eos_t.numel():
            finished |= torch.isin(nxt, eos_t)
            if bool(finished.all()):
                break
    seconds = time.perf_counter() - start
    new = ids[:, prompt_mask_.shape[1] :].tolist()
    completions: list[list[int]] = []
    eos_set = set(eos)
    for row in new:
        out: list[int] = []
        for t in row:
            out.append(t)
            if t in eos_set:
                break
        completions.append(out)
    return GenerationResult(ids, prompt_mask_, completions, finished, steps, seconds)
