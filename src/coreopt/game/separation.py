"""Separation oracles for approximate mode: propose coalitions S likely to maximise v(S) - x(S).

``v`` is a black box, so candidates come from a portfolio (papers.md §1, step 3):

* a *surrogate* ``v̂(S) = c + a·1_S + Σ_{i<j} b_ij 1_i 1_j`` fitted by ridge least squares on every
  evaluated coalition and maximised exactly against ``x``: by enumeration of all masks for small n,
  by min-cut (networkx) when ``b >= 0`` makes ``v̂ - x`` supermodular, else by a HiGHS MILP;
* *local search*: 1-bit flips of the tight coalitions, ranked by the surrogate;
* uniform random *probes*, which also estimate how often the payoff is violated.

The candidates are then evaluated for real in one batch by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

import highspy
import numpy as np
import numpy.typing as npt

from coreopt.game.coalitions import incidence, subset_sums


@dataclass(frozen=True)
class Surrogate:
    """Fitted ``v̂(S) = intercept + a·1_S + Σ_{i<j} b_ij 1_i 1_j`` (``b`` upper triangular)."""

    intercept: float
    a: npt.NDArray[np.float64]
    b: npt.NDArray[np.float64]

    @property
    def n(self) -> int:
        return self.a.shape[0]

    def predict(self, masks: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """``v̂`` on masks, shape ``(R,)``."""
        inc = incidence(masks, self.n)
        return self.intercept + inc @ self.a + np.einsum("ri,ij,rj->r", inc, self.b, inc)

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
        return out


def _features(masks: npt.NDArray[np.int64], n: int, kind: str) -> npt.NDArray[np.float64]:
    """Design matrix ``[1, 1_S, (1_i 1_j)_{i<j}]`` of shape ``(R, 1 + n [+ n(n-1)/2])``."""
    inc = incidence(masks, n)
    feats = [np.ones((inc.shape[0], 1)), inc]
    if kind == "quadratic":
        iu = np.triu_indices(n, 1)
        feats.append(inc[:, iu[0]] * inc[:, iu[1]])
    return np.concatenate(feats, axis=1)


def _solve_normal(
    gram: npt.NDArray[np.float64], rhs: npt.NDArray[np.float64], n: int, kind: str, ridge: float
) -> Surrogate:
    # Normal equations (features are few: n(n+1)/2 + 1), ridge on all but the intercept.
    p = gram.shape[0]
    lam = ridge * max(1.0, float(np.trace(gram)) / p)
    penalty = np.full(p, lam)
    penalty[0] = 0.0
    coef = np.asarray(
        np.linalg.solve(gram + np.diag(penalty) + 1e-12 * np.eye(p), rhs), dtype=np.float64
    )
    b = np.zeros((n, n))
    if kind == "quadratic":
        b[np.triu_indices(n, 1)] = coef[1 + n :]
    return Surrogate(float(coef[0]), coef[1 : 1 + n].copy(), b)


def fit_surrogate(
    masks: npt.NDArray[np.int64],
    values: npt.NDArray[np.float64],
    n: int,
    kind: str = "quadratic",
    ridge: float = 1e-6,
    weights: npt.NDArray[np.float64] | None = None,
) -> Surrogate:
    """Ridge least-squares fit of a linear or pairwise surrogate on evaluated coalitions.

    Args:
        masks: evaluated coalitions, shape ``(R,)``.
        values: their values, shape ``(R,)``.
        n: number of players.
        kind: ``"linear"`` or ``"quadratic"``.
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
    over every row (at n = 50 the quadratic design has 1276 columns).
    """

    def __init__(self, n: int, kind: str = "quadratic", ridge: float = 1e-6) -> None:
        self.n, self.kind, self.ridge = n, kind, ridge
        p = 1 + n + (n * (n - 1) // 2 if kind == "quadratic" else 0)
        self.gram = np.zeros((p, p))
        self.rhs = np.zeros(p)
        self.seen: set[int] = set()

    def add(self, masks: list[int], values: list[float]) -> None:
        """Add the rows of coalitions not seen before."""
        new = [(m, v) for m, v in zip(masks, values, strict=True) if m not in self.seen]
        if not new:
            return
        self.seen.update(m for m, _ in new)
        X = _features(np.array([m for m, _ in new], dtype=np.int64), self.n, self.kind)
        self.gram += X.T @ X
        self.rhs += X.T @ np.array([v for _, v in new])

    def fit(self) -> Surrogate:
        """The ridge least-squares surrogate over every row added so far."""
        return _solve_normal(self.gram, self.rhs, self.n, self.kind, self.ridge)


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
    Returns ``None`` if ``b`` has a negative entry or the optimum is the empty or grand coalition.
    """
    import networkx as nx

    b = surrogate.b
    if (b < -1e-12).any():
        return None
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
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
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


def random_masks(rng: np.random.Generator, n: int, k: int) -> list[int]:
    """``k`` uniform random proper coalitions (each player in with probability 1/2)."""
    grand = (1 << n) - 1
    out: list[int] = []
    weights = 1 << np.arange(n, dtype=np.int64)
    while len(out) < k:
        bits = rng.integers(0, 2, size=(k, n), dtype=np.int64)
        for m in (bits @ weights).tolist():
            if m not in (0, grand):
                out.append(int(m))
        if n == 1:
            break
    return out[:k]
