"""Next-token logits of a causal LM for a growing batch, with its own KV cache."""

from __future__ import annotations

import inspect
from typing import Any

import torch


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
