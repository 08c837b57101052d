"""``minimize``: gradient-based minimisation of a torch objective, optionally on a manifold.

The manifold enters through a *parametrization*: an unconstrained tensor ``W`` is optimized and the
objective sees ``phi(W)`` (for example ``phi = lambda W: cayley(skew(W))`` for orthogonal
matrices, see :mod:`coreopt.manifold`). This is the same device as
``torch.nn.utils.parametrize``, without needing an ``nn.Module``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import torch
from tqdm.auto import tqdm

from coreopt.errors import NonFiniteError
from coreopt.objective.device import resolve_device, resolve_dtype
from coreopt.objective.protocol import (
    Objective,
    Parametrization,
    Params,
    flatten_params,
    match_structure,
    scalar_loss,
)
from coreopt.status import Status

logger = logging.getLogger("coreopt.objective")

OptimizerFactory = Callable[[list[torch.Tensor]], torch.optim.Optimizer]
Callback = Callable[[int, float, Params], bool | None]

_OPTIMIZERS = ("adam", "adamw", "sgd", "lbfgs")


@dataclass(frozen=True)
class MinimizeConfig:
    """Options of :func:`coreopt.minimize`, validated on construction (ValueError/TypeError).

    Attributes:
        steps: maximum number of optimizer steps (each step evaluates the objective and its
            gradient once; L-BFGS may evaluate it a few more times in its line search).
        optimizer: ``"adam"``, ``"adamw"``, ``"sgd"`` (momentum 0.9), ``"lbfgs"`` (strong-Wolfe line
            search, one iteration per step), or a factory ``f(list_of_tensors) -> Optimizer``
            (then ``lr`` is ignored).
        lr: learning rate.
        lr_schedule: ``"constant"`` or ``"cosine"`` (cosine decay to 0 over ``steps``).
        max_grad_norm: clip the global gradient norm to this value; ``None`` disables clipping.
        patience: stop with ``Status.CONVERGED`` when the loss has not improved by more than
            ``tol * max(1, |best|)`` for this many consecutive steps; ``None`` disables it.
        tol: relative improvement that counts for ``patience``.
        target: stop with ``Status.TARGET_REACHED`` once the loss is ``<= target``.
        keep_best: return the best iterate seen rather than the last one.
        device: where to optimize. ``None`` keeps each tensor where it is (the objective's own
            tensors must live there too); ``"auto"`` picks CUDA when present.
        dtype: cast the parameters to this floating dtype; ``None`` keeps theirs.
        progress: show a tqdm progress bar; ``None`` shows it only on a terminal or notebook.
        desc: label of the progress bar.
    """

    steps: int = 500
    optimizer: Literal["adam", "adamw", "sgd", "lbfgs"] | OptimizerFactory = "adam"
    lr: float = 1e-2
    lr_schedule: Literal["constant", "cosine"] = "constant"
    max_grad_norm: float | None = None
    patience: int | None = 100
    tol: float = 1e-10
    target: float | None = None
    keep_best: bool = True
    device: str | torch.device | None = None
    dtype: str | torch.dtype | None = None
    progress: bool | None = None
    desc: str = "minimize"

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps must be a non-negative int, got {self.steps!r}")
        if isinstance(self.optimizer, str):
            if self.optimizer.lower() not in _OPTIMIZERS:
                raise ValueError(
                    f"optimizer={self.optimizer!r} is unknown; expected one of {_OPTIMIZERS} "
                    "or a callable(list_of_tensors) -> torch.optim.Optimizer"
                )
        elif not callable(self.optimizer):
            raise TypeError("optimizer must be a name or a callable returning an Optimizer")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {self.lr!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(
                f"lr_schedule={self.lr_schedule!r} is unknown; use 'constant' or 'cosine'"
            )
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be positive or None, got {self.max_grad_norm!r}")
        if self.patience is not None and (
            isinstance(self.patience, bool)
            or not isinstance(self.patience, int)
            or self.patience < 1
        ):
            raise ValueError(f"patience must be a positive int or None, got {self.patience!r}")
        if not (self.tol >= 0 and math.isfinite(self.tol)):
            raise ValueError(f"tol must be a non-negative finite number, got {self.tol!r}")
        if self.target is not None and math.isnan(self.target):
            raise ValueError("target must not be NaN")


@dataclass(frozen=True)
class MinimizeResult:
    """What :func:`coreopt.minimize` found, with diagnostics.

    Attributes:
        params: the returned point with the parametrization applied (what the objective saw),
            detached, in the structure the parameters were given in.
        raw_params: the unconstrained tensors the optimizer moved (same structure).
        loss: objective value at ``params``.
        initial_loss: objective value at the starting point.
        best_step: index of the step at which ``params`` was evaluated (``steps`` for the point
            after the last update).
        steps: optimizer steps taken.
        evaluations: objective evaluations made (forward and backward passes).
        status: why it stopped (:class:`coreopt.Status`).
        wall_time: seconds spent, including device synchronisation.
        history: the loss of every evaluated iterate, the start first; ``len(history) ==
            steps + 1`` (early stops evaluate the point they stop at; a run to the step limit
            evaluates the point after its last update).
    """

    params: Params
    raw_params: Params
    loss: float
    initial_loss: float
    best_step: int
    steps: int
    evaluations: int
    status: Status
    wall_time: float
    history: list[float] = field(repr=False)

    @property
    def converged(self) -> bool:
        """``True`` when stopped by a convergence criterion or by reaching the target."""
        return self.status in (Status.CONVERGED, Status.TARGET_REACHED)


def minimize(
    objective: Objective,
    params: Params,
    config: MinimizeConfig | None = None,
    *,
    parametrization: Parametrization
    | Sequence[Parametrization | None]
    | dict[str, Any]
    | None = None,
    callback: Callback | None = None,
    **overrides: Any,
) -> MinimizeResult:
    """Minimise ``objective(phi(params))`` over ``params`` with a torch optimizer.

    The starting tensors are copied, never modified. Keyword ``overrides`` replace fields of
    ``config`` (``minimize(f, x, steps=200, lr=1e-3)``), so a notebook needs no config object.

    Args:
        objective: callable from parameters (same structure as ``params``, after the
            parametrization) to a scalar loss tensor.
        params: starting point: a tensor, a sequence of tensors or a ``{name: tensor}`` mapping.
        config: a :class:`MinimizeConfig`; defaults to ``MinimizeConfig()``.
        parametrization: ``phi`` mapping each unconstrained tensor to the constrained one the
            objective sees; one callable for all tensors, a sequence aligned with ``params``, or a
            mapping keyed like ``params``. ``None`` entries mean identity. The starting tensors are
            the *unconstrained* values.
        callback: ``callback(step, loss, params)`` after each evaluation; returning ``True`` stops
            with ``Status.STOPPED_BY_CALLBACK``.
        **overrides: fields of :class:`MinimizeConfig`.

    Returns:
        A :class:`MinimizeResult`.

    Raises:
        NonFiniteError: the objective returned NaN or infinity; ``err.result`` holds the best finite
            iterate found before (``None`` if the very first evaluation failed).
        TypeError, ValueError: malformed parameters, options or objective output.

    Examples:
        >>> import torch, coreopt
        >>> target = torch.tensor([1.0, -2.0])
        >>> res = coreopt.minimize(lambda x: ((x - target) ** 2).sum(), torch.zeros(2),
        ...                        optimizer="lbfgs", lr=1.0, steps=20, progress=False)
        >>> torch.allclose(res.params, target, atol=1e-6)
        True
    """
    cfg = dataclasses.replace(config or MinimizeConfig(), **overrides)
    flat0, rebuild = flatten_params(params)
    phis = match_structure(parametrization, params, "parametrization")
    for phi in phis:
        if phi is not None and not callable(phi):
            raise TypeError(f"parametrization entries must be callables or None, got {phi!r}")

    device = None if cfg.device is None else resolve_device(cfg.device)
    dtype = None if cfg.dtype is None else resolve_dtype(cfg.dtype, device)
    raw = [
        p.detach()
        .to(device=device or p.device, dtype=dtype or p.dtype)
        .clone()
        .requires_grad_(True)
        for p in flat0
    ]

    def constrained(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return [t if phi is None else phi(t) for t, phi in zip(tensors, phis, strict=True)]  # type: ignore[operator]

    def evaluate(tensors: list[torch.Tensor]) -> torch.Tensor:
        return scalar_loss(objective(rebuild(constrained(tensors))))

    optimizer = _make_optimizer(cfg, raw)
    is_lbfgs = isinstance(cfg.optimizer, str) and cfg.optimizer.lower() == "lbfgs"
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.steps, 1))
        if cfg.lr_schedule == "cosine"
        else None
    )

    evaluations = 0

    def closure() -> torch.Tensor:
        nonlocal evaluations
        optimizer.zero_grad(set_to_none=True)
        loss = evaluate(raw)
        evaluations += 1
        if loss.requires_grad:
            loss.backward()
        elif evaluations == 1:
            raise ValueError(
                "the objective's loss does not depend on the parameters (no gradient); "
                "compute it from the tensors it receives"
            )
        if cfg.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(raw, cfg.max_grad_norm)
        return loss

    history: list[float] = []
    best_loss = math.inf
    best_raw: list[torch.Tensor] | None = None
    last_point: list[torch.Tensor] = raw
    best_step = 0
    ref_loss = math.inf  # loss at the last improvement that counted for patience
    since_improvement = 0
    status = Status.MAX_ITERATIONS
    start = time.perf_counter()

    def snapshot(steps_taken: int, stat: Status) -> MinimizeResult:
        use_best = cfg.keep_best or stat is Status.NON_FINITE
        if use_best and best_raw is not None:
            chosen, chosen_loss, chosen_step = best_raw, best_loss, best_step
        else:  # the last evaluated point
            chosen, chosen_loss, chosen_step = last_point, history[-1], len(history) - 1
        with torch.no_grad():
            shown = [t.detach().clone() for t in constrained(chosen)]
        return MinimizeResult(
            params=rebuild(shown),
            raw_params=rebuild([t.detach().clone() for t in chosen]),
            loss=chosen_loss,
            initial_loss=history[0],
            best_step=chosen_step,
            steps=steps_taken,
            evaluations=evaluations,
            status=stat,
            wall_time=time.perf_counter() - start,
            history=list(history),
        )

    def _shown(point: list[torch.Tensor]) -> Params:
        with torch.no_grad():
            return rebuild(constrained([t.detach() for t in point]))

    def record(value: float, index: int, point: list[torch.Tensor]) -> None:
        nonlocal best_loss, best_step, best_raw, last_point
        history.append(value)
        last_point = [t.detach() for t in point]
        if math.isfinite(value) and value < best_loss:
            best_loss, best_step = value, index
            best_raw = [t.detach().clone() for t in point]

    bar = tqdm(total=cfg.steps, desc=cfg.desc, disable=_bar_disabled(cfg.progress), leave=False)
    postfix_every = max(1, cfg.steps // 50)
    steps_taken = 0
    try:
        for step in range(cfg.steps):
            if is_lbfgs:
                # L-BFGS evaluates the current point, then moves it inside step(closure).
                point = [t.detach().clone() for t in raw]
                stepped = optimizer.step(closure)  # type: ignore[arg-type]
                value = float(cast(torch.Tensor, stepped).detach())
            else:
                point = raw
                value = float(closure().detach())
            record(value, step, point)
            if not math.isfinite(value):
                raise NonFiniteError(
                    f"the objective returned {value} at step {step}; the best finite iterate "
                    "so far is in err.result",
                    result=snapshot(step, Status.NON_FINITE) if best_raw is not None else None,
                )
            scale = max(1.0, abs(ref_loss)) if math.isfinite(ref_loss) else 1.0
            if value < ref_loss - cfg.tol * scale:
                ref_loss, since_improvement = value, 0
            else:
                since_improvement += 1
            if step % postfix_every == 0:
                bar.set_postfix(loss=f"{value:.4g}", best=f"{best_loss:.4g}", refresh=False)
            bar.update(1)

            if callback is not None and callback(step, value, _shown(point)):
                status = Status.STOPPED_BY_CALLBACK
            elif cfg.target is not None and value <= cfg.target:
                status = Status.TARGET_REACHED
            elif cfg.patience is not None and since_improvement >= cfg.patience:
                status = Status.CONVERGED
            if status is not Status.MAX_ITERATIONS:
                break
            if not is_lbfgs:  # L-BFGS already stepped inside optimizer.step(closure)
                optimizer.step()
            if scheduler is not None:
                scheduler.step()
            steps_taken = step + 1
        if status is Status.MAX_ITERATIONS:
            # Evaluate the point after the last update (or the start when steps == 0).
            with torch.no_grad():
                value = float(evaluate(raw))
            evaluations += 1
            record(value, steps_taken, raw)
            if not math.isfinite(value):
                raise NonFiniteError(
                    f"the objective returned {value} after {steps_taken} steps; the best finite "
                    "iterate so far is in err.result",
                    result=snapshot(steps_taken, Status.NON_FINITE)
                    if best_raw is not None
                    else None,
                )
    finally:
        bar.close()

    result = snapshot(steps_taken, status)
    logger.debug(
        "minimize: %s after %d steps, loss %.6g -> %.6g in %.3fs",
        result.status.value,
        result.steps,
        result.initial_loss,
        result.loss,
        result.wall_time,
    )
    return result


def _make_optimizer(cfg: MinimizeConfig, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    if callable(cfg.optimizer):
        opt = cfg.optimizer(params)
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError("the optimizer factory must return a torch.optim.Optimizer")
        return opt
    name = cfg.optimizer.lower()
    if name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9)
    # One L-BFGS iteration per step; convergence is decided by our own patience rule, so torch's
    # internal tolerances are off (they otherwise freeze the iterate early).
    return torch.optim.LBFGS(
        params,
        lr=cfg.lr,
        max_iter=1,
        max_eval=25,  # the default (max_iter * 5 // 4 = 1) leaves the line search no trial point
        line_search_fn="strong_wolfe",
        tolerance_grad=0.0,
        tolerance_change=0.0,
    )


def _bar_disabled(progress: bool | None) -> bool | None:
    # tqdm: disable=None hides the bar when output is not a terminal.
    return None if progress is None else not progress
