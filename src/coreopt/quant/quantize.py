"""``coreopt.quantize``: walk a model and replace its linear layers by packed b-bit ones."""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import logging
import os
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from coreopt.objective import init_linalg, resolve_device
from coreopt.parallel import parallel_map
from coreopt.quant.budget import (
    Option,
    SharedChoice,
    bit_price,
    choose_options,
    shared_transform_bits,
    stored_bits,
)
from coreopt.quant.config import (
    MetaDeviceError,
    NonFiniteWeightError,
    QuantizeConfig,
    get_method,
)
from coreopt.quant.format import QuantFormat
from coreopt.quant.layouts import (
    exclude_tensor_reads,
    finish_quantized,
    linearize_conv1d,
    restore_conv1d,
)
from coreopt.quant.linear import QuantizedLinear, share_transform
from coreopt.quant.methods import (
    LayerOutcome,
    MatrixTask,
    PairTask,
    cafeq_shared_transform,
    estimate_loss,
    layer_prior,
)
from coreopt.quant.pairs import (
    PairProblem,
    fold_gated,
    fold_qk,
    fold_vo,
    learn_gated_scaling,
    learn_pair_transform,
)
from coreopt.quant.proxy import InputMoments
from coreopt.quant.single import TransformPart
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
        bits, group_size: the layer's integer format (layers differ under a byte budget).
        stored_bytes: bytes the layer stores for its weight: packed codes (group padding
            included), scales, zero points and transform blocks; the bias is not included. A
            transform shared by several layers is counted once, in the first layer of its group.
        transform_shared_with: the layer that stores the transform this layer applies (a
            transform shared by the layers that read the same input, see
            :func:`input_groups`), or ``None``.
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
    bits: int = 0
    group_size: int = 0
    stored_bytes: int = 0
    transform_shared_with: str | None = None

    @property
    def bits_per_weight(self) -> float:
        """``8 · stored_bytes / (out · in)``: every stored bit per real weight (a shared
        transform's bits in the layer that stores it)."""
        return 8 * self.stored_bytes / (self.shape[0] * self.shape[1])


@dataclass(frozen=True)
class QuantizeResult:
    """What :func:`coreopt.quantize` did; attached to the model as ``model.quantization_report``.

    Attributes:
        config: the configuration used.
        layers: one :class:`LayerReport` per quantized layer, in model order.
        skipped: ``{name: reason}`` for linear layers left in floating point.
        memory_before, memory_after: bytes of all parameters and buffers of the whole model
            (embeddings, head, norms, biases included; tied tensors once).
        wall_time: seconds for the whole call.
        previous: the report of an earlier call on the same model (its layers are also in
            ``layers``), or ``None``.
    """

    config: QuantizeConfig
    layers: list[LayerReport]
    skipped: dict[str, str] = field(default_factory=dict)
    memory_before: int = 0
    memory_after: int = 0
    wall_time: float = 0.0
    previous: QuantizeResult | None = None

    @property
    def stored_bytes(self) -> int:
        """Bytes the quantized layers store for their weights (codes, scales, zero points,
        padding, transforms; biases excluded)."""
        return sum(r.stored_bytes for r in self.layers)

    @property
    def bits_per_weight(self) -> float:
        """Average stored bits per quantized weight, every stored bit counted (``8 ·
        stored_bytes / Σ out · in``)."""
        n = sum(r.shape[0] * r.shape[1] for r in self.layers)
        return 8 * self.stored_bytes / n if n else float("nan")

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
        head = (
            "| layer | shape | bits/group | bits per weight | choice | dual | proxy RTN | proxy "
            "| rel. err RTN | rel. err | s |"
        )
        rows = [
            head,
            "| :--- | :--- | :--- | ---: | :--- | :--- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in self.layers:
            rows.append(
                f"| {r.name} | {r.shape[0]}×{r.shape[1]} | {r.bits}/{r.group_size} | "
                f"{r.bits_per_weight:.3f} | {r.choice} | {r.dual or ''} | "
                f"{r.proxy_rtn:.4f} | {r.proxy:.4f} | {r.rel_error_rtn:.4f} | {r.rel_error:.4f} | "
                f"{r.seconds:.2f} |"
            )
        return "\n".join(rows)

    def __str__(self) -> str:
        fmt = (
            f"budget {self.config.bits_per_weight} bits/weight"
            if self.config.bits_per_weight is not None
            else f"{self.config.bits}-bit g{self.config.group_size}"
        )
        return (
            f"QuantizeResult({len(self.layers)} layers, {fmt}, {self.bits_per_weight:.3f} stored "
            f"bits/weight, {self.config.method}, mean rel. error {self.mean_rel_error:.4f} "
            f"(RTN {self.mean_rel_error_rtn:.4f}), {self.memory_before / 2**20:.1f} MiB -> "
            f"{self.memory_after / 2**20:.1f} MiB, {self.wall_time:.1f} s)"
        )


def _plain_tensors(t: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors holding ``t``'s data: ``t`` itself, or the inner tensors of a wrapper
    tensor subclass (torchao's quantized tensors, DTensor's local shard) via
    ``__tensor_flatten__``. Inner attributes that are not tensors are skipped: DTensor (torch
    2.13) lists its ``device_mesh`` there, which holds no bytes of the model."""
    if type(t) in (torch.Tensor, nn.Parameter) or not hasattr(t, "__tensor_flatten__"):
        return [t]
    names, _ = t.__tensor_flatten__()
    inner = [getattr(t, n) for n in names]
    return [p for x in inner if isinstance(x, torch.Tensor) for p in _plain_tensors(x)]


def model_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer of ``model``, shared storage counted once (tensor
    subclasses: the bytes of the plain tensors inside them)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for outer in [*model.parameters(), *model.buffers()]:
        for t in _plain_tensors(outer):
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


def _is_tied_to_embedding(model: nn.Module, linear: nn.Module) -> bool:
    w = getattr(linear, "weight", None)
    return any(
        isinstance(m, nn.Embedding) and m.weight is w for m in model.modules() if m is not linear
    )


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
        elif n in heads and _is_tied_to_embedding(model, m):
            skipped[n] = (
                "output head tied to the input embedding: quantizing it would store a second "
                "copy next to the float embedding (the model would grow)"
            )
        else:
            out.append(n)
    return out, skipped


def _validate(model: nn.Module, names: list[str]) -> None:
    modules = dict(model.named_modules())
    for n in names:
        w = modules[n].weight
        if type(w) not in (torch.Tensor, nn.Parameter):
            raise TypeError(
                f"{n!r} holds a {type(w).__name__} weight (a tensor subclass: already quantized "
                "by another library such as torchao, or sharded such as DTensor); coreopt.quantize "
                "needs plain float tensors: load the float model (or gather the shards) first"
            )
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
        b = modules[n].bias
        if b is not None and not bool(torch.isfinite(b).all()):
            raise NonFiniteWeightError(
                f"{n!r} has a NaN or infinite bias; refusing to quantize a broken model"
            )


def _moments_on(m: InputMoments | None, device: torch.device) -> InputMoments | None:
    return None if m is None else m.to(device)


def structure_moments(
    model: nn.Module,
    st: ModelStructure,
    hidden: dict[str, InputMoments] | None = None,
    only: set[str] | None = None,
) -> dict[str, InputMoments]:
    """Data-free input second moments of every linear layer the structure explains.

    ``hidden``: MLP hidden moments already computed (``{down projection: moments}``), reused;
    ``only``: compute the MLP hidden moments of these down projections only (the quadrature is
    the expensive part)."""
    mods = dict(model.named_modules())
    out: dict[str, InputMoments] = {}
    hidden = hidden or {}
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
        if mlp.down in hidden:
            out[mlp.down] = hidden[mlp.down]
            continue
        if only is not None and mlp.down not in only:
            continue
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
    kinds: frozenset[str] = frozenset({"vo", "qk"}),
) -> dict[str, str]:
    """Learn and fold the V/O and Q/K dual transforms of one attention block (in place); only
    the kinds in ``kinds``."""
    mods = dict(model.named_modules())
    q, k, v, o = (mods[n] for n in (site.q, site.k, site.v, site.o))
    fmt = cfg.format
    notes: dict[str, str] = {}
    dev = device or v.weight.device
    m = None if x_m is None else x_m.normalized().to(dev)
    if (
        "vo" in kinds
        and v.in_features % fmt.group_size == 0
        and o.in_features % fmt.group_size == 0
    ):
        prob = PairProblem(
            "vo",
            o.weight.detach().float().to(dev),
            v.weight.detach().float().to(dev),
            site.n_heads,
            site.n_kv_heads,
            site.head_dim,
            m,
        )
        M, loss, init = learn_pair_transform(prob, fmt, steps=cfg.dual_steps, tol=cfg.dual_tol)
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
    if "qk" in kinds and site.rope is not None and q.in_features % fmt.group_size == 0:
        prob = PairProblem(
            "qk",
            q.weight.detach().float().to(dev),
            k.weight.detach().float().to(dev),
            site.n_heads,
            site.n_kv_heads,
            site.head_dim,
            m,
        )
        M, loss, init = learn_pair_transform(
            prob, fmt, rope=bool(site.rope), steps=cfg.dual_steps, tol=cfg.dual_tol
        )
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
) -> tuple[dict[str, str], torch.Tensor | None]:
    """Learn and fold the gated-MLP scaling of one site; returns the notes and the scaling."""
    mods = dict(model.named_modules())
    up, down = mods[site.up], mods[site.down]
    fmt = cfg.format
    if site.gate is None or down.in_features % fmt.group_size:
        return {}, None
    dev = device or down.weight.device
    h = None if hidden is None else hidden.normalized().to(dev)
    s, loss, init = learn_gated_scaling(
        down.weight.detach().float().to(dev), h, fmt, steps=cfg.dual_steps, tol=cfg.dual_tol
    )
    if not loss < init:
        return {}, None
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
    return {site.up: "gated", site.down: "gated"}, s


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


@contextlib.contextmanager
def _thread_share(cfg: QuantizeConfig) -> Iterator[None]:
    """While the layers fan out to ``w`` worker threads, each worker's torch ops run on
    ``torch.get_num_threads() // w`` intra-op threads (at least one), restored afterwards: ``w``
    workers each spawning the full intra-op pool oversubscribe the cores (on 2 cores, 2 workers x
    2 threads made a SmolLM2 run about 3x slower than 2 x 1)."""
    total = torch.get_num_threads()
    workers = _workers(cfg)
    if cfg.executor not in (None, "threads") or workers <= 1 or total <= 1:
        yield
        return
    torch.set_num_threads(max(1, total // workers))
    try:
        yield
    finally:
        torch.set_num_threads(total)


def _fold_all(
    model: nn.Module,
    st: ModelStructure,
    cfg: QuantizeConfig,
    target_set: set[str],
    device: torch.device | None,
    hidden0: dict[str, InputMoments] | None = None,
    skip: set[tuple[str, str]] | None = None,
) -> tuple[dict[str, str], dict[str, InputMoments]]:
    """Fold every dual transform of the targeted sites, except the units in ``skip`` (pairs
    ``(a, b)`` of :func:`dual_units`, not even learned). Returns the notes and the MLP hidden
    moments it computed (or was given in ``hidden0``: ``{down projection: moments}`` before
    any fold), updated for the gated scalings folded (``Σ' = diag(s) Σ diag(s)``), so that they
    need not be computed again."""
    modules = dict(model.named_modules())
    duals: dict[str, str] = {}
    skip = skip or set()

    def kinds(a: AttentionSite) -> frozenset[str]:
        return frozenset(
            k for k, pair in (("vo", (a.v, a.o)), ("qk", (a.q, a.k))) if pair not in skip
        )

    att = [a for a in st.attention if {a.q, a.k, a.v, a.o} <= target_set and kinds(a)]
    mlps = [
        m
        for m in st.mlp
        if m.gate and {m.up, m.down, m.gate} <= target_set and (m.up, m.down) not in skip
    ]

    def fold_att(a: AttentionSite) -> dict[str, str]:
        x = norm_moments(modules[a.norm]) if a.norm else None
        x = layer_prior(modules[a.v].weight.detach(), x, cfg.prior)
        return _fold_attention(model, a, cfg, x, device, kinds(a))

    for notes in parallel_map(fold_att, att, max_workers=_workers(cfg), progress=False):
        duals.update(notes)
    downs = {m.down for m in mlps}
    hidden = {k: v for k, v in (hidden0 or {}).items() if k in downs}
    if mlps and set(hidden) != downs:
        raw = structure_moments(model, st, only=downs - set(hidden))
        hidden.update({k: v for k, v in raw.items() if k in downs and k not in hidden})

    def fold_m(m: MlpSite) -> tuple[MlpSite, dict[str, str], torch.Tensor | None]:
        h = layer_prior(modules[m.down].weight.detach(), hidden.get(m.down), cfg.prior)
        return (m, *_fold_mlp(model, m, cfg, h, device))

    for m, notes, scaling in parallel_map(fold_m, mlps, max_workers=_workers(cfg), progress=False):
        duals.update(notes)
        h = hidden.get(m.down)
        if scaling is not None and h is not None:
            sc = scaling.to(h.diag.device if h.diag is not None else scaling.device).float()
            hidden[m.down] = InputMoments(
                None if h.diag is None else h.diag * sc**2,
                None if h.low_rank is None else h.low_rank * sc.unsqueeze(1),
                h.source,
            )
    return duals, hidden


def _matrix_task(
    module: nn.Module,
    name: str,
    moments: InputMoments | None,
    seed: int,
    device: torch.device | None,
) -> MatrixTask:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    w = weight.detach().to(device=device or weight.device, dtype=torch.float32)
    return MatrixTask(name, w, _moments_on(moments, w.device), seed)


def dual_units(st: ModelStructure) -> list[tuple[str, tuple[str, str]]]:
    """The layers each dual transform changes, as ``(kind, (a, b))``: V/O, Q/K of every
    attention block, up/down of every gated MLP."""
    units: list[tuple[str, tuple[str, str]]] = []
    for a in st.attention:
        units += [("vo", (a.v, a.o)), ("qk", (a.q, a.k))]
    for m in st.mlp:
        if m.gate:
            units.append(("gated", (m.up, m.down)))
    return units


def _fold_all_budget(
    model: nn.Module,
    st: ModelStructure,
    cfg: QuantizeConfig,
    names: list[str],
    device: torch.device | None,
    user_moments: dict[str, InputMoments],
    float_zero: set[str],
    use_moments: bool,
) -> tuple[dict[str, str], dict[str, InputMoments], dict[str, list[Option]]]:
    """The dual transforms under a byte budget: each is kept only where it pays at the budget.

    The transform-free options of every layer are priced on the model as it is (see
    :func:`_budget_plan`) and the price of a bit ``λ`` is read off them
    (:func:`~coreopt.quant.budget.bit_price`). A dual transform one of whose layers has an option
    that stores it as it is (estimated loss at most :data:`EXACT_LOSS`: an already quantized
    grid, which a fold moves off) is not learned at all; every other one is learned and folded
    (:func:`_fold_all`) and the layers it changed are priced again. It stays folded only where
    it lowers the Lagrangian of its two layers, ``Σ min_option (loss + λ · bits)``; elsewhere
    the layers get their weights back. A transform learned for one format can make the weights
    worse under another: weights dequantized from a ``d q + m`` grid (SmolLM2 here) are stored
    almost exactly by a float-zero 4-bit group-32 option, which any fold destroys. (Until
    23e3087 such transforms were learned and then undone: the same weights, on SmolLM2 at 3.5
    bits per weight about a third of the call's time.)

    Returns:
        ``(duals kept, input moments of every layer, options of every layer)``.
    """
    modules = dict(model.named_modules())
    index = {n: i for i, n in enumerate(names)}
    target_set = set(names)
    raw0 = structure_moments(model, st, only=target_set) if use_moments else {}
    m0 = {**raw0, **user_moments}

    def price(ms: dict[str, InputMoments], subset: list[str]) -> dict[str, list[Option]]:
        tasks = [
            _matrix_task(modules[n], n, ms.get(n), cfg.seed + index[n], device) for n in subset
        ]
        return dict(zip(subset, _price_formats(tasks, cfg, float_zero), strict=True))

    opts0 = price(m0, names)
    assert cfg.bits_per_weight is not None
    total = cfg.bits_per_weight * sum(_weight(model, n).numel() for n in names)
    lam = bit_price([opts0[n] for n in names], total)
    units = [(kind, pair) for kind, pair in dual_units(st) if all(n in target_set for n in pair)]
    # a unit with a layer that one of its options stores as it is would be undone whatever it
    # learned: it is not learned at all
    exact = {n for n in names if min(o.loss for o in opts0[n]) <= EXACT_LOSS}
    skip = {pair for _, pair in units if exact & set(pair)}
    units = [(kind, pair) for kind, pair in units if pair not in skip]
    saved = {
        n: (
            modules[n].weight.detach().clone(),
            None if modules[n].bias is None else modules[n].bias.detach().clone(),
        )
        for _, pair in units
        for n in pair
    }
    hidden0 = {k: v for k, v in raw0.items() if v.source == "mlp"}
    duals, hidden = _fold_all(model, st, cfg, target_set, device, hidden0 or None, skip)
    changed = [n for n in names if n in duals]
    m1 = structure_moments(model, st, hidden, only=set(changed)) if use_moments else {}
    m1.update(user_moments)
    opts1 = price(m1, changed)
    moments_ = dict(m0)
    options = dict(opts0)

    def value(opts: dict[str, list[Option]], pair: tuple[str, str]) -> float:
        return sum(min(o.loss + lam * o.cost for o in opts[n]) for n in pair)

    for kind, pair in units:
        if not all(duals.get(n) == kind for n in pair):
            continue
        before, after = value(opts0, pair), value(opts1, pair)
        if after < before:
            for n in pair:
                options[n] = opts1[n]
                if n in m1:
                    moments_[n] = m1[n]
            continue
        logger.debug("%s: %s dual not kept at the budget (%.4g >= %.4g)", pair, kind, after, before)
        with torch.no_grad():
            for n in pair:
                w, b = saved[n]
                modules[n].weight.copy_(w)
                if b is not None:
                    modules[n].bias.copy_(b)
                del duals[n]
    return duals, moments_, options


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
    with _thread_share(cfg):
        return _fold_all(model, discover(model), cfg, set(names), device)[0]


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

    With ``bits_per_weight=B`` the formats are chosen per layer instead: bits, group size and
    whether a transform (and of which block size) is worth its bytes, minimising the summed proxy
    loss under an average of ``B`` stored bits per quantized weight, every stored byte counted
    (see :mod:`coreopt.quant.budget`), and the zero point (integer, or float where
    :func:`float_zero_layers` or :data:`EXACT_LOSS` allow it); a dual transform stays folded
    only where it pays at the budget (:func:`_fold_all_budget`). With ``share_transforms=True``
    the layers that read the same input (q/k/v, gate/up: :func:`input_groups`) may
    instead take one transform learned for all of them, stored once (the first layer of the
    group holds it, the others the same tensor; each layer applies it in its forward).
    ``model.quantization_report.bits_per_weight`` reports what was stored, a shared transform
    counted once.

    Returns:
        ``model`` itself, with ``model.quantization_report`` (a :class:`QuantizeResult`). A second
        call on the same model (other layers) keeps the first report in ``previous`` and its layers
        in ``layers``.

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
    if cfg.bits_per_weight is not None and (bits is not None or group_size is not None):
        raise ValueError(
            "pass either bits/group_size (one format for every layer) or bits_per_weight (a byte "
            "budget: each layer's format is chosen), not both"
        )
    previous = getattr(model, "quantization_report", None)
    previous = previous if isinstance(previous, QuantizeResult) else None
    conv1d = linearize_conv1d(model)  # GPT-2's Conv1D as the exact nn.Linear (layouts.py)
    names: list[str] = []
    try:
        names, skipped = exclude_tensor_reads(
            model, *select_targets(model, cfg, targets), explicit=targets is not None
        )
    finally:
        restore_conv1d(model, conv1d, keep=set(names))  # float ones keep their own layout
    already = [n for n, m in model.named_modules() if isinstance(m, QuantizedLinear)]
    if not names:
        if already:
            raise ValueError(
                f"the model is already quantized ({len(already)} QuantizedLinear layers) and has "
                "no nn.Linear layer left to quantize; start again from the float model"
            )
        kinds = sorted(
            {type(m).__name__ for m in model.modules() if m is not model} or {type(model).__name__}
        )
        raise ValueError(
            "nothing to quantize: the model has no nn.Linear layer to quantize "
            f"(module types found: {', '.join(kinds[:8])}); only nn.Linear layers are supported"
        )
    for n in already:
        skipped[n] = "already quantized (QuantizedLinear)"
    _validate(model, names)
    memory_before = model_bytes(model) if previous is None else previous.memory_before
    device = None if cfg.device is None else resolve_device(cfg.device)
    modules = dict(model.named_modules())
    target_set = set(names)
    budget = cfg.bits_per_weight is not None
    if budget:
        # the dual transforms are learned against the format nearest the budget
        assert cfg.bits_per_weight is not None
        fits = [b for b in sorted(cfg.bits_options) if b + 0.5 <= cfg.bits_per_weight]
        cfg = dataclasses.replace(cfg, bits=fits[-1] if fits else min(cfg.bits_options))

    _init_linalg(model, names, device)
    with _thread_share(cfg):  # worker threads x intra-op threads <= the threads allowed
        structured = cfg.method == "cafeq" and (
            cfg.dual
            or cfg.alternating
            or "structure" in cfg.prior
            or (budget and cfg.share_transforms)
        )
        st = discover(model) if structured else ModelStructure()
        duals: dict[str, str] = {}
        hidden: dict[str, InputMoments] = {}
        use_moments = structured and "structure" in cfg.prior
        float_zero = float_zero_layers(st)
        priced: dict[str, list[Option]] | None = None
        if budget and cfg.method == "cafeq" and cfg.dual:
            duals, moments_, priced = _fold_all_budget(
                model, st, cfg, names, device, moments or {}, float_zero, use_moments
            )
        else:
            if cfg.method == "cafeq" and cfg.dual:
                duals, hidden = _fold_all(model, st, cfg, target_set, device)
            moments_ = structure_moments(model, st, hidden, only=target_set) if use_moments else {}
            moments_.update(moments or {})
        index = {n: i for i, n in enumerate(names)}

        def matrix_task(i: int, n: str) -> MatrixTask:
            return _matrix_task(modules[n], n, moments_.get(n), cfg.seed + i, device)

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
        shipped = dataclasses.replace(cfg, executor=None)  # what travels to the workers
        notes: dict[str, str] = {}
        shared: dict[str, tuple[str, ...]] = {}
        if budget:
            jobs = _budget_plan(
                [t for t in tasks if isinstance(t, MatrixTask)],
                shipped,
                notes,
                float_zero,
                None if priced is None else [priced[n] for n in names],
                input_groups(st),
                shared,
            )
        else:
            jobs = [(t, _capped(t, shipped, notes)) for t in tasks]

        outcomes: dict[str, LayerOutcome] = {}

        def run(job: tuple[MatrixTask | PairTask, QuantizeConfig]) -> list[LayerOutcome]:
            return handler(*job)

        for outs in parallel_map(
            run,
            jobs,
            executor=cfg.executor,
            max_workers=_workers(cfg),
            progress=cfg.progress,
            desc=f"quantize {cfg.method}",
        ):
            for o in outs:
                outcomes[o.name] = o

    built: dict[str, QuantizedLinear] = {}
    for n in names:
        o = outcomes[n]
        old = modules[n]
        dev = old.weight.device
        fmt = o.fmt or cfg.format
        new = QuantizedLinear.from_codes(
            o.codes.to(dev),
            o.scale.to(dev),
            o.zero.to(dev),
            fmt,
            in_features=old.in_features,
            bias=None if old.bias is None else old.bias.detach(),
            transform=None if o.transform is None else o.transform.to(dev),
            transform_scale=None if o.transform_scale is None else o.transform_scale.to(dev),
        )
        new.train(old.training)
        parent_name, _, child = n.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
        built[n] = new
    owner_of = _share_transforms(built, shared)
    reports = []
    for n in names:
        o = outcomes[n]
        new = built[n]
        fmt = o.fmt or cfg.format
        note = "; ".join(x for x in (notes.get(n, ""), o.note) if x)
        reports.append(
            LayerReport(
                n,
                (new.out_features, new.in_features),
                o.choice,
                duals.get(n),
                new.transform_block,
                o.proxy_rtn,
                o.proxy,
                o.rel_error_rtn,
                o.rel_error,
                o.seconds,
                note,
                fmt.bits,
                fmt.group_size,
                _stored_bytes(new),
                owner_of.get(n),
            )
        )
    if previous is not None:
        order = {n: i for i, n in enumerate(dict(model.named_modules()))}
        reports = sorted([*previous.layers, *reports], key=lambda r: order.get(r.name, -1))
        skipped = {k: v for k, v in skipped.items() if not v.startswith("already quantized")}
    finish_quantized(model)  # layouts.py: torch's fused paths; transformers' quantization_config
    result = QuantizeResult(
        cfg,
        reports,
        skipped,
        memory_before,
        model_bytes(model),
        time.perf_counter() - start,
        previous,
    )
    logger.info("%s", result)
    try:
        model.quantization_report = result  # type: ignore[assignment]
    except (AttributeError, TypeError):  # pragma: no cover - exotic modules refusing attributes
        object.__setattr__(model, "quantization_report", result)
    return model


def _stored_bytes(layer: QuantizedLinear) -> int:
    """Bytes of every buffer the layer stores (codes, scales, zero points, transform); the bias
    (a parameter kept in floating point) is not included, nor a transform another layer stores
    (:func:`~coreopt.quant.linear.share_transform`)."""
    return int(
        sum(
            b.numel() * b.element_size()
            for n, b in layer._buffers.items()
            if b is not None and n not in layer._non_persistent_buffers_set
        )
    )


def _share_transforms(
    built: dict[str, QuantizedLinear], shared: dict[str, tuple[str, ...]]
) -> dict[str, str]:
    """Make the layers of every group quantized with one shared transform hold one tensor
    (:func:`~coreopt.quant.linear.share_transform`), stored by the first of them that kept the
    transform (the per-layer selection may drop it in favour of plain rounding). Returns
    ``{layer: the layer that stores its transform}`` for the others."""
    owner_of: dict[str, str] = {}
    for group in dict.fromkeys(shared.values()):
        keep = [n for n in group if n in built and built[n].transform is not None]
        if len(keep) < 2:
            continue
        try:
            share_transform([built[n] for n in keep])
        except ValueError:  # pragma: no cover - members rounded the same T to the same blocks
            logger.warning("%s: transforms differ; each layer stores its own", keep)
            continue
        owner_of.update((n, keep[0]) for n in keep[1:])
    return owner_of


def _capped(t: MatrixTask | PairTask, cfg: QuantizeConfig, notes: dict[str, str]) -> QuantizeConfig:
    """``cfg`` with the group size capped to the layer's width rounded up to 32 (a group wider
    than the layer would only store padding), with a warning and a note."""
    widths = [
        m.weight.shape[1] for m in ([t.reader, t.producer] if isinstance(t, PairTask) else [t])
    ]
    cap = max(-(-w // 32) * 32 for w in widths)
    if cfg.group_size <= cap:
        return cfg
    for m in [t.reader, t.producer] if isinstance(t, PairTask) else [t]:
        msg = f"group_size {cfg.group_size} > in_features {m.weight.shape[1]}: capped to {cap}"
        notes[m.name] = msg
        warnings.warn(f"{m.name}: {msg}", stacklevel=3)
    return dataclasses.replace(cfg, group_size=cap)


def float_zero_layers(st: ModelStructure) -> set[str]:
    """The layers whose budget options may use float zero points: the ones whose output goes
    into the attention scores or a gate (Q, K; gate and up of an MLP). Not V, whose output is
    the attention value (a sink token's near-zero value stays near zero only if tiny weights
    round to exactly 0), nor O and down, which write into the residual stream. On SmolLM2 at
    4/64, float zero points on Q/K/gate/up lowered both perplexities, on V raised the second
    text's from 46.0 to 55.1, on down to 48.2 (docs/quant.md)."""
    out: set[str] = set()
    for a in st.attention:
        out.update((a.q, a.k))
    for m in st.mlp:
        out.add(m.up)
        if m.gate:
            out.add(m.gate)
    return out


def input_groups(st: ModelStructure) -> list[tuple[str, ...]]:
    """The layers that read the same input, which can share one input transform: q/k/v of every
    attention block (BERT's query/key/value too) and gate/up of every gated MLP (model order
    within a group; the first stores a shared transform)."""
    groups: list[tuple[str, ...]] = [(a.q, a.k, a.v) for a in st.attention]
    groups += [(m.gate, m.up) for m in st.mlp if m.gate]
    return groups


def _layer_options(t: MatrixTask, cfg: QuantizeConfig, formats: list[QuantFormat]) -> list[Option]:
    """The transform-free options of one layer, priced in stored bits, each with its loss
    estimated by round-to-nearest (range search when ``clip_search``) under the layer's prior."""
    W = t.weight.float()
    out, n = W.shape
    meta = torch.finfo(cfg.scale_dtype).bits
    m = layer_prior(W, t.moments, cfg.prior)
    return [
        Option(
            f.bits,
            f.group_size,
            0,
            estimate_loss(W, None, m, f, cfg),
            stored_bits(out, n, f.bits, f.group_size, 0, meta),
            f.zero_point,
        )
        for f in formats
    ]


SCREEN: tuple[tuple[float, float], ...] = (
    (0.03, 0.35),
    (0.1, 0.6),
    (0.15, 0.68),
    (0.25, 0.75),
    (0.5, 0.85),
)
"""The screen of the transforms learned to price budget options (:class:`_ScreenStop`): after
each ``(fraction of steps, factor)``, the run stops when even ``factor`` times the current
estimated loss would not make the option win. The factors bound how much the remaining steps can
lower the loss; they sit below every ratio measured of the loss after all 100 steps to the loss
after 3, 10, 15, 25 and 50 (71 full runs on SmolLM2 at 3.5 and 4.5 bits per weight and MiniLM at
3.5, every 4th, 6th and 2nd block, float zero points: minima 0.47, 0.67, 0.76, 0.83 and 0.90;
an earlier 49 runs gave 0.73, 0.82 and 0.91 after 10, 25 and 50). Until cec7baa the
checks were after 10, 25 and 50 steps with factors 0.6, 0.65 and 0.85: the checks
after 3 and 15 steps and the factor 0.75 after 25 (runs that lose by 25-30% at the end used to
run to 50) cut the steps of those 71 runs from 1,645 to 1,084, the same 4 passing
(docs/quant.md)."""


@dataclass
class _ScreenStop:
    """Early stop of a transform learned to price a budget option (see :data:`SCREEN`): ``need``
    is the loss at which the option beats the layer's chosen one at the budget's bit price; an
    option that cannot reach it would not be chosen, so the rest of its run is skipped. Until a
    check stops it the run is the full run's, so an option that passes every check is priced
    exactly as without the screen."""

    parts: list[tuple[torch.Tensor, InputMoments | None, QuantFormat]]
    """``(W, prior, format)`` of each layer the transform is for (several: a shared one, whose
    estimated loss is the sum of theirs)."""
    cfg: QuantizeConfig
    need: float
    stopped: bool = False
    seen: list[tuple[int, float]] = field(default_factory=list)

    def __call__(self, step: int, T: torch.Tensor) -> bool:
        for frac, factor in SCREEN:
            if step == max(1, int(frac * self.cfg.steps)):
                loss = sum(estimate_loss(W, T, m, f, self.cfg) for W, m, f in self.parts)
                self.seen.append((step, loss))
                self.stopped = factor * loss >= self.need
                return self.stopped
        return False

    def __str__(self) -> str:
        shown = ", ".join(f"{v:.4g} at step {k}" for k, v in self.seen)
        return f"estimated loss {shown or '-'}; needs {self.need:.4g}"


def _price_formats(
    tasks: list[MatrixTask], cfg: QuantizeConfig, float_zero: set[str]
) -> list[list[Option]]:
    """The transform-free options of every layer (bits x group size x zero point, float zero
    points for the layers in ``float_zero`` and, elsewhere, only where they store the weights
    as they are, see :data:`EXACT_LOSS`), each priced in stored bits and its loss estimated by
    round-to-nearest under the layer's prior."""
    formats = [
        QuantFormat(b, g, cfg.scale_dtype, z)  # type: ignore[arg-type]
        for b in sorted(set(cfg.bits_options))
        for g in sorted(set(cfg.group_options))
        for z in dict.fromkeys(cfg.zero_point_options)
    ]

    if not any(f.zero_point == "integer" for f in formats):
        formats += [dataclasses.replace(f, zero_point="integer") for f in formats]

    plain = dataclasses.replace(cfg, clip_search=False)

    def layer(t: MatrixTask) -> list[Option]:
        if t.name in float_zero:
            return _layer_options(t, cfg, formats)
        # elsewhere a float-zero option only where min-max rounding stores the weights as they
        # are (one pass instead of the range search's seven; then priced like the others)
        floats = [f for f in formats if f.zero_point == "float"]
        exact = {
            f
            for f, o in zip(floats, _layer_options(t, plain, floats), strict=True)
            if o.loss <= EXACT_LOSS
        }
        opts = _layer_options(
            t, cfg, [f for f in formats if f.zero_point == "integer" or f in exact]
        )
        return [o for o in opts if o.zero_point == "integer" or o.loss <= EXACT_LOSS]

    return parallel_map(layer, tasks, max_workers=_workers(cfg), progress=False)


EXACT_LOSS = 1e-6
"""A float-zero option is offered to a layer outside :func:`float_zero_layers` (V, O, down) only
where its estimated relative proxy, with min-max rounding and with the range search, is at most
this: where it stores the weights as they are
(weights dequantized from a ``d q + m`` grid, SmolLM2 here: about 2e-7 at 4/32), so that every
tiny weight is stored as it is and 0 need not be a level. 8-bit round-to-nearest of float
weights stays above it (about 5e-6)."""


def _budget_plan(
    tasks: list[MatrixTask],
    cfg: QuantizeConfig,
    notes: dict[str, str],
    float_zero: set[str] | None = None,
    options: list[list[Option]] | None = None,
    groups: list[tuple[str, ...]] | None = None,
    shared_out: dict[str, tuple[str, ...]] | None = None,
) -> list[tuple[MatrixTask | PairTask, QuantizeConfig]]:
    """Spend ``cfg.bits_per_weight`` over the layers (see :mod:`coreopt.quant.budget`).

    1. Price every transform-free format of every layer (bits x group size x zero point, float
       zero points only for the layers in ``float_zero``, see :func:`float_zero_layers`) and
       estimate its loss by round-to-nearest under the layer's prior (``options``: already
       priced, see :func:`_fold_all_budget`); solve the knapsack.
    2. For ``"cafeq"`` with a transform: learn each block size of ``block_options`` at the format
       chosen in 1 and add it as an option (its loss estimated the same way, its blocks priced);
       with ``share_transforms``, also learn one transform per block size for each group of
       ``groups`` (layers reading the same input, :func:`input_groups`) on the sum of their
       proxies, each layer at its format chosen in 1 (:func:`~coreopt.quant.methods.
       cafeq_shared_transform`), offered as a :class:`~coreopt.quant.budget.SharedChoice` whose
       blocks are priced once for the group. Solve again. A transform is not even learned where
       the loss of its layers is below the price of its blocks at the budget's Lagrange
       multiplier (:func:`~coreopt.quant.budget.bit_price`): it could not pay for itself; and
       its learning stops early once it cannot win (:data:`SCREEN`).
    3. Every layer is then quantized at its chosen format (GPTQ against the prior, the learned
       transform when chosen, the per-layer selection keeping the lower proxy).

    ``shared_out`` receives ``{layer: its group}`` for the layers of every group whose shared
    transform was chosen (they get the same transform tensor).
    """
    assert cfg.bits_per_weight is not None
    total = cfg.bits_per_weight * sum(t.weight.shape[0] * t.weight.shape[1] for t in tasks)
    if options is None:
        options = _price_formats(tasks, cfg, float_zero or set())
    options = [list(o) for o in options]
    pick = choose_options(options, total)
    learned: dict[tuple[int, int], torch.Tensor] = {}
    choices: list[SharedChoice] = []
    index = {t.name: i for i, t in enumerate(tasks)}
    if cfg.method == "cafeq" and cfg.transform != "identity" and cfg.block_options:
        meta = torch.finfo(cfg.scale_dtype).bits
        tdtype = cfg.transform_dtype
        price = bit_price(options, total)
        units: list[tuple[int, ...]] = [(i,) for i in range(len(tasks))]
        if cfg.share_transforms:
            for g in groups or []:
                ids = tuple(index[n] for n in g if n in index)
                widths = {tasks[i].weight.shape[1] for i in ids}
                if len(ids) == len(g) > 1 and len(widths) == 1:
                    units.append(ids)

        def price_unit(ids: tuple[int, ...]) -> list[tuple[tuple[Option, ...], int, torch.Tensor]]:
            """The transform options of one layer (``ids`` of one) or of one group sharing it:
            ``(each member's option, bits stored once for the group, T)``."""
            own = len(ids) == 1
            ts = [tasks[i] for i in ids]
            chosen = [options[i][pick[i]] for i in ids]
            Ws = [t.weight.float() for t in ts]
            n = Ws[0].shape[1]
            fmts = [
                QuantFormat(o.bits, o.group_size, cfg.scale_dtype, o.zero_point)  # type: ignore[arg-type]
                for o in chosen
            ]
            ms = [layer_prior(W, t.moments, cfg.prior) for W, t in zip(Ws, ts, strict=True)]
            # learned on at most 512 evenly spaced rows of a layer, 768 of a group shared in
            # proportion to the layers' rows (rows are samples of the proxy)
            outs = [W.shape[0] for W in Ws]
            cap = [512] if own else [max(128, round(768 * o / sum(outs))) for o in outs]
            rows = [
                torch.linspace(0, o - 1, min(o, c), device=W.device).round().long()
                for o, c, W in zip(outs, cap, Ws, strict=True)
            ]
            res = []
            for k in cfg.block_options:
                # own: the layer's blocks in its option's cost; shared: once, in the choice
                cost = stored_bits(
                    outs[0], n, chosen[0].bits, chosen[0].group_size, k, meta, tdtype
                )
                extra = cost - chosen[0].cost if own else shared_transform_bits(n, k, meta, tdtype)
                # the loss at which the option beats the chosen one(s) at the bit price
                need = sum(o.loss for o in chosen) - price * extra
                if n % k or need <= 0:
                    continue  # even a perfect transform could not pay for its blocks
                screen = _ScreenStop(list(zip(Ws, ms, fmts, strict=True)), cfg, need)
                T, _ = cafeq_shared_transform(
                    [
                        TransformPart(W[r], f, m)
                        for W, r, f, m in zip(Ws, rows, fmts, ms, strict=True)
                    ],
                    dataclasses.replace(cfg, block_size=k),
                    ts[0].seed,
                    stop=screen,
                )
                names = "+".join(t.name for t in ts)
                if screen.stopped:
                    logger.debug("%s: %dx%d transform screened out (%s)", names, k, k, screen)
                    continue
                losses = [
                    estimate_loss(W, T, m, f, cfg) for W, m, f in zip(Ws, ms, fmts, strict=True)
                ]
                logger.debug(
                    "%s: %dx%d transform priced: %s, after all steps %.4g",
                    names,
                    k,
                    k,
                    screen,
                    sum(losses),
                )
                opts = tuple(
                    Option(
                        o.bits,
                        o.group_size,
                        k,
                        loss,
                        cost if own else stored_bits(out, n, o.bits, o.group_size, 0, meta),
                        o.zero_point,
                    )
                    for o, loss, out in zip(chosen, losses, outs, strict=True)
                )
                res.append((opts, 0 if own else extra, T))
            return res

        priced = list(parallel_map(price_unit, units, max_workers=_workers(cfg), progress=False))
        for ids, extra in zip(units, priced, strict=True):
            for opts, shared_cost, T in extra:
                picks = []
                for i, opt in zip(ids, opts, strict=True):
                    learned[(i, len(options[i]))] = T
                    picks.append((i, len(options[i])))
                    options[i].append(opt)
                if len(ids) > 1:
                    choices.append(SharedChoice(tuple(picks), shared_cost))
        pick = choose_options(options, total, choices)
    shared_of: dict[int, tuple[str, ...]] = {}
    for ch in choices:
        if all(pick[i] == j for i, j in ch.picks):
            group = tuple(tasks[i].name for i, _ in ch.picks)
            for i, _ in ch.picks:
                shared_of[i] = group
    jobs: list[tuple[MatrixTask | PairTask, QuantizeConfig]] = []
    for i, t in enumerate(tasks):
        o = options[i][pick[i]]
        T_ = learned.get((i, pick[i]))
        layer_cfg = dataclasses.replace(
            cfg,
            bits=o.bits,
            group_size=o.group_size,
            zero_point=o.zero_point,  # type: ignore[arg-type]
            transform=cfg.transform if o.block else "identity",
            block_size=o.block or cfg.block_size,
        )
        members = shared_of.get(i)
        notes[t.name] = (
            f"budget: {o.bits}-bit g{o.group_size}"
            + (" float zero" if o.zero_point == "float" else "")
            + (f", {o.block}x{o.block} transform" if o.block else "")
            + (f" shared by {', '.join(members)}" if members else "")
            + f", estimated proxy {o.loss:.4g}"
        )
        if members and shared_out is not None:
            shared_out[t.name] = members
        jobs.append((dataclasses.replace(t, transform=T_), layer_cfg))
    return jobs
