"""Players and coalitions as bitmasks.

Players are labelled by any distinct hashables; internally player ``i`` (in the given order) is bit
``i`` of an integer mask, so coalition ``{0, 2}`` is mask ``0b101 = 5``. Masks of up to 62 players
fit in ``numpy.int64`` for vectorised work (the fast path); larger games keep Python ints (of any
size) in ``object`` arrays, and :func:`incidence` unpacks them through their bytes, so any number
of players works wherever the ``2**n`` coalitions are not enumerated (approximate mode).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

MAX_VECTOR_PLAYERS = 62
"""Largest n whose masks fit in int64 (sign bit and one spare bit kept free): the fast path."""
SPLIT_TABLE_BITS = 12
"""Each table of :meth:`Players.split_tables` holds at most ``2**12`` frozensets."""


class Players:
    """An ordered set of distinct player labels with conversions to and from bitmasks.

    Args:
        players: an int ``n`` (players ``0..n-1``) or a sequence of distinct hashable labels.

    Raises:
        ValueError: no players, or duplicate labels.
        TypeError: a label is not hashable, or ``players`` is neither an int nor a sequence.

    Examples:
        >>> p = Players(["alice", "bob", "carol"])
        >>> p.mask(frozenset({"alice", "carol"}))
        5
        >>> sorted(p.coalition(5))
        ['alice', 'carol']
    """

    def __init__(self, players: int | Sequence[Hashable]) -> None:
        if isinstance(players, bool):
            raise TypeError("players must be an int or a sequence of labels, got a bool")
        if isinstance(players, int | np.integer):
            if players < 1:
                raise ValueError(f"players must be a positive int, got {players}")
            labels: list[Hashable] = list(range(int(players)))
        elif isinstance(players, Iterable) and not isinstance(players, str | bytes):
            labels = list(players)
        else:
            raise TypeError(
                f"players must be an int n or a sequence of distinct labels, got "
                f"{type(players).__name__}"
            )
        if not labels:
            raise ValueError("players is empty: a game needs at least one player")
        index: dict[Hashable, int] = {}
        for i, label in enumerate(labels):
            try:
                hash(label)
            except TypeError as exc:
                raise TypeError(f"player label {label!r} is not hashable") from exc
            if label in index:
                raise ValueError(
                    f"duplicate player label {label!r} (positions {index[label]}, {i})"
                )
            index[label] = i
        self.labels: tuple[Hashable, ...] = tuple(labels)
        self._index = index
        self._split: _SplitTables | None = None  # built on first use
        # labels of every byte value at every byte position: coalition() joins <= n/8 tuples
        n = len(labels)
        self._byte_labels = [
            _subset_table(self.labels[base : base + 8], tuple) for base in range(0, n, 8)
        ]

    @property
    def n(self) -> int:
        """Number of players."""
        return len(self.labels)

    def split_tables(
        self,
    ) -> _SplitTables:
        """``(low, high, k)`` with ``coalition(m) == low[m & (2**k - 1)] | high[m >> k]`` for every
        mask.

        The value oracle's sequential loop builds one coalition per call from these two lookups
        (a union of two frozensets costs less than building one from a tuple). Both halves are
        tables of at most ``2**SPLIT_TABLE_BITS`` frozensets up to 24 players; beyond, ``high``
        builds its half per lookup (through :meth:`coalition`).
        """
        if self._split is None:
            n = self.n
            k = (n + 1) // 2 if n <= 2 * SPLIT_TABLE_BITS else SPLIT_TABLE_BITS
            low = _subset_table(self.labels[:k], frozenset)
            high: _HighHalf | list[frozenset[Hashable]] = (
                _subset_table(self.labels[k:], frozenset)
                if n - k <= SPLIT_TABLE_BITS
                else _HighHalf(self, k)
            )
            self._split = (low, high, k)
        return self._split

    @property
    def grand(self) -> int:
        """Mask of the grand coalition N."""
        return (1 << self.n) - 1

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"Players({list(self.labels)!r})"

    def index(self, label: Hashable) -> int:
        """Position of ``label``; raises ``KeyError`` naming it if unknown."""
        try:
            return self._index[label]
        except KeyError:
            raise KeyError(f"unknown player {label!r}") from None

    def mask(self, coalition: Iterable[Hashable]) -> int:
        """Bitmask of a coalition given by labels."""
        m = 0
        for label in coalition:
            m |= 1 << self.index(label)
        return m

    def coalition(self, mask: int) -> frozenset[Hashable]:
        """The coalition (a frozenset of labels) of a bitmask."""
        if type(mask) is not int:
            mask = int(mask)
        if mask >> self.n or mask < 0:
            raise ValueError(f"mask {mask} has bits beyond the {self.n} players")
        t = self._byte_labels
        # unrolled for up to 24 players (exact mode's hot path: one call per coalition)
        if len(t) == 1:
            return frozenset(t[0][mask])
        if len(t) == 2:
            return frozenset(t[0][mask & 255] + t[1][mask >> 8])
        if len(t) == 3:
            return frozenset(t[0][mask & 255] + t[1][(mask >> 8) & 255] + t[2][mask >> 16])
        out: list[Hashable] = []
        for table in self._byte_labels:
            if not mask:
                break
            out += table[mask & 255]
            mask >>= 8
        return frozenset(out)


class _HighHalf:
    """``high[h]``: the coalition of mask ``h << k`` (the high half of :meth:`Players.split_tables`
    when it is too large to tabulate)."""

    def __init__(self, players: Players, k: int) -> None:
        self.coalition = players.coalition
        self.k = k

    def __getitem__(self, h: int) -> frozenset[Hashable]:
        return self.coalition(h << self.k)


_SplitTables = tuple[list[frozenset[Hashable]], "_HighHalf | list[frozenset[Hashable]]", int]


def _subset_table(
    labels: Sequence[Hashable], kind: Callable[[tuple[Hashable, ...]], Any]
) -> list[Any]:
    """``kind`` of the labels of every mask over ``labels`` (``2**len(labels)`` entries), each
    listed in increasing position; built from the entry without the lowest bit (one small
    concatenation per entry)."""
    out: list[tuple[Hashable, ...]] = [()]
    for m in range(1, 1 << len(labels)):
        low = m & -m
        out.append((labels[low.bit_length() - 1], *out[m ^ low]))
    return out if kind is tuple else [kind(t) for t in out]


def members(mask: int) -> list[int]:
    """Indices of the set bits of ``mask`` in increasing order."""
    out, i = [], 0
    while mask:
        if mask & 1:
            out.append(i)
        mask >>= 1
        i += 1
    return out


def all_masks(n: int) -> npt.NDArray[np.int64]:
    """``arange(2**n)``: every coalition of ``n`` players as an int64 mask (n <= 30 advised)."""
    check_enumerable(n)
    return np.arange(1 << n, dtype=np.int64)


def mask_array(masks: npt.ArrayLike, n: int) -> npt.NDArray[Any]:
    """Masks as an array: ``int64`` for ``n <= 62`` (the fast path), else ``object`` (Python ints).

    Args:
        masks: int masks (Python ints, numpy ints or an array), length ``R``.
        n: number of players.

    Returns:
        Array of shape ``(R,)``; ``.tolist()`` gives Python ints either way.
    """
    if n <= MAX_VECTOR_PLAYERS:
        return np.asarray(masks, dtype=np.int64).reshape(-1)
    seq = _int_list(masks)
    out = np.empty(len(seq), dtype=object)
    out[:] = seq
    return out


def incidence(masks: npt.ArrayLike, n: int) -> npt.NDArray[np.float64]:
    """0/1 matrix ``M`` with ``M[r, i] = 1`` iff player ``i`` is in coalition ``masks[r]``.

    Any ``n``: int64 shifts for ``n <= 62``; beyond, each Python-int mask is unpacked from its
    little-endian bytes (``int.to_bytes`` then ``numpy.unpackbits``).

    Args:
        masks: int masks, shape ``(R,)`` (int64, or Python ints of any size).
        n: number of players.

    Returns:
        float64 array of shape ``(R, n)``.

    Raises:
        ValueError: a mask has bits beyond the ``n`` players (checked for ``n > 62``).
    """
    if n <= MAX_VECTOR_PLAYERS:
        m = np.asarray(masks, dtype=np.int64).reshape(-1)
        return ((m[:, None] >> np.arange(n, dtype=np.int64)) & 1).astype(np.float64)
    seq = _int_list(masks)
    width = (n + 7) // 8
    try:
        raw = b"".join(int(m).to_bytes(width, "little") for m in seq)
    except OverflowError as exc:
        raise ValueError(f"a mask has bits beyond the {n} players (or is negative)") from exc
    bits = np.unpackbits(
        np.frombuffer(raw, dtype=np.uint8).reshape(len(seq), width), axis=1, bitorder="little"
    )
    if bits[:, n:].any():
        raise ValueError(f"a mask has bits beyond the {n} players")
    return bits[:, :n].astype(np.float64)


def _int_list(masks: Any) -> list[int]:
    """Masks as Python ints (an array's ``tolist``, an int, or any iterable of ints)."""
    if isinstance(masks, np.ndarray):
        masks = masks.reshape(-1).tolist()
    elif isinstance(masks, int | np.integer):
        masks = [masks]
    return [int(m) for m in masks]


def masks_of(rows: npt.NDArray[Any]) -> list[int]:
    """Inverse of :func:`incidence`: 0/1 (or bool) rows of shape ``(R, n)`` to Python-int masks."""
    rows = np.asarray(rows).astype(bool)
    packed = np.packbits(rows, axis=1, bitorder="little")
    return [int.from_bytes(r.tobytes(), "little") for r in packed]


def subset_sums(x: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """``x(S)`` for every coalition S at once: ``out[mask] = sum(x[i] for i in mask)``.

    Built by doubling (``out[2^i : 2^{i+1}] = out[:2^i] + x[i]``): 2^n additions, no n·2^n matrix.

    Args:
        x: payoff vector of shape ``(n,)``.

    Returns:
        float64 array of shape ``(2**n,)``.
    """
    xv = np.asarray(x, dtype=np.float64).reshape(-1)
    n = xv.shape[0]
    check_enumerable(n)
    out = np.empty(1 << n, dtype=np.float64)
    out[0] = 0.0
    for i in range(n):
        lo = 1 << i
        np.add(out[:lo], xv[i], out=out[lo : 2 * lo])
    return out


def popcounts(n: int) -> npt.NDArray[np.int64]:
    """Coalition sizes ``|S|`` for every mask ``0 .. 2**n - 1``."""
    check_enumerable(n)
    out = np.zeros(1 << n, dtype=np.int64)
    for i in range(n):
        lo = 1 << i
        np.add(out[:lo], 1, out=out[lo : 2 * lo])
    return out


def check_enumerable(n: int) -> None:
    """Raise ``ValueError`` when all ``2**n`` coalitions cannot be enumerated as int64 masks."""
    if n > MAX_VECTOR_PLAYERS:
        raise ValueError(
            f"n={n} players: enumerating all 2**n coalitions needs n <= {MAX_VECTOR_PLAYERS} "
            "(and n <= 30 in practice); approximate mode handles any n"
        )
