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
    """

    bits: int
    group_size: int
    block: int
    loss: float
    cost: int


def _pick(options: Sequence[Option], price: float) -> int:
    return min(range(len(options)), key=lambda j: (options[j].loss + price * options[j].cost, j))


def _cheapest(options: Sequence[Option]) -> int:
    return min(range(len(options)), key=lambda j: (options[j].cost, options[j].loss))


def choose_options(layers: Sequence[Sequence[Option]], budget: float) -> list[int]:
    """One option per layer minimising the summed loss with total cost ``<= budget``.

    The Lagrangian ``Σ_i loss_i + λ cost_i`` separates over layers; ``λ`` is bisected (in log
    space) to the smallest price whose choice fits, then the leftover budget buys, greedily, the
    upgrades with the largest loss decrease per extra bit.

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

    def choice(price: float) -> list[int]:
        return [_pick(o, price) for o in layers]

    def cost(c: list[int]) -> int:
        return sum(layers[i][j].cost for i, j in enumerate(c))

    best = choice(0.0)
    if cost(best) > budget:
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
    # greedy fill of the leftover budget
    left = budget - cost(best)
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
