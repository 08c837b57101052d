"""Initialization recipes: mimetic attention/MLP/SSM and covariance-structured conv filters.

* :func:`mimetic_attention_` (Trockman & Kolter, ICML 2023): ``W_q W_k^T ≈ α₁ Z + β₁ I`` per
  head, ``W_v W_o ≈ α₂ Z - β₂ I`` jointly.
* :func:`mimetic_mlp_` (Trockman & Kolter, 2026): a small nonzero mean in the first MLP layer.
* :func:`mimetic_ssm_` (Trockman et al., 2024): no decay, ``W_C W_B^T ≈ α Z + β I``, identity
  short conv.
* :func:`covariance_conv_` (Trockman, Willmott & Kolter, ICLR 2023): depthwise filters from
  ``N(0, Σ)`` with a closed-form or transferred ``Σ``.
* :func:`apply` walks any model and initialises what it recognises; :func:`verify` measures
  each layer against what the recipe implies (catches sign and transpose bugs).

Convention: the papers' row-vector form ``q = x W_q``; ``nn.Linear.weight`` stores ``W.T``.
"""

from coreopt.init.apply import (
    PARTS,
    PRESETS,
    InitEntry,
    InitReport,
    NothingInitialisedError,
    apply,
    detect,
)
from coreopt.init.attention import (
    AttentionProjections,
    find_attention,
    is_cross_attention,
    mimetic_attention_,
)
from coreopt.init.config import (
    CovarianceConvConfig,
    MimeticAttentionConfig,
    MimeticMLPConfig,
    MimeticSSMConfig,
)
from coreopt.init.conv import (
    covariance_conv_,
    covariance_for_depth,
    estimate_filter_covariance,
    gaussian_covariance,
    is_depthwise,
    resample_covariance,
)
from coreopt.init.mlp import find_mlp_first_layers, mimetic_mlp_
from coreopt.init.ssm import SSMProjections, find_ssm, mimetic_ssm_
from coreopt.init.verify import Check, VerifyReport, verify

__all__ = [
    "PARTS",
    "PRESETS",
    "AttentionProjections",
    "Check",
    "CovarianceConvConfig",
    "InitEntry",
    "InitReport",
    "MimeticAttentionConfig",
    "MimeticMLPConfig",
    "MimeticSSMConfig",
    "NothingInitialisedError",
    "SSMProjections",
    "VerifyReport",
    "apply",
    "covariance_conv_",
    "covariance_for_depth",
    "detect",
    "estimate_filter_covariance",
    "find_attention",
    "find_mlp_first_layers",
    "find_ssm",
    "gaussian_covariance",
    "is_cross_attention",
    "is_depthwise",
    "mimetic_attention_",
    "mimetic_mlp_",
    "mimetic_ssm_",
    "resample_covariance",
    "verify",
]
