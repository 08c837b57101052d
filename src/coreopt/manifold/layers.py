"""Norm-preserving building blocks of 1-Lipschitz networks: GroupSort/MaxMin, pooling, reshuffles.

Each module here is 1-Lipschitz in the L2 norm, and all but :class:`L2NormPool2d` preserve the norm
of their input exactly (they permute its entries), so composing them with the orthogonal layers
of :mod:`coreopt.manifold` gives networks whose Lipschitz constant is at most 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GroupSort(nn.Module):
    """Sort the features in contiguous groups of ``group_size`` along ``dim`` (descending).

    Anil, Lucas & Grosse (ICML 2019). A permutation of the input for every ``x``, hence
    1-Lipschitz and gradient-norm preserving. ``group_size=2`` is MaxMin (:class:`MaxMin`).

    Args:
        group_size: features per group; must divide the size of ``dim``.
        dim: the feature dimension (1 for ``(B, C, ...)`` activations, -1 for ``(B, F)``).

    Shape:
        any shape, unchanged.

    Examples:
        >>> import torch
        >>> GroupSort(2)(torch.tensor([[1.0, 3.0, 5.0, 2.0]]))
        tensor([[3., 1., 5., 2.]])
    """

    def __init__(self, group_size: int = 2, dim: int = 1) -> None:
        super().__init__()
        if not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f"group_size must be a positive int, got {group_size!r}")
        self.group_size = group_size
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sort each group of ``x`` in descending order."""
        dim = self.dim % x.ndim
        size = x.shape[dim]
        if size % self.group_size:
            raise ValueError(
                f"GroupSort(group_size={self.group_size}) needs dimension {self.dim} of size "
                f"divisible by {self.group_size}, got {size}"
            )
        if self.group_size == 1:
            return x
        shape = (*x.shape[:dim], size // self.group_size, self.group_size, *x.shape[dim + 1 :])
        grouped = x.reshape(shape)
        if self.group_size == 2:
            a, b = grouped.unbind(dim + 1)
            out = torch.stack((torch.maximum(a, b), torch.minimum(a, b)), dim=dim + 1)
        else:
            out = grouped.sort(dim=dim + 1, descending=True).values
        return out.reshape(x.shape)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, dim={self.dim}"


class MaxMin(GroupSort):
    """GroupSort with groups of two: ``(a, b) -> (max(a, b), min(a, b))`` per pair of features.

    Args:
        dim: the feature dimension.

    Shape:
        any shape with an even size along ``dim``, unchanged.
    """

    def __init__(self, dim: int = 1) -> None:
        super().__init__(2, dim)


class SpaceToDepth(nn.Module):
    """Orthogonal downsampling: ``(B, C, H, W) -> (B, C·s², H/s, W/s)`` (``F.pixel_unshuffle``).

    A permutation of the entries, hence orthogonal (norm preserving); ``H`` and ``W`` must be
    divisible by ``s``. :class:`~coreopt.manifold.CayleyConv2d` with ``stride=s`` applies it first.

    Args:
        factor: the downsampling factor ``s``.
    """

    def __init__(self, factor: int = 2) -> None:
        super().__init__()
        if not isinstance(factor, int) or factor < 1:
            raise ValueError(f"factor must be a positive int, got {factor!r}")
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rearrange ``x`` of shape ``(B, C, H, W)``."""
        if x.ndim != 4 or x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(
                f"SpaceToDepth({self.factor}) needs (B, C, H, W) with H and W divisible by "
                f"{self.factor}, got {tuple(x.shape)}"
            )
        return F.pixel_unshuffle(x, self.factor)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


class L2NormPool2d(nn.Module):
    """Pooling by the L2 norm of each non-overlapping window: ``y = ‖x_window‖₂``.

    1-Lipschitz: per window ``|‖a‖ − ‖b‖| <= ‖a − b‖``, and disjoint windows add up in squares.
    It preserves the norm of every input exactly (``‖y‖ = ‖x‖``), unlike
    average pooling (which shrinks it by up to ``k``) or max pooling. The gradient at ``x = 0`` is
    taken as 0 (a small ``eps`` inside the square root would break the exact norm identity, so
    the norm is computed as ``torch.linalg.vector_norm``, whose subgradient at 0 is 0).

    Reconstructed detail: the paper names norm-preserving pooling without fixing its form; this
    is the L2-norm (power-2) pooling, a common choice for Lipschitz networks.

    Args:
        kernel_size: window size ``k`` (stride ``k``); ``None`` pools the whole spatial extent
            (global pooling, output ``(B, C, 1, 1)``).

    Shape:
        ``(B, C, H, W)`` -> ``(B, C, H/k, W/k)``; ``H`` and ``W`` must be divisible by ``k``.

    Examples:
        >>> import torch
        >>> x = torch.randn(2, 3, 4, 4)
        >>> y = L2NormPool2d(2)(x)
        >>> torch.allclose(y.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1))
        True
    """

    def __init__(self, kernel_size: int | None = 2) -> None:
        super().__init__()
        if kernel_size is not None and (not isinstance(kernel_size, int) or kernel_size < 1):
            raise ValueError(f"kernel_size must be a positive int or None, got {kernel_size!r}")
        self.kernel_size = kernel_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool ``x`` of shape ``(B, C, H, W)``."""
        if x.ndim != 4:
            raise ValueError(f"x must have shape (B, C, H, W), got {tuple(x.shape)}")
        if self.kernel_size is None:
            return torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True)
        k = self.kernel_size
        B, C, H, W = x.shape
        if H % k or W % k:
            raise ValueError(f"L2NormPool2d({k}) needs H and W divisible by {k}, got {H}x{W}")
        windows = x.reshape(B, C, H // k, k, W // k, k)
        return torch.linalg.vector_norm(windows, dim=(3, 5))

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"
