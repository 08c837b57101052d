"""``verify``: measure per-layer statistics and compare them with what the recipe implies.

The expected values are computed from the recipe's *targets* (``α Z + β I`` and its best
rank-``k`` approximation), never by re-running the initialiser, so a layout bug in the
initialiser cannot agree with itself.

What it catches: sign flips (a negative Q·K diagonal, a positive V·O diagonal), a transpose of
one factor of a pair, wrong head slicing, a missing decay/identity-conv, a zero MLP mean. What it
cannot catch: transposing *both* factors of a pair consistently (``W_q^T, W_k^T``): for these
near-identity targets that is another near-identity bilinear form with the same statistics, and
so it is nearly harmless for training too.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from coreopt.init._linalg import mimetic_target
from coreopt.init.apply import _resolve, detect
from coreopt.init.attention import find_attention, is_cross_attention
from coreopt.init.config import (
    CovarianceConvConfig,
    MimeticAttentionConfig,
    MimeticMLPConfig,
    MimeticSSMConfig,
)
from coreopt.init.conv import gaussian_covariance, is_depthwise
from coreopt.init.mlp import find_mlp_first_layers
from coreopt.init.ssm import find_ssm

_REFERENCE_DRAWS = 4


@dataclass(frozen=True)
class Check:
    """One measured statistic of one layer.

    Attributes:
        layer: qualified module name.
        part: recipe part.
        statistic: what was measured (e.g. ``"qk_diag_mean[min over heads]"``).
        measured, expected, tolerance: ``ok`` iff ``|measured - expected| <= tolerance``.
    """

    layer: str
    part: str
    statistic: str
    measured: float
    expected: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return math.isfinite(self.measured) and abs(self.measured - self.expected) <= self.tolerance


@dataclass
class VerifyReport:
    """All :class:`Check` rows of :func:`verify`; ``ok`` when every check passes."""

    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def get(self, layer: str, statistic: str) -> Check:
        for c in self.checks:
            if c.layer == layer and c.statistic == statistic:
                return c
        raise KeyError(f"no check {statistic!r} for layer {layer!r}")

    def __str__(self) -> str:
        lines = [
            f"coreopt.init.verify: {len(self.checks) - len(self.failures)}/{len(self.checks)} ok",
            "",
            "| layer | part | statistic | measured | expected | tol | ok |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in self.checks:
            lines.append(
                f"| {c.layer or '(root)'} | {c.part} | {c.statistic} | {c.measured:.4f} | "
                f"{c.expected:.4f} | {c.tolerance:.3f} | {'yes' if c.ok else 'NO'} |"
            )
        return "\n".join(lines)


def _cosine_to_identity(M: torch.Tensor) -> float:
    """``tr(M) / (‖M‖_F √d)``: 1 for a positive multiple of I, -1 for a negative one."""
    return float(M.trace() / (M.norm() * math.sqrt(M.shape[0])).clamp_min(1e-300))


def _truncate(A: torch.Tensor, rank: int) -> torch.Tensor:
    U, S, Vh = torch.linalg.svd(A)
    return (U[:, :rank] * S[:rank]) @ Vh[:rank]


@functools.lru_cache(maxsize=256)
def _expected_lowrank(
    d: int, rank: int, group: int, alpha: float, beta: float
) -> tuple[float, float, float, float]:
    """Mean and std of (diag mean, identity cosine) of the rank-``rank`` approximation of the
    target ``α Z + β I`` (for ``group > 1``: the target projected on the key space of the
    group's mean target, the GQA construction), over a few reference draws."""
    gen = torch.Generator().manual_seed(20230401)
    diag, cos = [], []
    for _ in range(_REFERENCE_DRAWS):
        targets = [mimetic_target(d, alpha, beta, gen) for _ in range(group)]
        if group == 1:
            P = _truncate(targets[0], rank)
        else:
            _, _, Vh = torch.linalg.svd(torch.stack(targets).mean(0))
            V = Vh[:rank].T
            P = targets[0] @ V @ V.T
        diag.append(float(P.diagonal().mean()))
        cos.append(_cosine_to_identity(P))
    t_d, t_c = torch.tensor(diag), torch.tensor(cos)
    return float(t_d.mean()), float(t_d.std()), float(t_c.mean()), float(t_c.std())


def _tol(std: float, expected: float) -> float:
    return 0.03 + 4 * std + 0.1 * abs(expected)


def _check_attention(name: str, module: nn.Module, cfg: MimeticAttentionConfig) -> list[Check]:
    p = find_attention(module)
    if p is None:
        return []
    out = []
    d, k = p.d_model, p.head_dim
    if cfg.qk:
        diags, coss = [], []
        for h in range(p.num_heads):
            M = p.qk_product(h)
            diags.append(float(M.diagonal().mean()))
            coss.append(_cosine_to_identity(M))
        e_d, s_d, e_c, s_c = _expected_lowrank(d, k, p.group_size, cfg.alpha_qk, cfg.beta_qk)
        for stat, vals, e, s in (("qk_diag_mean", diags, e_d, s_d), ("qk_cos_I", coss, e_c, s_c)):
            out.append(
                Check(name, "attention", f"{stat}[min over heads]", min(vals), e, _tol(s, e))
            )
            out.append(
                Check(name, "attention", f"{stat}[max over heads]", max(vals), e, _tol(s, e))
            )
    if cfg.vo:
        M = p.vo_product()
        rank = min(d, p.num_kv_heads * k)
        e_d, s_d, e_c, s_c = _expected_lowrank(d, rank, 1, cfg.alpha_vo, -cfg.beta_vo)
        out.append(
            Check(
                name, "attention", "vo_diag_mean", float(M.diagonal().mean()), e_d, _tol(s_d, e_d)
            )
        )
        out.append(
            Check(name, "attention", "vo_cos_I", _cosine_to_identity(M), e_c, _tol(s_c, e_c))
        )
    return out


def _check_ssm(name: str, module: nn.Module, cfg: MimeticSSMConfig) -> list[Check]:
    p = find_ssm(module)
    if p is None:
        return []
    decay = float(p.A_log.detach().double().exp().mean())
    dt = float(F.softplus(p.dt_bias.detach().double()).mean())
    out = [
        Check(name, "ssm", "decay(-A)", decay, cfg.decay, 1e-3 * cfg.decay + 1e-7),
        Check(name, "ssm", "softplus(dt_bias)", dt, cfg.dt, 1e-3 * cfg.dt + 1e-6),
    ]
    if p.B_w is not None and p.C_w is not None:
        e_d, s_d, e_c, s_c = _expected_lowrank(p.d_model, p.d_state, 1, cfg.alpha, cfg.beta)
        diags = [float(p.cb_product(g).diagonal().mean()) for g in range(p.ngroups)]
        coss = [_cosine_to_identity(p.cb_product(g)) for g in range(p.ngroups)]
        out.append(Check(name, "ssm", "cb_diag_mean[min]", min(diags), e_d, _tol(s_d, e_d)))
        out.append(Check(name, "ssm", "cb_cos_I[min]", min(coss), e_c, _tol(s_c, e_c)))
    if cfg.conv_identity and p.conv is not None:
        w = p.conv.weight.detach().double()
        delta = torch.zeros_like(w)
        delta[:, 0, -1] = 1.0
        out.append(
            Check(name, "ssm", "conv_identity_error", float((w - delta).abs().max()), 0, 1e-6)
        )
    return out


def _check_mlp(name: str, module: nn.Module, cfg: MimeticMLPConfig) -> list[Check]:
    out = []
    layers = [("", module)] if isinstance(module, nn.Linear) else find_mlp_first_layers(module)
    for sub, lin in layers:
        full = f"{name}.{sub}" if name and sub else (name or sub)
        w = lin.weight.detach().double()
        mean, std = cfg.resolve(lin.in_features)
        se = std / math.sqrt(w.numel())
        out.append(Check(full, "mlp", "weight_mean", float(w.mean()), mean, 5 * se + 1e-12))
        out.append(Check(full, "mlp", "weight_std", float(w.std()), std, 0.1 * std))
    return out


def _check_conv(
    name: str, module: nn.Module, cfg: CovarianceConvConfig, frac: float
) -> list[Check]:
    w = cast(torch.Tensor, module.weight).detach().double()
    C, _, kh, kw = w.shape
    flat = w.reshape(C, kh * kw)
    emp = flat.T @ flat / C
    var = float(emp.diagonal().mean())
    # mean correlation of horizontally adjacent taps
    idx = torch.arange(kh * kw).reshape(kh, kw)
    a, b = idx[:, :-1].reshape(-1), idx[:, 1:].reshape(-1)
    corr = emp / emp.diagonal().sqrt().outer(emp.diagonal().sqrt())
    S = gaussian_covariance((kh, kw), cfg.sigma(frac))
    target_var = cfg.gain**2 / (3.0 * kh * kw)
    return [
        Check(name, "conv", "tap_variance", var, target_var, target_var * (0.1 + 6 / math.sqrt(C))),
        Check(
            name,
            "conv",
            "adjacent_tap_corr",
            float(corr[a, b].mean()),
            float(S[a, b].mean()),
            0.05 + 4 / math.sqrt(C),
        ),
    ]


def verify(
    model: nn.Module, recipe: str = "mimetic", *, config: dict[str, Any] | None = None
) -> VerifyReport:
    """Measure each recognised layer and compare with what the recipe implies.

    For each layer the config is the one that initialised it (recorded by the initialisers);
    layers coreopt did not initialise are checked against ``recipe``'s configs (so a default-
    initialised model fails, on purpose). Statistics:

    * attention: per head the diagonal mean of ``W_q^h W_k^{hT}`` and its cosine to ``I``
      (min and max over heads; about 0.31 and 0.42 at ``d=64``, 4 heads, the defaults); the
      diagonal mean of ``Σ_h W_v^h W_o^h`` (about -0.40) and its cosine to ``I`` (about -0.70);
    * ssm: ``-A``, ``softplus(dt_bias)``, the diagonal mean and identity cosine of ``W_C W_B^T``,
      the short conv's distance from the identity;
    * mlp: the first layer's weight mean and std;
    * conv: the per-tap variance and the mean correlation of horizontally adjacent taps.

    Expected values of the low-rank products come from reference draws of the recipe's target
    matrices (cached); tolerances are ``0.03 + 4·(reference std) + 10 %``.

    Args:
        model: any module (the same walk as :func:`~coreopt.init.apply`).
        recipe: preset whose parts and configs apply to layers without a record.
        config: per-part config overrides for those layers.

    Returns:
        A :class:`VerifyReport`; ``report.ok`` iff every check passes (and there is one).
    """
    chosen, configs = _resolve(recipe, None, config)
    report = VerifyReport()
    modules = list(model.named_modules())
    n_conv = sum(is_depthwise(m) for _, m in modules)
    conv_index = 0
    claimed: list[str] = []
    for name, module in modules:
        if any(name.startswith(c + ".") for c in claimed):
            continue
        try:
            found = [p for p, _ in detect(module)]
        except ValueError:
            continue
        records: dict[str, Any] = getattr(module, "_coreopt_init", {})
        for part in found:
            if part == "conv":
                frac = conv_index / (n_conv - 1) if n_conv > 1 else 0.0
                conv_index += 1
                rec = records.get("conv")
                if rec is not None:
                    cfg_c, frac, explicit = rec
                    if explicit:
                        continue  # an estimated covariance: no closed form to compare with
                elif "conv" not in chosen:
                    continue
                else:
                    cfg_c = configs["conv"]
                report.checks.extend(_check_conv(name, module, cfg_c, frac))
                continue
            if part == "mlp":
                for sub, lin in find_mlp_first_layers(module):
                    rec = getattr(lin, "_coreopt_init", {}).get("mlp")
                    if rec is None and "mlp" not in chosen:
                        continue
                    cfg_m = rec if rec is not None else configs["mlp"]
                    full = f"{name}.{sub}" if name else sub
                    report.checks.extend(_check_mlp(full, lin, cfg_m))
                continue
            cfg = records.get(part)
            if cfg is None:
                if part not in chosen:
                    continue
                cfg = configs[part]
                if (
                    part == "attention"
                    and is_cross_attention(name, module)
                    and not cfg.cross_attention
                ):
                    continue  # apply skips cross-attention by default: nothing to check
            if part == "attention":
                report.checks.extend(_check_attention(name, module, cfg))
            elif part == "ssm":
                report.checks.extend(_check_ssm(name, module, cfg))
        if {"attention", "ssm"} & set(found):
            claimed.append(name)
    return report


__all__ = ["Check", "VerifyReport", "verify"]
