"""The downstream gradient ``g = ∇ℓ(θ_P)`` of antidistillation sampling, and its file format.

``ℓ`` is the proxy student's mean negative log-likelihood of the *completion* tokens of a holdout
set of the teacher's own traces (prompt tokens masked out). It is computed once, offline, and
saved with ``safetensors`` so the sampler can be started many times without recomputing it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from coreopt.sampling._models import input_vocab_size, model_device
from coreopt.sampling.errors import GradientMismatchError
from coreopt.sampling.traces import IGNORE_INDEX, TraceLike, as_traces, pad_right

logger = logging.getLogger("coreopt.sampling")

GRADIENT_FORMAT = "coreopt.sampling.downstream_gradient/1"
"""The ``format`` metadata entry of gradient files written by :func:`save_gradient`."""


def completion_labels(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_lengths: torch.Tensor
) -> torch.Tensor:
    """Labels of a right-padded batch: token ids on completion positions, ``-100`` elsewhere."""
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    keep = (positions[None, :] >= prompt_lengths[:, None]) & attention_mask.bool()
    return torch.where(keep, input_ids, torch.full_like(input_ids, IGNORE_INDEX))


def completion_nll(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    *,
    reduction: str = "sum",
) -> torch.Tensor:
    """Negative log-likelihood (float32) of the labelled tokens, each predicted from its prefix.

    Args:
        model: a causal LM.
        input_ids, attention_mask: a right-padded batch ``(B, T)``.
        labels: ``(B, T)`` token ids to score, ``-100`` where nothing is scored.
        reduction: ``"sum"`` over scored tokens, ``"mean"`` over scored tokens, or ``"none"``
            (a ``(B, T - 1)`` tensor aligned with ``labels[:, 1:]``).
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    logits = logits[:, :-1].float()
    target = labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        target.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(target.shape)
    if reduction == "none":
        return nll
    total = nll.sum()
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / (target != IGNORE_INDEX).sum().clamp(min=1)
    raise ValueError(f"reduction={reduction!r}; expected 'sum', 'mean' or 'none'")


@contextlib.contextmanager
def _grad_mode(model: torch.nn.Module) -> Iterator[list[tuple[str, torch.nn.Parameter]]]:
    """Eval mode and ``requires_grad`` on every floating parameter; both restored afterwards."""
    was_training = model.training
    named = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
    flags = [p.requires_grad for _, p in named]
    grads = [p.grad for _, p in named]
    model.eval()
    for _, p in named:
        p.requires_grad_(True)
        p.grad = None
    try:
        yield named
    finally:
        for (_, p), flag, g in zip(named, flags, grads, strict=True):
            p.requires_grad_(flag)
            p.grad = g
        model.train(was_training)


def downstream_gradient(
    proxy: torch.nn.Module,
    traces: Iterable[TraceLike],
    *,
    batch_size: int = 8,
    pad_token_id: int = 0,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Gradient of the proxy's mean completion-only NLL on a holdout set of teacher traces.

    ``ℓ(θ) = (1/N) Σ_traces Σ_{completion tokens t} -log p(t | prefix; θ)`` with ``N`` the total
    number of completion tokens; ``g = ∇ℓ(θ_P)``. The prompt tokens are context only. Batches are
    run in eval mode (no dropout); each batch's gradient of its *summed* NLL is added into float32
    accumulators, and the sum is divided by ``N`` at the end, so the result does not depend on the
    batch size and is accumulated in float32 whatever the proxy's dtype. The proxy's parameters,
    ``requires_grad`` flags, ``.grad`` fields and train/eval mode are left as they were.

    Args:
        proxy: the proxy student, a ``transformers`` causal LM (any module whose call with
            ``input_ids`` and ``attention_mask`` returns ``.logits``).
        traces: the holdout traces: :class:`~coreopt.sampling.Trace` objects or
            ``(prompt_ids, completion_ids)`` pairs, in the proxy's tokenization.
        batch_size: traces per forward/backward pass.
        pad_token_id: id used to right-pad batches (masked out; any valid id works).
        progress: show a ``tqdm`` progress bar over batches.

    Returns:
        ``{parameter name: float32 gradient}`` for every floating-point parameter (names as in
        ``proxy.named_parameters()``; a tied weight appears once), on the proxy's device.

    Raises:
        ValueError: no trace has a completion token, or a token id is outside the proxy's
            embedding table.
    """
    items = as_traces(traces)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    items = [t for t in items if t.completion]
    if not items:
        raise ValueError("traces hold no completion token: nothing to differentiate")
    vocab = input_vocab_size(proxy)
    top = max(max(t.ids) for t in items)
    if top >= vocab:
        raise ValueError(
            f"traces hold token id {top} but the proxy's embedding table has {vocab} rows; "
            "tokenize the traces with the proxy's tokenizer"
        )
    if not 0 <= pad_token_id < vocab:
        raise ValueError(f"pad_token_id={pad_token_id} is outside the proxy's {vocab} tokens")
    device = model_device(proxy)
    total_tokens = sum(len(t.completion) for t in items)
    batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    with _grad_mode(proxy) as named:
        acc = [torch.zeros_like(p, dtype=torch.float32) for _, p in named]
        bar = tqdm(batches, desc="downstream gradient", unit="batch", disable=not progress)
        for batch in bar:
            ids, mask = pad_right([t.ids for t in batch], pad_token_id, device=device)
            plen = torch.tensor([len(t.prompt) for t in batch], device=device)
            labels = completion_labels(ids, mask, plen)
            loss = completion_nll(proxy, ids, mask, labels, reduction="sum")
            loss.backward()
            with torch.no_grad():
                for a, (_, p) in zip(acc, named, strict=True):
                    if p.grad is not None:
                        a.add_(p.grad.float())
                        p.grad = None
            bar.set_postfix(nll=f"{loss.item() / max(1, int((labels[:, 1:] >= 0).sum())):.3f}")
    scale = 1.0 / total_tokens
    out = {name: a.mul_(scale) for a, (name, _) in zip(acc, named, strict=True)}
    logger.info(
        "downstream gradient over %d traces (%d completion tokens), |g| = %.3e",
        len(items),
        total_tokens,
        gradient_norm(out),
    )
    return out


def gradient_norm(gradient: Mapping[str, torch.Tensor]) -> float:
    """Euclidean norm of a gradient over all its tensors."""
    return float(sum(float(g.float().pow(2).sum()) for g in gradient.values()) ** 0.5)


def save_gradient(
    gradient: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    *,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write a gradient to a ``safetensors`` file (tensors moved to the CPU, made contiguous).

    Args:
        gradient: ``{parameter name: tensor}`` as returned by :func:`downstream_gradient`.
        path: the file to write (parent folders are created).
        metadata: extra JSON-serialisable entries stored in the file's header.

    Returns:
        The path written.
    """
    from safetensors.torch import save_file

    if not gradient:
        raise ValueError("gradient is empty")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in gradient.items()}
    meta = {"format": GRADIENT_FORMAT, "norm": repr(gradient_norm(tensors))}
    for k, v in (metadata or {}).items():
        meta[str(k)] = v if isinstance(v, str) else json.dumps(v)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target), metadata=meta)
    return target


def load_gradient(
    path: str | os.PathLike[str],
    proxy: torch.nn.Module | None = None,
    *,
    device: Any = None,
) -> dict[str, torch.Tensor]:
    """Read a gradient written by :func:`save_gradient`, optionally checked against a proxy.

    Args:
        path: the ``safetensors`` file.
        proxy: when given, every tensor must name one of its parameters with the same shape, and
            the tensors are moved to that parameter's device (as float32).
        device: where to load the tensors when no ``proxy`` is given (default CPU).

    Raises:
        FileNotFoundError: the file does not exist (the message says how to create it).
        GradientMismatchError: the file is not a gradient file, or does not fit ``proxy``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    target = Path(path)
    if not target.is_file():
        raise FileNotFoundError(
            f"gradient file {str(target)!r} does not exist; compute it once with "
            "coreopt.sampling.downstream_gradient(proxy, holdout_traces) and write it with "
            "coreopt.sampling.save_gradient(gradient, path)"
        )
    try:
        with safe_open(str(target), framework="pt") as fh:
            meta = fh.metadata() or {}
        tensors = load_file(str(target), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise GradientMismatchError(
            f"{str(target)!r} is not a readable safetensors file: {exc}"
        ) from exc
    if meta.get("format") != GRADIENT_FORMAT:
        logger.warning("%s has no coreopt gradient header; loading its tensors anyway", target)
    if proxy is None:
        dev = torch.device(device) if device is not None else torch.device("cpu")
        return {k: v.to(dev, torch.float32) for k, v in tensors.items()}
    return match_gradient(proxy, tensors, source=str(target))


def match_gradient(
    proxy: torch.nn.Module, gradient: Mapping[str, torch.Tensor], *, source: str = "gradient"
) -> dict[str, torch.Tensor]:
    """Check ``gradient`` against ``proxy``'s parameters; float32 copies on their devices.

    Every gradient tensor must name a parameter of ``proxy`` (as ``named_parameters()`` lists
    them) with the same shape. Parameters without a gradient are left unperturbed (a warning lists
    how many).

    Raises:
        GradientMismatchError: an unknown name or a wrong shape.
    """
    params = dict(proxy.named_parameters())
    unknown = sorted(set(gradient) - set(params))
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise GradientMismatchError(
            f"{source} holds {len(unknown)} tensor(s) that are not parameters of the proxy "
            f"{type(proxy).__name__} ({shown}); was it computed for another model?"
        )
    out: dict[str, torch.Tensor] = {}
    for name, g in gradient.items():
        p = params[name]
        if tuple(g.shape) != tuple(p.shape):
            raise GradientMismatchError(
                f"{source}[{name!r}] has shape {tuple(g.shape)} but the proxy's parameter has "
                f"{tuple(p.shape)}; was it computed for another model?"
            )
        out[name] = g.detach().to(p.device, torch.float32)
    missing = [n for n, p in params.items() if n not in out and p.is_floating_point()]
    if missing:
        logger.warning(
            "%s has no entry for %d proxy parameter(s) (e.g. %s): they stay unperturbed",
            source,
            len(missing),
            missing[0],
        )
    if not out:
        raise GradientMismatchError(f"{source} is empty")
    return out
