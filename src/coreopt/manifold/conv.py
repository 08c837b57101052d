"""An operator-level orthogonal convolution: the Cayley map applied per frequency of the FFT.

Trockman & Kolter, *Orthogonalizing Convolutional Layers with the Cayley Transform* (ICLR 2021).
A circular 2-D convolution is block-diagonalised by the 2-D DFT: at frequency ``(u, v)`` it acts
on the input's spectrum as a ``c_out x c_in`` complex matrix ``W_f``. Replacing each ``W_f`` by
its Cayley transform ``Q_f`` (unitary, or with orthonormal columns/rows when rectangular) makes
the whole operator orthogonal. See ``docs/manifold.md`` for the derivation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from coreopt.manifold._cache import (
    DerivedWeightCache,
    cache_usable,
    check_param_dtype,
    clear_cache_hook,
)
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
    # exp(iπ) is exactly -1: sin(fl(π)) is not 0, so the phases at m = n/2 are set, keeping the
    # self-conjugate frequencies (u = n/2) exactly real.
    cos = torch.where(2 * m == n, -1.0, torch.cos(angle))
    sin = torch.where(2 * m == n, 0.0, torch.sin(angle))
    return torch.complex(cos, sin)


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


# Kernels with at most this many taps build the spectrum with one matmul against a cached
# (frequencies x taps) phase matrix; larger ones (up to the full input size) use the separable
# two-step product of :func:`kernel_spectrum`, whose intermediate is smaller.
_DIRECT_TAPS = 64

_CONSTANTS: dict[tuple[Any, ...], torch.Tensor] = {}
_CONSTANTS_MAX = 128


def _constant(key: tuple[Any, ...], make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``make()``, cached per ``key`` (sizes, device, dtype): phase and scale tables.

    The tables are created outside inference mode and without autograd history, so a table first
    built inside ``torch.inference_mode()`` can later be saved for backward. While
    ``torch.compile`` traces, they are built in the graph instead (the cache is Python state).
    """
    if torch.compiler.is_compiling():
        return make()
    out = _CONSTANTS.get(key)
    if out is None:
        with torch.inference_mode(False), torch.no_grad():
            out = make()
        if len(_CONSTANTS) >= _CONSTANTS_MAX:
            _CONSTANTS.pop(next(iter(_CONSTANTS)))
        _CONSTANTS[key] = out
    return out


def _phase_matrix(
    h: int, w: int, kernel: tuple[int, int], dilation: tuple[int, int], device: Any, dtype: Any
) -> torch.Tensor:
    """Real ``(h·(w//2 + 1), 2·kh·kw)``: ``[Re, Im]`` of ``E[f, (a, b)] = Eh[u, a]·Ew[v, b]``
    interleaved per tap, so ``E @ w`` is one real matmul (see :func:`_weight_spectrum`)."""
    kh, kw = kernel

    def make() -> torch.Tensor:
        Eh = _phases(h, h, kh, dilation[0], device, dtype)  # (h, kh)
        Ew = _phases(w, w // 2 + 1, kw, dilation[1], device, dtype)  # (wr, kw)
        E = Eh[:, None, :, None] * Ew[None, :, None, :]  # (h, wr, kh, kw)
        return torch.view_as_real(E).reshape(h * (w // 2 + 1), 2 * kh * kw).contiguous()

    return _constant(("phase", h, w, kernel, dilation, device, dtype), make)


def _irfft2_grad_scale(h: int, w: int, device: Any, dtype: Any) -> torch.Tensor:
    """``(h·(w//2 + 1), 1, 1, 1)``: ``c_v / (h·w)``, the factor between ``rfft2(G)`` and the
    gradient of ``irfft2(Y, s=(h, w))`` w.r.t. ``Y`` (``c_v = 2`` for the columns standing for two
    conjugate frequencies, ``1`` for ``v = 0`` and, for even ``w``, ``v = w/2``)."""

    def make() -> torch.Tensor:
        wr = w // 2 + 1
        c = torch.ones(wr, device=device, dtype=dtype)
        c[1 : w - wr + 1] = 2
        return (c / (h * w)).expand(h, wr).reshape(h * wr, 1, 1, 1).contiguous()

    return _constant(("irfft2-grad", h, w, device, dtype), make)


def _complex_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def _to_freq(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``rfft2`` of ``(B, C, h, w)`` as per-frequency matrices ``(F, g, C/g, B)``, column-major
    (stored as a contiguous ``(F, g, B, C/g)``: LAPACK's layout, and the cheaper transpose)."""
    B, C = x.shape[0], x.shape[1]
    X = torch.fft.rfft2(x)
    return X.reshape(B, groups, C // groups, -1).permute(3, 1, 0, 2).contiguous().mT


def _spatial(Y: torch.Tensor, h: int, w: int, bias: torch.Tensor | None) -> torch.Tensor:
    """``irfft2`` of the spectrum ``Y`` ``(B, g, n, F)`` (contiguous) plus ``bias`` per channel.

    The bias is added to the DC coefficient (``h·w·b`` there is ``b`` at every pixel), which
    touches ``B·n`` entries instead of the whole output. ``Y`` is overwritten.
    """
    B, g, n, F_ = Y.shape
    Y = Y.view(B, g * n, F_)
    if bias is not None:
        Y[:, :, 0].add_(bias, alpha=h * w)
    return torch.fft.irfft2(Y.view(B, g * n, h, w // 2 + 1), s=(h, w))


def _freq_out(
    F_: int, g: int, n: int, B: int, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """An empty spectrum ``(B, g, n, F)`` and its ``(F, g, n, B)`` view: writing a
    frequency-major result into the view transposes it in the same pass (``irfft2`` on a strided
    input is ~2x slower than on a contiguous one)."""
    out = torch.empty((B, g, n, F_), dtype=like.dtype, device=like.device)
    return out, out.permute(3, 1, 2, 0)


def _store(view: torch.Tensor, op: Callable[..., torch.Tensor], *args: Any) -> None:
    """``view[...] = op(*args)``, computed straight into the strided ``view`` (``out=``) outside
    ``torch.compile`` (which rejects a non-contiguous ``out=``; there it is a copy)."""
    if torch.compiler.is_compiling():
        view.copy_(op(*args))
    else:
        op(*args, out=view)


def _spectral_conv(
    Q: torch.Tensor, X: torch.Tensor, h: int, w: int, bias: torch.Tensor | None
) -> torch.Tensor:
    """``irfft2(Q_f X_f) + bias`` for ``X`` from :func:`_to_freq` (no autograd).

    Computed as ``(Xᵀ Qᵀ)ᵀ``: ``Xᵀ`` is contiguous, and so is ``Qᵀ`` for a column-major ``Q``
    (how the layer stores it).
    """
    F_, g, n, c = Q.shape
    B = X.shape[-1]
    YT = torch.bmm(X.mT.reshape(F_ * g, B, c), Q.mT.reshape(F_ * g, c, n))
    out, view = _freq_out(F_, g, n, B, like=YT)
    view.copy_(YT.view(F_, g, B, n).mT)
    return _spatial(out, h, w, bias)


def _bias_grad(GF: torch.Tensor, needed: bool) -> torch.Tensor | None:
    """``Σ_{b, i, j} G[b, o, i, j]``: the DC coefficient of ``rfft2(G)`` (``GF`` ``(F, g, n, B)``)
    summed over the batch."""
    return GF[0].real.sum(-1).reshape(-1) if needed else None


class _SpectralConv(torch.autograd.Function):
    """``y = irfft2(Q_f · rfft2(x)) + bias`` for given per-frequency ``Q`` ``(F, g, n, c)``.

    The whole map ``x -> y − bias`` is a real linear operator ``K``, so its transpose is the same
    pipeline with ``Q_fᴴ``: ``grad_x = irfft2(Q_fᴴ · rfft2(G))``. This replaces autograd's
    backward of ``rfft2`` (a full complex FFT) by a real one. ``grad_Q = s_f · rfft2(G) Xᴴ``
    with ``s_f`` from :func:`_irfft2_grad_scale`.
    """

    @staticmethod
    def forward(
        ctx: Any, Q: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        X = _to_freq(x, Q.shape[1])  # (F, g, c, B)
        ctx.save_for_backward(
            Q if ctx.needs_input_grad[1] else None, X if ctx.needs_input_grad[0] else None
        )
        ctx.hw = (h, w)
        ctx.groups = Q.shape[1]
        return _spectral_conv(Q, X, h, w, bias)

    @staticmethod
    def backward(ctx: Any, G: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        Q, X = ctx.saved_tensors
        h, w = ctx.hw
        GF = _to_freq(G, ctx.groups)  # (F, g, n, B)
        grad_Q = grad_x = None
        if ctx.needs_input_grad[0]:
            scale = _irfft2_grad_scale(h, w, GF.device, G.dtype)
            grad_Q = torch.matmul(GF, X.mH * scale)
        if ctx.needs_input_grad[1]:
            grad_x = _spectral_conv(Q.mH, GF, h, w, None)
        return grad_Q, grad_x, _bias_grad(GF, ctx.needs_input_grad[2])


def _cayley_apply(
    A: torch.Tensor, X: torch.Tensor, solve_batch: bool, out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, ...]]:
    """The frequency-domain part of :class:`_CayleyConv`'s forward: ``out ← Q_f X_f``
    ``(F, g, n, B)`` without forming ``Q_f``. Returns what the backward needs: ``Z``, ``X₂``
    (wide only) and the solver (``(LU, pivots)`` or ``(M^{-1},)``)."""
    F_, g, n, c = A.shape
    k = min(n, c)
    eye = torch.eye(k, dtype=A.dtype, device=A.device)
    X1 = X2 = None
    if n == c:
        M, R = A, X
    elif n > c:
        U, V = A[..., :c, :], A[..., c:, :]
        M = torch.baddbmm(
            (eye + U - U.mH).reshape(-1, k, k),
            V.mH.reshape(-1, k, n - c),
            V.reshape(-1, n - c, k),
        ).view(F_, g, k, k)
        R = X
    else:
        U, K = A[..., :n], A[..., n:]
        M = torch.baddbmm(
            (eye + U - U.mH).reshape(-1, k, k),
            K.reshape(-1, k, c - n),
            K.mH.reshape(-1, c - n, k),
        ).view(F_, g, k, k)
        X1, X2 = X[..., :n, :], X[..., n:, :]
        R = X1 - torch.matmul(K, X2)
    LU, piv, _ = torch.linalg.lu_factor_ex(M)
    solver: tuple[torch.Tensor, ...]
    if solve_batch:
        Z = torch.linalg.lu_solve(LU, piv, R)
        solver = (LU, piv)
    else:
        Minv = torch.linalg.lu_solve(LU, piv, eye.expand_as(M))
        Z = torch.matmul(Minv, R)
        solver = (Minv,)
    if n == c:
        _store(out, torch.lerp, X, Z, 2.0)  # 2Z − X
    elif n > c:
        _store(out[..., :c, :], torch.lerp, X, Z, 2.0)
        _store(out[..., c:, :], torch.mul, torch.matmul(V, Z), -2.0)
    else:
        _store(out, torch.lerp, X1, Z, 2.0)
    return Z, X2, solver


class _CayleyConv(torch.autograd.Function):
    """``y = irfft2(Q_f · rfft2(x)) + bias`` with ``Q_f`` the Cayley map of ``A_f``, without
    forming ``Q_f``: only the system ``M_f`` of size ``k = min(n, c)`` is factorised (LU) and
    solved against the ``B`` columns of the input (``solve_batch``, cheaper when ``B`` is small
    against ``k``) or inverted once and applied by batched matmuls.

    ``A`` ``(F, g, n, c)`` is, per frequency (see :func:`~coreopt.manifold.cayley`):

    * square (``n == c``): ``M = I + A_skew`` itself (built by the layer).
      ``Q = 2 M^{-1} − I``, so ``Y = 2Z − X`` with ``Z = M^{-1} X``.
    * tall (``n > c``): ``A = [U; V]``, ``M = I + U − Uᴴ + VᴴV``,
      ``Q = [2M^{-1} − I; −2 V M^{-1}]``: ``Y = [2Z − X; −2 V Z]``.
    * wide (``n < c``): ``A = [U, K]``, ``Q = cayley(Aᵀ)ᵀ = [2N^{-1} − I, −2 N^{-1} K]`` with
      ``N = I + U − Uᴴ + K Kᴴ``: ``Y = 2Z − X₁`` with ``Z = N^{-1}(X₁ − K X₂)``.

    Backward (``G`` the spectrum of the incoming gradient, ``s_f`` the ``irfft2`` gradient scale,
    which the parameter gradients carry and the input gradient, through ``irfft2(Qᴴ G)``, does
    not; one more solve with the same LU, adjoint):

    * square: ``W = M^{-H} G``; ``grad_x ← 2W − G``; ``grad_M = −2 s W Zᴴ``.
    * tall: ``W = M^{-H}(2G₁ − 2VᴴG₂)``; ``grad_x ← W − G₁``; ``P = −s W Zᴴ``;
      ``grad_U = P − Pᴴ``, ``grad_V = −2 s G₂ Zᴴ + V(P + Pᴴ)``.
    * wide: ``W = N^{-H} G``; ``grad_x ← [2W − G; −2 KᴴW]``; ``P = −2 s W Zᴴ``;
      ``grad_U = P − Pᴴ``, ``grad_K = −2 s W X₂ᴴ + (P + Pᴴ) K``.
    """

    @staticmethod
    def forward(
        ctx: Any, A: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None, solve_batch: bool
    ) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        F_, g, n, _ = A.shape
        X = _to_freq(x, g)  # (F, g, c, B), column-major (LAPACK's layout)
        out, view = _freq_out(F_, g, n, x.shape[0], like=X)
        Z, X2, solver = _cayley_apply(A, X, solve_batch, view)
        ctx.save_for_backward(A, Z, X2, *solver)
        ctx.solve_batch = solve_batch
        ctx.hw = (h, w)
        return _spatial(out, h, w, bias)

    @staticmethod
    def backward(ctx: Any, G: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        h, w = ctx.hw
        A, Z, X2, *solver = ctx.saved_tensors
        F_, g, n, c = A.shape
        B = G.shape[0]

        def solve_adjoint(H: torch.Tensor) -> torch.Tensor:
            if ctx.solve_batch:
                return torch.linalg.lu_solve(solver[0], solver[1], H, adjoint=True)
            return torch.matmul(solver[0].mH, H)

        GF = _to_freq(G, g)  # (F, g, n, B), column-major
        need_A, need_x = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        scale = _irfft2_grad_scale(h, w, GF.device, G.dtype)
        grad_A = grad_x = None
        out, view = _freq_out(F_, g, c, B, like=GF)
        if n == c:
            W = solve_adjoint(GF)  # M^{-H} G
            if need_x:
                _store(view, torch.lerp, GF, W, 2.0)  # Qᴴ G = 2W − G
            if need_A:
                # −2 s W Zᴴ, computed transposed (conj(Z) Wᵀ) so that it is column-major like M
                # (whose row-major transpose the layer builds): no copy downstream.
                grad_A = torch.matmul(torch.mul(Z.conj(), -2 * scale), W.mT).mT
        elif n > c:
            V = A[..., c:, :]
            G1, G2 = GF[..., :c, :], GF[..., c:, :]
            W = solve_adjoint(2 * (G1 - torch.matmul(V.mH, G2)))
            if need_x:
                _store(view, torch.sub, W, G1)
            if need_A:
                P = torch.matmul(W * -scale, Z.mH)
                PpPh = P + P.mH
                grad_U = P - P.mH
                grad_V = torch.baddbmm(
                    torch.matmul(V, PpPh).reshape(-1, n - c, c),
                    (G2 * scale).reshape(-1, n - c, B),
                    Z.mH.reshape(-1, B, c),
                    alpha=-2.0,
                ).view(F_, g, n - c, c)
                grad_A = torch.cat((grad_U, grad_V), dim=-2)
        else:
            K = A[..., n:]
            W = solve_adjoint(GF)  # N^{-H} G
            if need_x:
                _store(view[..., :n, :], torch.lerp, GF, W, 2.0)
                _store(view[..., n:, :], torch.mul, torch.matmul(K.mH, W), -2.0)
            if need_A:
                Ws = W * (-2 * scale)
                P = torch.matmul(Ws, Z.mH)
                grad_U = P - P.mH
                grad_K = torch.matmul(Ws, X2.mH) + torch.matmul(P + P.mH, K)
                grad_A = torch.cat((grad_U, grad_K), dim=-1)
        if need_x:
            grad_x = _spatial(out, h, w, None)
        return grad_A, grad_x, _bias_grad(GF, ctx.needs_input_grad[2]), None


def _scaled_weight(weight: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``alpha · weight / ‖weight‖_F``."""
    return weight * (alpha / weight.norm().clamp_min(torch.finfo(weight.dtype).tiny))


def _weight_spectrum(
    weight: torch.Tensor,
    alpha: torch.Tensor,
    h: int,
    w: int,
    groups: int,
    dilation: tuple[int, int],
) -> torch.Tensor:
    """``V_f = alpha · W_f / ‖weight‖_F``, ``(F, g, n, c)`` complex."""
    out_ch, cg, kh, kw = weight.shape
    n = out_ch // groups
    weight = _scaled_weight(weight, alpha)
    nfreq = h * (w // 2 + 1)
    if kh * kw > _DIRECT_TAPS:
        return kernel_spectrum(weight, h, w, dilation).reshape(nfreq, groups, n, cg)
    P = _phase_matrix(h, w, (kh, kw), dilation, weight.device, weight.dtype)
    # Rows (tap, re/im) x columns (out, in, re/im): Re V = Σ Re E_k w_k, Im V = Σ Im E_k w_k.
    wk = weight.reshape(-1, kh * kw).T  # (taps, out·in)
    zero = torch.zeros_like(wk)
    Wv = torch.stack((torch.stack((wk, zero), -1), torch.stack((zero, wk), -1)), 1)
    V = (P @ Wv.reshape(2 * kh * kw, -1)).view(nfreq, groups, n, cg, 2)
    return torch.view_as_complex(V)


def _skew_spectrum(
    weight: torch.Tensor,
    alpha: torch.Tensor,
    h: int,
    w: int,
    groups: int,
    dilation: tuple[int, int],
    plus_identity: bool,
) -> torch.Tensor:
    """``A_f = V_f − V_fᴴ`` (or ``I + A_f``), ``(F, g, n, n)``, for square groups.

    Built directly by one real matmul with the phase matrix (``Re A = Σ Re E_k (w_k − w_kᵀ)``,
    ``Im A = Σ Im E_k (w_k + w_kᵀ)``), never materialising ``V``; the result is a column-major
    view (LAPACK's layout, so the LU factorisation copies it without transposing).
    """
    _, n, kh, kw = weight.shape
    nfreq = h * (w // 2 + 1)
    if kh * kw > _DIRECT_TAPS:
        V = _weight_spectrum(weight, alpha, h, w, groups, dilation)
        A = V - V.mT.conj_physical()  # not a lazy conjugate: see cayley._cayley_forward
        if plus_identity:
            A = A + torch.eye(n, dtype=A.dtype, device=A.device)
        return A
    weight = _scaled_weight(weight, alpha)
    device, dtype = weight.device, weight.dtype
    P = _phase_matrix(h, w, (kh, kw), dilation, device, dtype)
    wk = weight.reshape(groups, n, n, kh * kw)
    wt = wk.transpose(1, 2)
    # Row-major Aᵀ (= column-major A): Aᵀ[o, c] = Σ Re E_k (w_k[c, o] − w_k[o, c]) + i ...
    re = (wt - wk).reshape(-1, kh * kw).T
    im = (wt + wk).reshape(-1, kh * kw).T
    zero = torch.zeros_like(re)
    Wa = torch.stack((torch.stack((re, zero), -1), torch.stack((zero, im), -1)), 1)
    Wa = Wa.reshape(2 * kh * kw, -1)
    if plus_identity:
        eye = _constant(
            ("eye-row", groups, n, device, dtype),
            lambda: torch.view_as_real(
                torch.eye(n, dtype=dtype, device=device)
                .to(_complex_dtype(dtype))
                .expand(groups, n, n)
            ).reshape(1, -1),
        )
        At = torch.addmm(eye, P, Wa)
    else:
        At = P @ Wa
    return torch.view_as_complex(At.view(nfreq, groups, n, n, 2)).mT


def _system_spectrum(
    weight: torch.Tensor,
    alpha: torch.Tensor,
    h: int,
    w: int,
    groups: int,
    dilation: tuple[int, int],
    plus_identity: bool = True,
) -> torch.Tensor:
    """What :class:`_CayleyConv` takes: ``I + A_f`` for square groups, else ``V_f``.

    With ``plus_identity=False``, ``A_f`` itself for square groups (what :func:`cayley` takes).
    """
    if weight.shape[0] // groups == weight.shape[1]:
        return _skew_spectrum(weight, alpha, h, w, groups, dilation, plus_identity=plus_identity)
    return _weight_spectrum(weight, alpha, h, w, groups, dilation)


def _q_spectrum(
    weight: torch.Tensor,
    alpha: torch.Tensor,
    h: int,
    w: int,
    groups: int,
    dilation: tuple[int, int],
) -> torch.Tensor:
    """``Q_f`` ``(F, g, n, c)``, column-major (see :func:`_spectral_conv`)."""
    A = _system_spectrum(weight, alpha, h, w, groups, dilation, plus_identity=False)
    return cayley(A).mT.contiguous().mT


# Per-weight eval caches, shared by the eager path (the layer's own ``_cache``, registered here)
# and the op below, which compiled graphs call to reach them.
# (Keyed by identity: tensors compare elementwise.)
_CACHES = WeakIdKeyDictionary()


@torch.library.custom_op("coreopt::cayley_conv_spectrum", mutates_args=())
def _cached_spectrum_op(
    weight: torch.Tensor,
    alpha: torch.Tensor,
    h: int,
    w: int,
    groups: int,
    dilation_h: int,
    dilation_w: int,
) -> torch.Tensor:
    """``Q_fᵀ`` ``(F, g, c, n)`` from the eval cache of ``weight`` (computed if stale), for
    compiled graphs.

    Opaque to ``torch.compile``, so the cache lookup (a check of the parameters' version
    counters and values) happens each time the graph runs. Returns a contiguous copy of the
    transpose of the column-major cached ``Q`` (``.mT`` of it is ``Q``, laid out as the eager
    path's): a compiled graph may reuse the buffers of an op's outputs, and expects contiguous ones.
    """
    cache = _CACHES.get(weight)
    if cache is None:
        cache = DerivedWeightCache()
        _CACHES[weight] = cache
    dilation = (dilation_h, dilation_w)
    Q = cache.get(
        (h, w),
        [weight, alpha],
        lambda: _q_spectrum(weight, alpha, h, w, groups, dilation),
    )
    return Q.mT.contiguous()


@_cached_spectrum_op.register_fake
def _(
    weight: torch.Tensor,
    alpha: torch.Tensor,
    h: int,
    w: int,
    groups: int,
    dilation_h: int,
    dilation_w: int,
) -> torch.Tensor:
    out_ch, cg = weight.shape[0], weight.shape[1]
    shape = (h * (w // 2 + 1), groups, cg, out_ch // groups)
    return weight.new_empty(shape, dtype=_complex_dtype(weight.dtype))


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
       only a ``min(n, c)`` system per frequency) otherwise; all frequencies batched.
    4. ``y = irfft2(Q_f · rfft2(x)) + bias``.

    In training ``Q_f`` is never formed: the LU factorisation of the ``min(n, c)``-sized system
    ``M_f`` is solved against the ``B`` columns of ``rfft2(x)`` (``Q_f X_f = 2 M_f^{-1} X_f −
    X_f`` when square), or, for batches with ``3B >= 2·min(n, c)``, ``M_f^{-1}`` is formed once;
    the hand-written backward reuses the factorisation (one adjoint solve) and maps the gradient
    back with real FFTs only. The skew ``A_f`` is built by one matmul of a cached phase matrix with
    the weights. In eval ``Q_f`` comes from the cache and is applied by one batched complex matmul.

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
    size. The cache is keyed on the parameters' version counters and a copy of their values, so
    an optimizer step, a write through ``.data`` (EMA, weight clipping),
    ``load_state_dict`` or any in-place change invalidates it; ``train()`` clears it. Compiled
    graphs (``torch.compile``, also with ``fullgraph=True``) reach the same cache through the
    opaque op ``coreopt::cayley_conv_spectrum``, which checks the parameters when the graph
    runs.

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
        check_param_dtype(self.weight.dtype, "CayleyConv2d")
        self.alpha = nn.Parameter(torch.empty((), **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self._cache = DerivedWeightCache()
        _CACHES[self.weight] = self._cache
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
        return self._spectrum_hw(*self._grid(height, width))

    def _spectrum_hw(self, h: int, w: int) -> torch.Tensor:
        if torch.compiler.is_compiling():
            if not self.training and not (
                torch.is_grad_enabled() and (self.weight.requires_grad or self.alpha.requires_grad)
            ):
                # The cache is Python state that a compiled graph cannot read: an opaque op
                # looks it up when the graph runs (checking the parameters then).
                dh, dw = self.dilation
                qt: torch.Tensor = torch.ops.coreopt.cayley_conv_spectrum(
                    self.weight, self.alpha, h, w, self.groups, dh, dw
                )
                return qt.mT
            return self._compute_spectrum(h, w)
        if cache_usable(self):
            params = [self.weight, self.alpha]
            return self._cache.get((h, w), params, lambda: self._compute_spectrum(h, w))
        return self._compute_spectrum(h, w)

    def _compute_spectrum(self, h: int, w: int) -> torch.Tensor:
        """``Q_f`` ``(F, g, n, c)`` on the ``h x w`` grid (no cache)."""
        return _q_spectrum(self.weight, self.alpha, h, w, self.groups, self.dilation)

    def _training_spectrum(self, h: int, w: int, solve_batch: bool = True) -> torch.Tensor:
        """The ``Q_f`` that the training forward applies without forming it: the same code
        (:func:`_cayley_apply`) run on identity matrices. For diagnostics and tests."""
        A = _system_spectrum(self.weight, self.alpha, h, w, self.groups, self.dilation)
        F_, g, n, c = A.shape
        eye = torch.eye(c, dtype=A.dtype, device=A.device).expand(F_, g, c, c)
        out = torch.empty(F_, g, n, c, dtype=A.dtype, device=A.device)
        _cayley_apply(A, eye, solve_batch, out)
        return out

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
        check_param_dtype(self.weight.dtype, "CayleyConv2d")  # e.g. after .bfloat16()
        if x.dtype != self.weight.dtype:
            raise TypeError(f"x has dtype {x.dtype}, the layer's parameters {self.weight.dtype}")
        h, w = self._grid(x.shape[-2], x.shape[-1])
        if self.stride > 1:
            x = F.pixel_unshuffle(x, self.stride)
        if self.training:
            # Training: Q_f is never formed; the LU of the min(n, c)-sized system is solved
            # against the batch (or inverted once, for large batches), see _CayleyConv.
            A = _system_spectrum(self.weight, self.alpha, h, w, self.groups, self.dilation)
            solve_batch = 3 * x.shape[0] < 2 * min(A.shape[-2:])
            y: torch.Tensor = _CayleyConv.apply(A, x, self.bias, solve_batch)
        else:
            Q = self._spectrum_hw(h, w)
            if torch.is_grad_enabled() and (
                Q.requires_grad
                or x.requires_grad
                or (self.bias is not None and self.bias.requires_grad)
            ):
                y = _SpectralConv.apply(Q, x, self.bias)
            else:
                y = _spectral_conv(Q, _to_freq(x, self.groups), h, w, self.bias)
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
