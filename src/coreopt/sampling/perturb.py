"""Running a model at ``θ + s·g`` without keeping a second copy of ``θ``.

:class:`InPlacePerturbation` perturbs the parameters *module by module*: a forward pre-hook on
each module that owns parameters adds ``s·g`` to them in place (through
:func:`coreopt.objective.perturbed`, which keeps a backup of those parameters only) and a forward
hook restores them bit-exactly as soon as that module's forward returns. The extra memory is one
module's parameters at a time instead of a full copy, and the model is back at ``θ`` between
calls. :func:`perturbed_copy` is the other option: an independent copy with ``θ + s·g`` baked in
(the reference implementation of antidistillation sampling keeps two such copies).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from typing import Any, TypeVar, cast

import torch

from coreopt.objective import perturbed
from coreopt.sampling.gradient import match_gradient

T = TypeVar("T")


class InPlacePerturbation:
    """Evaluate ``fn()`` with a model's parameters at ``θ + scale·g``, one module at a time.

    Tied parameters (a weight shared by the input embedding and the output layer) are perturbed
    by whichever module is running, once. A parameter that a model reads *outside* the forward of
    the module owning it would be seen unperturbed; no ``transformers`` causal LM does that, and
    the finite differences are checked against ``torch.func.jvp`` in the tests. If in doubt, use
    :func:`perturbed_copy`.

    Args:
        model: the model (its parameters are modified in place during :meth:`run` only).
        gradient: ``{parameter name: direction}`` (see :func:`~coreopt.sampling.match_gradient`).
    """

    def __init__(self, model: torch.nn.Module, gradient: Mapping[str, torch.Tensor]) -> None:
        grads = match_gradient(model, gradient)
        params = dict(model.named_parameters())
        by_id = {id(params[n]): (params[n], g) for n, g in grads.items()}
        self.model = model
        self._table: list[tuple[torch.nn.Module, list[tuple[torch.nn.Parameter, torch.Tensor]]]]
        self._table = []
        for module in model.modules():
            own = [by_id[id(p)] for p in module.parameters(recurse=False) if id(p) in by_id]
            if own:
                self._table.append((module, own))

    def run(self, scale: float, fn: Callable[[], T]) -> T:
        """``fn()`` evaluated with every module's parameters at ``θ + scale·g`` during its forward.

        The parameters are restored bit-exactly after each module's forward, and in any case
        before this method returns (also when ``fn`` raises).
        """
        active: set[int] = set()
        pending: dict[int, list[tuple[ExitStack, list[int]]]] = {}
        handles: list[Any] = []

        def make_hooks(
            own: list[tuple[torch.nn.Parameter, torch.Tensor]],
        ) -> tuple[Callable[..., None], Callable[..., None]]:
            def pre(module: torch.nn.Module, args: Any) -> None:
                todo = [(p, g) for p, g in own if id(p) not in active]
                stack = ExitStack()
                ids = [id(p) for p, _ in todo]
                if todo:
                    stack.enter_context(
                        perturbed([p for p, _ in todo], [g for _, g in todo], scale)
                    )
                    active.update(ids)
                pending.setdefault(id(module), []).append((stack, ids))

            def post(module: torch.nn.Module, args: Any, output: Any) -> None:
                frames = pending.get(id(module))
                if frames:
                    stack, ids = frames.pop()
                    stack.close()
                    active.difference_update(ids)

            return pre, post

        try:
            for module, own in self._table:
                pre, post = make_hooks(own)
                handles.append(module.register_forward_pre_hook(pre))
                handles.append(module.register_forward_hook(post, always_call=True))
            return fn()
        finally:
            for h in handles:
                h.remove()
            for frames in pending.values():
                while frames:
                    frames.pop()[0].close()


def perturbed_copy(
    model: torch.nn.Module, gradient: Mapping[str, torch.Tensor], scale: float
) -> torch.nn.Module:
    """A deep copy of ``model`` with parameters ``θ + scale·g`` (computed in float32, then cast).

    Tied parameters stay tied in the copy. The copy is put in eval mode.
    """
    grads = match_gradient(model, gradient)
    clone = copy.deepcopy(model)
    params = dict(clone.named_parameters())
    with torch.no_grad():
        for name, g in grads.items():
            p = params[name]
            p.copy_((p.float() + scale * g.to(p.device)).to(p.dtype))
    return clone.eval()


class UnsupportedModuleError(TypeError):
    """:class:`SignedBatchPerturbation` met a module whose output it cannot perturb per row."""


def _is_hf_conv1d(module: torch.nn.Module) -> bool:
    """``transformers``' ``Conv1D`` (GPT-2): ``y = x @ weight + bias``, weight ``(in, out)``."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "nx")


def _is_norm(module: torch.nn.Module) -> bool:
    name = type(module).__name__
    return isinstance(module, torch.nn.LayerNorm | torch.nn.RMSNorm) or name.endswith(
        ("RMSNorm", "LayerNorm")
    )


def _affine_direction(
    module: torch.nn.Module,
    own: dict[str, torch.Tensor],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> torch.Tensor:
    """``y(g) − y(0)`` of a module affine in its parameters ``own`` (two calls of it)."""
    zeros = {k: torch.zeros_like(v) for k, v in own.items()}
    at_g = torch.func.functional_call(module, own, args, kwargs)
    at_0 = torch.func.functional_call(module, zeros, args, kwargs)
    out: torch.Tensor = at_g - at_0
    return out


def _fast_norm_kind(module: torch.nn.Module, own: dict[str, torch.Tensor]) -> str:
    """``"layernorm"`` or ``"rms"`` when a closed form of ``y(g) − y(0)`` matches the module's
    own two-call form on a random probe (checked once), else ``"affine"`` (the two calls)."""
    if isinstance(module, torch.nn.LayerNorm):
        kind = "layernorm"
    elif hasattr(module, "variance_epsilon") and set(own) == {"weight"}:
        kind = "rms"
    else:
        return "affine"
    w = next(iter(own.values()))
    if w.ndim != 1:
        return "affine"
    probe = torch.randn(2, 3, w.shape[0], dtype=w.dtype, device=w.device)
    with torch.no_grad():
        want = _affine_direction(module, own, (probe,), {})
        got = SignedBatchPerturbation._direction(module, kind, own, (probe,), {})
    scale = float(want.abs().max()) or 1.0
    return kind if float((got - want).abs().max()) <= 1e-4 * scale else "affine"


class SignedBatchPerturbation:
    """Run a model once on a doubled batch: rows ``[:B]`` at ``θ + εg``, ``[B:]`` at ``θ − εg``.

    Every module that owns perturbed parameters is *affine in them* for a fixed input, so
    ``y(θ + s·g) = y(θ) + s·(y(g) − y(0))``: a forward hook adds, per row, ``s_row`` times the
    module evaluated at the direction ``g`` (``y(0) = 0`` for linear layers and embeddings). The
    model is never modified (one proxy in memory plus ``g``), each module reads its weight and
    its slice of ``g`` once per forward, and the two finite-difference forwards become one forward
    of twice the batch with one KV cache. Supported modules: ``nn.Linear``, ``nn.Embedding``
    (without ``max_norm``), ``transformers``' ``Conv1D`` and layer/RMS norms (``y(g) − y(0)``
    by two calls of the norm, so ``(1 + w)``-style norms are handled); any other module owning a
    perturbed parameter raises :class:`UnsupportedModuleError` at construction. Like
    :class:`InPlacePerturbation`, a parameter read outside its own module's forward would be
    seen unperturbed (checked against the in-place finite difference in the tests).

    Args:
        model: the model (not modified).
        gradient: ``{parameter name: direction}`` (see :func:`~coreopt.sampling.match_gradient`);
            stored in each parameter's dtype.
    """

    def __init__(self, model: torch.nn.Module, gradient: Mapping[str, torch.Tensor]) -> None:
        grads = match_gradient(model, gradient)
        params = dict(model.named_parameters())
        by_id = {id(params[n]): g for n, g in grads.items()}
        self.model = model
        self._table: list[tuple[torch.nn.Module, str, dict[str, torch.Tensor]]] = []
        for mod_name, module in model.named_modules():
            own = {
                pname: by_id[id(p)].to(device=p.device, dtype=p.dtype)
                for pname, p in module.named_parameters(recurse=False)
                if id(p) in by_id
            }
            if not own:
                continue
            if isinstance(module, torch.nn.Linear):
                kind = "linear"
            elif isinstance(module, torch.nn.Embedding) and module.max_norm is None:
                kind = "embedding"
            elif _is_hf_conv1d(module):
                kind = "conv1d"
            elif _is_norm(module):
                kind = _fast_norm_kind(module, own)
            else:
                raise UnsupportedModuleError(
                    f"module {mod_name or '(root)'} ({type(module).__name__}) owns perturbed "
                    "parameters but is not a linear layer, embedding or norm: use "
                    "proxy_mode='inplace' or 'copies'"
                )
            self._table.append((module, kind, own))

    @staticmethod
    def _direction(
        module: torch.nn.Module,
        kind: str,
        own: dict[str, torch.Tensor],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> torch.Tensor:
        x = args[0] if args else next(iter(kwargs.values()))
        if kind == "linear":
            w = own.get("weight")
            if w is None:
                return own["bias"].expand(*x.shape[:-1], -1)
            return torch.nn.functional.linear(x, w, own.get("bias"))
        if kind == "embedding":
            return torch.nn.functional.embedding(x, own["weight"])
        if kind == "conv1d":
            w, b = own.get("weight"), own.get("bias")
            out = x @ w if w is not None else None
            if b is not None:
                out = b.expand(*x.shape[:-1], -1) if out is None else out + b
            assert out is not None
            return out
        if kind == "layernorm":
            ln = cast(torch.nn.LayerNorm, module)
            w = own.get("weight")
            b = own.get("bias")
            shape = ln.normalized_shape
            w = w if w is not None else x.new_zeros(shape)
            return torch.nn.functional.layer_norm(x, shape, w, b, ln.eps)
        if kind == "rms":  # weight * normalise(x) (HF Llama/Mistral/Qwen/T5 style)
            xf = x.to(torch.promote_types(x.dtype, torch.float32))
            eps = float(getattr(module, "variance_epsilon", 1e-6))
            n = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
            return own["weight"] * n.to(x.dtype)
        return _affine_direction(module, own, args, kwargs)

    def run(self, signs: torch.Tensor, fn: Callable[[], T]) -> T:
        """``fn()`` with each batch row ``i`` of every perturbed module's output at
        ``θ + signs[i]·g``.

        Args:
            signs: ``(batch,)`` per-row scales (e.g. ``[+ε]*B + [−ε]*B``).
            fn: runs the model on a batch of that size (batch first in every module output).
        """
        handles: list[Any] = []
        busy: set[int] = set()  # modules re-entered to evaluate them at g (norms)

        def make_hook(kind: str, own: dict[str, torch.Tensor]) -> Callable[..., Any]:
            def hook(
                module: torch.nn.Module,
                args: tuple[Any, ...],
                kwargs: dict[str, Any],
                out: Any,
            ) -> torch.Tensor | None:
                if id(module) in busy:
                    return None
                if not isinstance(out, torch.Tensor) or out.shape[0] != signs.shape[0]:
                    raise UnsupportedModuleError(
                        f"{type(module).__name__}'s output is not a tensor with the batch "
                        f"({signs.shape[0]} rows) first: use proxy_mode='inplace' or 'copies'"
                    )
                busy.add(id(module))
                try:
                    d = self._direction(module, kind, own, args, kwargs)
                finally:
                    busy.discard(id(module))
                s = signs.to(out.dtype).reshape(-1, *([1] * (out.ndim - 1)))
                return torch.addcmul(out, s, d.to(out.dtype))

            return hook

        try:
            for module, kind, own in self._table:
                handles.append(module.register_forward_hook(make_hook(kind, own), with_kwargs=True))
            return fn()
        finally:
            for h in handles:
                h.remove()
