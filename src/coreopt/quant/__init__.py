"""Calibration-free low-bit weight quantization (CafeQ, Sun et al. 2025).

``coreopt.quantize(model, bits=3)`` replaces a model's linear layers by packed b-bit
:class:`QuantizedLinear` layers, learning block-diagonal input transforms, dual transforms on
paired weights and the rounding from the weights alone, against a proxy of the quantization loss.

* :func:`quantize`, :class:`QuantizeConfig`, :class:`QuantizeResult`, :class:`LayerReport`;
* formats and storage: :class:`QuantFormat`, :class:`QuantizedLinear`, :func:`pack_bits`,
  :func:`unpack_bits`, :func:`save_quantized`, :func:`load_quantized`;
* deployment: :func:`set_runtime`, :func:`runtime_report` (packed kernels, disk vs runtime
  bytes), :func:`compress_embeddings` (16-bit embeddings and head), :func:`export_gguf`
  (llama.cpp's GGUF); transformers
  ``save_pretrained``/``from_pretrained`` through :mod:`coreopt.quant.hf`;
* building blocks: :func:`learn_transform`, :func:`learn_shared_transform` (one transform for
  the layers that read the same input; :func:`share_transform` stores it once), :func:`gptq`,
  the dual transforms
  (:func:`fold_vo`, :func:`fold_qk`, :func:`fold_gated`), :func:`discover`;
* extension: :func:`register_method`.
"""

from coreopt.quant.budget import SharedChoice, bit_price, choose_options, stored_bits
from coreopt.quant.config import MetaDeviceError, NonFiniteWeightError, QuantizeConfig
from coreopt.quant.embeddings import compress_embeddings
from coreopt.quant.export import GGUFExport, export_gguf
from coreopt.quant.format import (
    SUPPORTED_BITS,
    QuantFormat,
    UnsupportedFormatError,
    dequantize_codes,
    fake_quantize,
    rtn,
)
from coreopt.quant.hf import install_import_hook as _install_import_hook
from coreopt.quant.io import load_quantized, save_quantized
from coreopt.quant.linear import QuantizedLinear, share_transform
from coreopt.quant.methods import LayerOutcome, MatrixTask, PairTask, register_method
from coreopt.quant.packing import pack_bits, unpack_bits
from coreopt.quant.pairs import fold_gated, fold_qk, fold_vo
from coreopt.quant.proxy import InputMoments
from coreopt.quant.quantize import (
    LayerReport,
    QuantizeResult,
    fold_dual_transforms,
    model_bytes,
    quantize,
)
from coreopt.quant.rounding import gptq
from coreopt.quant.runtime import RuntimeReport, runtime_report, set_runtime
from coreopt.quant.single import TransformPart, learn_shared_transform, learn_transform
from coreopt.quant.structure import ModelStructure, discover

__all__ = [
    "SUPPORTED_BITS",
    "GGUFExport",
    "InputMoments",
    "LayerOutcome",
    "LayerReport",
    "MatrixTask",
    "MetaDeviceError",
    "ModelStructure",
    "NonFiniteWeightError",
    "PairTask",
    "QuantFormat",
    "QuantizeConfig",
    "QuantizeResult",
    "QuantizedLinear",
    "RuntimeReport",
    "SharedChoice",
    "TransformPart",
    "UnsupportedFormatError",
    "bit_price",
    "choose_options",
    "compress_embeddings",
    "dequantize_codes",
    "discover",
    "export_gguf",
    "fake_quantize",
    "fold_dual_transforms",
    "fold_gated",
    "fold_qk",
    "fold_vo",
    "gptq",
    "learn_shared_transform",
    "learn_transform",
    "load_quantized",
    "model_bytes",
    "pack_bits",
    "quantize",
    "register_method",
    "rtn",
    "runtime_report",
    "save_quantized",
    "set_runtime",
    "share_transform",
    "stored_bits",
    "unpack_bits",
]

_install_import_hook()  # transformers learns quant_method "coreopt" (see coreopt.quant.hf)
