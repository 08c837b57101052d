"""Byte accounting and the byte budget of :func:`coreopt.quantize`.

Every quantized layer stores, for ``out x in`` weights at ``b`` bits with groups of ``g`` input
columns (``in`` padded up to ``in_pad``, a multiple of ``g``) and an optional block transform of
``k x k`` blocks:

* the codes, ``out · in_pad · b`` bits (bit planes, no slack);
* a scale and a zero point per group, ``2 · out · in_pad / g`` numbers in the metadata dtype;
* the transform, ``in · k`` numbers in the metadata dtype (``transform_dtype="float16"``), or
  ``in · k`` int8 codes and ``in`` row scales in the metadata dtype (``"int8"``): ``in · k · 8 +
  in · meta`` bits (:func:`~coreopt.quant.transforms.transform_storage_bits`).

``bits_per_weight = stored bits / (out · in)``: padding, scales, zero points and transforms all
count; biases are kept in floating point by every method and are counted in the model's bytes, not
here. :func:`choose_options` spends a budget of stored bits over the layers: a multiple-choice
knapsack solved by its Lagrangian relaxation (bisection on the price of a bit) and a greedy fill of
what is left.

A transform *shared* by the layers that read the same input (q/k/v, gate/up) stores its
``in · k`` numbers once for the whole group: such options are tied together by a
:class:`SharedChoice` (each member's option prices its codes, scales and zero points; the
shared blocks are priced once, in the choice), which the knapsack takes for all its layers or
for none.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from coreopt.quant.transforms import transform_storage_bits


def stored_bits(
    out_features: int,
    in_features: int,
    bits: int,
    group_size: int,
    block: int = 0,
    meta_bits: int = 16,
    transform_dtype: str = "float16",
) -> int:
    """Bits a layer stores: codes (padding included), scales and zero points, transform blocks
    (``transform_dtype``: ``"float16"``, ``in · block`` numbers of ``meta_bits``; ``"int8"``,
    ``in · block`` 8-bit codes and ``in`` row scales of ``meta_bits``).

    Examples:
        >>> stored_bits(384, 384, 3, 64) / (384 * 384)  # 3 bits + 2 float16 per 64 weights
        3.5
        >>> stored_bits(384, 384, 3, 64, block=64) / (384 * 384)  # + a 64 x 64 block per 64 inputs
        6.166666666666667
        >>> stored_bits(384, 384, 3, 64, block=64, transform_dtype="int8") / (384 * 384)
        4.875
    """
    n_pad = -(-in_features // group_size) * group_size
    codes = out_features * n_pad * bits
    meta = 2 * out_features * (n_pad // group_size) * meta_bits
    transform = (
        transform_storage_bits(in_features, block, transform_dtype, meta_bits) if block else 0
    )
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


@dataclass(frozen=True)
class SharedChoice:
    """Options of several layers taken together or not at all, with bits stored once for all of
    them (a shared input transform).

    Attributes:
        picks: ``((layer index, option index), ...)``, one per member layer; each member's
            :class:`Option` prices what that layer stores by itself (codes, scales, zero points).
        cost: the bits stored once for the group (the shared transform blocks:
            ``in · k · meta_bits``, or ``in · k · 8 + in · meta_bits`` in int8, see
            :func:`shared_transform_bits`).
    """

    picks: tuple[tuple[int, int], ...]
    cost: int


def shared_transform_bits(
    in_features: int, block: int, meta_bits: int = 16, transform_dtype: str = "float16"
) -> int:
    """Bits of one block-diagonal transform of ``in_features / block`` blocks of ``block x block``
    numbers in the metadata dtype (or int8 codes with a row scale per block row), stored once
    however many layers read it.

    Examples:
        >>> shared_transform_bits(384, 16) / (3 * 384 * 384)  # shared by q, k, v of MiniLM
        0.2222222222222222
        >>> shared_transform_bits(384, 16, transform_dtype="int8") / (3 * 384 * 384)
        0.125
    """
    return transform_storage_bits(in_features, block, transform_dtype, meta_bits)


def _pick(options: Sequence[Option], price: float) -> int:
    return min(range(len(options)), key=lambda j: (options[j].loss + price * options[j].cost, j))


def _cheapest(options: Sequence[Option]) -> int:
    return min(range(len(options)), key=lambda j: (options[j].cost, options[j].loss))


def choose_options(
    layers: Sequence[Sequence[Option]],
    budget: float,
    shared: Sequence[SharedChoice] = (),
) -> list[int]:
    """One option per layer minimising the summed loss with total cost ``<= budget``.

    Two solutions, the better kept: the Lagrangian ``Σ_i loss_i + λ cost_i``, which separates over
    layers, with ``λ`` bisected (in log space) to the smallest price whose choice fits; and an
    exact dynamic program over costs rounded up to a grid of ``budget / C`` (``C >= 4096``).
    The leftover budget then buys, greedily, the upgrades with the largest loss decrease per
    extra bit.

    With ``shared`` choices, the layers a choice ties together are one item of the knapsack
    whose options are the choice itself (its members' options plus its shared cost, counted
    once) and every combination of the members' free options (those no choice holds), pruned to
    the combinations no other one beats in both cost and loss (which loses no optimum). Without
    ``shared`` every layer is its own item, as before.

    Args:
        layers: the options of every layer (each non-empty).
        budget: total stored bits allowed (a shared choice's ``cost`` included when taken).
        shared: options of several layers taken together (see :class:`SharedChoice`); each
            option belongs to at most one choice.

    Returns:
        the index of the chosen option of every layer; a member of a taken shared choice has
        that choice's option (and then so do all its members).

    Raises:
        ValueError: even the cheapest option of every layer exceeds ``budget``, or a shared
            choice names a missing option, a layer twice, or an option another choice holds.
    """
    if any(len(o) == 0 for o in layers):
        raise ValueError("every layer needs at least one option")
    if shared:
        return _choose_grouped(layers, budget, shared)
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


Combo = tuple[int, float, dict[int, int]]
"""``(cost, loss, {layer: option})`` of a set of layers' options."""


def _frontier(combos: list[Combo]) -> list[Combo]:
    """The combinations no other one beats in both cost and loss (cheapest first)."""
    out: list[Combo] = []
    best = math.inf
    for c in sorted(combos, key=lambda x: (x[0], x[1])):
        if c[1] < best:
            out.append(c)
            best = c[1]
    return out


def _product(parts: list[list[Combo]]) -> list[Combo]:
    """The frontier of every combination of one entry per part."""
    acc: list[Combo] = [(0, 0.0, {})]
    for part in parts:
        acc = _frontier(
            [(c1 + c2, l1 + l2, {**p1, **p2}) for c1, l1, p1 in acc for c2, l2, p2 in part]
        )
    return acc


def _choose_grouped(
    layers: Sequence[Sequence[Option]], budget: float, shared: Sequence[SharedChoice]
) -> list[int]:
    """:func:`choose_options` with shared choices: the layers each choice ties together become
    one item (see there), solved as usual, and the item's choice mapped back to its layers."""
    held: dict[tuple[int, int], int] = {}
    parent = list(range(len(layers)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for s, ch in enumerate(shared):
        members = [i for i, _ in ch.picks]
        if len(set(members)) != len(members) or not members:
            raise ValueError(f"shared choice {s} must name each of its layers once")
        for i, j in ch.picks:
            if not (0 <= i < len(layers) and 0 <= j < len(layers[i])):
                raise ValueError(f"shared choice {s} names a missing option ({i}, {j})")
            if (i, j) in held:
                raise ValueError(f"option ({i}, {j}) is held by two shared choices")
            held[(i, j)] = s
            parent[root(i)] = root(members[0])
    comps: dict[int, list[int]] = {}
    for i in range(len(layers)):
        comps.setdefault(root(i), []).append(i)
    items: list[list[Option]] = []
    maps: list[list[dict[int, int]]] = []
    tied = {root(ch.picks[0][0]) for ch in shared}
    for members in sorted(comps.values()):
        if root(members[0]) not in tied:  # a layer on its own: its options as they are
            items.append(list(layers[members[0]]))
            maps.append([{members[0]: j} for j in range(len(layers[members[0]]))])
            continue
        free = {
            i: _frontier(
                [(o.cost, o.loss, {i: j}) for j, o in enumerate(layers[i]) if (i, j) not in held]
            )
            for i in members
        }
        combos = _product([free[i] for i in members]) if all(free.values()) else []
        for ch in shared:
            if root(ch.picks[0][0]) != root(members[0]):
                continue
            mine = dict(ch.picks)
            fixed = (
                ch.cost + sum(layers[i][j].cost for i, j in ch.picks),
                sum(layers[i][j].loss for i, j in ch.picks),
                mine,
            )
            rest = [free[i] for i in members if i not in mine]
            if any(not r for r in rest):
                continue
            combos += [
                (fixed[0] + c, fixed[1] + loss, {**mine, **p}) for c, loss, p in _product(rest)
            ]
        front = _frontier(combos)
        if not front:
            raise ValueError("a layer tied by shared choices has no option it can take alone")
        items.append([Option(0, 0, 0, loss, cost) for cost, loss, _ in front])
        maps.append([p for _, _, p in front])
    chosen = choose_options(items, budget)
    out = [0] * len(layers)
    for item, j in enumerate(chosen):
        for i, k in maps[item][j].items():
            out[i] = k
    return out


def chosen_cost(
    layers: Sequence[Sequence[Option]], picks: Sequence[int], shared: Sequence[SharedChoice] = ()
) -> int:
    """Stored bits of a choice of :func:`choose_options`: every layer's option, and the cost of
    every shared choice all of whose members took its options, once."""
    total = sum(layers[i][j].cost for i, j in enumerate(picks))
    return total + sum(ch.cost for ch in shared if all(picks[i] == j for i, j in ch.picks))
