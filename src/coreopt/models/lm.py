"""A small causal sequence model with a pluggable mixer (attention, Mamba-2, Oryx)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from coreopt.models.oryx import Modes, OryxBlock
from coreopt.models.ssm import Mamba2Mixer
from coreopt.models.vit import Block, Mlp

MIXERS = ("attention", "mamba2", "oryx")


class Mamba2Block(nn.Module):
    """Pre-norm residual ``x + mixer(norm(x))`` (+ an optional MLP when ``mlp_ratio > 0``)."""

    def __init__(self, dim: int, *, mlp_ratio: float = 0.0, **mixer_kwargs: Any) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mixer = Mamba2Mixer(dim, **mixer_kwargs)
        self.norm2 = nn.LayerNorm(dim) if mlp_ratio > 0 else None
        self.mlp = Mlp(dim, int(dim * mlp_ratio)) if mlp_ratio > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.norm(x))
        if self.mlp is not None and self.norm2 is not None:
            x = x + self.mlp(self.norm2(x))
        return x


class SequenceLM(nn.Module):
    """Token embedding -> ``depth`` blocks of one mixer kind -> LayerNorm -> vocabulary logits.

    Args:
        vocab_size: tokens.
        mixer: ``"attention"`` (causal :class:`~coreopt.models.vit.Block`, learned positions),
            ``"mamba2"`` (:class:`Mamba2Block`, no positions) or ``"oryx"``
            (:class:`~coreopt.models.OryxBlock`, no positions; ``modes`` picks the mixer per
            chunk).
        dim, depth, num_heads: sizes (``num_heads`` for attention and Oryx).
        max_len: longest sequence (attention's position table).
        mixer_kwargs: passed to the block (e.g. ``d_state``, ``headdim``, ``chunk_size``).

    Shape: ``(B, L)`` token ids -> ``(B, L, vocab_size)``.

    Examples:
        >>> import torch
        >>> lm = SequenceLM(16, mixer="oryx", dim=32, depth=2, num_heads=2, chunk_size=4)
        >>> lm(torch.randint(16, (2, 8)), modes=torch.tensor([False, True])).shape
        torch.Size([2, 8, 16])
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        mixer: str = "attention",
        dim: int = 64,
        depth: int = 2,
        num_heads: int = 4,
        max_len: int = 1024,
        **mixer_kwargs: Any,
    ) -> None:
        super().__init__()
        if mixer not in MIXERS:
            raise ValueError(f"mixer must be one of {MIXERS}, got {mixer!r}")
        self.mixer = mixer
        self.embed = nn.Embedding(vocab_size, dim)
        nn.init.normal_(self.embed.weight, std=1 / math.sqrt(dim))
        self.pos_embed = (
            nn.Parameter(torch.randn(1, max_len, dim) * 0.02) if mixer == "attention" else None
        )
        blocks: list[nn.Module]
        if mixer == "attention":
            blocks = [Block(dim, num_heads, causal=True, **mixer_kwargs) for _ in range(depth)]
        elif mixer == "mamba2":
            blocks = [Mamba2Block(dim, **mixer_kwargs) for _ in range(depth)]
        else:
            blocks = [OryxBlock(dim, num_heads, **mixer_kwargs) for _ in range(depth)]
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size)

    def forward(self, tokens: torch.Tensor, modes: Modes = None) -> torch.Tensor:
        x = self.embed(tokens)
        if self.pos_embed is not None:
            if tokens.shape[1] > self.pos_embed.shape[1]:
                raise ValueError(f"sequence longer than max_len {self.pos_embed.shape[1]}")
            x = x + self.pos_embed[:, : tokens.shape[1]]
        for blk in self.blocks:
            x = blk(x, modes) if isinstance(blk, OryxBlock) else blk(x)
        return self.head(self.norm(x))
