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
from typing import Any, TypeVar

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
