"""Adaptive rounding without data: GPTQ-style error feedback against a proxy Hessian.

GPTQ (Frantar et al., 2023) rounds the columns of ``W`` one after the other and pushes each
column's rounding error onto the columns not yet rounded, optimally for the loss
``tr((W - Ŵ) H (W - Ŵ)ᵀ)``. GPTQ takes ``H = X Xᵀ`` from calibration data; here ``H`` comes from
the proxy instead:

* a single matrix with input transform ``T`` and modelled input moment ``Σ``: the stored weight
  ``W' = W T⁻¹`` is rounded against ``H = T Σ Tᵀ`` (``= I`` for an orthogonal ``T`` and ``Σ = I``,
  where GPTQ reduces to round-to-nearest);
* a pair ``A B`` (``W_O W_V``): rounding ``B`` with ``Â`` fixed minimises ``||Â (B - B̂)||²``, a
  GPTQ problem on ``Bᵀ`` with ``H = ÂᵀÂ``; the partner matrix plays the role of the data.

Scales and zero points are fitted when the rounding reaches the first column of a group, on the
error-corrected weights (optionally with a search over range shrink factors).
"""

from __future__ import annotations

import torch

from coreopt.quant.format import QuantFormat, minmax_params, quantize_codes, range_params

DEFAULT_SHRINK_GRID: tuple[float, ...] = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)
"""Range shrink factors tried by :func:`fit_group_params` (1.0 = plain min-max)."""


def fit_group_params(
    W: torch.Tensor,
    fmt: QuantFormat,
    *,
    weight: torch.Tensor | None = None,
    grid: tuple[float, ...] | None = DEFAULT_SHRINK_GRID,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group scale and zero point, choosing per group the range shrink factor of ``grid`` that
    minimises the (column-``weight``\\ ed) squared rounding error; plain min-max when ``grid`` is
    ``None``.

    Args:
        W: ``(out, in)`` weight, ``in`` a multiple of the group size.
        fmt: the format.
        weight: ``(in,)`` non-negative column weights (``diag`` of the proxy Hessian), or
            ``(out, in)`` weights per row, or ``None``.
        grid: shrink factors to try.

    Returns:
        ``(scale, zero)`` of shape ``(out, in / group_size)``.
    """
    if not grid or grid == (1.0,):
        return minmax_params(W, fmt)
    out, n = W.shape
    g = fmt.group_size
    G = W.reshape(out, n // g, g)
    wcol = None if weight is None else weight.reshape(-1, n // g, g)
    best_err = None
    best = None
    lo, hi = G.amin(dim=-1), G.amax(dim=-1)  # once for every shrink factor
    for a in grid:
        s, z = range_params(lo, hi, fmt, shrink=a)
        # the error (q - z) s - w = s (q - y) with y = w / s + z, squared: s² (q - y)², in
        # place (seven passes over the group instead of ten)
        y = torch.addcdiv(z.unsqueeze(-1), G, s.unsqueeze(-1))
        r = y.round().clamp_(0, fmt.qmax).sub_(y).square_()
        err = (r.mul_(wcol) if wcol is not None else r).sum(-1) * s.square()
        if best is None or best_err is None:
            best_err, best = err, (s, z)
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = (torch.where(better, s, best[0]), torch.where(better, z, best[1]))
    assert best is not None
    return best


def gptq(
    W: torch.Tensor,
    H: torch.Tensor,
    fmt: QuantFormat,
    *,
    damp: float = 0.01,
    block_size: int = 128,
    grid: tuple[float, ...] | None = DEFAULT_SHRINK_GRID,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round ``W`` (``(out, in)``) column by column against ``tr((W - Ŵ) H (W - Ŵ)ᵀ)``.

    Args:
        W: weight to round (float32 or float64), ``in`` a multiple of the group size.
        H: ``(in, in)`` symmetric positive semi-definite proxy Hessian.
        fmt: the format.
        damp: ``H + damp · mean(diag H) · I`` is factorised (GPTQ's dampening).
        block_size: columns per lazy-update block (rounded up to a multiple of the group size).
        grid: shrink factors searched when fitting each group's scale (see
            :func:`fit_group_params`); ``None`` for plain min-max.

    Returns:
        ``(codes, scale, zero)`` as :func:`coreopt.quant.format.rtn` returns them.
    """
    out, n = W.shape
    g = fmt.group_size
    if n % g:
        raise ValueError(f"in_features={n} is not a multiple of group_size={g}")
    if H.shape != (n, n):
        raise ValueError(f"H must have shape ({n}, {n}), got {tuple(H.shape)}")
    work_dtype = torch.float64 if W.dtype == torch.float64 else torch.float32
    W = W.to(work_dtype).clone()
    H = H.to(work_dtype).clone()
    dead = torch.diagonal(H) <= 0
    if bool(dead.any()):
        H[dead, dead] = 1.0
    H.diagonal().add_(damp * float(torch.diagonal(H).mean()))
    L = torch.linalg.cholesky(H)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    hdiag = torch.diagonal(H)

    block_size = max(g, -(-block_size // g) * g)
    codes = torch.empty(out, n, dtype=torch.uint8, device=W.device)
    scale = torch.empty(out, n // g, dtype=work_dtype, device=W.device)
    zero = torch.empty_like(scale)
    for i1 in range(0, n, block_size):
        i2 = min(i1 + block_size, n)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        s = z = None
        for i in range(i2 - i1):
            col = i1 + i
            if col % g == 0:
                s_, z_ = fit_group_params(
                    W1[:, i : i + g], fmt, weight=hdiag[col : col + g], grid=grid
                )
                s, z = s_[:, 0], z_[:, 0]
                scale[:, col // g], zero[:, col // g] = s, z
            assert s is not None
            assert z is not None
            w = W1[:, i]
            q = torch.round(w / s + z).clamp_(0, fmt.qmax)
            codes[:, col] = q.to(torch.uint8)
            err = (w - (q - z) * s) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) * Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return codes, scale, zero


def rtn_fit(
    W: torch.Tensor,
    fmt: QuantFormat,
    *,
    weight: torch.Tensor | None = None,
    grid: tuple[float, ...] | None = DEFAULT_SHRINK_GRID,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round to nearest with scales from :func:`fit_group_params` (a range search per group)."""
    scale, zero = fit_group_params(W, fmt, weight=weight, grid=grid)
    return quantize_codes(W, scale, zero, fmt), scale, zero
