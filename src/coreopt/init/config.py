"""One frozen config dataclass per recipe, validated on construction (``ValueError``/``TypeError``).

Values marked *(reconstructed)* are choices of coreopt where the paper's constant was not
recoverable; they are parameters so they can be swapped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def _finite(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _positive(name: str, value: object, *, allow_zero: bool = False) -> float:
    v = _finite(name, value)
    if v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return v


@dataclass(frozen=True)
class MimeticAttentionConfig:
    """Mimetic initialisation of self-attention (Trockman & Kolter, ICML 2023).

    Per head ``h``: ``W_q^h W_k^{hT} ≈ alpha_qk Z_h + beta_qk I`` (best rank-``head_dim``
    approximation); jointly over heads: ``W_v W_o ≈ alpha_vo Z - beta_vo I`` (full rank).

    Attributes:
        qk: initialise the query/key pair. An earlier reproduction on causal associative recall
            found it harmful there (``"language"`` preset turns it off); coreopt's own benchmark
            did not reproduce that (see ``docs/init.md``).
        vo: initialise the value/output pair.
        alpha_qk, beta_qk: noise scale and identity weight of the query-key target (0.7, 0.7).
        alpha_vo, beta_vo: noise scale and (subtracted) identity weight of the value-output
            target (0.4, 0.4). A negative ``beta_vo`` flips the sign of the identity on purpose.
        zero_bias: set the q/k/v/o biases to zero (the paper's choice).
        cross_attention: also initialise cross-attention layers (T5 ``EncDecAttention``,
            ``nn.TransformerDecoderLayer.multihead_attn``, BERT/GPT-2 ``crossattention``, ...)
            with the same recipe. Off by default: the paper defines the recipe for
            *self*-attention, where queries and keys read the same stream, so ``W_q W_kᵀ ≈ I``
            means "attend to the same token"; in cross-attention queries and keys read different
            streams (decoder vs encoder) and the paper says nothing. ``True`` is a
            reconstruction, not the paper's; :func:`~coreopt.init.apply` reports cross-attention
            layers as ``"skipped"`` with this reason otherwise.
    """

    qk: bool = True
    vo: bool = True
    alpha_qk: float = 0.7
    beta_qk: float = 0.7
    alpha_vo: float = 0.4
    beta_vo: float = 0.4
    zero_bias: bool = True
    cross_attention: bool = False

    def __post_init__(self) -> None:
        for name in ("qk", "vo", "zero_bias", "cross_attention"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        _positive("alpha_qk", self.alpha_qk, allow_zero=True)
        _positive("alpha_vo", self.alpha_vo, allow_zero=True)
        _finite("beta_qk", self.beta_qk)
        _finite("beta_vo", self.beta_vo)


@dataclass(frozen=True)
class MimeticMLPConfig:
    """Mimetic initialisation of an MLP's first layer (Trockman & Kolter, 2026).

    The first layer's weights are drawn i.i.d. ``N(mean, std^2)``: a small *nonzero* mean.

    Attributes:
        std: standard deviation; ``None`` keeps PyTorch's default for ``nn.Linear``
            (``1/sqrt(3 fan_in)``, the std of its Kaiming-uniform init).
        mean: the mean; ``None`` means ``relative_mean * std``.
        relative_mean: the mean in units of ``std`` when ``mean`` is ``None``. Default 0.25
            *(reconstructed: the paper's value was not recoverable; chosen as "small" and exposed)*.
            ``benchmarks/init.py`` (``mlp`` case: tiny ViT on digits) measured no effect of the
            mean itself against a zero-mean control (0.25, 0.5, 1.0); the gain over timm's init
            there came from ``std`` (see ``docs/init.md``).
        zero_bias: set the first layer's bias to zero.
    """

    std: float | None = None
    mean: float | None = None
    relative_mean: float = 0.25
    zero_bias: bool = True

    def __post_init__(self) -> None:
        if self.std is not None:
            _positive("std", self.std)
        if self.mean is not None:
            _finite("mean", self.mean)
        _finite("relative_mean", self.relative_mean)
        if not isinstance(self.zero_bias, bool):
            raise TypeError(f"zero_bias must be a bool, got {self.zero_bias!r}")

    def resolve(self, fan_in: int) -> tuple[float, float]:
        """``(mean, std)`` for a layer with ``fan_in`` inputs."""
        std = self.std if self.std is not None else 1.0 / math.sqrt(3.0 * fan_in)
        mean = self.mean if self.mean is not None else self.relative_mean * std
        return mean, std


@dataclass(frozen=True)
class MimeticSSMConfig:
    """Mimetic initialisation of a Mamba-2-style state space layer (Trockman et al., 2024).

    Attributes:
        decay: the state-transition magnitude ``-A`` (``A = -decay``); small means
            ``exp(Δ A) ≈ 1`` (no decay). Default ``1e-3``.
        dt: ``softplus(dt_bias)`` at init (default 1.0) *(reconstructed)*.
        alpha, beta: ``W_C W_B^T ≈ alpha Z + beta I`` at rank ``d_state`` (defaults 0.7, 0.7,
            the attention recipe's query-key constants *(reconstructed)*).
        conv_identity: set the short causal convolution to the identity (a delta on the current
            token) *(reconstructed)*.
    """

    decay: float = 1e-3
    dt: float = 1.0
    alpha: float = 0.7
    beta: float = 0.7
    conv_identity: bool = True

    def __post_init__(self) -> None:
        _positive("decay", self.decay)
        _positive("dt", self.dt)
        _positive("alpha", self.alpha, allow_zero=True)
        _finite("beta", self.beta)
        if not isinstance(self.conv_identity, bool):
            raise TypeError(f"conv_identity must be a bool, got {self.conv_identity!r}")


@dataclass(frozen=True)
class CovarianceConvConfig:
    """Depthwise filters drawn from ``N(0, Σ)`` (Trockman, Willmott & Kolter, ICLR 2023).

    Closed form *(reconstructed)*: ``Σ[(i,j),(i',j')] = exp(-((i-i')² + (j-j')²) / (2σ²))``,
    i.e. ``K ⊗ K`` with ``K[i,i'] = exp(-(i-i')²/(2σ²))``; ``σ`` goes linearly from
    ``sigma_first`` (first depthwise layer) to ``sigma_last`` (last one). Samples are rescaled so
    each weight has the variance of PyTorch's default conv init (``1/(3 k_h k_w)``) times
    ``gain²``.

    Attributes:
        sigma_first, sigma_last: width of the tap-distance Gaussian (in taps) at the first and
            the last depthwise layer (defaults 1.0 and 2.0 *(reconstructed)*).
        gain: multiplies the per-weight standard deviation.
        jitter: added to Σ's diagonal before the Cholesky factorisation.
    """

    sigma_first: float = 1.0
    sigma_last: float = 2.0
    gain: float = 1.0
    jitter: float = 1e-6

    def __post_init__(self) -> None:
        _positive("sigma_first", self.sigma_first)
        _positive("sigma_last", self.sigma_last)
        _positive("gain", self.gain)
        _positive("jitter", self.jitter, allow_zero=True)

    def sigma(self, depth_fraction: float) -> float:
        """``σ`` at relative depth ``depth_fraction`` in ``[0, 1]``."""
        t = min(max(float(depth_fraction), 0.0), 1.0)
        return self.sigma_first + t * (self.sigma_last - self.sigma_first)
