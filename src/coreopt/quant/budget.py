"""Byte accounting and the byte budget of :func:`coreopt.quantize`.

Every quantized layer stores, for ``out x in`` weights at ``b`` bits with groups of ``g`` input
columns (``in`` padded up to ``in_pad``, a multiple of ``g``) and an optional block transform of
``k x k`` blocks:

* the codes, ``out · in_pad · b`` bits (bit planes, no slack);
* a scale and a zero point per group, ``2 · out · in_pad / g`` numbers in the metadata dtype;
* the transform, ``in · k`` numbers in the metadata dtype.

``bits_per_weight = stored bits / (out · in)``: padding, scales, zero points and transforms all
count; biases are kept in floating point by every method and are counted in the model's bytes, not
here. :func:`choose_options` spends a budget of stored bits over the layers: a multiple-choice
knapsack solved by its Lagrangian relaxation (bisection on the price of a bit) and a greedy fill of
what is left.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def stored_bits(
    out_features: int,
    in_features: int,
    bits: int,
    group_size: int,
    block: int = 0,
    meta_bits: int = 16,
) -> int:
    """Bits a layer stores: codes (padding included), scales and zero points, transform blocks.

    Examples:
        >>> stored_bits(384, 384, 3, 64) / (384 * 384)  # 3 bits + 2 float16 per 64 weights
        3.5
        >>> stored_bits(384, 384, 3, 64, block=64) / (384 * 384)  # + a 64 x 64 block per 64 inputs
        6.166666666666667
    """
    n_pad = -(-in_features // group_size) * group_size
    codes = out_features * n_pad * bits
    meta = 2 * out_features * (n_pad // group_size) * meta_bits
    transform = in_features * block * meta_bits if block else 0
    return codes + meta + transform


@dataclass(frozen=True)
class Option:
    """One way to store a layer.

    Attributes:
        bits, group_size: the integer format.
        block: block of the input transform (0: none).
        loss: the layer's relative proxy loss ``tr(E Σ Eᵀ) / tr(W Σ Wᵀ)`` under this option.
        cost: stored bits (:func:`stored_bits`).
        zero_point: ``"integer"`` or ``"float"`` (same cost, see
            :class:`~coreopt.quant.QuantFormat`).
    """

    bits: int
    group_size: int
    block: int
    loss: float
    cost: int
    zero_point: str = "integer"


def _pick(options: Sequence[Option], price: float) -> int:
    return min(range(len(options)), key=lambda j: (options[j].loss + price * options[j].cost, j))


def _cheapest(options: Sequence[Option]) -> int:
    return min(range(len(options)), key=lambda j: (options[j].cost, options[j].loss))


def choose_options(layers: Sequence[Sequence[Option]], budget: float) -> list[int]:
    """One option per layer minimising the summed loss with total cost ``<= budget``.

    Two solutions, the better kept: the Lagrangian ``Σ_i loss_i + λ cost_i``, which separates over
    layers, with ``λ`` bisected (in log space) to the smallest price whose choice fits; and an
    exact dynamic program over costs rounded up to a grid of ``budget / C`` (``C >= 4096``).
    The leftover budget then buys, greedily, the upgrades with the largest loss decrease per
    extra bit.

    Args:
        layers: the options of every layer (each non-empty).
        budget: total stored bits allowed.

    Returns:
        the index of the chosen option of every layer.

    Raises:
        ValueError: even the cheapest option of every layer exceeds ``budget``.
    """
    if any(len(o) == 0 for o in layers):
        raise ValueError("every layer needs at least one option")
    cheapest = [_cheapest(o) for o in layers]
    floor = sum(layers[i][j].cost for i, j in enumerate(cheapest))
    if floor > budget:
        raise ValueError(
            f"the budget of {budget:.0f} bits is below the cheapest storage of these layers "
            f"({floor} bits)"
        )

    lagrange = _lagrangian(layers, budget, cheapest)
    dp = _dynamic_program(layers, budget)
    if dp is None or _cost(layers, dp) > budget:
        return _fill(layers, budget, lagrange)
    total = [sum(layers[i][j].loss for i, j in enumerate(c)) for c in (lagrange, dp)]
    return _fill(layers, budget, lagrange if total[0] <= total[1] else dp)


def _cost(layers: Sequence[Sequence[Option]], c: list[int]) -> int:
    return sum(layers[i][j].cost for i, j in enumerate(c))


def _dynamic_program(layers: Sequence[Sequence[Option]], budget: float) -> list[int] | None:
    """Exact knapsack over costs rounded *up* to units of ``budget / C`` (``C = max(4096, 64 L)``
    capped at 65536): always feasible, within ``L`` units of the optimum's budget."""
    n_units = min(max(4096, 64 * len(layers)), 65536)
    unit = budget / n_units
    inf = float("inf")
    f = torch.zeros(n_units + 1, dtype=torch.float64)
    arg = []
    for opts in layers:
        g = torch.full_like(f, inf)
        a = torch.zeros(n_units + 1, dtype=torch.int16)
        for j, o in enumerate(opts):
            w = math.ceil(o.cost / unit)
            if w > n_units:
                continue
            cand = torch.full_like(f, inf)
            cand[w:] = f[: n_units + 1 - w] + o.loss
            better = cand < g
            g = torch.where(better, cand, g)
            a = torch.where(better, torch.full_like(a, j), a)
        arg.append(a)
        f = g
    if not math.isfinite(float(f[n_units])):
        return None  # the rounding up made it infeasible: the Lagrangian answer stands
    c = n_units
    pick = [0] * len(layers)
    for i in range(len(layers) - 1, -1, -1):
        j = int(arg[i][c])
        pick[i] = j
        c -= math.ceil(layers[i][j].cost / unit)
    return pick


def _lagrangian(
    layers: Sequence[Sequence[Option]], budget: float, cheapest: list[int]
) -> list[int]:
    return _bisect(layers, budget, cheapest)[0]


def bit_price(layers: Sequence[Sequence[Option]], budget: float) -> float:
    """The Lagrange multiplier of the budget: the smallest price of one bit (loss per bit) at
    which the per-layer choices fit; 0 when the budget does not bind. An option that adds ``c``
    bits to a layer whose loss is below ``price · c`` cannot pay for itself even if it removed
    all of the layer's loss (the pruning rule of the transform options)."""
    return _bisect(layers, budget, [_cheapest(o) for o in layers])[1]


def _bisect(
    layers: Sequence[Sequence[Option]], budget: float, cheapest: list[int]
) -> tuple[list[int], float]:
    def choice(price: float) -> list[int]:
        return [_pick(o, price) for o in layers]

    def cost(c: list[int]) -> int:
        return _cost(layers, c)

    best = choice(0.0)
    if cost(best) <= budget:
        return best, 0.0
    lo, hi = -40.0, 10.0  # log10 of the price of one bit
    while cost(choice(10.0**hi)) > budget:
        hi += 10.0
    best = cheapest
    for _ in range(80):
        mid = (lo + hi) / 2
        c = choice(10.0**mid)
        if cost(c) <= budget:
            hi, best = mid, c
        else:
            lo = mid
    return best, 10.0**hi


def _fill(layers: Sequence[Sequence[Option]], budget: float, best: list[int]) -> list[int]:
    """Spend the leftover budget greedily: the upgrade with the largest loss decrease per extra
    bit first."""
    best = list(best)
    left = budget - _cost(layers, best)
    while True:
        gain, pick = 0.0, None
        for i, o in enumerate(layers):
            cur = o[best[i]]
            for j, alt in enumerate(o):
                extra = alt.cost - cur.cost
                drop = cur.loss - alt.loss
                if drop <= 0 or extra > left:
                    continue
                ratio = drop / max(extra, 1) if extra > 0 else math.inf
                if ratio > gain:
                    gain, pick = ratio, (i, j)
        if pick is None:
            return best
        i, j = pick
        left -= layers[i][j].cost - layers[i][best[i]].cost
        best[i] = j
