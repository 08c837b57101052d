"""Logits processors: temperature, antidistillation sampling, fingerprinting, and KGW.

Every processor maps the teacher's next-token logits ``z_T`` to the logits to sample from, with
the temperature ``τ`` applied *inside* the processor, so the same object works in
:func:`coreopt.sampling.generate` and in ``transformers``' ``model.generate(...,
logits_processor=[proc], do_sample=True, temperature=1.0, top_k=0)``. Two orders are offered:

* ``order="paper"`` (default): ``log softmax(z_T)/τ + λ·A`` — Algorithm 1 of the papers: the
  adjustment ``A`` is added after the temperature;
* ``order="reference"``: ``(z_T + λ·A)/τ`` — the released code, which adds ``λ·A`` in a
  ``transformers`` logits processor that runs before the temperature warper, so the effective
  weight of the adjustment is ``λ/τ``. (The released ADS code also applies top-p 0.95 afterwards:
  pass ``top_p=0.95`` to either ``generate``.)

Adjustments: none (:class:`TemperatureProcessor`), the finite-difference ``Δ`` of a perturbed
proxy (:class:`AntidistillationLogitsProcessor`), the fingerprint term ``q_t(1[t∈S] − q(S))`` of
an unperturbed proxy (:class:`FingerprintLogitsProcessor`), or the KGW green-list bias added by
``transformers.WatermarkLogitsProcessor`` (:class:`KGWLogitsProcessor`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from coreopt.errors import NonFiniteError
from coreopt.sampling._checks import check_choice, check_real, require_transformers
from coreopt.sampling._forward import CachedForward
from coreopt.sampling._models import (
    check_same_tokenizer,
    config_pad_id,
    input_vocab_size,
    output_vocab_size,
)
from coreopt.sampling.errors import VocabularyMismatchError
from coreopt.sampling.gradient import load_gradient, match_gradient
from coreopt.sampling.greenlist import HashGreenList, KGWGreenList, seed_ngrams, special_ids_of
from coreopt.sampling.perturb import (
    InPlacePerturbation,
    SignedBatchPerturbation,
    UnsupportedModuleError,
    perturbed_copy,
)
from coreopt.sampling.traces import prompt_mask

logger = logging.getLogger("coreopt.sampling")

Order = Literal["paper", "reference"]
ProxyMode = Literal["auto", "batched", "inplace", "copies"]

_LogitsProcessor: Any = require_transformers().LogitsProcessor


@dataclass(frozen=True)
class AntidistillationConfig:
    """Settings of antidistillation sampling (Savani, Trockman et al., NeurIPS 2025).

    Attributes:
        lam: ``λ ≥ 0``, weight of the finite-difference term (the paper sweeps ``[0, 0.15]``
            with ``order="reference"``; ``λ = 0`` is plain temperature sampling).
        eps: ``ε > 0``, the finite-difference step along the gradient (``1e-2`` in the paper).
        temperature: ``τ > 0`` applied to the teacher's log-probabilities.
        order: ``"paper"`` (``λΔ`` after the temperature) or ``"reference"`` (before it).
        proxy_mode: how the two perturbed proxies ``θ_P ± εg`` are run. ``"batched"``: one
            forward of the doubled batch through the one proxy, rows ``[:B]`` at ``+εg`` and rows
            ``[B:]`` at ``−εg`` through forward hooks on its linear layers, embeddings and norms
            (:class:`~coreopt.sampling.perturb.SignedBatchPerturbation`; memory: the proxy plus
            ``g``). ``"inplace"`` perturbs the one proxy in place module by module around each
            of its two forwards (memory: the proxy plus ``g``; slowest). ``"copies"`` builds two
            perturbed deep copies once (memory: two more proxies; fastest). ``"auto"``
            (default) picks ``"copies"`` when two more proxies fit in a quarter of the free
            memory (CUDA ``mem_get_info``, CPU ``MemAvailable``), else ``"batched"`` when every
            module owning a perturbed parameter supports it, else ``"inplace"`` (timings in
            ``benchmarks/sampling.py``).
    """

    lam: float
    eps: float = 1e-2
    temperature: float = 1.0
    order: Order = "paper"
    proxy_mode: ProxyMode = "auto"

    def __post_init__(self) -> None:
        check_real("lam", self.lam, low=0.0)
        check_real("eps", self.eps, low=0.0, strict=True)
        check_real("temperature", self.temperature, low=0.0, strict=True)
        check_choice("order", self.order, ("paper", "reference"))
        check_choice("proxy_mode", self.proxy_mode, ("auto", "batched", "inplace", "copies"))


@dataclass(frozen=True)
class FingerprintConfig:
    """Settings of antidistillation fingerprinting (Xu, Kirchenbauer, Savani et al., ICML 2026).

    Attributes:
        key: the secret that seeds the green lists (int, str or bytes).
        lam: ``λ ≥ 0``, weight of the fingerprint term ``q_t(1[t∈S] − q(S))`` (at most 1/4 in
            absolute value, so useful ``λ`` are larger than for ADS: a few units).
        gamma: probability that an eligible token is green (0.5).
        context_width: ``w``, previous tokens seeding the green list (2).
        temperature: ``τ > 0`` applied to the teacher's log-probabilities.
        order: ``"paper"`` or ``"reference"`` (see the module docstring).
    """

    key: int | str | bytes
    lam: float
    gamma: float = 0.5
    context_width: int = 2
    temperature: float = 1.0
    order: Order = "paper"

    def __post_init__(self) -> None:
        check_real("lam", self.lam, low=0.0)
        check_real("temperature", self.temperature, low=0.0, strict=True)
        check_choice("order", self.order, ("paper", "reference"))


class _SamplingProcessor(_LogitsProcessor):
    """Shared machinery: temperature, order, the prompt mask, and bookkeeping."""

    temperature: float
    order: str
    lam: float

    def __init__(self, *, pad_token_id: int | None = None, model: Any = None) -> None:
        if pad_token_id is not None and (
            not isinstance(pad_token_id, int) or isinstance(pad_token_id, bool)
        ):
            raise TypeError(f"pad_token_id must be an int or None, got {pad_token_id!r}")
        # Left padding inside transformers' generate: the processor sees only input_ids, so it
        # needs the pad id; without one it would treat pads as context.
        self.pad_token_id = pad_token_id if pad_token_id is not None else config_pad_id(model)
        self._prompt_mask: torch.Tensor | None = None
        self._warned_no_pad = False
        self.calls = 0

    def begin(self, attention_mask: torch.Tensor | None) -> None:
        """Start a new batch: forget caches; use ``attention_mask`` for the next prompt.

        :func:`coreopt.sampling.generate` calls this. Inside ``transformers``' ``generate`` the
        processor infers the mask of left-padded prompts from ``pad_token_id`` (given, or read
        from the proxy's config: its pad id, else its end-of-sequence id, as ``generate`` pads);
        call ``begin(attention_mask)`` before ``generate`` when the prompts were padded with
        another id.
        """
        self._prompt_mask = attention_mask
        self.reset()

    def reset(self) -> None:
        """Forget every KV cache (subclasses with proxies override)."""

    def _mask_for(self, input_ids: torch.Tensor) -> torch.Tensor:
        m = self._prompt_mask
        if m is not None and m.shape == input_ids.shape:
            return m.to(input_ids.device)
        if self.pad_token_id is None and input_ids.shape[0] > 1 and not self._warned_no_pad:
            self._warned_no_pad = True
            logger.warning(
                "%s: no pad id known (none given, none in the proxy's config) and no "
                "begin(attention_mask): a left-padded batch would be read with its pads as "
                "context; pass pad_token_id=",
                type(self).__name__,
            )
        return prompt_mask(input_ids, self.pad_token_id)

    def adjustment(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor | None:
        """``(B, V)`` float32 adjustment ``A`` (``None``: no adjustment)."""
        return None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """The logits to sample from (softmax of them is the sampling distribution)."""
        self.calls += 1
        z = scores.float()
        adj = self.adjustment(input_ids, z) if self.lam != 0 else None
        if self.order == "paper":
            out = torch.log_softmax(z, dim=-1) / self.temperature
            return out if adj is None else out + self.lam * adj
        out = z if adj is None else z + self.lam * adj
        return out / self.temperature


class TemperatureProcessor(_SamplingProcessor):
    """Plain temperature sampling, ``softmax(log p_T / τ)``: the baseline.

    Args:
        temperature: ``τ > 0``.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = check_real("temperature", temperature, low=0.0, strict=True)
        self.order = "paper"
        self.lam = 0.0

    def __repr__(self) -> str:
        return f"TemperatureProcessor(temperature={self.temperature:g})"


def _check_vocab(
    proxy_width: int, teacher_width: int, vocab_size: int | None, who: str
) -> int | None:
    if vocab_size is not None:
        if not 0 < vocab_size <= min(proxy_width, teacher_width):
            raise ValueError(
                f"vocab_size={vocab_size} must be in [1, min(proxy {proxy_width}, teacher "
                f"{teacher_width})]"
            )
        return int(vocab_size)
    if proxy_width != teacher_width:
        raise VocabularyMismatchError(
            f"the teacher's scores have {teacher_width} entries but the {who}'s logits have "
            f"{proxy_width}. The proxy must share the teacher's tokenizer; if both embedding "
            f"tables are padded versions of one tokenizer of N tokens, pass vocab_size=N (the "
            f"first N ids are matched and the rest of the teacher's ids get no adjustment)"
        )
    return None


def _fit_width(adj: torch.Tensor, width: int, shared: int | None) -> torch.Tensor:
    if shared is None:
        return adj
    out = adj.new_zeros(adj.shape[0], width)
    out[:, :shared] = adj[:, :shared]
    return out


class AntidistillationLogitsProcessor(_SamplingProcessor):
    """Antidistillation sampling: ``softmax(log p_T/τ + λΔ)`` with a perturbed proxy student.

    ``Δ(·) = [log p_P(·; θ_P + εg) − log p_P(·; θ_P − εg)] / (2ε)`` over the whole vocabulary,
    where ``g`` is the gradient of the proxy's downstream loss
    (:func:`~coreopt.sampling.downstream_gradient`). ``Δ(t) ≈ ⟨∇_θ log p_P(t), g⟩``: to first
    order, one gradient step on token ``t`` raises the proxy's downstream loss by ``η·Δ(t)``, so
    ``λ > 0`` favours tokens that teach a student less. Each call runs the proxy twice (at
    ``θ ± εg``), each with its own KV cache; only the new tokens are fed after the first call.

    Use it in :func:`coreopt.sampling.generate`, or in ``transformers``::

        proc = AntidistillationLogitsProcessor(proxy, "grad.safetensors", lam=0.1)
        teacher.generate(**inputs, logits_processor=[proc], do_sample=True,
                         temperature=1.0, top_k=0, top_p=1.0)

    (``temperature=1.0`` there: the processor applies its own ``τ``.)

    Args:
        proxy: the proxy student, a causal LM with the teacher's tokenizer.
        gradient: ``{name: tensor}`` from :func:`~coreopt.sampling.downstream_gradient`, or the
            path of a file written by :func:`~coreopt.sampling.save_gradient`.
        lam, eps, temperature, order, proxy_mode: see :class:`AntidistillationConfig`.
        config: an :class:`AntidistillationConfig` instead of the keywords.
        vocab_size: the number of shared token ids when teacher and proxy have padded embedding
            tables of different widths (default: the widths must be equal).
        pad_token_id: the pad id of left-padded prompts (to infer their attention mask inside
            ``transformers``' ``generate``; :func:`~coreopt.sampling.generate` passes the mask).
            Default: the proxy config's pad id, else its end-of-sequence id (what ``generate``
            pads with when no pad id is set). Only *leading* pads are masked.
        tokenizer, proxy_tokenizer: when both are given they must be identical.

    Raises:
        ValueError: ``λ < 0``, ``ε ≤ 0`` or ``τ ≤ 0``.
        FileNotFoundError: ``gradient`` is a path that does not exist.
        GradientMismatchError: the gradient does not fit the proxy.
        VocabularyMismatchError: the tokenizers differ, or (at the first call) the teacher's and
            the proxy's vocabularies have different sizes.
        NonFiniteError: ``Δ`` holds NaN or infinity (at any call).
    """

    def __init__(
        self,
        proxy: torch.nn.Module,
        gradient: Mapping[str, torch.Tensor] | str | os.PathLike[str],
        lam: float | None = None,
        *,
        eps: float = 1e-2,
        temperature: float = 1.0,
        order: Order = "paper",
        proxy_mode: ProxyMode = "auto",
        config: AntidistillationConfig | None = None,
        vocab_size: int | None = None,
        pad_token_id: int | None = None,
        tokenizer: Any = None,
        proxy_tokenizer: Any = None,
    ) -> None:
        super().__init__(pad_token_id=pad_token_id, model=proxy)
        if config is None:
            if lam is None:
                raise TypeError("pass lam= (or config=AntidistillationConfig(...))")
            config = AntidistillationConfig(lam, eps, temperature, order, proxy_mode)
        elif lam is not None:
            raise TypeError("pass either lam= and its keywords or config=, not both")
        if tokenizer is not None and proxy_tokenizer is not None:
            check_same_tokenizer(tokenizer, proxy_tokenizer)
        self.config = config
        self.lam = float(config.lam)
        self.temperature = float(config.temperature)
        self.order = config.order
        self.eps = float(config.eps)
        self.proxy = proxy.eval()
        if isinstance(gradient, str | os.PathLike):
            grads = load_gradient(gradient, proxy)
        else:
            grads = match_gradient(proxy, gradient)
        self.vocab_size = vocab_size
        self._proxy_width = output_vocab_size(proxy)
        self._proxy_input = input_vocab_size(proxy)
        mode, signed = _resolve_proxy_mode(config.proxy_mode, proxy, grads)
        self.proxy_mode: str = mode
        self.gradient: dict[str, torch.Tensor] | None = grads
        self._both: CachedForward | None = None
        self._signs = torch.empty(0)
        eps_ = self.eps
        if signed is not None:
            self._both = CachedForward(proxy, runner=lambda fn: signed.run(self._signs, fn))
            self._plus = self._minus = self._both
        elif mode == "inplace":
            pert = InPlacePerturbation(proxy, grads)
            self._plus = CachedForward(proxy, runner=lambda fn: pert.run(eps_, fn))
            self._minus = CachedForward(proxy, runner=lambda fn: pert.run(-eps_, fn))
        else:
            self._plus = CachedForward(perturbed_copy(proxy, grads, self.eps))
            self._minus = CachedForward(perturbed_copy(proxy, grads, -self.eps))
            self.gradient = None  # baked into the copies
        self.last_delta: torch.Tensor | None = None

    def __repr__(self) -> str:
        c = self.config
        return (
            f"AntidistillationLogitsProcessor(lam={c.lam:g}, eps={c.eps:g}, "
            f"temperature={c.temperature:g}, order={c.order!r}, proxy_mode={self.proxy_mode!r})"
        )

    @property
    def proxy_forwards(self) -> int:
        """Proxy forward passes run so far (two per call; one of twice the batch when
        ``proxy_mode="batched"``)."""
        if self._both is not None:
            return self._both.forwards
        return self._plus.forwards + self._minus.forwards

    def reset(self) -> None:
        self._plus.reset()
        self._minus.reset()

    def delta(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``Δ`` of the next token after ``input_ids``: ``(B, V_proxy)`` float32 (cached)."""
        top = int(input_ids.max())
        if top >= self._proxy_input:
            raise VocabularyMismatchError(
                f"token id {top} is outside the proxy's embedding table ({self._proxy_input} "
                "rows): the proxy must share the teacher's tokenizer"
            )
        mask = attention_mask if attention_mask is not None else self._mask_for(input_ids)
        if self._both is not None:
            B = input_ids.shape[0]
            eps = torch.full((B,), self.eps, device=input_ids.device)
            self._signs = torch.cat([eps, -eps])
            logits = self._both(torch.cat([input_ids, input_ids]), torch.cat([mask, mask]))
            plus = torch.log_softmax(logits[:B], dim=-1)
            minus = torch.log_softmax(logits[B:], dim=-1)
        else:
            plus = torch.log_softmax(self._plus(input_ids, mask), dim=-1)
            minus = torch.log_softmax(self._minus(input_ids, mask), dim=-1)
        delta = (plus - minus) / (2 * self.eps)
        if not bool(torch.isfinite(delta).all()):
            bad = int((~torch.isfinite(delta)).sum())
            raise NonFiniteError(
                f"the finite difference Δ holds {bad} non-finite value(s) at sequence length "
                f"{input_ids.shape[1]}: the perturbed proxy produced NaN/inf logits (is eps="
                f"{self.eps:g} too large for this gradient, or the proxy in float16/bfloat16?)"
            )
        self.last_delta = delta
        return delta

    def adjustment(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        shared = _check_vocab(self._proxy_width, scores.shape[-1], self.vocab_size, "proxy")
        return _fit_width(self.delta(input_ids), scores.shape[-1], shared)


def _free_memory_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` (CUDA: ``mem_get_info``; CPU: ``MemAvailable``), or ``None``."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _resolve_proxy_mode(
    mode: str, proxy: torch.nn.Module, grads: dict[str, torch.Tensor]
) -> tuple[str, SignedBatchPerturbation | None]:
    """The proxy mode to run (``"auto"`` resolved) and, for ``"batched"``, its perturbation.

    ``"auto"``: ``"copies"`` (fastest: two plain forwards, no per-step work) when two more
    proxies fit in a quarter of the free memory; otherwise ``"batched"`` (one proxy; faster than
    ``"inplace"``) when every module owning a perturbed parameter supports it; else
    ``"inplace"``.
    """
    if mode == "auto":
        size = sum(p.numel() * p.element_size() for p in proxy.parameters())
        device = next(iter(proxy.parameters())).device
        free = _free_memory_bytes(device)
        if free is not None and 2 * size <= free // 4:
            logger.info("proxy_mode='auto' chose 'copies' (proxy %d bytes, free %d)", size, free)
            return "copies", None
    if mode in ("batched", "auto"):
        try:
            return "batched", SignedBatchPerturbation(proxy, grads)
        except UnsupportedModuleError as exc:
            if mode == "batched":
                raise
            logger.info("proxy_mode='auto' chose 'inplace': not 'batched' (%s)", exc)
            return "inplace", None
    return mode, None


class FingerprintLogitsProcessor(_SamplingProcessor):
    """Antidistillation fingerprinting: ``softmax(log p_T/τ + λ·q_t(1[t∈S] − q(S)))``.

    ``q`` is the proxy student's next-token distribution (one forward, no gradient, its own KV
    cache) and ``S`` the green list of the context's last ``w`` tokens
    (:class:`~coreopt.sampling.HashGreenList`). ``q_t(1[t∈S] − q(S)) = ∂q(S)/∂z_t``: the teacher's
    logits move along the direction that most raises the proxy's green mass, which a student
    trained on the traces inherits. Rows where the teacher's argmax is end-of-sequence are left
    unperturbed (the fingerprint must not change when the teacher stops).

    Args:
        proxy: the proxy student (teacher's tokenizer).
        key, lam, gamma, context_width, temperature, order: see :class:`FingerprintConfig`.
        config: a :class:`FingerprintConfig` instead of the keywords.
        eos_token_id: end-of-sequence id(s) (default: the proxy config's).
        special_token_ids: ids never green (default: the tokenizer's special ids when
            ``tokenizer`` is given, else the proxy config's bos/eos/pad ids).
        tokenizer: the teacher's tokenizer (for the special ids).
        vocab_size, pad_token_id: as for :class:`AntidistillationLogitsProcessor`.
    """

    def __init__(
        self,
        proxy: torch.nn.Module,
        key: int | str | bytes | None = None,
        lam: float | None = None,
        *,
        gamma: float = 0.5,
        context_width: int = 2,
        temperature: float = 1.0,
        order: Order = "paper",
        config: FingerprintConfig | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        special_token_ids: Sequence[int] | None = None,
        tokenizer: Any = None,
        vocab_size: int | None = None,
        pad_token_id: int | None = None,
    ) -> None:
        super().__init__(pad_token_id=pad_token_id, model=proxy)
        if config is None:
            if key is None or lam is None:
                raise TypeError("pass key= and lam= (or config=FingerprintConfig(...))")
            config = FingerprintConfig(key, lam, gamma, context_width, temperature, order)
        self.config = config
        self.lam = float(config.lam)
        self.temperature = float(config.temperature)
        self.order = config.order
        self.proxy = proxy.eval()
        self.vocab_size = vocab_size
        self._proxy_width = output_vocab_size(proxy)
        self._proxy_input = input_vocab_size(proxy)
        if special_token_ids is None:
            special_token_ids = special_ids_of(tokenizer, None if tokenizer is not None else proxy)
        width = vocab_size or self._proxy_width
        self.green_list = HashGreenList(
            config.key,
            width,
            gamma=config.gamma,
            context_width=config.context_width,
            special_token_ids=tuple(t for t in special_token_ids if t < width),
        )
        if eos_token_id is None:
            eos_token_id = getattr(getattr(proxy, "config", None), "eos_token_id", None)
        eos = (
            []
            if eos_token_id is None
            else ([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id))
        )
        self.eos_token_ids = torch.tensor(eos, dtype=torch.long)
        self._proxy = CachedForward(proxy)
        self.last_green_mass: torch.Tensor | None = None

    def __repr__(self) -> str:
        c = self.config
        return (
            f"FingerprintLogitsProcessor(lam={c.lam:g}, gamma={c.gamma:g}, "
            f"context_width={c.context_width}, temperature={c.temperature:g}, order={c.order!r})"
        )

    @property
    def proxy_forwards(self) -> int:
        return self._proxy.forwards

    def reset(self) -> None:
        self._proxy.reset()

    def adjustment(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        shared = _check_vocab(self._proxy_width, scores.shape[-1], self.vocab_size, "proxy")
        top = int(input_ids.max())
        if top >= self._proxy_input:
            raise VocabularyMismatchError(
                f"token id {top} is outside the proxy's embedding table ({self._proxy_input} rows)"
            )
        q = torch.softmax(self._proxy(input_ids, self._mask_for(input_ids)), dim=-1)
        width = self.green_list.vocab_size
        q = q[:, :width]
        green = self.green_list.mask(seed_ngrams(input_ids, self.green_list.context_width))
        green = green.to(q.device, q.dtype)
        q_s = (q * green).sum(-1, keepdim=True)
        self.last_green_mass = q_s[:, 0]
        adj = q * (green - q_s)
        if self.eos_token_ids.numel():
            top_tok = scores.argmax(-1)
            stop = torch.isin(top_tok, self.eos_token_ids.to(top_tok.device))
            adj = torch.where(stop[:, None], torch.zeros_like(adj), adj)
        if not bool(torch.isfinite(adj).all()):
            raise NonFiniteError(
                "the fingerprint adjustment holds NaN/inf (non-finite proxy logits)"
            )
        return _fit_width(adj, scores.shape[-1], shared)


class KGWLogitsProcessor(_SamplingProcessor):
    """The red/green-list watermark (Kirchenbauer et al.): a constant bias on green tokens.

    ``softmax(log p_T/τ + δ·1[t ∈ S])``. By default ``S`` is the list of ``⌊γV⌋`` tokens seeded by
    the previous token and the bias is added by ``transformers.WatermarkLogitsProcessor`` itself
    (through :class:`~coreopt.sampling.KGWGreenList`), so texts it writes are also detected by
    ``transformers.WatermarkDetector`` with the same settings. With ``green_list=`` (for example
    the :class:`~coreopt.sampling.HashGreenList` of a fingerprint) the same constant bias is put
    on that list instead: the baseline of the fingerprinting paper, which differs from
    fingerprinting only in the shape of the adjustment (transformers' ``lefthash`` scheme seeds
    on one token, whatever its ``context_width``).

    Args:
        vocab_size: the teacher's vocabulary size.
        bias: ``δ`` (transformers' default 2.0).
        gamma: green-list ratio (transformers' default 0.25; ignored with ``green_list``).
        key: transformers' ``hashing_key`` (ignored with ``green_list``).
        temperature, order: as for the other processors.
        device: where transformers draws its permutations.
        green_list: use this green list instead of transformers'.
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        bias: float = 2.0,
        gamma: float = 0.25,
        key: int = 15485863,
        temperature: float = 1.0,
        order: Order = "paper",
        device: Any = "cpu",
        green_list: HashGreenList | None = None,
    ) -> None:
        super().__init__()
        check_real("bias", bias, low=0.0)
        self.temperature = check_real("temperature", temperature, low=0.0, strict=True)
        self.order = check_choice("order", order, ("paper", "reference"))
        self.lam = float(bias)
        self.green_list: HashGreenList | KGWGreenList
        if green_list is not None:
            if green_list.vocab_size != vocab_size:
                raise VocabularyMismatchError(
                    f"green_list covers {green_list.vocab_size} tokens, not vocab_size={vocab_size}"
                )
            self.green_list = green_list
            self._hf = None
        else:
            kgw = KGWGreenList(vocab_size, gamma=gamma, key=key, bias=bias, device=device)
            self.green_list = kgw
            self._hf = kgw.processor

    def __repr__(self) -> str:
        g = self.green_list
        return f"KGWLogitsProcessor(bias={self.lam:g}, gamma={g.gamma:.4g}, green_list={g!r})"

    def adjustment(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        g = self.green_list
        return g.mask(seed_ngrams(input_ids, g.context_width)).to(scores.device, scores.dtype)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if scores.shape[-1] != self.green_list.vocab_size:
            raise VocabularyMismatchError(
                f"the scores have {scores.shape[-1]} entries but the KGW processor was built for "
                f"{self.green_list.vocab_size}"
            )
        if self._hf is None:
            return super().__call__(input_ids, scores)
        self.calls += 1
        z = scores.float()
        if self.order == "paper":
            return self._hf(input_ids, torch.log_softmax(z, dim=-1) / self.temperature)
        return self._hf(input_ids, z) / self.temperature
