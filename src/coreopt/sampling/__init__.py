"""Antidistillation: sampling that poisons distillation, and fingerprints that survive it.

Both methods put a *proxy student* inside the teacher's sampling loop:

* **Antidistillation sampling** (Savani, Trockman et al., NeurIPS 2025):
  :func:`downstream_gradient` computes once the gradient ``g`` of the proxy's loss on held-out
  teacher traces; :class:`AntidistillationLogitsProcessor` then samples from
  ``softmax(log p_T/τ + λΔ)`` with ``Δ = [log p_P(θ_P + εg) − log p_P(θ_P − εg)]/(2ε)``.
* **Antidistillation fingerprinting** (Xu, Kirchenbauer, Savani et al., ICML 2026):
  :class:`FingerprintLogitsProcessor` adds ``λ·q_t(1[t∈S] − q(S))`` for a keyed green list ``S``;
  :func:`detect` tests whether a *student model* inherited the green bias (Hoeffding p-value).

Baselines in the same API: :class:`TemperatureProcessor` and :class:`KGWLogitsProcessor` (the
red/green-list watermark, applied by ``transformers``). Every processor works in
:func:`generate` (batched, KV caches for the teacher and each proxy) and in ``transformers``'
``model.generate(logits_processor=[...])``. The offline evaluation (a synthetic chain-sum task
with tiny models trained in-process) is an experiment, not part of the package: it lives in
``benchmarks/_sampling_experiments.py`` and runs with ``benchmarks/sampling_harness.py``.

Needs ``transformers`` and ``safetensors`` (``pip install 'coreopt[hf]'``).
"""

from coreopt.sampling._models import check_same_tokenizer
from coreopt.sampling.detect import DetectionResult, detect, detect_tokens, hoeffding_p_value
from coreopt.sampling.errors import GradientMismatchError, VocabularyMismatchError
from coreopt.sampling.generate import GenerationResult, generate
from coreopt.sampling.gradient import (
    completion_nll,
    downstream_gradient,
    gradient_norm,
    load_gradient,
    match_gradient,
    save_gradient,
)
from coreopt.sampling.greenlist import (
    GreenList,
    HashGreenList,
    KGWGreenList,
    VocabMapping,
    seed_ngrams,
)
from coreopt.sampling.perturb import (
    InPlacePerturbation,
    SignedBatchPerturbation,
    UnsupportedModuleError,
    perturbed_copy,
)
from coreopt.sampling.processors import (
    AntidistillationConfig,
    AntidistillationLogitsProcessor,
    FingerprintConfig,
    FingerprintLogitsProcessor,
    KGWLogitsProcessor,
    TemperatureProcessor,
)
from coreopt.sampling.traces import Trace, pad_left, pad_right

__all__ = [
    "AntidistillationConfig",
    "AntidistillationLogitsProcessor",
    "DetectionResult",
    "FingerprintConfig",
    "FingerprintLogitsProcessor",
    "GenerationResult",
    "GradientMismatchError",
    "GreenList",
    "HashGreenList",
    "InPlacePerturbation",
    "KGWGreenList",
    "KGWLogitsProcessor",
    "SignedBatchPerturbation",
    "TemperatureProcessor",
    "Trace",
    "UnsupportedModuleError",
    "VocabMapping",
    "VocabularyMismatchError",
    "check_same_tokenizer",
    "completion_nll",
    "detect",
    "detect_tokens",
    "downstream_gradient",
    "generate",
    "gradient_norm",
    "hoeffding_p_value",
    "load_gradient",
    "match_gradient",
    "pad_left",
    "pad_right",
    "perturbed_copy",
    "save_gradient",
    "seed_ngrams",
]
