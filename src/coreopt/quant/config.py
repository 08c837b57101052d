"""``QuantizeConfig``, the method registry it validates against, and the named errors of
:mod:`coreopt.quant`.

The registry lives here (not in :mod:`coreopt.quant.methods`, which registers the built-in
methods) so that the configuration never imports the methods: ``methods`` imports ``config``,
never the reverse.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from coreopt.errors import CoreoptError
from coreopt.quant.format import QuantFormat
from coreopt.quant.transforms import TRANSFORM_DTYPES

Method = Literal["rtn", "hadamard", "cafeq"]
METHODS: tuple[str, ...] = ("rtn", "hadamard", "cafeq")
PRIORS: tuple[str, ...] = ("structure+balance", "structure", "balance", "identity")


Handler = Callable[[Any, "QuantizeConfig"], list[Any]]
"""``handler(task, config) -> [LayerOutcome, ...]`` (see :func:`register_method`)."""
_REGISTRY: dict[str, Handler] = {}


def register_method(name: str, handler: Handler) -> None:
    """Make ``method=name`` available to :func:`coreopt.quantize`.

    ``handler(task, config)`` receives a :class:`~coreopt.quant.MatrixTask` (or a
    :class:`~coreopt.quant.PairTask` when the method quantizes pairs jointly; a handler that does
    not can call itself on ``task.reader`` and ``task.producer``) and returns one
    :class:`~coreopt.quant.LayerOutcome` per matrix.
    """
    if not callable(handler):
        raise TypeError("handler must be callable")
    _REGISTRY[name] = handler


def registered_methods() -> tuple[str, ...]:
    """Names accepted by ``QuantizeConfig(method=...)``."""
    return tuple(_REGISTRY)


def get_method(name: str) -> Handler:
    """The handler registered as ``name`` (ValueError naming the known ones otherwise)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"method={name!r} is unknown; expected one of {registered_methods()}"
        ) from None


class NonFiniteWeightError(CoreoptError, ValueError):
    """A weight to quantize holds NaN or infinity."""


class MetaDeviceError(CoreoptError, ValueError):
    """The model's weights are on the ``meta`` device (not materialised): nothing to quantize."""


@dataclass(frozen=True)
class QuantizeConfig:
    """Options of :func:`coreopt.quantize`, validated on construction (ValueError, TypeError).

    Attributes:
        bits: bits per weight: 2, 3, 4 or 8.
        group_size: input columns per scale/zero point: 32, 64, 128 (any multiple of 32). A layer
            whose input width is not a multiple is stored padded with zero columns (appended after
            the input transform, which acts on the real inputs only).
        method: ``"rtn"`` (round to nearest, min-max scales), ``"hadamard"`` (random block
            Hadamard input transform + RTN, QuaRot-style), ``"cafeq"`` (learned transforms, dual
            transforms on pairs and adaptive rounding against a data-free proxy), or a name added
            with :func:`coreopt.quant.register_method`.
        transform: for ``"cafeq"``: ``"learned"`` block-diagonal input transform, fixed random
            ``"hadamard"`` or ``"identity"`` (no runtime transform).
        transform_family: ``"invertible"`` (any invertible blocks; the inverse is a batched
            solve) or ``"orthogonal"`` (Cayley map of :mod:`coreopt.manifold`, ``T⁻¹ = Tᵀ``; use a
            larger ``lr``, e.g. 0.01).
        block_size: block of the input transform (runtime cost: ``block_size`` multiply-adds per
            input feature and token, ``block_size / out_features`` relative to the matmul). A layer
            whose input width it does not divide gets no transform.
        steps: optimizer steps for each learned transform; ``lr`` its learning rate (Adam).
        dual: learn and fold dual transforms on paired weights (V/O and Q/K per head, up/down of
            gated MLPs); exact in floating point, no runtime cost.
        dual_steps: optimizer steps for each dual transform (at most: see ``dual_tol``).
        dual_tol: stop learning a dual transform at the knee of its loss curve, when the loss
            fell by less than ``dual_tol`` times itself over the last 10 steps; 0 (default, our
            choice) runs all ``dual_steps``. On SmolLM2 at 3.5 bits per weight 0.005 cut the
            dual stage by half but raised the stdlib perplexity from 48.4 to 52.0
            (docs/quant.md), so it is off.
        rounding: ``"gptq"`` (error feedback against the proxy Hessian; alternating on V/O and Q/K
            pairs) or ``"nearest"``.
        alternating: also round V/O and Q/K pairs jointly by alternating GPTQ (each matrix's
            Hessian is its partner's Gram matrix) and keep that when its product proxy beats the
            per-matrix results. Off by default: on MiniLM it lowers the product proxy but not
            the end-to-end error (see ``docs/quant.md``).
        clip_search: search a range shrink factor per group (``False``: plain min-max ranges).
        prior: ``"structure"`` weighs the proxy by input second moments read off the model's
            norms and preceding layers (no data); ``"identity"`` is CafeQ's plain Frobenius proxy.
        select: per layer (or pair), keep the candidate with the lowest proxy loss among the
            transformed one and plain round-to-nearest, so a layer is never worse than RTN on the
            proxy.
        include_head: also quantize the output head (LM head / classifier).
        skip: ``fnmatch`` patterns of module names to leave in floating point.
        scale_dtype: storage dtype of scales and zero points.
        device: where to compute: ``None`` keeps each layer where it is, ``"auto"`` uses CUDA when
            present; results are moved back to the layer's device.
        executor: ``None``/``"threads"``, ``"ray"`` or a ``concurrent.futures.Executor`` to fan the
            layers out (see :mod:`coreopt.parallel`); ``max_workers`` bounds the threads (default:
            one per CPU core). With threads, each worker's torch ops get
            ``torch.get_num_threads() // workers`` intra-op threads (at least one) during the call,
            restored after it: our choice, so that workers x intra-op threads do not oversubscribe
            the cores (on 2 cores, 2 workers x 2 threads ran SmolLM2 about 3x slower than 2 x 1).
            The float summation order, hence the last digits of the results, depends on it.
        seed: seed of the random Hadamard initialisations.
        progress: tqdm bar per layer; ``None`` shows it only on a terminal or notebook.
        bits_per_weight: a byte budget: the average *stored* bits per quantized weight (codes,
            scales, zero points, group padding and transform blocks all counted, see
            :mod:`coreopt.quant.budget`). Each layer then gets its own bits (``bits_options``),
            group size (``group_options``) and, for ``"cafeq"``, transform block
            (``block_options``, or none), chosen to minimise the summed proxy loss within the
            budget. ``None`` (default): every layer at ``bits``/``group_size``. Supported by
            ``"rtn"`` (mixed-precision RTN) and ``"cafeq"``.
        bits_options, group_options, block_options: what the budget search may choose from.
        zero_point: ``"integer"`` (default) or ``"float"`` zero points (see
            :class:`~coreopt.quant.QuantFormat`; same bytes).
        zero_point_options: the zero points the budget search may choose from, per layer, by
            the proxy loss (both cost the same bytes). Float zero points are offered to the
            query, key, gate and up projections, and to the others only where they store the
            weights as they are (``EXACT_LOSS`` in :mod:`coreopt.quant.quantize`). A float zero
            point puts the levels at the group's minimum, which matters on weights that are
            themselves a dequantized ``d q + m`` grid (SmolLM2 here: Q4_1, 4-bit groups of 32).
        share_transforms: under a byte budget with ``"cafeq"``, also offer, per block size of
            ``block_options``, one input transform shared by the layers that read the same input
            (q/k/v of an attention block, gate/up of a gated MLP), learned on the sum of their
            proxies and stored once (``in · block`` numbers for the group instead of per layer:
            a third of the bytes for q/k/v); the knapsack takes it for the whole group or not
            at all. Off by default (our choice, measured on a 2-core CPU): on MiniLM the
            knapsack buys it for 3 of 6 q/k/v groups at 4.5 bits per weight (cosines equal to
            within 0.0001) and none at 3.5, on SmolLM2 for none at 3.5 or 4.5, while the extra
            learning adds about 50 CPU s (60%) to ``quantize(SmolLM2, bits_per_weight=3.5)``
            (``docs/quant.md``). Ignored without ``bits_per_weight``.
        transform_dtype: storage of the runtime input transform's blocks ``(in / b, b, b)``:
            ``"float16"`` (default; the format's ``scale_dtype``, ``in · b · 16`` bits) or
            ``"int8"``: symmetric int8 codes ``(in / b, b, b)`` and one ``scale_dtype`` scale per
            block row ``(in / b, b)`` (absmax / 127, rounded up), ``in · b · 8 + in · 16`` bits:
            about half (a 64 x 64 transform on MiniLM's 384-wide layers: 1.38 instead of 2.67
            bits per weight). The transform is rounded to its stored form *before* the weight
            ``W T⁻¹`` is computed and rounded, and every proxy loss (selection, the byte
            budget's pricing) is that of the stored ``T``. The learned transform is CafeQ's;
            its int8 storage is our choice. The byte budget prices transforms in this storage.
            Opt-in (our choice, measured on a 2-core CPU, ``benchmarks/RESULTS.md``): at equal
            bytes int8 was better on MiniLM at 3.5 and 4.5 bits per weight (the knapsack buys 3
            and 15 transforms instead of 1 and 8) and on SmolLM2 at 4.5, but on SmolLM2 at 3.5
            it bought 50 transforms (q, o, gate, down; 2 in float16) whose lower proxy did not
            carry over: the prose perplexity rose from 99 to 134, and pricing the many options
            that pass the screen took ``quantize(SmolLM2, bits_per_weight=3.5)`` from about 55
            to 215 s, over the 120 s target.
    """

    bits: int = 4
    group_size: int = 64
    method: str = "cafeq"
    transform: Literal["learned", "hadamard", "identity"] = "learned"
    transform_family: Literal["orthogonal", "invertible"] = "invertible"
    block_size: int = 64
    steps: int = 100
    lr: float = 0.01
    dual: bool = True
    dual_steps: int = 60
    dual_tol: float = 0.0
    rounding: Literal["gptq", "nearest"] = "gptq"
    alternating: bool = False
    clip_search: bool = True
    prior: Literal["structure", "balance", "structure+balance", "identity"] = "structure+balance"
    select: bool = True
    include_head: bool = False
    skip: tuple[str, ...] = ()
    scale_dtype: torch.dtype = torch.float16
    device: str | torch.device | None = None
    executor: Any = None
    max_workers: int | None = None
    seed: int = 0
    progress: bool | None = None
    bits_per_weight: float | None = None
    bits_options: tuple[int, ...] = (2, 3, 4, 8)
    group_options: tuple[int, ...] = (32, 64, 128)
    block_options: tuple[int, ...] = (16, 32)
    zero_point: Literal["integer", "float"] = "integer"
    zero_point_options: tuple[str, ...] = ("integer", "float")
    share_transforms: bool = False
    transform_dtype: Literal["float16", "int8"] = "float16"

    def __post_init__(self) -> None:
        # raises UnsupportedFormatError
        QuantFormat(self.bits, self.group_size, self.scale_dtype, self.zero_point)
        if self.method not in registered_methods():
            raise ValueError(
                f"method={self.method!r} is unknown; expected one of {registered_methods()}"
            )
        _choice("transform", self.transform, ("learned", "hadamard", "identity"))
        _choice("transform_family", self.transform_family, ("orthogonal", "invertible"))
        _choice("rounding", self.rounding, ("gptq", "nearest"))
        _choice("transform_dtype", self.transform_dtype, TRANSFORM_DTYPES)
        _choice("prior", self.prior, PRIORS)
        if (
            isinstance(self.block_size, bool)
            or not isinstance(self.block_size, int)
            or self.block_size < 2
            or self.block_size & (self.block_size - 1)
        ):
            raise ValueError(f"block_size must be a power of two >= 2, got {self.block_size!r}")
        for name in ("steps", "dual_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be a non-negative int, got {v!r}")
        if not (
            isinstance(self.dual_tol, int | float)
            and not isinstance(self.dual_tol, bool)
            and math.isfinite(self.dual_tol)
            and self.dual_tol >= 0
        ):
            raise ValueError(f"dual_tol must be a finite number >= 0, got {self.dual_tol!r}")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {self.lr!r}")
        if isinstance(self.skip, str) or not all(isinstance(s, str) for s in self.skip):
            raise TypeError("skip must be a tuple of fnmatch patterns (strings)")
        if self.bits_per_weight is not None:
            b = self.bits_per_weight
            if (
                isinstance(b, bool)
                or not isinstance(b, int | float)
                or not math.isfinite(b)
                or b <= 0
            ):
                raise ValueError(f"bits_per_weight must be a positive finite number, got {b!r}")
            if self.method not in ("rtn", "cafeq"):
                raise ValueError(
                    f"bits_per_weight is supported by method='rtn' and 'cafeq', not {self.method!r}"
                )
            if self.alternating:
                raise ValueError("bits_per_weight cannot be combined with alternating=True")
        for b in self.bits_options:
            QuantFormat(b, 32)
        for g in self.group_options:
            QuantFormat(4, g)
        if not self.bits_options or not self.group_options or not self.zero_point_options:
            raise ValueError("bits_options, group_options and zero_point_options must not be empty")
        for zp in self.zero_point_options:
            _choice("zero_point_options", zp, ("integer", "float"))
        for k in self.block_options:
            if isinstance(k, bool) or not isinstance(k, int) or k < 2 or k & (k - 1):
                raise ValueError(f"block_options must hold powers of two >= 2, got {k!r}")
        if not isinstance(self.share_transforms, bool):
            raise TypeError(
                f"share_transforms must be True or False, got {self.share_transforms!r}"
            )
        if self.max_workers is not None and self.max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {self.max_workers}")

    @property
    def format(self) -> QuantFormat:
        """The integer format."""
        return QuantFormat(self.bits, self.group_size, self.scale_dtype, self.zero_point)


def _choice(name: str, value: object, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ValueError(f"{name}={value!r} is unknown; expected one of {options}")
