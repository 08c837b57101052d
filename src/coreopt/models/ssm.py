"""A Mamba-2-style selective state space layer in pure torch (CPU and CUDA).

The scan (Dao & Gu 2024, "state space duality"), per head with scalar decay ``a_t = exp(Δ_t A)``:

    S_t = a_t S_{t-1} + Δ_t x_t B_tᵀ        (state ``P x N``)
    y_t = S_t C_t + D x_t

:func:`ssd_naive` runs this recurrence token by token (the reference). :func:`ssd_chunked` is
the chunked dual form: inside a chunk of ``Q`` tokens the output is the masked "attention"
``y = (L ∘ C Bᵀ)(Δ ∘ x)`` with ``L_ts = exp(Σ_{r=s+1..t} Δ_r A)``; across chunks a state is
passed, so the cost is ``O(L Q)`` rather than ``O(L²)``. Parameter names follow mamba-ssm's
``Mamba2`` (``in_proj``, ``conv1d``, ``dt_bias``, ``A_log``, ``D``, ``norm``, ``out_proj``), so
:func:`coreopt.init.mimetic_ssm_` recognises both.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _heads_from_groups(t: torch.Tensor, nheads: int) -> torch.Tensor:
    """``(b, L, G, N)`` -> ``(b, L, H, N)``: head ``h`` reads group ``h // (H / G)``."""
    G = t.shape[2]
    if nheads % G:
        raise ValueError(f"nheads ({nheads}) must be a multiple of the number of groups ({G})")
    return t.repeat_interleave(nheads // G, dim=2)


def ssd_naive(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The selective scan as a token-by-token recurrence (reference implementation).

    Args:
        x: ``(b, L, H, P)`` inputs per head.
        dt: ``(b, L, H)`` step sizes (already positive, e.g. after softplus).
        A: ``(H,)`` negative decay rates.
        B, C: ``(b, L, G, N)`` input and output projections (``G`` divides ``H``).
        initial_state: ``(b, H, P, N)`` or ``None`` (zeros).

    Returns:
        ``(y, final_state)`` with ``y`` of shape ``(b, L, H, P)`` (without the ``D x`` skip).
    """
    b, L, H, P = x.shape
    Bh, Ch = _heads_from_groups(B, H), _heads_from_groups(C, H)
    N = Bh.shape[-1]
    S = x.new_zeros(b, H, P, N) if initial_state is None else initial_state
    ys = []
    for t in range(L):
        decay = torch.exp(dt[:, t] * A)  # (b, H)
        S = (
            decay[..., None, None] * S
            + (dt[:, t, :, None, None] * x[:, t, :, :, None]) * Bh[:, t, :, None, :]
        )
        ys.append(torch.einsum("bhpn,bhn->bhp", S, Ch[:, t]))
    return torch.stack(ys, dim=1), S


def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int = 64,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The selective scan in the chunked dual (SSD) form; same arguments as :func:`ssd_naive`.

    Within each chunk: ``Y_diag = (L ∘ C Bᵀ)(Δ ∘ x)`` with the causal decay mask ``L``; chunk
    states ``s_c = Σ_s exp(a_end - a_s) Δ_s x_s B_sᵀ``; a short recurrence over chunks carries
    the state; ``Y_off = exp(a_t) C_t S_{c-1}``. Sequence lengths that are not a multiple of
    ``chunk_size`` are zero-padded (``Δ = 0`` on padding: no decay, no input).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    b, L, H, P = x.shape
    Bh, Ch = _heads_from_groups(B, H), _heads_from_groups(C, H)
    N = Bh.shape[-1]
    Q = chunk_size
    pad = (-L) % Q
    if pad:
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        dt = F.pad(dt, (0, 0, 0, pad))
        Bh = F.pad(Bh, (0, 0, 0, 0, 0, pad))
        Ch = F.pad(Ch, (0, 0, 0, 0, 0, pad))
    c = x.shape[1] // Q
    # layout (b, H, c, Q, ·) so every contraction below is a batched matmul
    xs = x.reshape(b, c, Q, H, P).permute(0, 3, 1, 2, 4)
    dts = dt.reshape(b, c, Q, H).permute(0, 3, 1, 2)
    Bs = Bh.reshape(b, c, Q, H, N).permute(0, 3, 1, 2, 4)
    Cs = Ch.reshape(b, c, Q, H, N).permute(0, 3, 1, 2, 4)
    acum = torch.cumsum(dts * A[:, None, None], dim=-1)  # (b, H, c, Q) cumulative log-decay
    # intra-chunk decay mask L[t, s] = exp(acum_t - acum_s) for s <= t
    diff = acum[..., :, None] - acum[..., None, :]
    causal = torch.ones(Q, Q, dtype=torch.bool, device=x.device).tril()
    Lmask = torch.exp(diff.masked_fill(~causal, float("-inf")))  # (b, H, c, Q, Q)
    xdt = xs * dts[..., None]  # Δ ∘ x
    y_diag = ((Cs @ Bs.transpose(-1, -2)) * Lmask) @ xdt  # (b, H, c, Q, P)
    # per-chunk states (N x P): contribution of the chunk's own tokens to its final state
    to_end = torch.exp(acum[..., -1:] - acum)  # (b, H, c, Q)
    states = (Bs * to_end[..., None]).transpose(-1, -2) @ xdt  # (b, H, c, N, P)
    chunk_decay = torch.exp(acum[..., -1])  # (b, H, c)
    S = x.new_zeros(b, H, N, P) if initial_state is None else initial_state.transpose(-1, -2)
    prev = []
    for i in range(c):
        prev.append(S)
        S = chunk_decay[:, :, i, None, None] * S + states[:, :, i]
    S_prev = torch.stack(prev, dim=2)  # (b, H, c, N, P): the state entering each chunk
    y_off = (Cs * torch.exp(acum)[..., None]) @ S_prev  # (b, H, c, Q, P)
    y = (y_diag + y_off).permute(0, 2, 3, 1, 4).reshape(b, c * Q, H, P)[:, :L]
    return y, S.transpose(-1, -2)


class RMSNormGated(nn.Module):
    """``RMSNorm(y · silu(z))`` with a learned scale (Mamba-2's output norm)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, y: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        if z is not None:
            y = y * F.silu(z)
        return y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Mamba2Mixer(nn.Module):
    """A Mamba-2-style selective SSM mixer (pure torch).

    ``in_proj`` produces ``[z | x | B | C | dt]`` (widths ``d_inner, d_inner, G N, G N, H``);
    ``x, B, C`` pass a short causal depthwise ``conv1d`` and SiLU; ``Δ = softplus(dt + dt_bias)``,
    ``A = -exp(A_log)``; the scan (:func:`ssd_chunked` or :func:`ssd_naive`) plus ``D x``; a
    gated RMSNorm with ``z``; ``out_proj``. Default init as mamba-ssm: ``-A ~ U[1, 16]``,
    ``Δ ~ logU[1e-3, 1e-1]`` (through ``dt_bias``), ``D = 1``.

    Args:
        d_model: width.
        d_state: ``N``.
        d_conv: short conv kernel size.
        expand: ``d_inner = expand · d_model``.
        headdim: ``P``; ``nheads = d_inner / headdim``.
        ngroups: ``G`` groups of ``B``/``C`` shared by ``nheads / G`` heads each.
        chunk_size: chunk length of the SSD form.

    Shape: ``(B, L, d_model)`` -> ``(B, L, d_model)``.
    """

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 16,
        ngroups: int = 1,
        chunk_size: int = 32,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_inner = expand * d_model
        if self.d_inner % headdim:
            raise ValueError(f"expand*d_model ({self.d_inner}) must be divisible by headdim")
        self.headdim = headdim
        self.nheads = self.d_inner // headdim
        if self.nheads % ngroups:
            raise ValueError(f"nheads ({self.nheads}) must be divisible by ngroups ({ngroups})")
        self.d_state = d_state
        self.ngroups = ngroups
        self.chunk_size = chunk_size
        conv_dim = self.d_inner + 2 * ngroups * d_state
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner + 2 * ngroups * d_state + self.nheads)
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, d_conv, groups=conv_dim, padding=d_conv - 1)
        dt = torch.exp(
            torch.rand(self.nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        )
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_log = nn.Parameter(torch.log(torch.empty(self.nheads).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(self.nheads))
        self.norm = RMSNormGated(self.d_inner)
        self.out_proj = nn.Linear(self.d_inner, d_model)

    def forward(self, u: torch.Tensor, *, naive: bool = False) -> torch.Tensor:
        b, L, _ = u.shape
        GN = self.ngroups * self.d_state
        z, xBC, dt = self.in_proj(u).split([self.d_inner, self.d_inner + 2 * GN, self.nheads], -1)
        xBC = F.silu(self.conv1d(xBC.transpose(1, 2))[..., :L].transpose(1, 2))
        x, B, C = xBC.split([self.d_inner, GN, GN], dim=-1)
        x = x.reshape(b, L, self.nheads, self.headdim)
        B = B.reshape(b, L, self.ngroups, self.d_state)
        C = C.reshape(b, L, self.ngroups, self.d_state)
        dt = F.softplus(dt + self.dt_bias)
        A = -torch.exp(self.A_log)
        if naive:
            y, _ = ssd_naive(x, dt, A, B, C)
        else:
            y, _ = ssd_chunked(x, dt, A, B, C, self.chunk_size)
        y = y + x * self.D[:, None]
        y = self.norm(y.reshape(b, L, self.d_inner), z)
        return self.out_proj(y)
