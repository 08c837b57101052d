"""A 1-Lipschitz convolutional classifier built from Cayley layers (KWLarge-style)."""

from __future__ import annotations

from torch import nn

from coreopt.manifold import CayleyConv2d, CayleyLinear, MaxMin


class LipschitzConvNet(nn.Sequential):
    """The KWLarge-style network of Trockman & Kolter (ICLR 2021), 1-Lipschitz in L2.

    Layers (``w = width``, ``a = MaxMin`` activation)::

        CayleyConv2d(c, w, k)              a
        CayleyConv2d(w, w, k, stride=2)    a
        CayleyConv2d(w, 2w, k)             a
        CayleyConv2d(2w, 2w, k, stride=2)  a
        Flatten
        CayleyLinear(2w·(H/4)·(W/4), hidden)  a
        CayleyLinear(hidden, hidden)          a
        CayleyLinear(hidden, num_classes)

    Every layer is orthogonal (an isometry or a co-isometry) plus a bias, and MaxMin and
    flattening preserve norms, so the whole network is 1-Lipschitz and
    :func:`coreopt.manifold.certified_radius` applies to its logits with ``lipschitz=1``.

    Reconstructed details (the paper takes the architecture from Wong et al. 2018 and swaps in
    its layers): the strided layers use ``kernel_size`` on the space-to-depth grid (the original
    uses 4x4 kernels with stride 2 on the input grid); MaxMin activations throughout; biases in
    every layer.

    Args:
        in_channels: channels of the input images.
        num_classes: number of logits.
        image_size: ``H`` or ``(H, W)``; both must be divisible by 4.
        width: channels of the first two convolutions (the paper's KWLarge uses 32; scaled by its
            width multiplier); must be even (MaxMin pairs channels).
        hidden: width of the two hidden linear layers (512 in the paper); must be even.
        kernel_size: kernel size of every convolution.

    Shape:
        ``(B, in_channels, H, W)`` -> ``(B, num_classes)``.

    Examples:
        >>> import torch
        >>> net = LipschitzConvNet(1, 10, image_size=8, width=8, hidden=32)
        >>> net(torch.randn(5, 1, 8, 8)).shape
        torch.Size([5, 10])
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        *,
        image_size: int | tuple[int, int] = 32,
        width: int = 32,
        hidden: int = 512,
        kernel_size: int = 3,
    ) -> None:
        H, W = (image_size, image_size) if isinstance(image_size, int) else image_size
        if H % 4 or W % 4 or H < 4 or W < 4:
            raise ValueError(f"image_size must be divisible by 4, got {image_size!r}")
        for name, value in (("width", width), ("hidden", hidden)):
            if value < 2 or value % 2:
                raise ValueError(f"{name} must be a positive even int, got {value!r}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes!r}")
        k = kernel_size
        super().__init__(
            CayleyConv2d(in_channels, width, k),
            MaxMin(),
            CayleyConv2d(width, width, k, stride=2),
            MaxMin(),
            CayleyConv2d(width, 2 * width, k),
            MaxMin(),
            CayleyConv2d(2 * width, 2 * width, k, stride=2),
            MaxMin(),
            nn.Flatten(),
            CayleyLinear(2 * width * (H // 4) * (W // 4), hidden),
            MaxMin(dim=-1),
            CayleyLinear(hidden, hidden),
            MaxMin(dim=-1),
            CayleyLinear(hidden, num_classes),
        )
        self.image_size = (H, W)
