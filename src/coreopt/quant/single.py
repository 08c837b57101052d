"""Single-matrix transforms learned against the data-free proxy (CafeQ §3)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, cast

import torch

from coreopt.manifold import cayley, skew
from coreopt.objective import MinimizeConfig, Objective, minimize
from coreopt.quant.format import QuantFormat, fake_quantize
from coreopt.quant.linear import pad_columns
from coreopt.quant.proxy import InputMoments, weighted_sq_error
from coreopt.quant.transforms import random_block_orthogonal, right_blocks

TransformFamily = Literal["invertible", "orthogonal"]


@dataclass(frozen=True)
class TransformFit:
    """A learned block-diagonal input transform.

    Attributes:
        transform: ``(k, b, b)`` blocks of ``T``.
        inverse: ``(k, b, b)`` blocks of ``T⁻¹``.
        loss: proxy loss (normalised by ``tr(W Σ Wᵀ)``) of ``Q(W T⁻¹) T`` with min-max rounding.
        initial_loss: the same at the initial transform.
        steps: optimizer steps taken.
    """

    transform: torch.Tensor
    inverse: torch.Tensor
    loss: float
    initial_loss: float
    steps: int


def transform_loss(
    W: torch.Tensor,
    T: torch.Tensor,
    Tinv: torch.Tensor,
    fmt: QuantFormat,
    moments: InputMoments | None,
    *,
    ste: bool = False,
) -> torch.Tensor:
    """``tr(E Σ Eᵀ)`` with ``E = W - Q(W T⁻¹) T`` (back-transform inside the loss).

    A width that the group size does not divide is quantized as stored: with zero columns appended
    after the transform (they change no group's range, which always contains 0)."""
    n = W.shape[-1]
    Wq = fake_quantize(pad_columns(right_blocks(W, Tinv), fmt.group_size), fmt, ste=ste)[..., :n]
    return weighted_sq_error(W - right_blocks(Wq, T), moments)


def learn_transform(
    W: torch.Tensor,
    fmt: QuantFormat,
    *,
    block: int = 64,
    moments: InputMoments | None = None,
    family: TransformFamily = "invertible",
    init: Literal["hadamard", "identity", "haar"] = "hadamard",
    steps: int = 100,
    lr: float = 3e-3,
    generator: torch.Generator | None = None,
    stop: Callable[[int, torch.Tensor], bool] | None = None,
) -> TransformFit:
    """Learn ``T = blockdiag(T_1..T_k)`` minimising ``||(W - Q(W T⁻¹) T) Σ^{1/2}||²`` through a
    straight-through rounding, with :func:`coreopt.minimize` (Adam, best iterate kept).

    ``family="invertible"`` optimizes the blocks themselves (any invertible matrix; the inverse is
    a batched ``b x b`` solve); ``"orthogonal"`` optimizes ``T_j = cayley(skew(A_j)) T_j^0`` with
    :func:`coreopt.manifold.cayley` (``T⁻¹ = Tᵀ``, no solve). The initial ``T^0`` is a random block
    Hadamard (``init="hadamard"``), the identity, or Haar-random orthogonal blocks.

    ``stop(step, T)``, called with the blocks evaluated at each step, ends the run early when it
    returns True (the best iterate so far is returned); the steps before are those of the full
    run. :func:`learn_shared_transform` with one part is this function.
    """
    return learn_shared_transform(
        [TransformPart(W, fmt, moments)],
        block=block,
        family=family,
        init=init,
        steps=steps,
        lr=lr,
        generator=generator,
        stop=stop,
    )


@dataclass(frozen=True)
class TransformPart:
    """One layer of a group that reads the same input through one shared transform.

    Attributes:
        weight: ``(out_i, in)``, the layer's weight (the members share ``in``).
        fmt: the layer's own integer format (bits, group size, zero point).
        moments: the layer's input second moment ``Σ_i`` (its prior), or ``None`` for ``I``.
    """

    weight: torch.Tensor
    fmt: QuantFormat
    moments: InputMoments | None = None


def learn_shared_transform(
    parts: Sequence[TransformPart],
    *,
    block: int = 64,
    family: TransformFamily = "invertible",
    init: Literal["hadamard", "identity", "haar"] = "hadamard",
    steps: int = 100,
    lr: float = 3e-3,
    generator: torch.Generator | None = None,
    stop: Callable[[int, torch.Tensor], bool] | None = None,
) -> TransformFit:
    """Learn one block transform ``T`` for layers that read the same input (q/k/v, gate/up),
    minimising the sum of their relative proxies
    ``Σ_i ||(W_i - Q_i(W_i T⁻¹) T) Σ_i^{1/2}||² / ||W_i Σ_i^{1/2}||²``, each layer rounded in its
    own format ``Q_i``.

    The proxy is a sum over output rows, so this is the transform of the row-stacked weight
    ``[W_1 / ||W_1 Σ_1^{1/2}||; W_2 / ...]`` (min-max rounding is equivariant to a positive row
    scale), learned exactly as :func:`learn_transform` learns one layer's (which is this function
    with one part). ``TransformFit.loss`` and ``initial_loss`` are the summed relative proxies.

    Args:
        parts: the layers (at least one), all with the same ``in`` divisible by ``block``.
        block, family, init, steps, lr, generator, stop: as in :func:`learn_transform`.

    Raises:
        ValueError: no part, widths that differ, or ``block`` not dividing the width.
    """
    if not parts:
        raise ValueError("learn_shared_transform needs at least one part")
    n = parts[0].weight.shape[-1]
    if any(p.weight.shape[-1] != n for p in parts):
        raise ValueError(
            "the parts of a shared transform must read the same input, got widths "
            f"{[p.weight.shape[-1] for p in parts]}"
        )
    if n % block:
        raise ValueError(f"block={block} does not divide in_features={n}")
    k = n // block
    W0 = parts[0].weight
    dtype = W0.dtype if W0.dtype in (torch.float32, torch.float64) else torch.float32
    Ws = [p.weight.to(dtype) for p in parts]
    T0 = random_block_orthogonal(
        k, block, kind=init, generator=generator, dtype=dtype, device=W0.device
    )
    norms = [float(weighted_sq_error(W, p.moments)) or 1.0 for W, p in zip(Ws, parts, strict=True)]

    if family == "invertible":

        def blocks(P: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return P, torch.linalg.inv(P)

        start = T0
        lr_eff = lr
    elif family == "orthogonal":

        def blocks(P: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            T = cayley(skew(P)) @ T0
            return T, T.mT

        start = torch.zeros_like(T0)
        lr_eff = lr * math.sqrt(
            block
        )  # the skew generator lives on a larger scale than T's entries
    else:
        raise ValueError(f"family={family!r} is unknown; use 'invertible' or 'orthogonal'")

    def total(T: torch.Tensor, Tinv: torch.Tensor, ste: bool) -> torch.Tensor:
        losses = [
            transform_loss(W, T, Tinv, p.fmt, p.moments, ste=ste) / norm
            for W, p, norm in zip(Ws, parts, norms, strict=True)
        ]
        return losses[0] if len(losses) == 1 else torch.stack(losses).sum()

    def objective(P: torch.Tensor) -> torch.Tensor:
        T, Tinv = blocks(P)
        return total(T, Tinv, True)

    with torch.no_grad():
        T_init, Tinv_init = blocks(start)
        initial = float(total(T_init, Tinv_init, False))
    if steps == 0:
        return TransformFit(T_init, Tinv_init, initial, initial, 0)
    callback = None
    if stop is not None:

        def callback(step: int, _loss: float, P: object) -> bool:
            assert isinstance(P, torch.Tensor)
            with torch.no_grad():
                return bool(stop(step, blocks(P)[0]))

    with torch.enable_grad():
        res = minimize(
            cast(Objective, objective),
            start,
            MinimizeConfig(
                steps=steps,
                lr=lr_eff,
                optimizer="adam",
                patience=None,
                keep_best=True,
                progress=False,
            ),
            callback=callback,
        )
    with torch.no_grad():
        T, Tinv = blocks(res.raw_params)  # type: ignore[arg-type]
        loss = float(total(T, Tinv, False))
    return TransformFit(T.detach(), Tinv.detach(), loss, initial, res.steps)
