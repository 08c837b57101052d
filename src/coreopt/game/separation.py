"""Separation oracles for approximate mode: propose coalitions S likely to maximise v(S) - x(S).

``v`` is a black box, so candidates come from a portfolio (our reconstruction of the separation
step of Harris, Prasad & Trockman 2026, *In-Context Credit Assignment via the Core*):

* a *surrogate* ``v̂(S) = c + a·1_S + Σ_{i<j} b_ij 1_i 1_j`` fitted by ridge least squares on every
  evaluated coalition and maximised exactly against ``x``: by enumeration of all masks for small n,
  by min-cut (networkx) when ``b >= 0`` makes ``v̂ - x`` supermodular, else by a HiGHS MILP;
* *local search*: 1-bit flips of the tight coalitions, ranked by the surrogate;
* uniform random *probes*, which also estimate how often the payoff is violated.

The candidates are then evaluated for real in one batch by the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import highspy
import numpy as np
import numpy.typing as npt

from coreopt.game.coalitions import (
    MAX_VECTOR_PLAYERS,
    incidence,
    masks_of,
    members,
    popcounts,
    subset_sums,
)
from coreopt.game.lp import new_highs

SIZE_KNOTS = 8
"""Hinge functions ``max(0, |S| - t)`` of the ``"size"`` surrogate, at evenly spaced sizes t."""

DIRECT_SOLVE_MAX_FEATURES = 600
"""Above this many features the normal equations are solved by warm-started conjugate gradients
(a fixed number of iterations: deterministic) instead of a dense factorisation each round."""


@dataclass(frozen=True)
class Surrogate:
    """Fitted ``v̂(S) = intercept + a·1_S + Σ_{i<j} b_ij 1_i 1_j + g(|S|)`` (``b`` upper
    triangular; ``g``, shape ``(n + 1,)``, is zero unless the ``"size"`` kind was fitted)."""

    intercept: float
    a: npt.NDArray[np.float64]
    b: npt.NDArray[np.float64]
    g: npt.NDArray[np.float64] | None = None

    @property
    def n(self) -> int:
        return self.a.shape[0]

    @property
    def pairwise(self) -> bool:
        """Whether any pairwise term is non-zero."""
        return bool(np.any(self.b))

    def predict(self, masks: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """``v̂`` on masks, shape ``(R,)`` (int64 or, for n > 62, Python-int masks)."""
        inc = incidence(masks, self.n)
        out = self.intercept + inc @ self.a
        if self.pairwise:
            out = out + np.einsum("ri,ij,rj->r", inc, self.b, inc)
        if self.g is not None:
            out = out + self.g[inc.sum(axis=1).astype(np.int64)]
        return np.asarray(out, dtype=np.float64)

    def all_scores(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """``v̂(S) - x(S)`` on every mask ``0 .. 2**n - 1`` by doubling (no ``n·2^n`` matrix)."""
        n = self.n
        out = np.empty(1 << n)
        out[0] = self.intercept
        c = self.a - x
        for i in range(n):
            lo = 1 << i
            pair = subset_sums(self.b[:i, i]) if i else np.zeros(1)
            np.add(out[:lo], c[i] + pair, out=out[lo : 2 * lo])
        if self.g is not None:
            out += self.g[popcounts(n)]
        return out


def feature_count(n: int, kind: str) -> int:
    """Number of surrogate features (columns of the design matrix) for ``n`` players."""
    extra = {
        "quadratic": n * (n - 1) // 2,
        "quadratic_size": n * (n - 1) // 2 + SIZE_KNOTS,
        "size": SIZE_KNOTS,
        "linear": 0,
    }[kind]
    return 1 + n + extra


def _knots(n: int) -> npt.NDArray[np.float64]:
    return np.unique(np.linspace(1, max(n - 1, 1), SIZE_KNOTS + 2)[1:-1].round())[:SIZE_KNOTS]


def _size_basis(sizes: npt.NDArray[np.float64], n: int) -> npt.NDArray[np.float64]:
    """Hinges ``max(0, size - t)`` at :func:`_knots`, padded to ``SIZE_KNOTS`` columns."""
    t = _knots(n)
    out = np.zeros((sizes.shape[0], SIZE_KNOTS))
    out[:, : t.shape[0]] = np.maximum(0.0, sizes[:, None] - t[None, :])
    return out


def _features(masks: npt.ArrayLike, n: int, kind: str) -> npt.NDArray[np.float64]:
    """Design matrix of shape ``(R, feature_count(n, kind))``: ``[1, 1_S]`` then the pairs
    ``(1_i 1_j)_{i<j}`` (``"quadratic"``, ``"quadratic_size"``) and/or the size hinges
    (``"size"``, ``"quadratic_size"``)."""
    inc = incidence(masks, n)
    feats = [np.ones((inc.shape[0], 1)), inc]
    if kind in ("quadratic", "quadratic_size"):
        iu = np.triu_indices(n, 1)
        feats.append(inc[:, iu[0]] * inc[:, iu[1]])
    if kind in ("size", "quadratic_size"):
        feats.append(_size_basis(inc.sum(axis=1), n))
    return np.concatenate(feats, axis=1)


def _surrogate_of(coef: npt.NDArray[np.float64], n: int, kind: str) -> Surrogate:
    b = np.zeros((n, n))
    g = None
    pairs = n * (n - 1) // 2 if kind in ("quadratic", "quadratic_size") else 0
    if pairs:
        b[np.triu_indices(n, 1)] = coef[1 + n : 1 + n + pairs]
    if kind in ("size", "quadratic_size"):
        g = _size_basis(np.arange(n + 1, dtype=np.float64), n) @ coef[1 + n + pairs :]
    return Surrogate(float(coef[0]), coef[1 : 1 + n].copy(), b, g)


def _ridge(gram: npt.NDArray[np.float64], ridge: float) -> npt.NDArray[np.float64]:
    """Ridge on all but the intercept, relative to the mean squared feature norm."""
    p = gram.shape[0]
    lam = ridge * max(1.0, float(np.trace(gram)) / p)
    penalty = np.full(p, lam)
    penalty[0] = 0.0
    return penalty + 1e-12


def _solve_normal(
    gram: npt.NDArray[np.float64], rhs: npt.NDArray[np.float64], n: int, kind: str, ridge: float
) -> Surrogate:
    # Normal equations (features are few: n(n+1)/2 + 1), ridge on all but the intercept.
    coef = np.asarray(np.linalg.solve(gram + np.diag(_ridge(gram, ridge)), rhs), dtype=np.float64)
    return _surrogate_of(coef, n, kind)


def fit_surrogate(
    masks: npt.ArrayLike,
    values: npt.NDArray[np.float64],
    n: int,
    kind: str = "quadratic",
    ridge: float = 1e-6,
    weights: npt.NDArray[np.float64] | None = None,
) -> Surrogate:
    """Ridge least-squares fit of a linear, size or pairwise surrogate on evaluated coalitions.

    Args:
        masks: evaluated coalitions, shape ``(R,)``.
        values: their values, shape ``(R,)``.
        n: number of players.
        kind: ``"linear"`` (``c + a·1_S``), ``"size"`` (linear plus a piecewise-linear function
            of ``|S|``: ``1 + n + 8`` features, for any n), ``"quadratic"`` (pairwise:
            ``1 + n(n+1)/2`` features) or ``"quadratic_size"`` (both: ``1 + n(n+1)/2 + 8``).
        ridge: Tikhonov weight relative to the mean squared feature norm; keeps an
            under-determined quadratic fit (``R < n(n+1)/2 + 1``) well posed.
        weights: per-coalition weights of the squared errors (``None``: uniform).
    """
    X = _features(masks, n, kind)
    Xw = X if weights is None else X * weights[:, None]
    return _solve_normal(Xw.T @ X, Xw.T @ values, n, kind, ridge)


class SurrogateFit:
    """The unweighted :func:`fit_surrogate` kept up to date as coalitions are evaluated.

    Rows are only ever added, so the normal equations ``X^T X`` and ``X^T y`` are accumulated:
    a round costs its new rows times the squared feature count plus one solve, instead of a refit
    over every row. Above ``DIRECT_SOLVE_MAX_FEATURES`` features (quadratic at n > 34) the solve
    is ``cg_iterations`` steps of conjugate gradients warm-started from the previous round's
    coefficients (O(p^2) each instead of O(p^3)): a fixed amount of work, so the same rows give
    the same surrogate on any machine.
    """

    def __init__(
        self, n: int, kind: str = "quadratic", ridge: float = 1e-6, cg_iterations: int = 20
    ) -> None:
        self.n, self.kind, self.ridge = n, kind, ridge
        p = feature_count(n, kind)
        self.gram = np.zeros((p, p))
        self.rhs = np.zeros(p)
        self.seen: set[int] = set()
        self.cg_iterations = cg_iterations
        self._coef: npt.NDArray[np.float64] | None = None

    def add(self, masks: list[int], values: list[float]) -> None:
        """Add the rows of coalitions not seen before."""
        new = [(m, v) for m, v in zip(masks, values, strict=True) if m not in self.seen]
        if not new:
            return
        self.seen.update(m for m, _ in new)
        X = _features([m for m, _ in new], self.n, self.kind)
        self.gram += X.T @ X
        self.rhs += X.T @ np.array([v for _, v in new])

    def fit(self) -> Surrogate:
        """The ridge least-squares surrogate over every row added so far."""
        p = self.gram.shape[0]
        if p <= DIRECT_SOLVE_MAX_FEATURES or self._coef is None:
            if p <= DIRECT_SOLVE_MAX_FEATURES:
                return _solve_normal(self.gram, self.rhs, self.n, self.kind, self.ridge)
            self._coef = np.zeros(p)
        A_diag = _ridge(self.gram, self.ridge)
        # Jacobi-preconditioned conjugate gradients on (G + diag(ridge)) c = r, warm started
        precond = 1.0 / (np.diag(self.gram) + A_diag)
        c = self._coef
        r = self.rhs - (self.gram @ c + A_diag * c)
        z = precond * r
        d = z.copy()
        rz = float(r @ z)
        for _ in range(self.cg_iterations):
            if rz <= 1e-30:
                break
            q = self.gram @ d + A_diag * d
            alpha = rz / float(d @ q)
            c = c + alpha * d
            r = r - alpha * q
            z = precond * r
            rz_new = float(r @ z)
            d = z + (rz_new / rz) * d
            rz = rz_new
        self._coef = c
        return _surrogate_of(c, self.n, self.kind)


def top_by_enumeration(
    surrogate: Surrogate, x: npt.NDArray[np.float64], k: int, exclude: set[int]
) -> list[int]:
    """The ``k`` proper coalitions not in ``exclude`` with the largest ``v̂(S) - x(S)``."""
    scores = surrogate.all_scores(x)
    grand = (1 << surrogate.n) - 1
    scores[0] = scores[grand] = -np.inf
    want = min(k + len(exclude) + 2, scores.shape[0])
    idx = np.argpartition(scores, -want)[-want:]
    idx = idx[np.argsort(-scores[idx], kind="stable")]
    return [int(m) for m in idx if int(m) not in exclude and np.isfinite(scores[m])][:k]


def best_by_mincut(surrogate: Surrogate, x: npt.NDArray[np.float64]) -> int | None:
    """Exact maximiser of ``v̂(S) - x(S)`` when ``b >= 0`` (supermodular), by one s-t min-cut.

    Minimise ``E(z) = Σ u_i z_i + Σ w_ij z_i z_j`` with ``u = x - a`` and ``w = -b <= 0``; using
    ``z_i z_j = z_i - z_i (1 - z_j)``, ``E`` becomes unary terms plus cut costs ``b_ij`` on edges
    ``i -> j`` (paid when ``i`` is on the source side, ``z_i = 1``, and ``j`` is not).
    Returns ``None`` if ``b`` has a negative entry, the surrogate has a size term ``g`` (not a
    cut cost), or the optimum is the empty or grand coalition.
    """
    b = surrogate.b
    if (b < -1e-12).any() or (surrogate.g is not None and np.any(surrogate.g)):
        return None
    import networkx as nx

    n = surrogate.n
    unary = (x - surrogate.a) - b.sum(axis=1)  # Σ_j w_ij z_i folded into the unary term
    g = nx.DiGraph()
    g.add_nodes_from(["s", "t", *range(n)])
    for i in range(n):
        if unary[i] >= 0:
            g.add_edge(i, "t", capacity=float(unary[i]))
        else:
            g.add_edge("s", i, capacity=float(-unary[i]))
        for j in range(i + 1, n):
            if b[i, j] > 0:
                g.add_edge(i, j, capacity=float(b[i, j]))
    _, (source_side, _) = nx.minimum_cut(g, "s", "t")
    mask = sum(1 << i for i in source_side if i != "s")
    return None if mask in (0, (1 << n) - 1) else int(mask)


def top_by_milp(
    surrogate: Surrogate,
    x: npt.NDArray[np.float64],
    k: int,
    exclude: set[int],
    max_nodes: int = 200,
) -> list[int]:
    """Up to ``k`` maximisers of ``v̂(S) - x(S)`` over proper coalitions by a HiGHS MILP.

    Binary ``z_i`` (membership) and ``y_ij = z_i z_j`` linearised (``y <= z_i``, ``y <= z_j`` when
    ``b_ij > 0``; ``y >= z_i + z_j - 1`` when ``b_ij < 0``); ``1 <= Σ z <= n - 1``. Each solution
    found is cut off (no-good cut) before the next solve, as are the masks in ``exclude`` that the
    solver hits; at most ``3k`` solves. Each solve is capped in *work*, not seconds:
    ``max_nodes`` branch-and-bound nodes (HiGHS ``mip_max_nodes``), so that the candidates, and
    the payoff they lead to, do not depend on the machine's load; a capped solve contributes its
    best integer solution so far.
    """
    n = surrogate.n
    inf = highspy.kHighsInf
    iu, ju = np.nonzero(np.abs(np.triu(surrogate.b, 1)) > 1e-15)
    pairs = list(zip(iu.tolist(), ju.tolist(), strict=True))
    h = new_highs()
    h.setOptionValue("random_seed", 0)
    h.setOptionValue("mip_max_nodes", int(max_nodes))
    ncol = n + len(pairs)
    cost = np.concatenate([-(surrogate.a - x), -surrogate.b[iu, ju]])
    none_i = np.array([], dtype=np.int32)
    h.addCols(ncol, cost, np.zeros(ncol), np.ones(ncol), 0, none_i, none_i, np.array([]))
    h.changeColsIntegrality(
        n, np.arange(n, dtype=np.int32), np.full(n, highspy.HighsVarType.kInteger)
    )

    def row(lo: float, hi: float, idx: list[int], val: list[float]) -> None:
        h.addRow(lo, hi, len(idx), np.array(idx, dtype=np.int32), np.array(val, dtype=np.float64))

    row(1.0, n - 1.0, list(range(n)), [1.0] * n)
    for p, (i, j) in enumerate(pairs):
        col = n + p
        if surrogate.b[i, j] > 0:
            row(-inf, 0.0, [col, i], [1.0, -1.0])
            row(-inf, 0.0, [col, j], [1.0, -1.0])
        else:
            row(-1.0, inf, [col, i, j], [1.0, -1.0, -1.0])
    found: list[int] = []
    usable = (
        highspy.HighsModelStatus.kOptimal,
        highspy.HighsModelStatus.kSolutionLimit,
        highspy.HighsModelStatus.kIterationLimit,
    )
    # bounded: each solve either finds a new coalition or cuts off a known one; known optima
    # beyond 2k mean the surrogate has nothing new to offer this round
    for _ in range(3 * k):
        h.run()
        if h.getModelStatus() not in usable or not h.getSolution().value_valid:
            break
        z = np.asarray(h.getSolution().col_value[:n]) > 0.5
        mask = int(sum(1 << i for i in range(n) if z[i]))
        if mask not in exclude:
            found.append(mask)
            if len(found) >= k:
                break
        ones = [i for i in range(n) if z[i]]
        zeros = [i for i in range(n) if not z[i]]
        # no-good cut: Σ_{i in ones} (1 - z_i) + Σ_{i in zeros} z_i >= 1
        row(1.0 - len(ones), inf, ones + zeros, [-1.0] * len(ones) + [1.0] * len(zeros))
    return found


def top_by_size(
    surrogate: Surrogate, x: npt.NDArray[np.float64], k: int, exclude: set[int]
) -> list[int]:
    """Up to ``k`` maximisers of ``v̂(S) - x(S)`` for a surrogate without pairwise terms.

    With ``b = 0``, ``v̂(S) - x(S) = c + Σ_{i∈S} (a_i - x_i) + g(|S|)``: for each size ``s`` the
    best coalition is the ``s`` players of largest ``a_i - x_i``, so sorting once solves it
    exactly for any n (O(n log n)). Candidates: those best coalitions of each size, best first,
    then their swaps of one member for one non-member (next best per size), skipping ``exclude``.
    """
    if surrogate.pairwise:
        raise ValueError("top_by_size needs a surrogate without pairwise terms (b = 0)")
    n = surrogate.n
    c = surrogate.a - x
    order = np.argsort(-c, kind="stable")
    sizes = np.arange(1, n)
    prefix = np.cumsum(c[order])[: n - 1]
    g = surrogate.g[1:n] if surrogate.g is not None else np.zeros(n - 1)
    score = prefix + g
    ranked = sizes[np.argsort(-score, kind="stable")]
    out: list[int] = []
    seen = set(exclude)
    bits = [1 << int(i) for i in order]
    prefix_masks = np.cumsum(np.array(bits, dtype=object)).tolist()
    for s in ranked.tolist():
        m = int(prefix_masks[s - 1])
        if m not in seen:
            seen.add(m)
            out.append(m)
            if len(out) >= k:
                return out
    # swaps at the best sizes: drop the weakest member, add the strongest non-member
    for s in ranked.tolist():
        base = int(prefix_masks[s - 1])
        for drop in range(s - 1, max(s - 4, -1), -1):
            for add in range(s, min(s + 3, n)):
                m = base ^ bits[drop] ^ bits[add]
                if m not in seen:
                    seen.add(m)
                    out.append(m)
                    if len(out) >= k:
                        return out
    return out


def flip_gains(
    surrogate: Surrogate, x: npt.NDArray[np.float64], Z: npt.NDArray[np.bool_]
) -> npt.NDArray[np.float64]:
    """Change of ``v̂(S) - x(S)`` when player ``i`` is flipped in or out of each coalition,
    shape ``(len(Z), n)`` for incidence rows ``Z`` (bool, ``(R, n)``)."""
    n = surrogate.n
    g = surrogate.g if surrogate.g is not None else np.zeros(n + 1)
    size = Z.sum(axis=1)
    field = surrogate.a - x + Z.astype(np.float64) @ (surrogate.b + surrogate.b.T)
    # flipping i: in -> out loses field_i (its pairs with the others), out -> in gains it
    sign = np.where(Z, -1.0, 1.0)
    drop = (g[np.maximum(size - 1, 0)] - g[size])[:, None]
    add = (g[np.minimum(size + 1, n)] - g[size])[:, None]
    return np.asarray(sign * field + np.where(Z, drop, add), dtype=np.float64)


def top_by_ascent(
    surrogate: Surrogate,
    x: npt.NDArray[np.float64],
    k: int,
    exclude: set[int],
    starts: list[int],
    max_steps: int | None = None,
) -> list[int]:
    """Up to ``k`` local maxima of ``v̂(S) - x(S)`` by steepest 1-flip ascent on the surrogate.

    All starts climb at once (one ``(starts, n) @ (n, n)`` product per step: O(starts · n²)),
    for at most ``max_steps`` steps (default ``2n``): a fixed amount of work for any n, no MILP.
    Flips that would make a coalition empty or grand are not taken. Returns the distinct end
    points not in ``exclude``, best first, then the best unexcluded 1-flip neighbours of the end
    points that were excluded (a known local maximum's neighbourhood is the next place to look).
    """
    n = surrogate.n
    if not starts:
        return []
    Z = incidence(starts, n).astype(bool)
    rows = np.arange(Z.shape[0])
    for _ in range(2 * n if max_steps is None else max_steps):
        size = Z.sum(axis=1)
        gain = flip_gains(surrogate, x, Z)
        gain[Z & (size[:, None] <= 1)] = -np.inf
        gain[~Z & (size[:, None] >= n - 1)] = -np.inf
        best = np.argmax(gain, axis=1)
        move = gain[rows, best] > 1e-12
        if not move.any():
            break
        Z[rows[move], best[move]] ^= True
    ends = masks_of(Z)
    score = surrogate.predict(ends) - incidence(ends, n) @ x
    out: list[int] = []
    seen = set(exclude)
    blocked: list[int] = []
    for i in np.argsort(-score, kind="stable").tolist():
        m = ends[i]
        if m in seen:
            if m in exclude:
                blocked.append(m)
            continue
        seen.add(m)
        out.append(m)
    if len(out) < k and blocked:
        grand = (1 << n) - 1
        flips = [m ^ (1 << i) for m in dict.fromkeys(blocked) for i in range(n)]
        flips = [m for m in dict.fromkeys(flips) if m not in seen and m not in (0, grand)]
        if flips:
            fs = surrogate.predict(flips) - incidence(flips, n) @ x
            out += [flips[i] for i in np.argsort(-fs, kind="stable")[: k - len(out)].tolist()]
    return out[:k]


def local_search(tight: list[int], n: int, exclude: set[int]) -> list[int]:
    """Every 1-bit flip of the tight coalitions (proper, not in ``exclude``)."""
    grand = (1 << n) - 1
    out: list[int] = []
    seen = set(exclude)
    for mask in tight:
        for i in range(n):
            m = mask ^ (1 << i)
            if m in (0, grand) or m in seen:
                continue
            seen.add(m)
            out.append(m)
    return out


def top_flips(
    surrogate: Surrogate,
    x: npt.NDArray[np.float64],
    bases: list[int],
    k: int,
    exclude: set[int],
) -> list[int]:
    """The ``k`` 1-bit flips of ``bases`` of largest predicted excess ``v̂(S) - x(S)`` (proper,
    not in ``exclude``, distinct), best first: :func:`local_search` ranked by the surrogate
    without materialising the ``len(bases) · n`` flipped coalitions (``(bases, n)`` arrays of
    gains instead; at n = 1,000 with 1,000 tight rows the materialised ranking took gigabytes).
    """
    n = surrogate.n
    if not bases or k < 1:
        return []
    grand = (1 << n) - 1
    Z = incidence(bases, n).astype(bool)
    base = surrogate.predict(bases) - Z.astype(np.float64) @ x
    pred = base[:, None] + flip_gains(surrogate, x, Z)
    out: list[int] = []
    seen = set(exclude)
    for flat in np.argsort(-pred, axis=None, kind="stable").tolist():
        r, i = divmod(flat, n)
        m = bases[r] ^ (1 << i)
        if m in (0, grand) or m in seen:
            continue
        seen.add(m)
        out.append(m)
        if len(out) >= k:
            break
    return out


def random_masks(rng: np.random.Generator, n: int, k: int) -> list[int]:
    """``k`` uniform random proper coalitions (each player in with probability 1/2), any n."""
    grand = (1 << n) - 1
    out: list[int] = []
    weights = 1 << np.arange(min(n, MAX_VECTOR_PLAYERS), dtype=np.int64)
    while len(out) < k:
        bits = rng.integers(0, 2, size=(k, n), dtype=np.int64)
        drawn = (bits @ weights).tolist() if n <= MAX_VECTOR_PLAYERS else masks_of(bits)
        for m in drawn:
            if m not in (0, grand):
                out.append(int(m))
        if n == 1:
            break
    return out[:k]


GREEDY_MAX_DROPS = 64
""":func:`greedy_paths`: removals tried per step at most (all of them up to 64 members; bounds
the calls of one step at large n)."""

GREEDY_MAX_SWAPS = 4096
""":func:`greedy_paths`: swaps ranked per step at most (every swap up to 64 x 64)."""


def greedy_paths(
    evaluate: Callable[[list[int]], None],
    value: Callable[[int], float | None],
    surrogate: Surrogate | None,
    x: npt.NDArray[np.float64],
    starts: list[int],
    per_step: int,
    tol: float,
    max_moves: int | None = None,
    swaps: bool = True,
    index: MarginalIndex | None = None,
) -> list[int]:
    """Local ascents of the TRUE excess ``v(S) - x(S)`` from ``starts``, all paths in lock-step.

    A separation aimed at the payoff ``x`` for games whose binding coalitions a pairwise
    surrogate cannot see (coverage-like, submodular games: the surrogate under-predicts the
    few small coalitions that cover almost everything). A path ``S`` tries, in turn:

    * **add**: the ``per_step`` additions ``S + j`` of largest surrogate-predicted gain in
      excess (``v̂(S + j) - v̂(S) - x_j``; ``-x_j`` alone without a surrogate), not yet known;
    * **drop**: every removal ``S - i`` (above ``GREEDY_MAX_DROPS`` members, that many of
      largest predicted gain);
    * **swap**: the ``per_step`` swaps ``S - i + j`` of largest predicted gain (known swaps
      among the ``GREEDY_MAX_SWAPS`` best-ranked count too);

    each phase's calls for all paths in one batch (``evaluate``). The path moves to the known
    neighbour of that kind with the largest true excess when it gains more than ``tol`` (known
    neighbours cost nothing) and starts again with additions; else it goes to the next phase,
    and after the swaps it ends. At most ``max_moves`` moves per path (default ``2n``): a
    deterministic amount of work, no wall clock.

    Args:
        evaluate: pays for a list of coalitions (within its budget; values then readable).
        value: ``v(mask)`` when known, else ``None``.
        surrogate: ranks the additions and swaps (``None``: by ``x`` alone).
        x: the payoff aimed at, shape ``(n,)``.
        starts: proper coalitions to climb from (evaluated first when unknown).
        per_step: real evaluations per path in an add or swap step.
        tol: smallest gain that counts as an improvement.
        index: marginal gains paid for so far (:class:`MarginalIndex`; the paths' calls are
            added to it). When given, a neighbour is not evaluated when its bound on the change
            in excess is at most ``tol``: ``u_j(S) - x_j`` for ``S + j``, ``x_i - l_i(S)`` for
            ``S - i`` and ``u_j(S - i) - x_j + x_i - l_i(S)`` for ``S - i + j``. On a
            submodular game such a neighbour cannot gain, so the calls go to those that can;
            on other games the bounds are a heuristic.

    Returns:
        The paths' end points (local maxima of the true excess over the neighbours tried),
        best first, without repeats.
    """
    n = x.shape[0]
    grand = (1 << n) - 1
    if index is not None:
        pay, bounds = evaluate, index

        def evaluate(masks: list[int]) -> None:
            pay(masks)
            got = [m for m in masks if value(m) is not None]
            bounds.add(got, [float(value(m)) for m in got])  # type: ignore[arg-type]

    starts = [m for m in dict.fromkeys(starts) if m not in (0, grand)]
    evaluate([m for m in starts if value(m) is None])
    limit = 2 * n if max_moves is None else max_moves
    last_phase = 2 if swaps else 1
    a = np.zeros(n) if surrogate is None else surrogate.a
    bsym = np.zeros((n, n)) if surrogate is None else surrogate.b + surrogate.b.T
    ends: dict[int, float] = {}
    # (coalition, phase, moves); phases 0 add, 1 drop, 2 swap
    state = [(m, 0, 0) for m in starts if value(m) is not None]
    while state:
        asks: list[list[int]] = []
        nbs: list[list[int]] = []
        for m, phase, _ in state:
            z = np.array([(m >> k) & 1 for k in range(n)], dtype=bool)
            ins, outs = np.flatnonzero(z), np.flatnonzero(~z)
            field = a + z.astype(np.float64) @ bsym - x  # predicted gain of adding k
            if phase == 0:
                ok = ins.size < n - 1
                order = outs[np.argsort(-field[outs], kind="stable")] if ok else outs[:0]
                nb = [m | (1 << int(k)) for k in order]
                can = None
                if index is not None and nb:
                    can = ((index.upper(m) - x)[order] > tol).tolist()
                asks.append(_to_pay(nb, can, value, per_step))
            elif phase == 1:
                if ins.size > GREEDY_MAX_DROPS:  # large n: the best-ranked removals only
                    ins = ins[np.argsort(field[ins], kind="stable")[:GREEDY_MAX_DROPS]]
                nb = [m ^ (1 << int(k)) for k in ins] if z.sum() > 1 else []
                can = None
                if index is not None and nb:
                    can = ((x - index.lower(m))[ins] > tol).tolist()
                asks.append(_to_pay(nb, can, value, None))
            else:
                # v̂(S - i + j) - v̂(S) - x_j + x_i = field_j - field_i - bsym_ij
                gain = field[outs][None, :] - field[ins][:, None] - bsym[np.ix_(ins, outs)]
                flat = np.argsort(-gain, axis=None, kind="stable")[:GREEDY_MAX_SWAPS]
                rows, cols = np.unravel_index(flat, gain.shape)
                nb = [
                    m ^ (1 << int(ins[p])) ^ (1 << int(outs[q]))
                    for p, q in zip(rows.tolist(), cols.tolist(), strict=True)
                ]
                can = None
                if index is not None and nb:
                    drop = (x - index.lower(m))[ins]
                    up = index.upper_without(m, ins.tolist())[:, outs] - x[outs][None, :]
                    can = ((up + drop[:, None])[rows, cols] > tol).tolist()
                asks.append(_to_pay(nb, can, value, per_step))
            nbs.append(nb)
        evaluate(list(dict.fromkeys(c for ask in asks for c in ask)))
        nxt: list[tuple[int, int, int]] = []
        for (m, phase, moves), ask, nb in zip(state, asks, nbs, strict=True):
            best, best_ex = m, _excess(value, x, m)
            for c in nb:
                if value(c) is not None:
                    ex = _excess(value, x, c)
                    if ex > best_ex + tol:
                        best, best_ex = c, ex
            lost = any(value(c) is None for c in ask)  # the budget ran out
            if lost:
                ends[best] = best_ex
            elif best != m and moves + 1 < limit:
                nxt.append((best, 0, moves + 1))
            elif best == m and phase < last_phase:
                nxt.append((m, phase + 1, moves))
            else:
                ends[best] = best_ex
        state = list(dict.fromkeys(nxt))
    return sorted(ends, key=lambda m: -ends[m])


def _to_pay(
    nb: list[int],
    can: list[bool] | None,
    value: Callable[[int], float | None],
    cap: int | None,
) -> list[int]:
    """The neighbours ``nb`` not yet paid for, in order, skipping those whose ``can`` is false
    (``None``: none skipped); at most ``cap`` (``None``: all)."""
    keep = [c for i, c in enumerate(nb) if (can is None or can[i]) and value(c) is None]
    return keep if cap is None else keep[:cap]


def _excess(value: Callable[[int], float | None], x: npt.NDArray[np.float64], mask: int) -> float:
    v = value(mask)
    assert v is not None
    return v - _dot(x, mask)


def _dot(x: npt.NDArray[np.float64], mask: int) -> float:
    """``x(S)`` for a bitmask (any n), summed in increasing player order."""
    return sum((float(x[i]) for i in members(mask)), 0.0)


class MarginalIndex:
    """Marginal gains ``v(T + j) - v(T)`` between pairs of evaluated coalitions (the *edges*).

    Every evaluated coalition ``M`` is checked against its ``n`` one-flip partners; each pair
    ``(T, T + j)`` with both values known is one edge ``(T, j, gain)``. For a submodular game
    (marginal gains shrink as the coalition grows) the edges bound the marginal gain of ``j`` at
    any ``S``: from above by any edge with ``T ⊆ S`` (:meth:`upper`), from below by any edge with
    ``T ⊇ S - j`` (:meth:`lower`). :func:`greedy_paths` skips the neighbours whose bounds show
    they cannot raise the excess (the pruning of lazy greedy, Minoux 1978); on a game that is
    not submodular the bounds can be wrong, and a skipped neighbour is only a missed one.

    ``v(∅)`` is taken as ``empty_value`` (0: the solver's values have ``v(∅)`` subtracted or
    assumed zero), so the singletons give the first edges ``(∅, j, v({j}))``. Storage grows
    by doubling; a query is one vectorised pass over the edges (int64 masks up to 62 players,
    Python ints beyond).
    """

    def __init__(self, n: int, empty_value: float = 0.0) -> None:
        self.n = n
        self.known: dict[int, float] = {0: float(empty_value)}
        self._size = 0
        dtype: Any = np.int64 if n <= MAX_VECTOR_PLAYERS else object
        self._base_buf = np.zeros(256, dtype=dtype)
        self._player_buf = np.zeros(256, dtype=np.int64)
        self._gain_buf = np.zeros(256, dtype=np.float64)

    def add(self, masks: list[int], values: list[float]) -> None:
        """Add evaluated coalitions (values in the same units as ``empty_value``)."""
        bits = [1 << j for j in range(self.n)]
        base: list[int] = []
        player: list[int] = []
        gain: list[float] = []
        for m, v in zip(masks, values, strict=True):
            if m in self.known:
                continue
            self.known[m] = float(v)
            for j, bit in enumerate(bits):
                pv = self.known.get(m ^ bit)
                if pv is None:
                    continue
                if m & bit:
                    base.append(m ^ bit)
                    gain.append(float(v) - pv)
                else:
                    base.append(m)
                    gain.append(pv - float(v))
                player.append(j)
        if not base:
            return
        end = self._size + len(base)
        if end > self._base_buf.shape[0]:
            cap = max(end, 2 * self._base_buf.shape[0])
            for name in ("_base_buf", "_player_buf", "_gain_buf"):
                old = getattr(self, name)
                grown = np.zeros(cap, dtype=old.dtype)
                grown[: self._size] = old[: self._size]
                setattr(self, name, grown)
        self._base_buf[self._size : end] = base
        self._player_buf[self._size : end] = player
        self._gain_buf[self._size : end] = gain
        self._size = end

    @property
    def _arrays(self) -> tuple[npt.NDArray[Any], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        k = self._size
        return self._base_buf[:k], self._player_buf[:k], self._gain_buf[:k]

    @property
    def edges(self) -> int:
        """Number of edges (pairs of evaluated coalitions one player apart)."""
        return self._size

    def _within(self, mask: int) -> npt.NDArray[np.bool_]:
        base = self._arrays[0]
        if self.n <= MAX_VECTOR_PLAYERS:
            return np.asarray((base & np.int64(~mask)) == 0)
        return np.array([(b & ~mask) == 0 for b in base.tolist()], dtype=bool)

    def upper(self, mask: int) -> npt.NDArray[np.float64]:
        """Shape ``(n,)``: the least gain of ``j`` over edges with ``T ⊆ mask`` (``inf`` where
        there is none); for ``j`` outside ``mask`` an upper bound on ``v(S + j) - v(S)`` for a
        submodular game."""
        _, player, gain = self._arrays
        out = np.full(self.n, np.inf)
        sel = self._within(mask)
        np.minimum.at(out, player[sel], gain[sel])
        return out

    def upper_without(self, mask: int, members: list[int]) -> npt.NDArray[np.float64]:
        """Shape ``(len(members), n)``: row ``r`` is :meth:`upper` of ``mask - members[r]``."""
        base, player, gain = self._arrays
        out = np.full((len(members), self.n), np.inf)
        sel = self._within(mask)
        b, p, g = base[sel], player[sel], gain[sel]
        for r, i in enumerate(members):
            if self.n <= MAX_VECTOR_PLAYERS:
                keep = (b & np.int64(1 << i)) == 0
            else:
                keep = np.array([not (int(t) >> i) & 1 for t in b.tolist()], dtype=bool)
            np.minimum.at(out[r], p[keep], g[keep])
        return out

    def lower(self, mask: int) -> npt.NDArray[np.float64]:
        """Shape ``(n,)``: for ``i`` in ``mask``, the largest gain of ``i`` over edges with
        ``T ⊇ mask - i`` (a lower bound on ``v(S) - v(S - i)`` for a submodular game;
        ``-inf`` where there is none). Entries outside ``mask`` are ``-inf``."""
        base, player, gain = self._arrays
        out = np.full(self.n, -np.inf)
        if not base.shape[0]:
            return out
        if self.n <= MAX_VECTOR_PLAYERS:
            bit = np.left_shift(np.int64(1), player)
            rest = np.int64(mask) & ~base
            sel = ((rest == 0) | (rest == bit)) & ((np.int64(mask) & bit) != 0)
        else:
            sel = np.array(
                [
                    (mask >> j) & 1 == 1 and (mask & ~t) in (0, 1 << j)
                    for t, j in zip(base.tolist(), player.tolist(), strict=True)
                ],
                dtype=bool,
            )
        np.maximum.at(out, player[sel], gain[sel])
        return out
