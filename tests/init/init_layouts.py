"""Small attention layers in the layouts coreopt.init must recognise (test-only)."""

from __future__ import annotations

import torch
from torch import nn


class FusedAttention(nn.Module):
    """timm layout: qkv rows [Q|K|V], heads contiguous; output `proj`."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(B, N, C))


class GQAttention(nn.Module):
    """HF Llama layout: q_proj/k_proj/v_proj/o_proj, grouped-query attention, no biases."""

    def __init__(self, dim: int, num_heads: int, num_key_value_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = dim // num_heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, num_key_value_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(dim, num_key_value_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = FusedAttention(dim, heads)
        self.mlp = nn.Sequential()
        self.mlp.fc1 = nn.Linear(dim, 2 * dim)
        self.mlp.fc2 = nn.Linear(2 * dim, dim)
