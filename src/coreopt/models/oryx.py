"""Oryx-style multi-mixer block: softmax attention and a linear recurrence from shared weights.

Oryx (Li, Trockman, Suresh et al., 2026) switches mixers along the sequence — softmax attention
where rich context is needed, a linear recurrence elsewhere — with at least 90 % of the
parameters tied across mixers (shared key/value representations, mixer-specific queries and
small extras). No public code; this is coreopt's reconstruction:

* shared: ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``, a short causal depthwise ``conv1d``
  over the concatenated ``[q|k|v]`` (as the short convolutions of Mamba-2 and Gated DeltaNet; it
  gives both mixers cheap local/previous-token features) *(reconstructed)*, and the block's norms
  and MLP;
* per mode, the query is adapted from the shared one by a per-channel gain and a rank-``r``
  correction (``q_m = q ⊙ g_m + (x A_m) B_m``; ``g_m = 1``, ``B_m = 0`` at init, so both modes
  start from the same query) *(reconstructed)*;
* recurrence extras: ``dt_proj`` (``d -> H``), ``dt_bias``, ``A_log`` (Mamba-2 scalar decay per
  head), ``rec_norm`` (per-head RMS norm of the recurrent read-out) *(reconstructed)*;
* attention mode: causal softmax attention over all earlier tokens (keys/values are shared, so
  they exist for every token regardless of mode);
* recurrent mode: ``S_t = exp(Δ_t A) S_{t-1} + Δ_t k_tᵀ v_t``, ``y_t = q_t S_t`` (the SSD scan of
  :func:`coreopt.models.ssd_chunked` with ``B = k``, ``C = q``, ``x = v``);
* how the mode is chosen per position is not known from the paper: the caller passes a mask over
  chunks (``True`` = attention), or one of the schedules of :func:`chunk_schedule`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from coreopt.models.ssm import ssd_chunked
from coreopt.models.vit import Mlp, attend, head_dim_of

Modes = torch.Tensor | str | None


def chunk_schedule(
    num_chunks: int,
    attention_fraction: float,
    *,
    kind: str = "last",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A boolean mask over chunks, ``True`` = attention mode.

    Args:
        num_chunks: number of chunks.
        attention_fraction: fraction of chunks in attention mode (rounded; at least one chunk
            when the fraction is positive).
        kind: ``"last"`` (the final chunks, where queries usually sit), ``"strided"`` (evenly
            spaced, ending at the last chunk) or ``"random"``.
        generator: randomness for ``"random"``.
    """
    if not 0.0 <= attention_fraction <= 1.0:
        raise ValueError(f"attention_fraction must be in [0, 1], got {attention_fraction}")
    n_att = round(attention_fraction * num_chunks)
    if attention_fraction > 0:
        n_att = max(n_att, 1)
    mask = torch.zeros(num_chunks, dtype=torch.bool)
    if n_att == 0:
        return mask
    if kind == "last":
        mask[num_chunks - n_att :] = True
    elif kind == "strided":
        idx = torch.linspace(num_chunks - 1, 0, n_att + 1)[:n_att].round().long()
        mask[idx] = True
    elif kind == "random":
        mask[torch.randperm(num_chunks, generator=generator)[:n_att]] = True
    else:
        raise ValueError(f"kind must be 'last', 'strided' or 'random', got {kind!r}")
    return mask


class OryxMixer(nn.Module):
    """Sequence mixer switchable per chunk between causal softmax attention and a linear
    recurrence, from one set of weights (see the module docstring).

    Args:
        dim: width.
        num_heads: heads (head dim ``dim / num_heads`` is both the attention head dim and the
            recurrent state size).
        chunk_size: tokens per chunk (the unit of mode switching and of the SSD scan).
        adapter_rank: rank of the per-mode query correction.
        d_conv: kernel size of the shared short causal convolution (1 disables it).

    Shape: ``(B, L, dim)`` -> ``(B, L, dim)``, whatever the modes.
    """

    ATTENTION_ONLY = ("attn_q_gain", "attn_q_down", "attn_q_up")
    """Parameters only the attention mode uses."""
    RECURRENT_ONLY = (
        "rec_q_gain",
        "rec_q_down",
        "rec_q_up",
        "dt_proj.weight",
        "dt_proj.bias",
        "dt_bias",
        "A_log",
        "rec_norm",
    )
    """Parameters only the recurrent mode uses; every other parameter is shared."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 4,
        *,
        chunk_size: int = 16,
        adapter_rank: int = 4,
        d_conv: int = 4,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim_of(dim, num_heads)
        self.chunk_size = chunk_size
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)
        if d_conv < 1:
            raise ValueError(f"d_conv must be >= 1, got {d_conv}")
        self.conv1d = nn.Conv1d(3 * dim, 3 * dim, d_conv, groups=3 * dim, padding=d_conv - 1)
        r = adapter_rank
        for mode in ("attn", "rec"):
            setattr(self, f"{mode}_q_gain", nn.Parameter(torch.ones(dim)))
            setattr(self, f"{mode}_q_down", nn.Parameter(torch.randn(dim, r) / math.sqrt(dim)))
            setattr(self, f"{mode}_q_up", nn.Parameter(torch.zeros(r, dim)))
        self.dt_proj = nn.Linear(dim, num_heads)
        dt = torch.exp(torch.rand(num_heads) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.empty(num_heads).uniform_(1, 16)))
        self.rec_norm = nn.Parameter(torch.ones(dim))

    def _query(self, q: torch.Tensor, x: torch.Tensor, mode: str) -> torch.Tensor:
        gain = getattr(self, f"{mode}_q_gain")
        down, up = getattr(self, f"{mode}_q_down"), getattr(self, f"{mode}_q_up")
        return q * gain + (x @ down) @ up

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(*t.shape[:2], self.num_heads, self.head_dim)

    def attention(
        self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """Causal softmax attention with the attention-mode query; ``(B, L, H, hd)``."""
        return attend(self._heads(self._query(q, x, "attn")), k, v, causal=True)

    def recurrence(
        self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """The linear recurrence with the recurrent-mode query; ``(B, L, H, hd)``."""
        qr = self._heads(self._query(q, x, "rec"))
        dt = F.softplus(self.dt_proj(x) + self.dt_bias)
        A = -torch.exp(self.A_log)
        scale = 1.0 / math.sqrt(self.head_dim)
        y, _ = ssd_chunked(v, dt, A, k * scale, qr, self.chunk_size)
        rms = torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-5)
        return y * rms * self.rec_norm.reshape(self.num_heads, self.head_dim)

    def position_mask(self, modes: Modes, L: int, device: torch.device) -> torch.Tensor:
        """Per-position mask (``True`` = attention) from a chunk mask or a mode name."""
        n_chunks = -(-L // self.chunk_size)
        if modes is None or (isinstance(modes, str) and modes == "attention"):
            chunks = torch.ones(n_chunks, dtype=torch.bool)
        elif isinstance(modes, str) and modes == "recurrent":
            chunks = torch.zeros(n_chunks, dtype=torch.bool)
        elif isinstance(modes, torch.Tensor) and modes.dtype == torch.bool and modes.ndim == 1:
            if modes.numel() != n_chunks:
                raise ValueError(
                    f"modes has {modes.numel()} chunks, the sequence has {n_chunks} "
                    f"(L={L}, chunk_size={self.chunk_size})"
                )
            chunks = modes.cpu()
        else:
            raise ValueError(
                "modes must be 'attention', 'recurrent', or a 1-D bool tensor over chunks"
            )
        return chunks.repeat_interleave(self.chunk_size)[:L].to(device)

    def forward(self, x: torch.Tensor, modes: Modes = None) -> torch.Tensor:
        B, L, D = x.shape
        mask = self.position_mask(modes, L, x.device)
        qkv = torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)
        qkv = self.conv1d(qkv.transpose(1, 2))[..., :L].transpose(1, 2)  # causal short conv
        q, k, v = qkv.split(D, dim=-1)
        k, v = self._heads(k), self._heads(v)
        if bool(mask.all()):
            y = self.attention(x, q, k, v)
        elif not bool(mask.any()):
            y = self.recurrence(x, q, k, v)
        else:
            y = torch.where(
                mask[None, :, None, None], self.attention(x, q, k, v), self.recurrence(x, q, k, v)
            )
        return self.o_proj(y.reshape(B, L, D))


class OryxBlock(nn.Module):
    """Pre-norm block ``x + mixer(norm1(x), modes)``, ``x + mlp(norm2(x))`` with an
    :class:`OryxMixer`; everything but the mixer's mode-specific extras is shared."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 4,
        *,
        chunk_size: int = 16,
        adapter_rank: int = 4,
        mlp_ratio: float = 2.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.mixer = OryxMixer(dim, num_heads, chunk_size=chunk_size, adapter_rank=adapter_rank)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, modes: Modes = None) -> torch.Tensor:
        x = x + self.mixer(self.norm1(x), modes)
        return x + self.mlp(self.norm2(x))

    def parameter_groups(self) -> dict[str, list[str]]:
        """Parameter names (relative to the block) by the modes that use them:
        ``"shared"``, ``"attention"`` (attention only), ``"recurrent"`` (recurrent only)."""
        att = {f"mixer.{n}" for n in OryxMixer.ATTENTION_ONLY}
        rec = {f"mixer.{n}" for n in OryxMixer.RECURRENT_ONLY}
        names = [n for n, _ in self.named_parameters()]
        return {
            "shared": [n for n in names if n not in att | rec],
            "attention": [n for n in names if n in att],
            "recurrent": [n for n in names if n in rec],
        }

    def shared_fraction(self) -> float:
        """Fraction of the block's parameters (by count) used by both modes."""
        params = dict(self.named_parameters())
        shared = sum(params[n].numel() for n in self.parameter_groups()["shared"])
        return shared / sum(p.numel() for p in params.values())
