"""``orthogonal(module, "weight")``: constrain a parameter to orthogonal matrices (Cayley map)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from coreopt.manifold.cayley import cayley

MapSpec = str | Callable[[torch.Tensor], torch.Tensor]
"""What ``orthogonal(..., map=)`` accepts: ``"cayley"``, ``"matrix_exp"`` or a callable."""


class UnknownMapError(ValueError):
    """``orthogonal(..., map=...)`` got a name that is not a known orthogonal map."""


def _embed_skew(X: torch.Tensor) -> torch.Tensor:
    """The skew ``m x m`` matrix ``[[U − Uᵀ, −Vᵀ], [V, 0]]`` of a tall ``X = [U; V]``."""
    m, n = X.shape[-2:]
    U, V = X[..., :n, :], X[..., n:, :]
    top = torch.cat((U - U.mH, -V.mH), dim=-1)
    bottom = torch.cat((V, torch.zeros(*V.shape[:-1], m - n, dtype=X.dtype, device=X.device)), -1)
    return torch.cat((top, bottom), dim=-2)


def _cayley_map(X: torch.Tensor) -> torch.Tensor:
    m, n = X.shape[-2:]
    return cayley(X - X.mH) if m == n else cayley(X)


def _exp_map(X: torch.Tensor) -> torch.Tensor:
    m, n = X.shape[-2:]
    if m < n:
        return _exp_map(X.mT).mT
    return torch.linalg.matrix_exp(_embed_skew(X))[..., :n]


class Orthogonal(nn.Module):
    """A parametrization ``X -> Q`` onto matrices with orthonormal columns (tall) or rows (wide).

    ``"cayley"``: ``Q = cayley(X − Xᵀ)`` for square ``X`` and ``cayley(X)`` (Schur-complement
    form) otherwise. ``"matrix_exp"``: the first columns of ``exp([[U − Uᵀ, −Vᵀ], [V, 0]])``. Any
    callable is used as is. Both built-in maps send ``X = 0`` to ``[I; 0]``.

    :meth:`right_inverse` (used on registration and on ``module.weight = Q``) inverts the Cayley
    map exactly for an orthogonal ``Q`` without eigenvalue −1 of its top block (and raises
    ``ValueError`` for an orthogonal one with it, e.g. a reflection); any non-orthogonal tensor
    (for instance a freshly initialised ``nn.Linear`` weight) is kept as the unconstrained ``X``
    itself, so registering on a new layer starts from ``Q = map(weight)``.

    With ``flatten=True`` a tensor of more than two dimensions ``(out, d1, d2, ...)`` (a conv
    kernel) is constrained as the one matrix ``(out, d1·d2·...)``: the map is applied to the
    flattened tensor and the result reshaped back.

    Args:
        orthogonal_map: ``"cayley"``, ``"matrix_exp"`` or a callable ``X -> Q``.
        flatten: flatten dimensions after the first before the map (else they are a batch).
    """

    def __init__(self, orthogonal_map: MapSpec = "cayley", *, flatten: bool = False) -> None:
        super().__init__()
        self.flatten = flatten
        self.map_name = orthogonal_map if isinstance(orthogonal_map, str) else "custom"
        self._fn: Callable[[torch.Tensor], torch.Tensor]
        if callable(orthogonal_map):
            self._fn = orthogonal_map
        elif orthogonal_map == "cayley":
            self._fn = _cayley_map
        elif orthogonal_map == "matrix_exp":
            self._fn = _exp_map
        else:
            raise UnknownMapError(
                f"map must be 'cayley', 'matrix_exp' or a callable, got {orthogonal_map!r}"
            )

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """``Q`` of the same shape as ``X`` (``(..., m, n)``, or ``(out, ...)`` when flattening)."""
        if self.flatten and X.ndim > 2:
            return self._fn(X.reshape(X.shape[0], -1)).reshape(X.shape)
        return self._fn(X)

    @torch.no_grad()
    def right_inverse(self, Q: torch.Tensor) -> torch.Tensor:
        """An ``X`` with ``forward(X) == Q`` for orthogonal ``Q`` (Cayley map), else ``Q``."""
        if self.flatten and Q.ndim > 2:
            return self._right_inverse(Q.reshape(Q.shape[0], -1)).reshape(Q.shape)
        return self._right_inverse(Q)

    def _right_inverse(self, Q: torch.Tensor) -> torch.Tensor:
        if self.map_name != "cayley" or Q.ndim < 2:
            return Q
        m, n = Q.shape[-2:]
        if m < n:
            return self._right_inverse(Q.mT).mT
        eye = torch.eye(n, dtype=Q.dtype, device=Q.device)
        tol = 100 * max(m, n) * torch.finfo(Q.dtype).eps
        if (Q.mH @ Q - eye).abs().max() > max(tol, 1e-4):
            return Q
        # Q = [2 M^{-1} − I; −2 V M^{-1}] with M = I + S + VᴴV: M = 2 (Q_top + I)^{-1},
        # V = −Q_bot (Q_top + I)^{-1}, S = M − I − VᴴV, and X = [S/2; V] (S is skew).
        top, bottom = Q[..., :n, :], Q[..., n:, :]
        P = top + eye
        if torch.linalg.matrix_rank(P).min() < n:
            raise ValueError(
                "the Cayley map cannot reach an orthogonal matrix whose top block has eigenvalue "
                "-1 (e.g. a reflection); flip the sign of one column first"
            )
        Pinv = torch.linalg.solve(P, eye.expand_as(P))
        V = -bottom @ Pinv
        S = 2 * Pinv - eye - V.mH @ V
        S = (S - S.mH) / 2  # exactly skew despite rounding
        return torch.cat((S / 2, V), dim=-2)

    def extra_repr(self) -> str:
        return f"map={self.map_name!r}, flatten={self.flatten}"


def orthogonal(
    module: nn.Module,
    name: str = "weight",
    map: MapSpec = "cayley",
    *,
    batched: bool = False,
) -> nn.Module:
    """Constrain ``module.<name>`` to orthogonal matrices through a torch parametrization.

    After the call ``module.<name>`` is computed on access as ``Q = map(X)`` from an unconstrained
    parameter ``X`` stored at ``module.parametrizations.<name>.original`` (so ``state_dict`` keys
    change accordingly and a fresh module parametrized the same way loads them). A tall weight
    ``(m, n)``, ``m > n``, gets orthonormal columns (``QᵀQ = I``), a wide one orthonormal rows.
    Use ``torch.nn.utils.parametrize.cached()`` to compute ``Q`` once per forward pass.

    **Weights of more than two dimensions.** By default a weight ``(out, d1, d2, ...)`` (an
    ``nn.Conv2d`` kernel ``(out, in/groups, kh, kw)``) is constrained as the one matrix
    ``(out, d1·d2·...)`` that the layer applies to each input patch, as ``nn.init.orthogonal_``
    flattens it: the rows of a conv kernel are orthonormal filters (or its columns orthonormal,
    when ``out`` is the larger side). ``batched=True`` instead constrains every trailing
    ``(d_{-2}, d_{-1})`` slice on its own (for a stack of matrices ``(E, m, n)``); this is what
    ``torch.nn.utils.parametrizations.orthogonal`` and ``geotorch.orthogonal`` do with extra
    dimensions, which for a conv kernel makes each ``k x k`` spatial kernel orthogonal and bounds
    nothing about the layer. Neither choice makes a *convolution* orthogonal as an operator on
    images (use :class:`~coreopt.manifold.CayleyConv2d` for that).

    Args:
        module: the module owning the parameter (e.g. an ``nn.Linear`` or ``nn.Conv2d``).
        name: the parameter's name; it must be a floating tensor with at least 2 dimensions.
        map: ``"cayley"`` (default), ``"matrix_exp"``, or a callable ``X -> Q`` (applied to the
            flattened ``(out, d1·d2·...)`` matrix unless ``batched``).
        batched: treat leading dimensions as a batch of matrices instead of flattening the
            trailing ones (only matters for weights of more than two dimensions).

    Returns:
        ``module``, modified in place.

    Examples:
        >>> import torch
        >>> layer = orthogonal(torch.nn.Linear(5, 5).double())
        >>> Q = layer.weight
        >>> torch.allclose(Q.T @ Q, torch.eye(5, dtype=torch.float64))
        True
        >>> conv = orthogonal(torch.nn.Conv2d(3, 8, 3).double())   # (8, 3·3·3) = (8, 27)
        >>> W = conv.weight.flatten(1)
        >>> torch.allclose(W @ W.T, torch.eye(8, dtype=torch.float64))
        True
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    tensor = getattr(module, name, None)
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"module has no tensor attribute {name!r}")
    if tensor.ndim < 2 or not tensor.is_floating_point():
        raise ValueError(
            f"{name} must be a floating tensor with at least 2 dimensions, got "
            f"{tuple(tensor.shape)} {tensor.dtype}"
        )
    if not isinstance(batched, bool):
        raise TypeError(f"batched must be a bool, got {type(batched).__name__}")
    parametrize.register_parametrization(module, name, Orthogonal(map, flatten=not batched))
    return module
