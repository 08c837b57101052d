"""Per-layer quantization methods and their registry.

A *method* turns one unit of work (a single matrix, or a V/O or Q/K pair) into codes, scales, zero
points and an optional input transform. ``"rtn"``, ``"hadamard"`` and ``"cafeq"`` are built in;
:func:`register_method` adds one without touching :func:`coreopt.quantize`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from coreopt.quant.config import QuantizeConfig, get_method, register_method, registered_methods
from coreopt.quant.format import QuantFormat, dequantize_codes, minmax_params, quantize_codes
from coreopt.quant.linear import pad_columns
from coreopt.quant.pairs import PairProblem, alternating_rounding
from coreopt.quant.proxy import (
    InputMoments,
    balance_moments,
    combine_moments,
    weighted_sq_error,
)
from coreopt.quant.rounding import DEFAULT_SHRINK_GRID, gptq, rtn_fit
from coreopt.quant.single import TransformPart, learn_shared_transform
from coreopt.quant.transforms import (
    apply_blocks,
    block_diag,
    random_block_orthogonal,
    right_blocks,
    store_transform,
)

Codes = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

__all__ = [
    "LayerOutcome",
    "MatrixTask",
    "PairTask",
    "cafeq_matrix",
    "cafeq_method",
    "cafeq_shared_transform",
    "cafeq_transform",
    "estimate_loss",
    "get_method",
    "hadamard_method",
    "layer_prior",
    "register_method",
    "registered_methods",
    "rtn_method",
]


@dataclass
class MatrixTask:
    """One weight matrix to quantize (float32, on the compute device)."""

    name: str
    weight: torch.Tensor
    moments: InputMoments | None = None
    seed: int = 0
    transform: torch.Tensor | None = None
    """A block transform ``(k, b, b)`` already learned for this matrix (the byte-budget search
    learns it while pricing the options); ``cafeq`` then uses it instead of learning one."""


@dataclass
class PairTask:
    """A V/O (``kind="vo"``: reader ``W_O``, producer ``W_V``) or Q/K (reader ``W_Q``, producer
    ``W_K``) pair; ``moments`` is the second moment of the producer's input."""

    kind: str
    reader: MatrixTask
    producer: MatrixTask
    n_heads: int
    n_kv_heads: int
    head_dim: int
    moments: InputMoments | None = None


@dataclass
class LayerOutcome:
    """What a method produced for one matrix, with its diagnostics."""

    name: str
    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    transform: torch.Tensor | None
    in_features: int
    proxy_rtn: float
    proxy: float
    rel_error_rtn: float
    rel_error: float
    choice: str
    seconds: float
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    fmt: QuantFormat | None = None
    """The format of the codes (``None``: the configuration's)."""
    transform_scale: torch.Tensor | None = None
    """With an int8 transform (``transform_dtype="int8"``): its row scales ``(k, b)``, and
    ``transform`` holds the dequantized blocks ``q s`` (float32) the codes were fitted to."""

    def effective_weight(self, group_size: int) -> torch.Tensor:
        W = dequantize_codes(self.codes, self.scale, self.zero, group_size, torch.float32)
        W = W[:, : self.in_features]
        return W if self.transform is None else right_blocks(W, self.transform.float())


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def _padded_moments(m: InputMoments | None, n: int, n_pad: int) -> InputMoments | None:
    if m is None or m.is_identity or n_pad == n:
        return m
    d = m.diag if m.diag is not None else torch.ones(n, device=m.low_rank.device)  # type: ignore[union-attr]
    d = torch.cat([d, torch.ones(n_pad - n, dtype=d.dtype, device=d.device)])
    u = None
    if m.low_rank is not None:
        u = torch.cat([m.low_rank, m.low_rank.new_zeros(n_pad - n, m.low_rank.shape[1])])
    return InputMoments(d, u, m.source)


def layer_prior(
    W: torch.Tensor, structural: InputMoments | None, prior: str
) -> InputMoments | None:
    """The input second moment the proxy of ``W`` uses under ``prior`` (normalised, or ``None``)."""
    if prior == "identity":
        return None
    parts: list[InputMoments | None] = []
    if "structure" in prior:
        parts.append(structural if structural is not None else None)
    if "balance" in prior:
        parts.append(balance_moments(W))
    return combine_moments(*parts)


def _proxy(W: torch.Tensor, W_eff: torch.Tensor, m: InputMoments | None) -> float:
    den = float(weighted_sq_error(W, m))
    return float(weighted_sq_error(W - W_eff, m)) / den if den > 0 else 0.0


def _rel(W: torch.Tensor, W_eff: torch.Tensor) -> float:
    den = float(torch.linalg.norm(W))
    return float(torch.linalg.norm(W - W_eff)) / den if den > 0 else 0.0


def _eff(c: Codes, g: int, n: int, T: torch.Tensor | None) -> torch.Tensor:
    W = dequantize_codes(c[0], c[1], c[2], g, torch.float32)[:, :n]
    return W if T is None else right_blocks(W, T)


def _is_diagonal(H: torch.Tensor) -> bool:
    off = H - torch.diag(torch.diagonal(H))
    return bool(off.abs().max() <= 1e-7 * torch.diagonal(H).abs().max().clamp_min(1e-30))


def _round(W: torch.Tensor, H: torch.Tensor | None, fmt: QuantFormat, cfg: QuantizeConfig) -> Codes:
    """Round ``W`` against ``tr(E H Eᵀ)`` (``H = None``: identity)."""
    grid = DEFAULT_SHRINK_GRID if cfg.clip_search else None
    if H is None or _is_diagonal(H) or cfg.rounding == "nearest":
        w = None if H is None else torch.diagonal(H)
        return rtn_fit(W, fmt, weight=w, grid=grid)
    c, s, z = gptq(W, H, fmt, grid=grid)
    return c, s.float(), z.float()


def _pad_hessian(H: torch.Tensor, n_pad: int) -> torch.Tensor:
    """``H`` extended to ``n_pad`` inputs by an identity block: the zero columns appended for the
    group padding are exactly representable and feed no error back into the real ones."""
    n = H.shape[0]
    if n == n_pad:
        return H
    return torch.block_diag(H, torch.eye(n_pad - n, dtype=H.dtype, device=H.device))


def _stored_pair(
    T: torch.Tensor, fmt: QuantFormat, transform_dtype: str = "float16"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``T`` rounded to its stored form (:func:`~coreopt.quant.transforms.store_transform`:
    the format's ``scale_dtype``, or int8 codes with row scales), the exact inverse of the
    rounded blocks, and the row scales (int8 only): what is stored is exactly what the proxy and
    the rounding see."""
    Ts, scale = store_transform(T.float(), transform_dtype, fmt.scale_dtype)
    return Ts.float(), torch.linalg.inv(Ts.double()).float(), scale


def _plain_rtn(W: torch.Tensor, fmt: QuantFormat) -> Codes:
    s, z = minmax_params(W, fmt)
    return quantize_codes(W, s, z, fmt), s, z


def _outcome(
    task: MatrixTask,
    fmt: QuantFormat,
    W: torch.Tensor,
    c: Codes,
    T: torch.Tensor | None,
    m: InputMoments | None,
    choice: str,
    start: float,
    base: Codes,
    note: str = "",
    transform_scale: torch.Tensor | None = None,
) -> LayerOutcome:
    n = W.shape[1]
    g = fmt.group_size
    W_eff = _eff(c, g, n, T)
    W_rtn = _eff(base, g, n, None)
    return LayerOutcome(
        name=task.name,
        codes=c[0],
        scale=c[1],
        zero=c[2],
        transform=T,
        in_features=n,
        proxy_rtn=_proxy(W, W_rtn, m),
        proxy=_proxy(W, W_eff, m),
        rel_error_rtn=_rel(W, W_rtn),
        rel_error=_rel(W, W_eff),
        choice=choice,
        seconds=time.perf_counter() - start,
        note=note,
        fmt=fmt,
        transform_scale=None if T is None else transform_scale,
    )


# ----------------------------------------------------------------------------------------------
# built-in methods
# ----------------------------------------------------------------------------------------------


def _as_matrices(task: MatrixTask | PairTask) -> list[MatrixTask]:
    return [task.reader, task.producer] if isinstance(task, PairTask) else [task]


def rtn_method(task: MatrixTask | PairTask, cfg: QuantizeConfig) -> list[LayerOutcome]:
    """Round to nearest with min-max scales and integer zero points."""
    fmt = cfg.format
    outs = []
    for t in _as_matrices(task):
        start = time.perf_counter()
        W = t.weight.float()
        c = _plain_rtn(pad_columns(W, fmt.group_size), fmt)
        m = layer_prior(W, t.moments, cfg.prior)
        outs.append(_outcome(t, fmt, W, c, None, m, "rtn", start, c))
    return outs


def hadamard_method(task: MatrixTask | PairTask, cfg: QuantizeConfig) -> list[LayerOutcome]:
    """Random block Hadamard input transform (QuaRot-style, block ``cfg.block_size``) + RTN."""
    fmt = cfg.format
    outs = []
    for t in _as_matrices(task):
        start = time.perf_counter()
        W = t.weight.float()
        n = W.shape[1]
        m = layer_prior(W, t.moments, cfg.prior)
        base = _plain_rtn(pad_columns(W, fmt.group_size), fmt)
        b = cfg.block_size
        if n % b:
            outs.append(
                _outcome(
                    t,
                    fmt,
                    W,
                    base,
                    None,
                    m,
                    "rtn",
                    start,
                    base,
                    note=f"no transform: block {b} does not divide {n}",
                )
            )
            continue
        gen = torch.Generator().manual_seed(t.seed)
        T, Tinv, Ts = _stored_pair(
            random_block_orthogonal(n // b, b, kind="hadamard", generator=gen, device=W.device),
            fmt,
            cfg.transform_dtype,
        )
        c = _plain_rtn(pad_columns(right_blocks(W, Tinv), fmt.group_size), fmt)
        outs.append(_outcome(t, fmt, W, c, T, m, "hadamard+rtn", start, base, transform_scale=Ts))
    return outs


def plain_candidate(
    Wp: torch.Tensor,
    n: int,
    S: torch.Tensor | None,
    m: InputMoments | None,
    fmt: QuantFormat,
    cfg: QuantizeConfig,
) -> tuple[float, str, Codes]:
    """The transform-free candidate: ``Wp`` (the weight padded to the group size, ``n`` real
    columns) rounded against the prior's Hessian ``S`` (GPTQ), or to nearest with a range search.
    Returns ``(relative proxy, label, codes)``."""
    c = _round(Wp, S, fmt, cfg)
    if S is not None and cfg.rounding == "gptq" and not _is_diagonal(S):
        label = "gptq"
    else:
        label = "rtn+clip" if cfg.clip_search else "rtn"
    return _proxy(Wp[:, :n], _eff(c, fmt.group_size, n, None), m), label, c


def transform_candidate(
    W: torch.Tensor,
    T: torch.Tensor,
    S: torch.Tensor | None,
    m: InputMoments | None,
    fmt: QuantFormat,
    cfg: QuantizeConfig,
) -> tuple[float, str, Codes, torch.Tensor, torch.Tensor | None]:
    """``W`` with the block transform ``T`` (rounded to its stored form first, in
    ``cfg.transform_dtype``): the stored ``W T_q⁻¹`` is rounded against ``H = T_q Σ T_qᵀ``,
    padded to the group size after the transform. Returns ``(relative proxy, rounding label,
    codes, stored T_q (k, b, b) float32, its int8 row scales (k, b) or None)``."""
    n = W.shape[1]
    g = fmt.group_size
    T, Tinv, Ts = _stored_pair(T, fmt, cfg.transform_dtype)
    Tm = block_diag(T)
    H = Tm @ (S[:n, :n] if S is not None else torch.eye(n, device=W.device)) @ Tm.T
    n_pad = -(-n // g) * g
    c = _round(pad_columns(right_blocks(W, Tinv), g), _pad_hessian(H, n_pad), fmt, cfg)
    if cfg.rounding == "gptq" and not _is_diagonal(H):
        label = "gptq"
    else:
        label = "rtn+clip" if cfg.clip_search else "rtn"
    return _proxy(W, _eff(c, g, n, T), m), label, c, T.contiguous(), Ts


def cafeq_transform(
    W: torch.Tensor,
    m: InputMoments | None,
    fmt: QuantFormat,
    cfg: QuantizeConfig,
    seed: int,
    stop: Callable[[int, torch.Tensor], bool] | None = None,
) -> tuple[torch.Tensor, str]:
    """The block input transform of ``cfg.transform`` (``"learned"`` by :func:`learn_transform`
    from a random block Hadamard, or that Hadamard itself) for ``W``; blocks of
    ``cfg.block_size``. ``stop``: see :func:`learn_transform`. Returns ``(T, label)``."""
    return cafeq_shared_transform([TransformPart(W, fmt, m)], cfg, seed, stop)


def cafeq_shared_transform(
    parts: list[TransformPart],
    cfg: QuantizeConfig,
    seed: int,
    stop: Callable[[int, torch.Tensor], bool] | None = None,
) -> tuple[torch.Tensor, str]:
    """:func:`cafeq_transform` for layers reading the same input: one transform ``(in / b, b, b)``
    (``b = cfg.block_size``) for all the ``parts``, learned on their summed relative proxies by
    :func:`learn_shared_transform` (each part in its own format), or the random block Hadamard.
    Returns ``(T, label)``."""
    n = parts[0].weight.shape[1]
    b = cfg.block_size
    gen = torch.Generator().manual_seed(seed)
    if cfg.transform == "learned":
        fit = learn_shared_transform(
            parts,
            block=b,
            family=cfg.transform_family,
            steps=cfg.steps,
            lr=cfg.lr,
            generator=gen,
            stop=stop,
        )
        return fit.transform, "learned"
    return random_block_orthogonal(
        n // b, b, generator=gen, device=parts[0].weight.device
    ), "hadamard"


def estimate_loss(
    W: torch.Tensor,
    T: torch.Tensor | None,
    m: InputMoments | None,
    fmt: QuantFormat,
    cfg: QuantizeConfig,
    max_rows: int = 256,
) -> float:
    """A quick estimate of the relative proxy of ``W`` stored in ``fmt`` with the block transform
    ``T`` (or none), used to price the options of the byte budget: round-to-nearest of ``W T⁻¹``
    with each group's range searched against the diagonal of ``H = T Σ Tᵀ`` (``method="rtn"``:
    plain min-max). GPTQ, run afterwards on the chosen option, only lowers it.

    Rows are independent in the proxy (``Σ`` acts on the inputs), so at most ``max_rows`` evenly
    spaced rows are used: a ratio estimate of the relative proxy, a few percent off at 256 rows,
    and 6x cheaper on a 1536-row layer."""
    if W.shape[0] > max_rows:
        W = W[torch.linspace(0, W.shape[0] - 1, max_rows, device=W.device).round().long()]
    n = W.shape[1]
    g = fmt.group_size
    d = torch.ones(n, device=W.device)
    if m is not None and m.diag is not None:
        d = m.diag.to(W)
    U = None if m is None else m.low_rank
    if T is None:
        Tq, Wt = None, W
        w = d + ((U.to(W) ** 2).sum(1) if U is not None else 0.0)
    else:
        Tq, Tinv, _ = _stored_pair(T, fmt, cfg.transform_dtype)
        Wt = right_blocks(W, Tinv)
        w = apply_blocks(d, Tq**2)  # diag(T diag(d) Tᵀ)
        if U is not None:
            w = w + (apply_blocks(U.to(W).T, Tq) ** 2).sum(0)
    plain = cfg.method == "rtn"
    grid = DEFAULT_SHRINK_GRID if cfg.clip_search and not plain else None
    Wp = pad_columns(Wt, g)
    wp = torch.cat([w, torch.ones(Wp.shape[1] - n, device=W.device)])
    c = rtn_fit(Wp, fmt, weight=None if plain else wp, grid=grid)
    return _proxy(W, _eff(c, g, n, Tq), m)


def _plain_problem(
    t: MatrixTask, cfg: QuantizeConfig
) -> tuple[torch.Tensor, InputMoments | None, torch.Tensor | None]:
    """``(Wp, m, S)``: the weight padded to the group size, its prior and the prior's dense
    Hessian (padded; ``None`` for the identity)."""
    W = t.weight.float()
    n = W.shape[1]
    Wp = pad_columns(W, cfg.format.group_size)
    m = layer_prior(W, t.moments, cfg.prior)
    m_pad = _padded_moments(m, n, Wp.shape[1])
    S = None if m_pad is None or m_pad.is_identity else m_pad.dense().to(W)
    return Wp, m, S


def cafeq_matrix(t: MatrixTask, cfg: QuantizeConfig) -> LayerOutcome:
    """One matrix: learned (or Hadamard) block transform + adaptive rounding, against RTN."""
    start = time.perf_counter()
    fmt = cfg.format
    W = t.weight.float()
    n = W.shape[1]
    Wp, m, S = _plain_problem(t, cfg)
    base = _plain_rtn(Wp, fmt)
    cands: list[tuple[float, str, Codes, torch.Tensor | None, torch.Tensor | None]] = []
    loss0, label0, c0 = plain_candidate(Wp, n, S, m, fmt, cfg)
    cands.append((loss0, label0, c0, None, None))
    b = cfg.block_size
    note = ""
    if t.transform is not None:
        T0, label = t.transform.to(W), "learned" if cfg.transform == "learned" else "hadamard"
    elif cfg.transform != "identity" and n % b == 0:
        T0, label = cafeq_transform(W, m, fmt, cfg, t.seed)
    else:
        T0, label = None, ""
        if cfg.transform != "identity":
            note = f"no transform: block {b} does not divide in_features={n}"
    if T0 is not None:
        loss1, rounding, c1, T1, S1 = transform_candidate(W, T0, S, m, fmt, cfg)
        cands.append((loss1, f"{label}+{rounding}", c1, T1, S1))
    if cfg.select:
        _, choice, c, T_, S_ = min(cands, key=lambda x: x[0])
    else:
        _loss, choice, c, T_, S_ = cands[-1]
    return _outcome(t, fmt, W, c, T_, m, choice, start, base, note, S_)


def cafeq_method(task: MatrixTask | PairTask, cfg: QuantizeConfig) -> list[LayerOutcome]:
    """CafeQ: single matrices via :func:`cafeq_matrix`; a V/O or Q/K pair additionally tries
    alternating rounding of the pair and keeps whichever has the lower product proxy."""
    if isinstance(task, MatrixTask):
        return [cafeq_matrix(task, cfg)]
    start = time.perf_counter()
    fmt = cfg.format
    g = fmt.group_size
    singles = [cafeq_matrix(task.reader, cfg), cafeq_matrix(task.producer, cfg)]
    if cfg.rounding != "gptq":
        return singles
    R, P = task.reader.weight.float(), task.producer.weight.float()
    if R.shape[1] % g or P.shape[1] % g:
        return singles
    m = layer_prior(P, task.moments, cfg.prior)
    prob = PairProblem(task.kind, R, P, task.n_heads, task.n_kv_heads, task.head_dim, m)  # type: ignore[arg-type]
    norm = float(prob.loss(torch.zeros_like(R), torch.zeros_like(P))) or 1.0
    single_loss = (
        float(prob.loss(singles[0].effective_weight(g), singles[1].effective_weight(g))) / norm
    )
    alt = alternating_rounding(prob, fmt, grid=DEFAULT_SHRINK_GRID if cfg.clip_search else None)
    note = (
        f"pair {task.kind}: product proxy rtn {alt.initial_loss:.4g}, "
        f"per-matrix {single_loss:.4g}, alternating {alt.loss:.4g}"
    )
    if alt.loss >= single_loss:
        for o in singles:
            o.note = (o.note + "; " if o.note else "") + note
        return singles
    outs = []
    for t, c, o in (
        (task.reader, alt.reader, singles[0]),
        (task.producer, alt.producer, singles[1]),
    ):
        W = t.weight.float()
        mm = layer_prior(W, t.moments, cfg.prior)
        base = _plain_rtn(W, fmt)
        out = _outcome(
            t,
            fmt,
            W,
            (c[0], c[1].float(), c[2].float()),
            None,
            mm,
            f"pair-{task.kind}+alternating",
            start,
            base,
            note,
        )
        out.seconds = (time.perf_counter() - start) / 2 + o.seconds
        outs.append(out)
    return outs


register_method("rtn", rtn_method)
register_method("hadamard", hadamard_method)
register_method("cafeq", cafeq_method)
