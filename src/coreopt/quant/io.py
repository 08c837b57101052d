"""Save and load quantized models with safetensors.

The file holds the model's whole ``state_dict`` (packed codes, scales, zero points, transforms,
biases, and every layer that stayed in floating point) plus, in the safetensors metadata, the
configuration of each :class:`~coreopt.quant.linear.QuantizedLinear`. Loading rebuilds those layers
inside a freshly constructed model of the same architecture (for transformers:
``AutoModel.from_config(config)``) and loads the tensors into it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn

from coreopt.errors import BackendNotInstalledError
from coreopt.quant.format import QuantFormat
from coreopt.quant.layouts import _is_conv1d, mark_tensor_reads
from coreopt.quant.linear import QuantizedLinear, share_transform

METADATA_KEY = "coreopt.quant.layers"
HALF_KEY = "coreopt.quant.half_modules"
FORMAT_VERSION = "1"


def _safetensors() -> Any:
    try:
        import safetensors.torch as st
    except ImportError as exc:  # pragma: no cover - safetensors ships with transformers
        raise BackendNotInstalledError("safetensors", "hf") from exc
    return st


def _dtype(name: str) -> torch.dtype:
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"unknown dtype {name!r} in the file's metadata")
    return dt


def save_quantized(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Write ``model`` (quantized by :func:`coreopt.quantize`) to a ``.safetensors`` file.

    Tied weights (an LM head sharing the embedding) are stored once, and so is a transform
    shared by several layers (:func:`~coreopt.quant.linear.share_transform`: the file holds the
    owner's blocks, and each other layer's configuration names the owner in
    ``"transform_shared_with"``).

    Raises:
        ValueError: the model holds no :class:`QuantizedLinear`.
    """
    from coreopt.quant.embeddings import half_module_configs

    layers = layer_configs(model)
    if not layers:
        raise ValueError("the model has no QuantizedLinear layer; quantize it first")
    st = _safetensors()
    meta = {
        METADATA_KEY: json.dumps(layers),
        HALF_KEY: json.dumps(half_module_configs(model)),
        "coreopt.quant.version": FORMAT_VERSION,
    }
    st.save_model(model, os.fspath(path), metadata=meta)


def layer_configs(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{name: QuantizedLinear.config_dict()}`` of every quantized layer of ``model``, with
    ``"transform_shared_with": owner name`` added to the layers that hold a transform stored by
    another layer (:func:`~coreopt.quant.linear.share_transform`).

    Raises:
        ValueError: a layer holds a shared transform whose owner is not in ``model``.
    """
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    owners = {
        id(m.transform): n
        for n, m in quantized.items()
        if m.transform is not None and not m.transform_shared
    }
    layers = {}
    for n, m in quantized.items():
        cfg = m.config_dict()
        if m.transform_shared:
            owner = owners.get(id(m.transform))
            if owner is None:
                raise ValueError(
                    f"{n!r} shares a transform whose owner layer is not part of this model"
                )
            cfg["transform_shared_with"] = owner
        layers[n] = cfg
    return layers


def tie_shared_transforms(
    model: nn.Module, layers: dict[str, dict[str, Any]], *, adopt: bool = True
) -> None:
    """Make the layers whose configuration names a ``"transform_shared_with"`` owner hold the
    owner's transform tensor (:func:`~coreopt.quant.linear.share_transform`), before or after
    the tensors are loaded (``adopt``: the members take the owner's tensor whatever they hold).

    Raises:
        ValueError: an owner that is missing or is not a quantized layer with a transform.
    """
    groups: dict[str, list[str]] = {}
    for name, cfg in layers.items():
        owner = cfg.get("transform_shared_with")
        if owner:
            groups.setdefault(owner, []).append(name)
    for owner, members in groups.items():
        mods = []
        for n in (owner, *members):
            try:
                m = model.get_submodule(n)
            except AttributeError:
                m = None
            if not isinstance(m, QuantizedLinear) or m.transform is None:
                raise ValueError(
                    f"{n!r} must be a quantized layer with a transform (shared by {members!r})"
                )
            mods.append(m)
        share_transform(mods, adopt=adopt)


def read_layer_configs(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The per-layer configuration stored in a file written by :func:`save_quantized`."""
    from safetensors import safe_open

    with safe_open(os.fspath(path), framework="pt") as f:
        meta = f.metadata() or {}
    if METADATA_KEY not in meta:
        raise ValueError(f"{os.fspath(path)!r} was not written by coreopt.quant.save_quantized")
    layers: dict[str, dict[str, Any]] = json.loads(meta[METADATA_KEY])
    return layers


def load_quantized(
    model: nn.Module, path: str | os.PathLike[str], *, device: str | torch.device | None = None
) -> nn.Module:
    """Load a file written by :func:`save_quantized` into ``model``.

    ``model`` has the same architecture, unquantized, with any weights: the listed ``nn.Linear``
    (or transformers ``Conv1D``) layers are replaced by :class:`QuantizedLinear` layers and every
    tensor is loaded (strictly: a missing or unexpected tensor raises). Returns ``model``.

    Raises:
        ValueError: the file is not a coreopt quantized model, or a listed layer is missing or is
            not an ``nn.Linear`` of the right shape in ``model``.
    """
    from safetensors import safe_open

    from coreopt.quant.embeddings import rebuild_half_modules

    layers = read_layer_configs(path)
    replace_with_quantized(model, layers)
    with safe_open(os.fspath(path), framework="pt") as f:
        half = json.loads((f.metadata() or {}).get(HALF_KEY, "{}"))
    rebuild_half_modules(model, half)
    st = _safetensors()
    missing, unexpected = st.load_model(
        model, os.fspath(path), strict=True, device=str(device) if device is not None else "cpu"
    )
    del missing, unexpected
    tie_shared_transforms(model, layers)  # a load that replaced tensors: tie them again
    mark_tensor_reads(model)
    return model


def _empty_layer(name: str, old: nn.Module | None, cfg: dict[str, Any]) -> QuantizedLinear:
    """An empty :class:`QuantizedLinear` for ``cfg`` in place of ``old`` (an ``nn.Linear`` or a
    transformers ``Conv1D`` of the same shape)."""
    weight = getattr(old, "weight", None)
    if isinstance(old, nn.Linear):
        shape = (old.out_features, old.in_features)
    elif old is not None and _is_conv1d(old) and isinstance(weight, torch.Tensor):
        shape = (int(weight.shape[1]), int(weight.shape[0]))  # Conv1D stores (in, out)
    else:
        kind = "nothing" if old is None else f"a {type(old).__name__}"
        raise ValueError(
            f"the checkpoint quantizes {name!r}, which is {kind} in this model (expected an "
            "nn.Linear or a transformers Conv1D)"
        )
    if shape != (cfg["out_features"], cfg["in_features"]):
        raise ValueError(
            f"{name!r}: shape ({cfg['out_features']}, {cfg['in_features']}) in the checkpoint, "
            f"{shape} in the model"
        )
    fmt = QuantFormat(cfg["bits"], cfg["group_size"], _dtype(cfg["scale_dtype"]))
    return QuantizedLinear(
        cfg["in_features"],
        cfg["out_features"],
        fmt,
        bias=cfg["bias"],
        transform_block=cfg["transform_block"],
        transform_dtype=cfg.get("transform_dtype", "float16"),
        dtype=_dtype(cfg["bias_dtype"]) if cfg.get("bias_dtype") else torch.float32,
        device=weight.device if isinstance(weight, torch.Tensor) else None,
    )


def replace_with_quantized(model: nn.Module, layers: dict[str, dict[str, Any]]) -> nn.Module:
    """Replace the listed layers of ``model`` by empty :class:`QuantizedLinear` layers shaped by
    their configuration (:meth:`QuantizedLinear.config_dict`), on the device of the weight they
    replace (``meta`` included), the layers of a shared transform holding one tensor
    (:func:`tie_shared_transforms`); the tensors are loaded afterwards. Returns ``model``.

    Raises:
        ValueError: a listed layer is missing, is not an ``nn.Linear`` / ``Conv1D``, or has
            another shape.
    """
    for name, cfg in layers.items():
        parent_name, _, child = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name) if parent_name else model
        except AttributeError:
            parent = None
        old = getattr(parent, child, None) if parent is not None else None
        if isinstance(old, QuantizedLinear):
            continue
        new = _empty_layer(name, old, cfg)  # raises unless old is a layer of the right shape
        assert parent is not None
        assert old is not None
        new.train(old.training)
        setattr(parent, child, new)
    tie_shared_transforms(model, layers)
    return model
