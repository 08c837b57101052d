"""Mimetic initialisation of Mamba-2-style state space layers (Trockman et al., 2024)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from coreopt.init._linalg import make_generator, mimetic_target, split_factor
from coreopt.init.attention import record_init
from coreopt.init.config import MimeticSSMConfig


@dataclass
class SSMProjections:
    """Views of the parts of a Mamba-2 layer the recipe touches (mamba-ssm attribute names).

    ``in_proj`` output layout ``[z | x | B | C | dt]`` with widths ``d_inner``, ``d_inner``,
    ``G·N``, ``G·N``, ``nheads``; ``B``/``C`` rows of group ``g`` are ``g N:(g+1) N``.
    Any field may be ``None`` (a layer without that part).
    """

    d_model: int
    d_state: int
    ngroups: int
    B_w: torch.Tensor | None  # (G N, d_model), nn.Linear convention
    C_w: torch.Tensor | None
    B_b: torch.Tensor | None
    C_b: torch.Tensor | None
    A_log: torch.Tensor
    dt_bias: torch.Tensor
    conv: nn.Conv1d | None

    def cb_product(self, g: int = 0) -> torch.Tensor:
        """``W_C^g W_B^{gT}`` (``d_model x d_model``, float64, row-vector convention)."""
        if self.B_w is None or self.C_w is None:
            raise ValueError("this layer has no B/C projections")
        N = self.d_state
        C = self.C_w[g * N : (g + 1) * N].detach().double()
        B = self.B_w[g * N : (g + 1) * N].detach().double()
        return C.T @ B


def find_ssm(module: nn.Module) -> SSMProjections | None:
    """The SSM parts of ``module`` or ``None``.

    Recognised: modules with ``A_log`` and ``dt_bias`` parameters (coreopt's
    :class:`~coreopt.models.Mamba2Mixer` and mamba-ssm's ``Mamba2`` naming; coreopt's
    :class:`~coreopt.models.OryxMixer` recurrence extras). ``B``/``C`` are located in ``in_proj``
    when the module has ``in_proj``, ``d_inner``, ``d_state``, ``ngroups`` and ``nheads``.
    """
    A_log = getattr(module, "A_log", None)
    dt_bias = getattr(module, "dt_bias", None)
    if not isinstance(A_log, torch.Tensor) or not isinstance(dt_bias, torch.Tensor):
        return None
    in_proj = getattr(module, "in_proj", None)
    d_inner = getattr(module, "d_inner", None)
    N = getattr(module, "d_state", None)
    G = getattr(module, "ngroups", 1)
    nheads = getattr(module, "nheads", None)
    B_w = C_w = B_b = C_b = None
    d_model = 0
    if isinstance(in_proj, nn.Linear) and isinstance(d_inner, int) and isinstance(N, int):
        expected = 2 * d_inner + 2 * G * N + (nheads or 0)
        if in_proj.out_features != expected:
            raise ValueError(
                f"{type(module).__name__}.in_proj has {in_proj.out_features} outputs, expected "
                f"[z|x|B|C|dt] = {expected}"
            )
        s = 2 * d_inner
        B_w, C_w = in_proj.weight[s : s + G * N], in_proj.weight[s + G * N : s + 2 * G * N]
        if in_proj.bias is not None:
            B_b, C_b = in_proj.bias[s : s + G * N], in_proj.bias[s + G * N : s + 2 * G * N]
        d_model = in_proj.in_features
    conv = getattr(module, "conv1d", None)
    return SSMProjections(
        d_model,
        int(N) if isinstance(N, int) else 0,
        int(G),
        B_w,
        C_w,
        B_b,
        C_b,
        A_log,
        dt_bias,
        conv if isinstance(conv, nn.Conv1d) else None,
    )


@torch.no_grad()
def mimetic_ssm_(
    module: nn.Module,
    config: MimeticSSMConfig | None = None,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Mimetic initialisation of a Mamba-2-style layer, in place (Trockman et al., 2024).

    A Mamba-2 layer is ``y = (L ∘ C B^T)(Δ ∘ x) + D x`` with ``L_ts = Π_{r=s+1..t} exp(Δ_r A)``.
    At mamba-ssm's default init (``-A ~ U[1, 16]``, ``Δ ~ logU[1e-3, 1e-1]``) this "attention"
    decays fast and is local. The recipe makes it look like mimetic attention:

    * no decay: ``A = -decay`` (``A_log = log(decay)``, default ``1e-3``) and
      ``softplus(dt_bias) = dt`` (default 1.0 *(reconstructed)*), so ``exp(Δ A) ≈ 1``;
    * ``W_C W_B^T ≈ α Z + β I`` per group at rank ``d_state`` by the SVD construction of
      :func:`~coreopt.init.mimetic_attention_` (``W_C = U_N S_N^{1/2}``, ``W_B = V_N S_N^{1/2}``,
      row-vector convention; ``in_proj.weight`` holds their transposes); biases of B, C zero;
    * the short causal depthwise ``conv1d`` set to the identity (weight 1 on the current token,
      the last tap under causal left padding; bias 0) *(reconstructed)*.

    Parts the module lacks are skipped (e.g. :class:`~coreopt.models.OryxMixer` has no
    ``conv1d``; its shared query/key pair is the attention recipe's job).

    Args:
        module: a layer :func:`find_ssm` recognises.
        config: constants (:class:`MimeticSSMConfig`).
        seed, generator: randomness (one of them; neither uses torch's global RNG).

    Returns:
        ``module``, initialised.
    """
    cfg = MimeticSSMConfig() if config is None else config
    if not isinstance(cfg, MimeticSSMConfig):
        raise TypeError(f"config must be a MimeticSSMConfig, got {type(cfg).__name__}")
    p = find_ssm(module)
    if p is None:
        raise ValueError(
            f"{type(module).__name__} is not a recognised SSM layer (expected A_log and dt_bias)"
        )
    gen = make_generator(seed, generator)
    p.A_log.fill_(math.log(cfg.decay))
    p.dt_bias.fill_(cfg.dt + math.log(-math.expm1(-cfg.dt)))  # inverse softplus
    if p.B_w is not None and p.C_w is not None:
        N = p.d_state
        if p.d_model < N:
            raise ValueError(f"d_state ({N}) must not exceed d_model ({p.d_model})")
        for g in range(p.ngroups):
            L, R = split_factor(mimetic_target(p.d_model, cfg.alpha, cfg.beta, gen), N)
            p.C_w[g * N : (g + 1) * N].copy_(L.T)
            p.B_w[g * N : (g + 1) * N].copy_(R.T)
        for b in (p.B_b, p.C_b):
            if b is not None:
                b.zero_()
    if cfg.conv_identity and p.conv is not None:
        p.conv.weight.zero_()
        p.conv.weight[:, 0, -1] = 1.0
        if p.conv.bias is not None:
            p.conv.bias.zero_()
    record_init(module, "ssm", cfg)
    return module
