"""Covariance initialisation of depthwise convolution filters (Trockman, Willmott & Kolter, 2023).

Each depthwise filter (``k_h x k_w`` taps) is drawn from ``N(0, Σ)``, ``Σ`` over the taps in
row-major order ``(i, j) -> i k_w + j``. ``Σ`` is either the learning-free closed form
:func:`gaussian_covariance` or estimated from a trained model's filters
(:func:`estimate_filter_covariance`) and transferred to other widths (any number of channels can
be sampled), depths (:func:`covariance_for_depth`) and kernel sizes
(:func:`resample_covariance`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from coreopt.init._linalg import make_generator
from coreopt.init.attention import record_init
from coreopt.init.config import CovarianceConvConfig


def is_depthwise(module: nn.Module) -> bool:
    """A ``Conv2d`` with one input channel per group (``groups == in_channels``), kernel > 1x1."""
    if not isinstance(module, nn.Conv2d):
        return False
    shape = module.weight.shape
    return (
        module.groups == module.in_channels
        and module.groups > 1
        and shape[1] == 1
        and shape[-1] * shape[-2] > 1
    )


def gaussian_covariance(kernel_size: int | tuple[int, int], sigma: float) -> torch.Tensor:
    """``Σ[(i,j),(i',j')] = exp(-((i-i')² + (j-j')²) / (2σ²))`` (float64, ``k_h k_w`` square).

    Separable: ``Σ = K_h ⊗ K_w`` with ``K[i,i'] = exp(-(i-i')²/(2σ²))``; unit diagonal.
    """
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    if kh < 1 or kw < 1:
        raise ValueError(f"kernel_size must be positive, got {kernel_size!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")

    def k1(n: int) -> torch.Tensor:
        i = torch.arange(n, dtype=torch.float64)
        return torch.exp(-((i[:, None] - i[None, :]) ** 2) / (2 * sigma**2))

    return torch.kron(k1(kh), k1(kw))


def estimate_filter_covariance(
    model_or_convs: nn.Module | Sequence[nn.Conv2d],
) -> list[torch.Tensor]:
    """Empirical tap covariance ``E[w w^T]`` of each depthwise conv's filters (float64).

    Normalised to unit mean diagonal (the sampler rescales to the target variance anyway).
    Returns one ``(k_h k_w, k_h k_w)`` matrix per depthwise layer, in module order.
    """
    convs = (
        [m for m in model_or_convs.modules() if is_depthwise(m)]
        if isinstance(model_or_convs, nn.Module)
        else list(model_or_convs)
    )
    if not convs:
        raise ValueError("no depthwise Conv2d found to estimate a covariance from")
    out = []
    for conv in convs:
        weight = cast(torch.Tensor, conv.weight)
        w = weight.detach().double().reshape(weight.shape[0], -1).cpu()
        cov = w.T @ w / w.shape[0]
        out.append(cov / cov.diagonal().mean())
    return out


def _nearest_psd(S: torch.Tensor, floor: float = 0.0) -> torch.Tensor:
    S = (S + S.T) / 2
    evals, evecs = torch.linalg.eigh(S)
    return (evecs * evals.clamp_min(floor)) @ evecs.T


def resample_covariance(cov: torch.Tensor, kernel_size: int | tuple[int, int]) -> torch.Tensor:
    """Transfer a tap covariance to another kernel size *(reconstructed)*.

    ``Σ`` is viewed as a function on pairs of tap positions ``(k_h, k_w, k_h, k_w)``; each of the
    four axes is resampled linearly with centres aligned (``align_corners=True``), then the
    result is symmetrised and projected onto the PSD cone. For ``kernel_size`` equal to the
    current one it returns ``cov`` (up to symmetrisation).
    """
    n = cov.shape[0]
    k = math.isqrt(n)
    if cov.shape != (n, n) or k * k != n:
        raise ValueError(f"cov must be (k², k²) for a square kernel, got {tuple(cov.shape)}")
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    t = cov.double().reshape(k, k, k, k)
    for axis, size in enumerate((kh, kw, kh, kw)):
        moved = t.movedim(axis, -1)
        shape = moved.shape
        flat = moved.reshape(-1, 1, shape[-1])
        if size == 1 or shape[-1] == 1:
            res = flat.mean(-1, keepdim=True).expand(-1, -1, size)
        else:
            res = F.interpolate(flat, size=size, mode="linear", align_corners=True)
        t = res.reshape(*shape[:-1], size).movedim(-1, axis)
    return _nearest_psd(t.reshape(kh * kw, kh * kw))


def covariance_for_depth(covs: Sequence[torch.Tensor], depth_fraction: float) -> torch.Tensor:
    """Transfer per-layer covariances to another depth: linear interpolation in relative depth.

    ``covs[0]`` sits at depth fraction 0 and ``covs[-1]`` at 1 *(reconstructed)*.
    """
    if not covs:
        raise ValueError("covs must be non-empty")
    if len(covs) == 1:
        return covs[0]
    pos = min(max(depth_fraction, 0.0), 1.0) * (len(covs) - 1)
    lo = min(math.floor(pos), len(covs) - 2)
    t = pos - lo
    return (1 - t) * covs[lo].double() + t * covs[lo + 1].double()


@torch.no_grad()
def covariance_conv_(
    conv: nn.Conv2d,
    config: CovarianceConvConfig | None = None,
    *,
    depth_fraction: float = 0.0,
    covariance: torch.Tensor | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> nn.Conv2d:
    """Draw a depthwise conv's filters from ``N(0, Σ)``, in place.

    ``Σ`` is ``covariance`` when given (resampled to this kernel size if needed), else the
    closed form :func:`gaussian_covariance` with ``σ = config.sigma(depth_fraction)``
    *(reconstructed: the paper's closed form varies σ with depth; our schedule is linear from
    ``sigma_first`` to ``sigma_last``)*. Samples ``w = L z`` (``Σ + jitter I = L L^T``, float64)
    are rescaled so every tap has variance ``gain² / (3 k_h k_w)`` (PyTorch's default conv init
    variance, ``Σ`` normalised to unit mean diagonal). The bias is left as it is.

    Args:
        conv: a depthwise ``nn.Conv2d`` (``groups == in_channels``; a channel multiplier is fine).
        config: σ schedule and gain (:class:`CovarianceConvConfig`).
        depth_fraction: this layer's relative depth in ``[0, 1]`` (0 = first depthwise layer).
        covariance: an explicit ``(k_h k_w)²`` tap covariance (e.g. from
            :func:`estimate_filter_covariance`).
        seed, generator: randomness (one of them; neither uses torch's global RNG).

    Returns:
        ``conv``, initialised.
    """
    cfg = CovarianceConvConfig() if config is None else config
    if not isinstance(cfg, CovarianceConvConfig):
        raise TypeError(f"config must be a CovarianceConvConfig, got {type(cfg).__name__}")
    if not is_depthwise(conv):
        raise ValueError(
            f"covariance_conv_ expects a depthwise nn.Conv2d (groups == in_channels, kernel > 1), "
            f"got {conv!r}"
        )
    gen = make_generator(seed, generator)
    out_ch, _, kh, kw = conv.weight.shape
    if covariance is None:
        S = gaussian_covariance((kh, kw), cfg.sigma(depth_fraction))
    else:
        S = covariance.detach().double().cpu()
        if S.shape != (kh * kw, kh * kw):
            if kh != kw:
                raise ValueError("transferring a covariance needs a square kernel")
            S = resample_covariance(S, kh)
    S = (S + S.T) / 2
    S = S / S.diagonal().mean()
    eye = torch.eye(kh * kw, dtype=torch.float64)
    L = torch.linalg.cholesky(_nearest_psd(S) + cfg.jitter * eye)
    z = torch.randn(out_ch, kh * kw, generator=gen, dtype=torch.float64)
    w = (z @ L.T) * (cfg.gain / math.sqrt(3.0 * kh * kw))
    conv.weight.copy_(w.reshape(out_ch, 1, kh, kw))
    record_init(conv, "conv", (cfg, float(depth_fraction), covariance is not None))
    return conv
