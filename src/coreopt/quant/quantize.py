"""``coreopt.quantize``: walk a model and replace its linear layers by packed b-bit ones."""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from coreopt.objective import init_linalg, resolve_device
from coreopt.parallel import parallel_map
from coreopt.quant.config import MetaDeviceError, NonFiniteWeightError, QuantizeConfig
from coreopt.quant.linear import QuantizedLinear
from coreopt.quant.methods import LayerOutcome, MatrixTask, PairTask, get_method, layer_prior
from coreopt.quant.pairs import (
    PairProblem,
    fold_gated,
    fold_qk,
    fold_vo,
    learn_gated_scaling,
    learn_pair_transform,
)
from coreopt.quant.proxy import InputMoments
from coreopt.quant.structure import (
    AttentionSite,
    MlpSite,
    ModelStructure,
    attention_output_moments,
    discover,
    mlp_hidden_moments,
    norm_moments,
)

logger = logging.getLogger("coreopt.quant")


@dataclass(frozen=True)
class LayerReport:
    """Diagnostics of one quantized layer.

    Attributes:
        name: qualified module name.
        shape: ``(out_features, in_features)``.
        choice: what was kept (``"learned+gptq"``, ``"hadamard+rtn"``, ``"rtn"``,
            ``"pair-vo+alternating"``, ...).
        dual: the dual transform folded into this layer before quantization (``"vo"``, ``"qk"``,
            ``"gated"``) or ``None``.
        transform_block: block of the runtime input transform (0: none).
        proxy_rtn: proxy loss ``tr(E Σ Eᵀ) / tr(W Σ Wᵀ)`` of plain round-to-nearest (before).
        proxy: the same for the stored result (after).
        rel_error_rtn, rel_error: ``||W − Ŵ||_F / ||W||_F`` of RTN and of the result.
        seconds: wall time spent on the layer (its share of a pair).
        note: anything worth knowing (why no transform, the pair's product losses, ...).
    """

    name: str
    shape: tuple[int, int]
    choice: str
    dual: str | None
    transform_block: int
    proxy_rtn: float
    proxy: float
    rel_error_rtn: float
    rel_error: float
    seconds: float
    note: str = ""


@dataclass(frozen=True)
class QuantizeResult:
    """What :func:`coreopt.quantize` did; attached to the model as ``model.quantization_report``.

    Attributes:
        config: the configuration used.
        layers: one :class:`LayerReport` per quantized layer, in model order.
        skipped: ``{name: reason}`` for linear layers left in floating point.
        memory_before, memory_after: bytes of all parameters and buffers (tied tensors once).
        wall_time: seconds for the whole call.
    """

    config: QuantizeConfig
    layers: list[LayerReport]
    skipped: dict[str, str] = field(default_factory=dict)
    memory_before: int = 0
    memory_after: int = 0
    wall_time: float = 0.0

    @property
    def compression(self) -> float:
        """``memory_before / memory_after``."""
        return self.memory_before / self.memory_after if self.memory_after else float("nan")

    @property
    def mean_rel_error(self) -> float:
        """Mean relative weight error over the quantized layers."""
        return sum(r.rel_error for r in self.layers) / max(len(self.layers), 1)

    @property
    def mean_rel_error_rtn(self) -> float:
        return sum(r.rel_error_rtn for r in self.layers) / max(len(self.layers), 1)

    def table(self) -> str:
        """The per-layer report as a markdown table."""
        head = "| layer | shape | choice | dual | proxy RTN | proxy | rel. err RTN | rel. err | s |"
        rows = [head, "| :--- | :--- | :--- | :--- | ---: | ---: | ---: | ---: | ---: |"]
        for r in self.layers:
            rows.append(
                f"| {r.name} | {r.shape[0]}×{r.shape[1]} | {r.choice} | {r.dual or ''} | "
                f"{r.proxy_rtn:.4f} | {r.proxy:.4f} | {r.rel_error_rtn:.4f} | {r.rel_error:.4f} | "
                f"{r.seconds:.2f} |"
            )
        return "\n".join(rows)

    def __str__(self) -> str:
        return (
            f"QuantizeResult({len(self.layers)} layers, {self.config.bits}-bit "
            f"g{self.config.group_size} "
            f"{self.config.method}, mean rel. error {self.mean_rel_error:.4f} "
            f"(RTN {self.mean_rel_error_rtn:.4f}), {self.memory_before / 2**20:.1f} MiB -> "
            f"{self.memory_after / 2**20:.1f} MiB, {self.wall_time:.1f} s)"
        )


def model_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer of ``model``, shared storage counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        key = (
            (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
            if t.device.type != "meta"
            else (id(t), 0)
        )
        if key in seen and key[0] != 0:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def _head_names(model: nn.Module) -> set[str]:
    names = set()
    get = getattr(model, "get_output_embeddings", None)
    head = None
    if callable(get):
        try:
            head = get()
        except (NotImplementedError, AttributeError):
            head = None
    embeds = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for n, m in model.named_modules():
        if not isinstance(m, nn.Linear):
            continue
        if (
            m is head
            or id(m.weight) in embeds
            or n.split(".")[-1] in ("lm_head", "classifier", "score", "head")
        ):
            names.add(n)
    return names


def select_targets(
    model: nn.Module, cfg: QuantizeConfig, targets: Iterable[str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """The ``nn.Linear`` layers to quantize (model order) and the skipped ones with a reason."""
    modules = dict(model.named_modules())
    skipped: dict[str, str] = {}
    if targets is not None:
        names = list(targets)
        for n in names:
            if n not in modules:
                raise ValueError(f"targets: the model has no module named {n!r}")
            if not isinstance(modules[n], nn.Linear):
                raise TypeError(
                    f"targets: {n!r} is a {type(modules[n]).__name__}; only nn.Linear layers "
                    "can be quantized"
                )
        order = {n: i for i, n in enumerate(modules)}
        return sorted(set(names), key=order.__getitem__), skipped
    heads = _head_names(model)
    out = []
    for n, m in modules.items():
        if not isinstance(m, nn.Linear):
            continue
        if any(fnmatch.fnmatchcase(n, p) for p in cfg.skip):
            skipped[n] = "matches skip"
        elif n in heads and not cfg.include_head:
            skipped[n] = "output head (include_head=False)"
        else:
            out.append(n)
    return out, skipped


def _validate(model: nn.Module, names: list[str]) -> None:
    modules = dict(model.named_modules())
    for n in names:
        w = modules[n].weight
        if w.device.type == "meta":
            raise MetaDeviceError(
                f"{n!r} is on the meta device: materialise the model's weights (e.g. load them) "
                "before quantizing"
            )
        if not w.is_floating_point():
            raise TypeError(f"{n!r} has a {w.dtype} weight; expected a floating-point weight")
        if not bool(torch.isfinite(w).all()):
            raise NonFiniteWeightError(
                f"{n!r} has NaN or infinite weights; refusing to quantize a broken model"
            )


def _moments_on(m: InputMoments | None, device: torch.device) -> InputMoments | None:
    return None if m is None else m.to(device)


def structure_moments(model: nn.Module, st: ModelStructure) -> dict[str, InputMoments]:
    """Data-free input second moments of every linear layer the structure explains."""
    mods = dict(model.named_modules())
    out: dict[str, InputMoments] = {}
    for a in st.attention:
        x = norm_moments(mods[a.norm]) if a.norm else InputMoments(source="identity")
        for n in (a.q, a.k, a.v):
            out[n] = x
        v = mods[a.v]
        out[a.o] = attention_output_moments(
            v.weight.detach().float(),
            None if v.bias is None else v.bias.detach().float(),
            x if not x.is_identity else InputMoments(torch.ones(v.in_features)),
            a.n_heads,
            a.n_kv_heads,
            a.head_dim,
        )
    for mlp in st.mlp:
        x = norm_moments(mods[mlp.norm]) if mlp.norm else InputMoments(source="identity")
        for fed in (mlp.up, mlp.gate):
            if fed:
                out[fed] = x
        up = mods[mlp.up]
        gate = mods[mlp.gate] if mlp.gate else None
        xin = x if not x.is_identity else InputMoments(torch.ones(up.in_features))
        with contextlib.suppress(ValueError):  # unknown activation: no prior for down
            out[mlp.down] = mlp_hidden_moments(
                up.weight.detach().float(),
                None if up.bias is None else up.bias.detach().float(),
                xin,
                mlp.act,
                None if gate is None else gate.weight.detach().float(),
                None if gate is None or gate.bias is None else gate.bias.detach().float(),
            )
    return out


def _fold_attention(
    model: nn.Module,
    site: AttentionSite,
    cfg: QuantizeConfig,
    x_m: InputMoments | None,
    device: torch.device | None,
) -> dict[str, str]:
    """Learn and fold the V/O and Q/K dual transforms of one attention block (in place)."""
    mods = dict(model.named_modules())
    q, k, v, o = (mods[n] for n in (site.q, site.k, site.v, site.o))
    fmt = cfg.format
    notes: dict[str, str] = {}
    dev = device or v.weight.device
    m = None if x_m is None else x_m.normalized().to(dev)
    if v.in_features % fmt.group_size == 0 and o.in_features % fmt.group_size == 0:
        prob = PairProblem(
            "vo",
            o.weight.detach().float().to(dev),
            v.weight.detach().float().to(dev),
            site.n_heads,
            site.n_kv_heads,
            site.head_dim,
            m,
        )
        M, loss, init = learn_pair_transform(prob, fmt, steps=cfg.dual_steps)
        if loss < init:
            with torch.no_grad():
                Wv, bv, Wo = fold_vo(
                    v.weight.detach().to(dev),
                    None if v.bias is None else v.bias.detach().to(dev),
                    o.weight.detach().to(dev),
                    M,
                    site.n_heads,
                )
                v.weight.copy_(Wv)
                o.weight.copy_(Wo)
                if v.bias is not None and bv is not None:
                    v.bias.copy_(bv)
            notes[site.v] = notes[site.o] = "vo"
    if site.rope is not None and q.in_features % fmt.group_size == 0:
        prob = PairProblem(
            "qk",
            q.weight.detach().float().to(dev),
            k.weight.detach().float().to(dev),
            site.n_heads,
            site.n_kv_heads,
            site.head_dim,
            m,
        )
        M, loss, init = learn_pair_transform(prob, fmt, rope=bool(site.rope), steps=cfg.dual_steps)
        if loss < init:
            with torch.no_grad():
                Wq, bq, Wk, bk = fold_qk(
                    q.weight.detach().to(dev),
                    None if q.bias is None else q.bias.detach().to(dev),
                    k.weight.detach().to(dev),
                    None if k.bias is None else k.bias.detach().to(dev),
                    M,
                    site.n_heads,
                )
                q.weight.copy_(Wq)
                k.weight.copy_(Wk)
                if q.bias is not None and bq is not None:
                    q.bias.copy_(bq)
                if k.bias is not None and bk is not None:
                    k.bias.copy_(bk)
            notes[site.q] = notes[site.k] = "qk"
    return notes


def _fold_mlp(
    model: nn.Module,
    site: MlpSite,
    cfg: QuantizeConfig,
    hidden: InputMoments | None,
    device: torch.device | None,
) -> dict[str, str]:
    mods = dict(model.named_modules())
    up, down = mods[site.up], mods[site.down]
    fmt = cfg.format
    if site.gate is None or down.in_features % fmt.group_size:
        return {}
    dev = device or down.weight.device
    h = None if hidden is None else hidden.normalized().to(dev)
    s, loss, init = learn_gated_scaling(
        down.weight.detach().float().to(dev), h, fmt, steps=cfg.dual_steps
    )
    if not loss < init:
        return {}
    with torch.no_grad():
        Wu, bu, Wd = fold_gated(
            up.weight.detach().to(dev),
            None if up.bias is None else up.bias.detach().to(dev),
            down.weight.detach().to(dev),
            s,
        )
        up.weight.copy_(Wu)
        down.weight.copy_(Wd)
        if up.bias is not None and bu is not None:
            up.bias.copy_(bu)
    return {site.up: "gated", site.down: "gated"}


def _weight(model: nn.Module, name: str) -> torch.Tensor:
    w = model.get_submodule(name).weight
    assert isinstance(w, torch.Tensor)
    return w


def _init_linalg(model: nn.Module, names: list[str], device: torch.device | None) -> None:
    """The layers fan out to threads, which must not be the first to load CUDA's linalg backend
    (see :func:`coreopt.objective.init_linalg`)."""
    if device is not None:
        init_linalg([device])
    else:
        init_linalg({_weight(model, n).device for n in names})


def _workers(cfg: QuantizeConfig) -> int:
    """Threads for in-process fan-out: ``max_workers``, else one per CPU core (each layer's torch
    ops are themselves multi-threaded, more threads only contend)."""
    return cfg.max_workers or max(1, os.cpu_count() or 1)


def _fold_all(
    model: nn.Module,
    st: ModelStructure,
    cfg: QuantizeConfig,
    target_set: set[str],
    device: torch.device | None,
) -> dict[str, str]:
    modules = dict(model.named_modules())
    duals: dict[str, str] = {}
    att = [a for a in st.attention if {a.q, a.k, a.v, a.o} <= target_set]
    mlps = [m for m in st.mlp if m.gate and {m.up, m.down, m.gate} <= target_set]

    def fold_att(a: AttentionSite) -> dict[str, str]:
        x = norm_moments(modules[a.norm]) if a.norm else None
        x = layer_prior(modules[a.v].weight.detach(), x, cfg.prior)
        return _fold_attention(model, a, cfg, x, device)

    for notes in parallel_map(fold_att, att, max_workers=_workers(cfg), progress=False):
        duals.update(notes)
    hidden = structure_moments(model, st) if mlps else {}

    def fold_m(m: MlpSite) -> dict[str, str]:
        h = layer_prior(modules[m.down].weight.detach(), hidden.get(m.down), cfg.prior)
        return _fold_mlp(model, m, cfg, h, device)

    for notes in parallel_map(fold_m, mlps, max_workers=_workers(cfg), progress=False):
        duals.update(notes)
    return duals


def fold_dual_transforms(
    model: nn.Module,
    config: QuantizeConfig | None = None,
    *,
    targets: Iterable[str] | None = None,
    **overrides: Any,
) -> dict[str, str]:
    """Learn the dual transforms of ``model``'s paired weights and fold them in place, without
    quantizing: V/O and Q/K per head (rotary-commuting maps under RoPE), up/down scaling of gated
    MLPs. The floating-point function is unchanged (up to rounding of the weights' dtype); this is
    the first stage of ``quantize(method="cafeq")``, exposed for inspection and tests.

    Returns:
        ``{linear name: "vo" | "qk" | "gated"}`` for every layer that received a transform.
    """
    cfg = dataclasses.replace(config or QuantizeConfig(), **overrides)
    names, _ = select_targets(model, cfg, targets)
    _validate(model, names)
    device = None if cfg.device is None else resolve_device(cfg.device)
    _init_linalg(model, names, device)
    return _fold_all(model, discover(model), cfg, set(names), device)


def quantize(
    model: nn.Module,
    bits: int | None = None,
    group_size: int | None = None,
    method: str | None = None,
    *,
    config: QuantizeConfig | None = None,
    targets: Iterable[str] | None = None,
    moments: dict[str, InputMoments] | None = None,
    **overrides: Any,
) -> nn.Module:
    """Quantize the linear layers of ``model`` in place to packed b-bit weights, without data.

    Every selected ``nn.Linear`` is replaced by a :class:`~coreopt.quant.QuantizedLinear`.
    Embeddings and norms are never touched, and the output head (LM head, classifier) only with
    ``include_head=True``. With ``method="cafeq"`` (the default) the layers' weights are first
    re-parametrised by exact dual transforms (V/O and Q/K per head, gated-MLP scaling; folded, no
    runtime cost), then each layer learns a block-diagonal input transform and is rounded against a
    data-free proxy of its output error, and the variant with the lowest proxy (RTN included) is
    kept. Layers are independent units of work fanned out through :mod:`coreopt.parallel`.

    Args:
        model: any ``nn.Module`` (transformers models keep working with ``generate``).
        bits, group_size, method: shortcuts for the same fields of ``config``.
        config: a :class:`QuantizeConfig`; defaults to ``QuantizeConfig()``.
        targets: names of the ``nn.Linear`` modules to quantize (default: all but the head and
            ``config.skip``).
        moments: ``{layer name: InputMoments}`` replacing the structural input moments of those
            layers (for instance statistics you measured yourself; the method is then no longer
            calibration-free). Used by the ``"structure"`` priors.
        **overrides: other fields of :class:`QuantizeConfig`.

    Returns:
        ``model`` itself, with ``model.quantization_report`` (a :class:`QuantizeResult`).

    Raises:
        UnsupportedFormatError: bits or group size outside the supported formats.
        MetaDeviceError: weights on the meta device.
        NonFiniteWeightError: NaN or infinite weights.
        TypeError: ``model`` is not an ``nn.Module``, or a target is not an ``nn.Linear``.
        ValueError: unknown option, or nothing to quantize.

    Examples:
        >>> import torch, coreopt
        >>> net = torch.nn.Sequential(
        ...     torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)
        ... )
        >>> net = coreopt.quantize(net, bits=4, steps=5, progress=False)
        >>> type(net[0]).__name__, len(net.quantization_report.layers)
        ('QuantizedLinear', 2)
    """
    start = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    shortcuts: dict[str, Any] = {"bits": bits, "group_size": group_size, "method": method}
    cfg = dataclasses.replace(
        config or QuantizeConfig(),
        **{k: v for k, v in shortcuts.items() if v is not None},
        **overrides,
    )
    names, skipped = select_targets(model, cfg, targets)
    if not names:
        kinds = sorted(
            {type(m).__name__ for m in model.modules() if m is not model} or {type(model).__name__}
        )
        raise ValueError(
            "nothing to quantize: the model has no nn.Linear layer to quantize "
            f"(module types found: {', '.join(kinds[:8])}); only nn.Linear layers are supported"
        )
    _validate(model, names)
    memory_before = model_bytes(model)
    device = None if cfg.device is None else resolve_device(cfg.device)
    modules = dict(model.named_modules())
    target_set = set(names)

    _init_linalg(model, names, device)
    structured = cfg.method == "cafeq" and (cfg.dual or "structure" in cfg.prior)
    st = discover(model) if structured else ModelStructure()
    duals: dict[str, str] = {}
    if cfg.method == "cafeq" and cfg.dual:
        duals = _fold_all(model, st, cfg, target_set, device)
    moments_ = structure_moments(model, st) if (structured and "structure" in cfg.prior) else {}
    moments_.update(moments or {})

    def matrix_task(i: int, n: str) -> MatrixTask:
        w = modules[n].weight.detach()
        w = w.to(device=device or w.device, dtype=torch.float32)
        return MatrixTask(n, w, _moments_on(moments_.get(n), w.device), cfg.seed + i)

    index = {n: i for i, n in enumerate(names)}
    tasks: list[MatrixTask | PairTask] = []
    paired: set[str] = set()
    if cfg.method == "cafeq" and cfg.rounding == "gptq" and cfg.alternating:
        for a in st.attention:
            for kind, reader, producer in (("vo", a.o, a.v), ("qk", a.q, a.k)):
                if kind == "qk" and a.rope is None:
                    continue
                if reader in target_set and producer in target_set:
                    tasks.append(
                        PairTask(
                            kind,
                            matrix_task(index[reader], reader),
                            matrix_task(index[producer], producer),
                            a.n_heads,
                            a.n_kv_heads,
                            a.head_dim,
                            _moments_on(
                                moments_.get(a.v),
                                modules[a.v].weight.device if device is None else device,
                            ),
                        )
                    )
                    paired.update((reader, producer))
    tasks.extend(matrix_task(index[n], n) for n in names if n not in paired)
    handler = get_method(cfg.method)

    outcomes: dict[str, LayerOutcome] = {}
    shipped = dataclasses.replace(cfg, executor=None)  # what travels to the workers

    def run(task: MatrixTask | PairTask) -> list[LayerOutcome]:
        return handler(task, shipped)

    for outs in parallel_map(
        run,
        tasks,
        executor=cfg.executor,
        max_workers=_workers(cfg),
        progress=cfg.progress,
        desc=f"quantize {cfg.bits}-bit g{cfg.group_size} ({cfg.method})",
    ):
        for o in outs:
            outcomes[o.name] = o

    fmt = cfg.format
    reports = []
    for n in names:
        o = outcomes[n]
        old = modules[n]
        dev = old.weight.device
        new = QuantizedLinear.from_codes(
            o.codes.to(dev),
            o.scale.to(dev),
            o.zero.to(dev),
            fmt,
            in_features=old.in_features,
            bias=None if old.bias is None else old.bias.detach(),
            transform=None if o.transform is None else o.transform.to(dev),
        )
        new.train(old.training)
        parent_name, _, child = n.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
        reports.append(
            LayerReport(
                n,
                (old.out_features, old.in_features),
                o.choice,
                duals.get(n),
                new.transform_block,
                o.proxy_rtn,
                o.proxy,
                o.rel_error_rtn,
                o.rel_error,
                o.seconds,
                o.note,
            )
        )
    result = QuantizeResult(
        cfg, reports, skipped, memory_before, model_bytes(model), time.perf_counter() - start
    )
    logger.info("%s", result)
    try:
        model.quantization_report = result  # type: ignore[assignment]
    except (AttributeError, TypeError):  # pragma: no cover - exotic modules refusing attributes
        object.__setattr__(model, "quantization_report", result)
    return model
