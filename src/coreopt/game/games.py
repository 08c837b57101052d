"""Cooperative games with known least-core answers, and the benchmark families.

Every game is a :class:`Game`: a callable ``game(coalition) -> float`` on frozensets of labels
(ready to pass to :func:`coreopt.least_core`), a vectorised ``game.values(masks)`` and
``game.table()`` for exact work, and, where a closed form is known, ``game.epsilon`` (the least-core
value e* under the default conventions: proper coalitions, free payments) and ``game.payoff`` (a
least-core payoff, the unique one when stated).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from coreopt.game.coalitions import Players, all_masks, incidence, mask_array

ValuesFn = Callable[[npt.NDArray[np.int64]], npt.NDArray[np.float64]]


@dataclass(frozen=True)
class Game:
    """A transferable-utility game with a vectorised value function.

    Attributes:
        players: the players (labels and bit positions).
        values: ``values(masks)`` gives ``v`` for an int64 mask array, shape ``(R,) -> (R,)``.
        name: short description.
        epsilon: known least-core value ``e*`` (proper coalitions, free payments), else ``None``.
        payoff: a known least-core payoff in player order, shape ``(n,)``, else ``None``.
        payoff_unique: whether ``payoff`` is the unique least-core point.
    """

    players: Players
    values: ValuesFn = field(repr=False)
    name: str = "game"
    epsilon: float | None = None
    payoff: npt.NDArray[np.float64] | None = field(default=None, repr=False)
    payoff_unique: bool = False

    @property
    def n(self) -> int:
        """Number of players."""
        return self.players.n

    def __call__(self, coalition: frozenset[Hashable]) -> float:
        """``v(S)`` for a coalition given as a set of labels."""
        return float(self.values(mask_array([self.players.mask(coalition)], self.n))[0])

    def value_of_mask(self, mask: int) -> float:
        """``v(S)`` for a bitmask."""
        return float(self.values(mask_array([mask], self.n))[0])

    def table(self) -> npt.NDArray[np.float64]:
        """``v`` on every coalition, indexed by mask: shape ``(2**n,)``."""
        return np.asarray(self.values(all_masks(self.n)), dtype=np.float64)


def _sizes(masks: npt.NDArray[np.int64], n: int) -> npt.NDArray[np.int64]:
    return incidence(masks, n).sum(axis=1).astype(np.int64)


def symmetric(f: Callable[[int], float] | Sequence[float], n: int, name: str = "symmetric") -> Game:
    """Symmetric game ``v(S) = f(|S|)`` (``f(0)`` should be 0).

    Closed form (by symmetry the equal split is in the least core, since the LP's feasible set is
    convex and invariant under permutations): ``e* = max_{1<=s<=n-1} [f(s) - s f(n) / n]``.
    """
    fs = np.array([f(s) for s in range(n + 1)] if callable(f) else list(f), dtype=np.float64)
    if fs.shape != (n + 1,):
        raise ValueError(f"f must give n + 1 = {n + 1} values f(0..n), got {fs.shape[0]}")
    eps = max((fs[s] - s * fs[n] / n for s in range(1, n)), default=-np.inf) if n > 1 else None
    return Game(
        Players(n),
        lambda m: fs[_sizes(m, n)],
        name=name,
        epsilon=None if eps is None else float(eps),
        payoff=np.full(n, fs[n] / n),
    )


def majority(n: int) -> Game:
    """Simple majority game: ``v(S) = 1`` iff ``|S| >= q = floor(n/2) + 1``.

    ``e* = 1 - q/n`` for n >= 3, with the equal split.
    """
    if n < 3:
        raise ValueError("majority games need n >= 3 players")
    q = n // 2 + 1
    return symmetric(lambda s: float(s >= q), n, name=f"majority(n={n})")


def unanimity(n: int) -> Game:
    """Unanimity game on N: ``v(N) = 1``, else 0; ``e* = -1/n`` with the equal split (unique)."""
    g = symmetric(lambda s: float(s == n), n, name=f"unanimity(n={n})")
    return Game(g.players, g.values, g.name, -1.0 / n, g.payoff, payoff_unique=True)


def additive(weights: Sequence[float]) -> Game:
    """Additive game ``v(S) = sum_{i in S} a_i``: ``e* = 0``, and ``x = a`` is the unique point."""
    a = np.asarray(weights, dtype=np.float64)
    n = a.shape[0]
    return Game(
        Players(n),
        lambda m: incidence(m, n) @ a,
        name=f"additive(n={n})",
        epsilon=0.0,
        payoff=a.copy(),
        payoff_unique=True,
    )


def glove(left: int, right: int) -> Game:
    """Glove game: players ``0..left-1`` hold left gloves, the rest right gloves; a pair is worth 1.

    ``v(S) = min(#left in S, #right in S)``. Known answers (checked by enumeration in the tests):
    one of each, ``e* = -1/2`` with payoff ``(1/2, 1/2)``; balanced with ``k >= 2`` of each,
    ``e* = 0``.
    """
    if left < 1 or right < 1:
        raise ValueError("glove games need at least one left and one right glove")
    n = left + right

    def values(m: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        inc = incidence(m, n)
        return np.minimum(inc[:, :left].sum(1), inc[:, left:].sum(1))

    eps: float | None = None
    payoff = None
    unique = False
    if left == right == 1:
        eps, payoff, unique = -0.5, np.array([0.5, 0.5]), True
    elif left == right:
        eps, payoff = 0.0, np.full(n, 0.5)
    return Game(Players(n), values, f"glove({left},{right})", eps, payoff, unique)


def weighted_voting(weights: Sequence[float], quota: float) -> Game:
    """Weighted voting game: ``v(S) = 1`` iff the weights in S sum to at least ``quota``."""
    w = np.asarray(weights, dtype=np.float64)
    n = w.shape[0]
    return Game(
        Players(n),
        lambda m: (incidence(m, n) @ w >= quota).astype(np.float64),
        name=f"weighted_voting(n={n}, quota={quota:g})",
    )


def miner(n: int) -> Game:
    """Symmetric miner game: two miners carry one gold bar, ``v(S) = floor(|S| / 2)``."""
    return symmetric(lambda s: float(s // 2), n, name=f"miner(n={n})")


def coverage(n: int, facts: int = 40, seed: int = 0, density: float = 0.15) -> Game:
    """Weighted coverage: source i covers a random set of facts; ``v(S)`` = weight of facts covered.

    The retrieval stand-in of the benchmarks: an answer is as good as the facts its sources cover,
    and overlapping sources are substitutes (submodular).
    """
    covers, weight = coverage_structure(n, facts, seed, density)

    def values(m: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        inc = incidence(m, n)
        covered = (inc @ covers.astype(np.float64)) > 0
        return covered.astype(np.float64) @ weight

    return Game(Players(n), values, name=f"coverage(n={n}, facts={facts}, seed={seed})")


def coverage_structure(
    n: int, facts: int = 40, seed: int = 0, density: float = 0.15
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
    """The random instance behind :func:`coverage`: ``covers`` (``(n, facts)`` bool: source i
    covers fact f) and the facts' ``weight`` (``(facts,)``), e.g. for an exact MILP audit."""
    rng = np.random.default_rng(seed)
    covers = rng.random((n, facts)) < density
    covers[np.arange(n), rng.integers(0, facts, n)] = True  # every source covers something
    weight = rng.exponential(1.0, facts)
    return covers, weight


def pairwise(n: int, seed: int = 0, interaction: float = 0.5) -> Game:
    """Additive plus pairwise interactions: ``v(S) = sum_{i in S} a_i + sum_{i<j in S} b_ij``.

    ``a ~ U(0, 1)``; ``b_ij ~ N(0, interaction / n)`` (complements and substitutes mixed).
    """
    rng = np.random.default_rng(seed)
    a = rng.random(n)
    b = np.triu(rng.normal(0.0, interaction / n, (n, n)), 1)

    def values(m: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        inc = incidence(m, n)
        return inc @ a + np.einsum("ri,ij,rj->r", inc, b, inc)

    return Game(Players(n), values, name=f"pairwise(n={n}, seed={seed})")


def random_weighted_voting(n: int, seed: int = 0) -> Game:
    """Weighted voting: integer weights 1..10, quota just over half the total (benchmarks)."""
    w, quota = random_voting_weights(n, seed)
    return weighted_voting(w.tolist(), quota=quota)


def random_voting_weights(n: int, seed: int = 0) -> tuple[npt.NDArray[np.float64], float]:
    """The weights ``(n,)`` and quota of :func:`random_weighted_voting` (e.g. for a MILP audit)."""
    rng = np.random.default_rng(seed)
    w = rng.integers(1, 11, n).astype(np.float64)
    return w, float(np.floor(w.sum() / 2) + 1)


BENCHMARK_FAMILIES: dict[str, Callable[[int, int], Game]] = {
    "coverage": lambda n, seed: coverage(n, seed=seed),
    "pairwise": lambda n, seed: pairwise(n, seed=seed),
    "voting": lambda n, seed: random_weighted_voting(n, seed=seed),
    "miner": lambda n, seed: miner(n),
}
"""The four benchmark families of issue 3, as ``family(n, seed) -> Game``."""


__all__ = [
    "BENCHMARK_FAMILIES",
    "Game",
    "additive",
    "coverage",
    "coverage_structure",
    "glove",
    "majority",
    "miner",
    "pairwise",
    "random_voting_weights",
    "random_weighted_voting",
    "symmetric",
    "unanimity",
    "weighted_voting",
]
