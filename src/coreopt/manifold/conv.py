"""An operator-level orthogonal convolution: the Cayley map applied per frequency of the FFT.

Trockman & Kolter, *Orthogonalizing Convolutional Layers with the Cayley Transform* (ICLR 2021).
A circular 2-D convolution is block-diagonalised by the 2-D DFT: at frequency ``(u, v)`` it acts
on the input's spectrum as a ``c_out x c_in`` complex matrix ``W_f``. Replacing each ``W_f`` by
its Cayley transform ``Q_f`` (unitary, or with orthonormal columns/rows when rectangular) makes
the whole operator orthogonal. See ``docs/manifold.md`` for the derivation.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from coreopt.manifold._cache import DerivedWeightCache, cache_usable, clear_cache_hook
from coreopt.manifold.cayley import cayley


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        pair = (value, value)
    elif (
        isinstance(value, tuple)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        pair = (value[0], value[1])
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return pair


def _phases(
    n: int, freqs: int, taps: int, dilation: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """``E[u, a] = exp(+2πi·u·d·(a − c)/n)`` for ``u < freqs``, ``a < taps``, ``c = (taps − 1)//2``.

    The exponent is reduced modulo ``n`` in exact integer arithmetic before the trigonometric
    functions are evaluated, so the phases are accurate for any ``n`` and kernel taps that wrap
    around a small input (``d·(taps − 1) >= n``) alias onto the right frequency, as circular
    convolution requires.
    """
    u = torch.arange(freqs, device=device).unsqueeze(1)
    a = (torch.arange(taps, device=device) - (taps - 1) // 2) * dilation
    m = torch.remainder(u * a.unsqueeze(0), n)
    # Symmetric range (-n/2, n/2] keeps conjugate frequencies bitwise conjugate (sin is odd).
    m = torch.where(2 * m > n, m - n, m)
    angle = (2 * math.pi / n) * m.to(dtype)
    return torch.polar(torch.ones_like(angle), angle)


def kernel_spectrum(
    weight: torch.Tensor, height: int, width: int, dilation: tuple[int, int] = (1, 1)
) -> torch.Tensor:
    """The per-frequency matrices of the circular cross-correlation with ``weight``.

    For ``y = conv2d(x, weight)`` with circular padding (the kernel centred at tap ``(k − 1)//2``,
    as ``nn.Conv2d(..., padding=k//2, padding_mode="circular")`` for odd ``k``), the real FFT
    satisfies ``rfft2(y)[:, :, u, v] = W[u, v] @ rfft2(x)[:, :, u, v]``.

    Args:
        weight: ``(c_out, c_in, kh, kw)`` real kernel (``c_in`` per group when grouped: apply it
            to each group's channels).
        height, width: the input's spatial size ``(H, W)``; the kernel may be larger (it wraps).
        dilation: spacing of the kernel taps.

    Returns:
        ``W`` of shape ``(H, W//2 + 1, c_out, c_in)``, complex.
    """
    out_ch, in_ch, kh, kw = weight.shape
    Eh = _phases(height, height, kh, dilation[0], weight.device, weight.dtype)  # (H, kh)
    Ew = _phases(width, width // 2 + 1, kw, dilation[1], weight.device, weight.dtype)  # (Wr, kw)
    # Real matmuls only (complex batched matmuls on strided operands are slow on the CPU):
    # P[a, oc, v] = sum_b w[oc, a, b] Ew[v, b], then Wf[u, v, oc] = sum_a Eh[u, a] P[a, oc, v].
    Ew_ri = torch.cat((Ew.real, Ew.imag), dim=0).T  # (kw, 2 Wr)
    P = (weight.reshape(-1, kw) @ Ew_ri).reshape(out_ch * in_ch, kh, 2, -1)
    P = P.permute(1, 2, 0, 3).reshape(2 * kh, -1)  # rows: (a, re/im)
    Ehr, Ehi = Eh.real, Eh.imag
    # [Re; Im] of Eh @ (Pr + i Pi): interleaved columns (a, re/im) match P's rows.
    E2 = torch.stack(
        (torch.stack((Ehr, -Ehi), dim=-1), torch.stack((Ehi, Ehr), dim=-1)), dim=0
    ).reshape(2 * height, 2 * kh)
    R = (E2 @ P).reshape(2, height, out_ch, in_ch, -1).permute(1, 4, 2, 3, 0)
    return torch.view_as_complex(R.contiguous())


class CayleyConv2d(nn.Module):
    """Orthogonal circular 2-D convolution: the Cayley map applied at every FFT frequency.

    With ``c = in_channels · stride²`` (the channels after space-to-depth) and ``n = out_channels``,
    the layer is an exactly orthogonal linear operator plus a bias: an isometry
    (``‖y − b‖ = ‖x‖``) when ``n >= c`` and a co-isometry (orthonormal rows, 1-Lipschitz) when
    ``n < c``. Its Jacobian therefore has all singular values equal to 1 on any input size.

    How ``y`` is computed from ``x`` of shape ``(B, in_channels, H, W)``:

    1. ``stride > 1``: ``x`` is rearranged by the orthogonal space-to-depth
       (``F.pixel_unshuffle``, a permutation) into ``(B, c, H/s, W/s)``; ``H`` and ``W`` must be
       divisible by ``s``.
    2. ``W_f`` = the spectrum of the kernel at each of the ``h·(w//2 + 1)`` real-FFT frequencies
       (see :func:`kernel_spectrum`), scaled to ``V_f = alpha · W_f / ‖weight‖_F``.
    3. ``Q_f = cayley(V_f − V_f^H)`` when ``n == c`` and ``cayley(V_f)`` (Schur-complement form,
       only a ``min(n, c)`` system per frequency) otherwise; all frequencies in one batched solve.
    4. ``y = irfft2(Q_f · rfft2(x)) + bias``.

    The kernel has real entries, so ``W_{−f} = conj(W_f)``; the Cayley map commutes with complex
    conjugation, so ``Q_{−f} = conj(Q_f)`` and ``Q_f`` is real at the self-conjugate frequencies
    (``u ∈ {0, h/2}``, ``v ∈ {0, w/2}``). The full spectrum is thus Hermitian, the output is real,
    and ``irfft2`` (which reads only half of it) loses nothing: the operator is exactly orthogonal
    for odd, even and non-square sizes.

    ``alpha`` (the paper's learnable scale, which sets the distance from the identity) is created
    in ``__init__`` and initialised to ``‖weight‖_F`` of the freshly initialised weight (in
    :meth:`reset_parameters`), so an optimizer built right after construction trains it and a fresh
    layer loads any checkpoint of the same shape.

    **Caching.** In eval mode, when autograd will not record the parameters (``torch.no_grad()``,
    ``torch.inference_mode()`` or frozen parameters), the per-frequency ``Q`` is cached per input
    size. The cache is keyed on the parameters' version counters, so an optimizer step,
    ``load_state_dict`` or any in-place change invalidates it; ``train()`` clears it. Under
    ``torch.compile`` the weight is recomputed inside the compiled graph.

    Reconstructed details (not in the paper): the kernel of a strided layer acts on the
    space-to-depth grid with the given ``kernel_size`` (its receptive field on the input is about
    ``stride`` times larger); dilation and groups (block-diagonal ``Q_f``, each block orthogonal);
    the kernel centre at tap ``(k − 1)//2``; the weight initialisation (``nn.Conv2d``'s
    Kaiming-uniform).

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        kernel_size: ``k`` or ``(kh, kw)``; any size, also larger than the input (taps wrap).
        stride: ``s`` (same in both directions); the input size must be divisible by it.
        bias: add a learnable bias.
        dilation: spacing of the kernel taps (on the space-to-depth grid when strided).
        groups: split channels into ``groups`` independent orthogonal convolutions; must divide
            ``in_channels`` and ``out_channels``.
        device, dtype: of the parameters (float32 or float64).

    Shape:
        ``(B, in_channels, H, W)`` -> ``(B, out_channels, H/s, W/s)``; also unbatched
        ``(in_channels, H, W)``.

    Examples:
        >>> import torch
        >>> layer = CayleyConv2d(4, 4, 3, bias=False).double()
        >>> x = torch.randn(2, 4, 7, 10, dtype=torch.float64)   # odd, non-square
        >>> y = layer(x)
        >>> y.shape
        torch.Size([2, 4, 7, 10])
        >>> torch.allclose(y.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1))
        True
    """

    weight: torch.Tensor
    alpha: torch.Tensor
    bias: torch.Tensor | None

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        bias: bool = True,
        *,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("stride", stride),
            ("groups", groups),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"groups={groups} must divide in_channels={in_channels} and "
                f"out_channels={out_channels}"
            )
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = stride
        self.dilation = _pair(dilation, "dilation")
        self.groups = groups
        cin = in_channels * stride * stride // groups
        self.weight = nn.Parameter(torch.empty(out_channels, cin, *self.kernel_size, **factory))
        if not self.weight.is_floating_point() or self.weight.is_complex():
            raise TypeError(f"dtype must be a real floating type, got {self.weight.dtype}")
        self.alpha = nn.Parameter(torch.empty((), **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self._cache = DerivedWeightCache()
        self.reset_parameters()
        self.register_load_state_dict_pre_hook(clear_cache_hook)

    def reset_parameters(self) -> None:
        """Kaiming-uniform weight (as ``nn.Conv2d``), ``alpha = ‖weight‖_F``, uniform bias."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        with torch.no_grad():
            self.alpha.copy_(self.weight.norm())
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            nn.init.uniform_(self.bias, -bound, bound)
        self._cache.clear()

    def train(self, mode: bool = True) -> CayleyConv2d:
        """Switch mode like ``nn.Module.train``; also drops the eval-time cache."""
        self._cache.clear()
        return super().train(mode)

    def _grid(self, height: int, width: int) -> tuple[int, int]:
        s = self.stride
        if height % s or width % s:
            raise ValueError(
                f"CayleyConv2d with stride={s} needs an input height and width divisible by "
                f"{s} (orthogonal space-to-depth), got {height}x{width}"
            )
        return height // s, width // s

    def spectrum(self, height: int, width: int) -> torch.Tensor:
        """The orthogonal per-frequency matrices ``Q_f`` for an input of size ``height x width``.

        Args:
            height, width: spatial size of the input (before space-to-depth).

        Returns:
            complex tensor ``(h·(w//2 + 1), groups, out_channels/groups, c/groups)`` with
            ``(h, w)`` the grid after space-to-depth and ``c = in_channels·stride²``. Uses the
            eval-time cache when :meth:`forward` would.
        """
        h, w = self._grid(height, width)
        if cache_usable(self):
            params = [self.weight, self.alpha]
            return self._cache.get((h, w), params, lambda: self._compute_spectrum(h, w))
        return self._compute_spectrum(h, w)

    def _compute_spectrum(self, h: int, w: int) -> torch.Tensor:
        g = self.groups
        n, cg = self.out_channels // g, self.weight.shape[1]
        Wf = kernel_spectrum(self.weight, h, w, self.dilation)  # (h, wr, out, cg)
        scale = self.alpha / self.weight.norm().clamp_min(torch.finfo(self.weight.dtype).tiny)
        V = (Wf * scale).reshape(h * (w // 2 + 1), g, n, cg)
        if n == cg:
            return cayley(V - V.mH)
        return cayley(V)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer to ``x``: ``(B, in_channels, H, W)`` or ``(in_channels, H, W)``."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim == 3:
            return self.forward(x.unsqueeze(0)).squeeze(0)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        if x.dtype != self.weight.dtype:
            raise TypeError(f"x has dtype {x.dtype}, the layer's parameters {self.weight.dtype}")
        Q = self.spectrum(x.shape[-2], x.shape[-1])
        if self.stride > 1:
            x = F.pixel_unshuffle(x, self.stride)
        B, C, h, w = x.shape
        g = self.groups
        X = torch.fft.rfft2(x)  # (B, C, h, wr)
        nfreq = X.shape[-2] * X.shape[-1]
        X = X.reshape(B, g, C // g, nfreq).permute(3, 1, 2, 0).contiguous()  # (F, g, cg, B)
        Y = _freq_matmul(Q, X)  # (F, g, n, B)
        Y = Y.permute(3, 1, 2, 0).reshape(B, self.out_channels, h, w // 2 + 1)
        y = torch.fft.irfft2(Y, s=(h, w))
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y

    def extra_repr(self) -> str:
        parts = [
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}",
            f"stride={self.stride}",
        ]
        if self.dilation != (1, 1):
            parts.append(f"dilation={self.dilation}")
        if self.groups != 1:
            parts.append(f"groups={self.groups}")
        if self.bias is None:
            parts.append("bias=False")
        return ", ".join(parts)


class _FreqMatmul(torch.autograd.Function):
    """``Q @ X`` whose backward makes the incoming gradient contiguous first.

    The gradient arrives permuted (from ``irfft2``'s layout); a complex batched matmul on strided
    operands falls back to a per-matrix loop on the CPU that is ~20x slower.
    """

    @staticmethod
    def forward(Q: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        return torch.matmul(Q, X)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor, torch.Tensor], output: Any) -> None:
        Q, X = inputs
        ctx.save_for_backward(Q, X)

    @staticmethod
    def backward(ctx: Any, G: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        Q, X = ctx.saved_tensors
        G = G.contiguous()
        grad_Q = G @ X.mH if ctx.needs_input_grad[0] else None
        grad_X = Q.mH @ G if ctx.needs_input_grad[1] else None
        return grad_Q, grad_X


def _freq_matmul(Q: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = _FreqMatmul.apply(Q, X)
    return out
