"""Players and coalitions as bitmasks.

Players are labelled by any distinct hashables; internally player ``i`` (in the given order) is bit
``i`` of an integer mask, so coalition ``{0, 2}`` is mask ``0b101 = 5``. Masks of up to 62 players
fit in ``numpy.int64`` for vectorised work; larger games use Python ints (constraint generation
never enumerates them).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

import numpy as np
import numpy.typing as npt

MAX_VECTOR_PLAYERS = 62
"""Largest n whose masks fit in int64 (sign bit and one spare bit kept free)."""


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
        # labels of every byte value at every byte position: coalition() joins <= n/8 tuples
        n = len(labels)
        self._byte_labels = [
            [tuple(self.labels[base + i] for i in members(b) if base + i < n) for b in range(256)]
            for base in range(0, n, 8)
        ]

    @property
    def n(self) -> int:
        """Number of players."""
        return len(self.labels)

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
        mask = int(mask)
        if mask >> self.n:
            raise ValueError(f"mask {mask} has bits beyond the {self.n} players")
        out: list[Hashable] = []
        for table in self._byte_labels:
            if not mask:
                break
            out += table[mask & 255]
            mask >>= 8
        return frozenset(out)


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
    _check_vector_n(n)
    return np.arange(1 << n, dtype=np.int64)


def incidence(masks: npt.ArrayLike, n: int) -> npt.NDArray[np.float64]:
    """0/1 matrix ``M`` with ``M[r, i] = 1`` iff player ``i`` is in coalition ``masks[r]``.

    Args:
        masks: int masks, shape ``(R,)``.
        n: number of players.

    Returns:
        float64 array of shape ``(R, n)``.
    """
    _check_vector_n(n)
    m = np.asarray(masks, dtype=np.int64).reshape(-1)
    return ((m[:, None] >> np.arange(n, dtype=np.int64)) & 1).astype(np.float64)


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
    _check_vector_n(n)
    out = np.empty(1 << n, dtype=np.float64)
    out[0] = 0.0
    for i in range(n):
        lo = 1 << i
        np.add(out[:lo], xv[i], out=out[lo : 2 * lo])
    return out


def popcounts(n: int) -> npt.NDArray[np.int64]:
    """Coalition sizes ``|S|`` for every mask ``0 .. 2**n - 1``."""
    _check_vector_n(n)
    out = np.zeros(1 << n, dtype=np.int64)
    for i in range(n):
        lo = 1 << i
        np.add(out[:lo], 1, out=out[lo : 2 * lo])
    return out


def _check_vector_n(n: int) -> None:
    if n > MAX_VECTOR_PLAYERS:
        raise ValueError(f"n={n} players is too many for int64 bitmasks (max {MAX_VECTOR_PLAYERS})")
