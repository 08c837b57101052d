"""Sources of least-core constraints for separation: a full value table, or explicit rows.

Both answer one question fast: given payments ``x`` and a level ``e``, which coalitions S have
``v(S) - x(S) > e`` (are violated), most violated first. The table version is vectorised over all
``2**n`` masks with :func:`~coreopt.game.coalitions.subset_sums`.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

from coreopt.game.coalitions import incidence, mask_array, subset_sums


class RowSource(Protocol):
    """Coalitions with known values that separation may pick constraints from."""

    n: int

    def excess(
        self, x: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """All eligible masks and their excesses ``v(S) - x(S)``."""
        ...

    def value_of(self, masks: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """``v(S)`` for the given masks."""
        ...


class TableRows:
    """Every coalition of a game given as a table ``v[mask]`` of length ``2**n``.

    Args:
        table: values, ``table[0]`` is ``v(∅)``.
        proper: exclude the grand coalition (it is the efficiency row).
    """

    def __init__(self, table: npt.NDArray[np.float64], proper: bool = True) -> None:
        size = table.shape[0]
        n = size.bit_length() - 1
        if size != 1 << n or n < 1:
            raise ValueError(f"a value table must have length 2**n with n >= 1, got {size}")
        self.n = n
        self.table = table
        self.masks = np.arange(size, dtype=np.int64)
        self._eligible = np.ones(size, dtype=bool)
        self._eligible[0] = False
        self._eligible[size - 1] = False  # the grand coalition is the efficiency row
        del proper  # the all-coalitions convention is the bound e >= 0, not a row

    def excess(
        self, x: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        ex = self.table - subset_sums(x)
        ex[~self._eligible] = -np.inf
        return self.masks, ex

    def value_of(self, masks: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        return self.table[masks]

    def exclude(self, keep: npt.NDArray[np.bool_]) -> None:
        """Permanently drop coalitions where ``keep`` is False (shape ``(2**n,)``)."""
        self._eligible &= keep

    def is_eligible(self, masks: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        """Whether each mask is still a candidate row (proper and not excluded)."""
        return self._eligible[masks]


class ExplicitRows:
    """A finite list of evaluated coalitions (approximate mode: everything paid for)."""

    def __init__(self, n: int, masks: npt.ArrayLike, values: npt.ArrayLike) -> None:
        self.n = n
        self.masks = mask_array(masks, n)
        self.values = np.asarray(values, dtype=np.float64).reshape(-1)
        grand = (1 << n) - 1
        self._eligible = (self.masks != 0) & (self.masks != grand)
        self._incidence = incidence(self.masks, n)

    def excess(
        self, x: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        ex = self.values - self._incidence @ x
        ex[~self._eligible] = -np.inf
        return self.masks, ex

    def value_of(self, masks: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        lookup = dict(zip(self.masks.tolist(), self.values.tolist(), strict=True))
        return np.array([lookup[int(m)] for m in masks], dtype=np.float64)

    def exclude(self, keep: npt.NDArray[np.bool_]) -> None:
        self._eligible &= keep

    def is_eligible(self, masks: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        pos = {m: i for i, m in enumerate(self.masks.tolist())}
        return np.array([self._eligible[pos[int(m)]] for m in masks], dtype=bool)

    def subset_projection(self, basis: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """``incidence @ basis`` for every row (used to test membership in a span)."""
        return self._incidence @ basis


def most_violated(
    masks: npt.NDArray[np.int64], excess: npt.NDArray[np.float64], level: float, k: int, tol: float
) -> npt.NDArray[np.int64]:
    """Up to ``k`` masks with ``excess > level + tol``, most violated first."""
    over = np.flatnonzero(excess > level + tol)
    if over.size > k:
        over = over[np.argpartition(excess[over], -k)[-k:]]
    order = np.argsort(-excess[over], kind="stable")
    return masks[over[order]]


def span_residual(
    source: TableRows | ExplicitRows, basis_perp: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Norm of each eligible coalition's indicator projected off a subspace.

    Args:
        basis_perp: orthonormal basis (``(n, k)``) of the orthogonal complement of the span of the
            fixed coalitions' indicators; a coalition whose projection is ~0 lies in that span, so
            its excess is already determined.
    """
    if basis_perp.shape[1] == 0:
        size = source.masks.shape[0]
        return np.zeros(size)
    if isinstance(source, TableRows):
        proj = np.stack([subset_sums(basis_perp[:, j]) for j in range(basis_perp.shape[1])], axis=1)
    else:
        proj = source.subset_projection(basis_perp)
    return np.linalg.norm(proj, axis=1)
