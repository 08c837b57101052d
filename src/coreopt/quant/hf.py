"""coreopt as a transformers quantization method: ``save_pretrained`` / ``from_pretrained``.

:func:`coreopt.quantize` on a transformers model writes a ``quantization_config`` into the model's
config (``quant_method: "coreopt"`` and the shape and format of every quantized layer), so
``model.save_pretrained(dir)`` stores the packed tensors and the recipe to rebuild them. In a new
process, ``AutoModel.from_pretrained(dir)`` (any ``AutoModel*`` class) then rebuilds the
:class:`~coreopt.quant.QuantizedLinear` layers before the tensors are loaded, through the
quantizer registered here with transformers' ``register_quantization_config`` /
``register_quantizer`` hooks.

Registration happens when ``coreopt.quant`` is imported: at once if transformers is already
imported, else as soon as it is (an import hook, removed after its one use). :func:`register`
does it explicitly. A process that never imports ``coreopt.quant`` does not know the method:
transformers then warns "Unknown quantization type ... we will skip the quantization" and loads
random layers, which coreopt cannot prevent; import ``coreopt.quant`` first.

Loading checks the checkpoint before any tensor is read: every quantized layer must have its
codes, scales and zero points (and transform and bias when its configuration has them) in the
checkpoint files, and every layer must be found, of the right shape, in the model; otherwise
:class:`ValueError`. After loading, no tensor of a quantized layer may be left uninitialised.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
import threading
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from torch import nn

from coreopt.quant.embeddings import half_module_configs, rebuild_half_modules
from coreopt.quant.io import (
    FORMAT_VERSION,
    layer_configs,
    replace_with_quantized,
    tie_shared_transforms,
)
from coreopt.quant.layouts import mark_tensor_reads
from coreopt.quant.linear import QuantizedLinear

logger = logging.getLogger("coreopt.quant")

QUANT_METHOD = "coreopt"
"""The ``quant_method`` written into ``config.json``."""

_LOCK = threading.Lock()
_CLASSES: dict[str, Any] = {}


def _build_classes() -> dict[str, Any]:
    from transformers.quantizers import HfQuantizer
    from transformers.utils.quantization_config import QuantizationConfigMixin

    class CoreoptQuantConfig(QuantizationConfigMixin):
        """``quantization_config`` of a coreopt-quantized transformers model.

        Attributes:
            layers: ``{module name: QuantizedLinear.config_dict()}``.
            format_version: version of the stored layout.
        """

        def __init__(
            self,
            layers: dict[str, dict[str, Any]] | None = None,
            format_version: str = FORMAT_VERSION,
            half_modules: dict[str, dict[str, Any]] | None = None,
            **kwargs: Any,
        ) -> None:
            self.quant_method = QUANT_METHOD  # type: ignore[assignment]
            self.layers = dict(layers or {})
            self.half_modules = dict(half_modules or {})
            self.format_version = str(format_version)
            if self.format_version != FORMAT_VERSION:
                raise ValueError(
                    f"quantization_config.format_version={self.format_version!r}: this coreopt "
                    f"reads version {FORMAT_VERSION!r}"
                )
            if not isinstance(self.layers, dict) or not (self.layers or self.half_modules):
                raise ValueError("quantization_config.layers must list the quantized layers")

    class CoreoptHfQuantizer(HfQuantizer):
        """Rebuilds coreopt's quantized layers in a model that transformers is loading."""

        requires_calibration = True  # only pre-quantized checkpoints: quantize with coreopt

        def _process_model_before_weight_loading(self, model: nn.Module, **kwargs: Any) -> Any:
            layers = getattr(self.quantization_config, "layers", {})
            half = getattr(self.quantization_config, "half_modules", {})
            check_checkpoint(layers, kwargs.get("checkpoint_files") or [])
            replace_with_quantized(model, layers)
            rebuild_half_modules(model, half)
            # transformers initialises the modules of missing keys after loading, and some
            # parents' _init_weights read their children's .weight (GPT-2 re-initialises
            # mlp.c_proj.weight): the quantized layers and their parents are loaded, not init.
            for name in layers:
                parent_name = name.rpartition(".")[0]
                for mod in (model.get_submodule(name), model.get_submodule(parent_name)):
                    mod._is_hf_initialized = True  # type: ignore[assignment]
            return model

        def _process_model_after_weight_loading(self, model: nn.Module, **kwargs: Any) -> Any:
            tie_shared_transforms(model, getattr(self.quantization_config, "layers", {}))
            for name, m in model.named_modules():
                if isinstance(m, QuantizedLinear):
                    for t in [*m.buffers(recurse=False), *m.parameters(recurse=False)]:
                        if t.device.type == "meta":
                            raise ValueError(
                                f"{name!r}: a tensor of the quantized layer was not loaded"
                            )
            mark_tensor_reads(model)
            # A plain model from here on: casts (.half(), .to(dtype)) go through
            # QuantizedLinear._apply, which keeps the stored metadata; the config keeps the
            # layer list, so save_pretrained writes it again.
            model.hf_quantizer = None  # type: ignore[assignment]
            model.is_quantized = False  # type: ignore[assignment]  # else .half() is refused
            return model

        def is_serializable(self, *args: Any, **kwargs: Any) -> bool:
            return True

        @property
        def is_trainable(self) -> bool:
            return False

    return {"config": CoreoptQuantConfig, "quantizer": CoreoptHfQuantizer}


def register() -> dict[str, Any]:
    """Register coreopt's config and quantizer with transformers (idempotent); returns the two
    classes as ``{"config": ..., "quantizer": ...}``.

    Raises:
        BackendNotInstalledError: transformers is not installed.
    """
    with _LOCK:
        if _CLASSES:
            return _CLASSES
        try:
            from transformers.quantizers import auto
        except ImportError as exc:
            from coreopt.errors import BackendNotInstalledError

            raise BackendNotInstalledError("transformers", "hf") from exc
        classes = _build_classes()
        if QUANT_METHOD not in auto.AUTO_QUANTIZATION_CONFIG_MAPPING:
            auto.register_quantization_config(QUANT_METHOD)(classes["config"])
        if QUANT_METHOD not in auto.AUTO_QUANTIZER_MAPPING:
            auto.register_quantizer(QUANT_METHOD)(classes["quantizer"])
        _CLASSES.update(classes)
        return _CLASSES


def check_checkpoint(layers: dict[str, dict[str, Any]], files: Sequence[str]) -> None:
    """Raise :class:`ValueError` unless the safetensors ``files`` hold every tensor of every
    quantized layer listed in ``layers`` (codes, scales, zero points, transform, bias; a shared
    transform under its owner's name)."""
    from safetensors import safe_open

    keys: set[str] = set()
    for f in files:
        if not str(f).endswith(".safetensors"):
            raise ValueError(f"coreopt checkpoints are safetensors files, got {f!r}")
        with safe_open(str(f), framework="pt") as fh:
            keys.update(fh.keys())
    if not files:
        raise ValueError("no checkpoint file to load the quantized layers from")
    for name, cfg in layers.items():
        need = ["qweight", "scale", "zero"]
        tensors = ["transform"] if cfg.get("transform_block") else []
        if tensors and cfg.get("transform_dtype") == "int8":
            tensors.append("transform_scale")  # the int8 codes' row scales
        owner = cfg.get("transform_shared_with")
        if owner:  # a transform stored once, by the layer named there
            for k in tensors:
                if f"{owner}.{k}" not in keys:
                    raise ValueError(
                        f"the checkpoint lacks {owner}.{k}, the transform {name!r} shares"
                    )
        else:
            need += tensors
        need += ["bias"] if cfg.get("bias") else []
        missing = [f"{name}.{k}" for k in need if f"{name}.{k}" not in keys]
        if missing:
            raise ValueError(
                f"the checkpoint lacks {missing[0]} (and {len(missing) - 1} more tensors of "
                f"{name!r}): refusing to build a quantized layer with uninitialised weights"
            )


def attach_config(model: nn.Module) -> bool:
    """Write the ``quantization_config`` of a quantized transformers model into
    ``model.config`` (so ``save_pretrained`` stores it). Returns whether ``model`` is a
    transformers model (nothing is done otherwise; transformers is never imported here)."""
    if "transformers" not in sys.modules:
        return False
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        return False
    layers = layer_configs(model)
    half = half_module_configs(model)
    if not layers and not half:
        return False
    config_cls = register()["config"]
    model.config.quantization_config = config_cls(layers=layers, half_modules=half)
    return True


class _RegisterOnImport(importlib.abc.MetaPathFinder):
    """Registers coreopt with transformers right after ``import transformers`` completes."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "transformers":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)  # one use; also stops the recursion below
        spec = importlib.util.find_spec(fullname)
        loader = None if spec is None else spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_register(module: ModuleType) -> None:
            exec_module(module)
            try:
                register()
            except Exception:  # pragma: no cover - a broken transformers install
                logger.warning("could not register coreopt with transformers", exc_info=True)

        loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


def install_import_hook() -> None:
    """Register now if transformers is imported, else when it is (see the module docstring)."""
    if "transformers" in sys.modules:
        register()
        return
    if importlib.util.find_spec("transformers") is None:
        return
    if not any(isinstance(f, _RegisterOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterOnImport())
