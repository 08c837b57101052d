"""A small Vision Transformer and a causal Transformer LM with timm-compatible parameter names.

Attention uses timm's fused layout (``qkv`` rows ``[Q|K|V]``, heads contiguous; output ``proj``),
so :func:`coreopt.init.mimetic_attention_` and timm checkpoints both see the layout they expect.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def head_dim_of(dim: int, num_heads: int) -> int:
    """The width of one head, ``dim // num_heads``; ``ValueError`` unless ``num_heads`` divides
    ``dim``."""
    if dim % num_heads:
        raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
    return dim // num_heads


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool) -> torch.Tensor:
    """Scaled dot-product attention over ``(B, L, H, head_dim)`` queries, keys and values;
    returns ``(B, L, H, head_dim)`` (a transposed view of the fused kernel's output)."""
    y = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal
    )
    return y.transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention, timm layout (``qkv``, ``proj``); optionally causal.

    Shape: ``(B, N, dim)`` -> ``(B, N, dim)``.
    """

    def __init__(
        self, dim: int, num_heads: int = 4, *, qkv_bias: bool = True, causal: bool = False
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim_of(dim, num_heads)
        self.causal = causal
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).unbind(2)
        y = attend(q, k, v, causal=self.causal)
        return self.proj(y.reshape(B, N, C))


class Mlp(nn.Module):
    """``fc1 -> GELU -> fc2`` (timm names)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm Transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, *, causal: bool = False
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, causal=causal)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def timm_init_(module: nn.Module) -> nn.Module:
    """timm's ViT default init: truncated normal (std 0.02) linear weights, zero biases,
    LayerNorm (1, 0), truncated normal position embeddings and class token."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for name in ("pos_embed", "cls_token"):
        p = getattr(module, name, None)
        if isinstance(p, nn.Parameter):
            nn.init.trunc_normal_(p, std=0.02)
    return module


class PatchEmbed(nn.Module):
    """Non-overlapping patches by a strided convolution (``proj``, timm name)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(
                f"img_size ({img_size}) must be divisible by patch_size ({patch_size})"
            )
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """A small ViT (timm names: ``patch_embed.proj``, ``cls_token``, ``pos_embed``,
    ``blocks.i.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``, ``head``).

    Initialised with :func:`timm_init_` (the "default init" the mimetic benchmark compares with).

    Args:
        img_size, patch_size, in_chans: input geometry (``img_size`` divisible by ``patch_size``).
        num_classes: logits.
        embed_dim, depth, num_heads, mlp_ratio: the Transformer.
        global_pool: ``"token"`` (class token) or ``"avg"`` (mean of patch tokens).

    Shape:
        ``(B, in_chans, img_size, img_size)`` -> ``(B, num_classes)``.

    Examples:
        >>> import torch
        >>> vit = VisionTransformer(8, 2, 1, 10, embed_dim=32, depth=2, num_heads=4)
        >>> vit(torch.randn(3, 1, 8, 8)).shape
        torch.Size([3, 10])
    """

    def __init__(
        self,
        img_size: int = 32,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 10,
        *,
        embed_dim: int = 64,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        global_pool: str = "token",
    ) -> None:
        super().__init__()
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
        self.global_pool = global_pool
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.blocks = nn.Sequential(*(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        timm_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        x = x[:, 0] if self.global_pool == "token" else x[:, 1:].mean(1)
        return self.head(x)


class TransformerLM(nn.Module):
    """A causal Transformer language model (learned positions, pre-norm blocks, tied nothing).

    Shape: ``(B, L)`` token ids -> ``(B, L, vocab_size)`` logits.
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        dim: int = 64,
        depth: int = 2,
        num_heads: int = 4,
        max_len: int = 512,
        mlp_ratio: float = 2.0,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, max_len, dim))
        self.blocks = nn.Sequential(
            *(Block(dim, num_heads, mlp_ratio, causal=True) for _ in range(depth))
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size)
        timm_init_(self)
        nn.init.normal_(self.embed.weight, std=1 / math.sqrt(dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        L = tokens.shape[1]
        if self.pos_embed.shape[1] < L:
            raise ValueError(f"sequence length {L} exceeds max_len {self.pos_embed.shape[1]}")
        x = self.embed(tokens) + self.pos_embed[:, :L]
        return self.head(self.norm(self.blocks(x)))
