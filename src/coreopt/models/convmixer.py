"""ConvMixer (Trockman & Kolter, "Patches Are All You Need?") with timm's parameter names."""

from __future__ import annotations

import torch
from torch import nn


class Residual(nn.Module):
    """``x + fn(x)`` (timm keeps the wrapped module as ``fn``)."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fn(x)


class ConvMixer(nn.Module):
    """ConvMixer-``dim``/``depth``.

    ``stem``: Conv2d(in, dim, kernel p, stride p) -> GELU -> BN; ``depth`` x
    [Residual(depthwise Conv2d(dim, dim, k, groups=dim, padding same) -> GELU -> BN) -> Conv1x1
    -> GELU -> BN]; global average pool -> ``head`` (Linear). State-dict names match timm's
    ``convmixer`` (``stem.0``, ``stem.2``, ``blocks.i.0.fn.0`` (depthwise), ``blocks.i.0.fn.2``,
    ``blocks.i.1`` (pointwise), ``blocks.i.3``, ``head``).

    Shape:
        ``(B, in_chans, H, W)`` -> ``(B, num_classes)``.

    Examples:
        >>> import torch
        >>> net = ConvMixer(32, 2, kernel_size=3, patch_size=2, in_chans=1, num_classes=10)
        >>> net(torch.randn(4, 1, 8, 8)).shape
        torch.Size([4, 10])
    """

    def __init__(
        self,
        dim: int = 256,
        depth: int = 8,
        *,
        kernel_size: int = 5,
        patch_size: int = 2,
        in_chans: int = 3,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if dim < 1 or depth < 0 or kernel_size < 1 or patch_size < 1:
            raise ValueError("dim, kernel_size and patch_size must be positive, depth >= 0")
        self.num_features = dim
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dim, patch_size, stride=patch_size), nn.GELU(), nn.BatchNorm2d(dim)
        )
        self.blocks = nn.Sequential(
            *(
                nn.Sequential(
                    Residual(
                        nn.Sequential(
                            nn.Conv2d(dim, dim, kernel_size, groups=dim, padding="same"),
                            nn.GELU(),
                            nn.BatchNorm2d(dim),
                        )
                    ),
                    nn.Conv2d(dim, dim, 1),
                    nn.GELU(),
                    nn.BatchNorm2d(dim),
                )
                for _ in range(depth)
            )
        )
        self.pooling = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(dim, num_classes)

    def depthwise_convs(self) -> list[nn.Conv2d]:
        """The depthwise convolution of every block, in depth order."""
        return [blk[0].fn[0] for blk in self.blocks]  # type: ignore[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooling(self.blocks(self.stem(x))))
