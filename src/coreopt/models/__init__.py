"""Reference architectures (consumers of the solvers; solvers never import this package).

* :class:`LipschitzConvNet`: a 1-Lipschitz KWLarge-style classifier of Cayley layers.
* :class:`VisionTransformer`, :class:`TransformerLM`: small Transformers with timm's parameter
  names (fused ``qkv``), default-initialised like timm.
* :class:`ConvMixer`: "Patches Are All You Need?", timm's parameter names.
* :class:`Mamba2Mixer`: a Mamba-2-style selective SSM in pure torch; :func:`ssd_chunked` (the
  chunked dual form) and :func:`ssd_naive` (the recurrence it is checked against).
* :class:`OryxMixer`, :class:`OryxBlock`: softmax attention and a linear recurrence switchable
  per chunk from shared weights; :func:`chunk_schedule`.
* :class:`SequenceLM`: a causal LM with a pluggable mixer (``"attention"``, ``"mamba2"``,
  ``"oryx"``).
* :mod:`coreopt.models.tasks`: MQAR, copying, selective copying (generated in-process) and
  scikit-learn's bundled digits.
"""

from coreopt.models.convmixer import ConvMixer
from coreopt.models.lipschitz import LipschitzConvNet
from coreopt.models.lm import Mamba2Block, SequenceLM
from coreopt.models.oryx import OryxBlock, OryxMixer, chunk_schedule
from coreopt.models.ssm import Mamba2Mixer, ssd_chunked, ssd_naive
from coreopt.models.vit import Attention, TransformerLM, VisionTransformer, timm_init_

__all__ = [
    "Attention",
    "ConvMixer",
    "LipschitzConvNet",
    "Mamba2Block",
    "Mamba2Mixer",
    "OryxBlock",
    "OryxMixer",
    "SequenceLM",
    "TransformerLM",
    "VisionTransformer",
    "chunk_schedule",
    "ssd_chunked",
    "ssd_naive",
    "timm_init_",
]
