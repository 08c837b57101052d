"""Dual transforms on paired weights, folded offline, and alternating rounding of the pair.

Two matrices that act one after the other can absorb an invertible ``M`` and its inverse without
changing the function (QuaRot's computational invariance, CafeQ's general transforms):

* **V/O, per head** (``M_h ∈ GL(d_head)``, one per key/value head): ``W_V ← M W_V`` (and its bias),
  ``W_O[:, h] ← W_O[:, h] M⁻¹`` for every query head ``h`` reading that value head; attention mixes
  tokens linearly, so the output is unchanged.
* **Q/K, per head**: ``W_Q[h] ← M⁻ᵀ W_Q[h]``, ``W_K ← M W_K`` keep every score ``qᵀk``. With
  rotary embeddings ``M`` must commute with the rotations: a scaled rotation (complex scalar) on
  each rotary plane ``(i, i + d/2)``.
* **gated MLP**: ``W_up ← diag(s) W_up``, ``W_down ← W_down diag(s)⁻¹`` (``act(g) * (s u) / s``).

The transforms are learned against the error of the *product* through a straight-through rounding,
then the pair is rounded alternately: with ``Â`` fixed, ``B̂`` minimises ``Σ_h ||(A_h B_h − Â_h B̂_h)
Σ^{1/2}||²``, a GPTQ problem whose Hessian is the partner's Gram matrix (see
:mod:`coreopt.quant.rounding`); then ``Â`` with ``B̂`` fixed, and so on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, cast

import torch

from coreopt.objective import MinimizeConfig, Objective, minimize
from coreopt.quant.format import QuantFormat, dequantize_codes, fake_quantize, quantize_codes
from coreopt.quant.proxy import InputMoments
from coreopt.quant.rounding import DEFAULT_SHRINK_GRID, fit_group_params, gptq

PairKind = Literal["vo", "qk"]


# ----------------------------------------------------------------------------------------------
# Folding (exact, float64 internally)
# ----------------------------------------------------------------------------------------------


def _expand(M: torch.Tensor, n_heads: int) -> torch.Tensor:
    return M.repeat_interleave(n_heads // M.shape[0], 0)


def fold_vo(
    W_v: torch.Tensor, b_v: torch.Tensor | None, W_o: torch.Tensor, M: torch.Tensor, n_heads: int
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """``(M W_V, M b_V, W_O M⁻¹)`` per head; ``M`` is ``(n_kv_heads, d, d)``.

    Examples:
        >>> import torch
        >>> Wv, Wo = torch.randn(8, 6, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64)
        >>> M = torch.randn(2, 4, 4, dtype=torch.float64) + 3 * torch.eye(4, dtype=torch.float64)
        >>> Wv2, _, Wo2 = fold_vo(Wv, None, Wo, M, n_heads=2)
        >>> torch.allclose(Wo2 @ Wv2, Wo @ Wv)
        True
    """
    kv, d, _ = M.shape
    Md = M.to(torch.float64)
    Wv = (Md @ W_v.to(torch.float64).reshape(kv, d, -1)).reshape(W_v.shape)
    bv = None if b_v is None else (Md @ b_v.to(torch.float64).reshape(kv, d, 1)).reshape(b_v.shape)
    Minv = _expand(torch.linalg.inv(Md), n_heads)  # (h, d, d)
    o = W_o.shape[0]
    Wo = torch.einsum("ohd,hde->ohe", W_o.to(torch.float64).reshape(o, n_heads, d), Minv)
    return (
        Wv.to(W_v.dtype),
        None if bv is None or b_v is None else bv.to(b_v.dtype),
        Wo.reshape(W_o.shape).to(W_o.dtype),
    )


def fold_qk(
    W_q: torch.Tensor,
    b_q: torch.Tensor | None,
    W_k: torch.Tensor,
    b_k: torch.Tensor | None,
    M: torch.Tensor,
    n_heads: int,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """``(M⁻ᵀ W_Q, M⁻ᵀ b_Q, M W_K, M b_K)`` per head; ``M`` is ``(n_kv_heads, d, d)``."""
    kv, d, _ = M.shape
    Md = M.to(torch.float64)
    Wk = (Md @ W_k.to(torch.float64).reshape(kv, d, -1)).reshape(W_k.shape)
    bk = None if b_k is None else (Md @ b_k.to(torch.float64).reshape(kv, d, 1)).reshape(b_k.shape)
    MinvT = _expand(torch.linalg.inv(Md).mT, n_heads)
    Wq = (MinvT @ W_q.to(torch.float64).reshape(n_heads, d, -1)).reshape(W_q.shape)
    bq = (
        None
        if b_q is None
        else (MinvT @ b_q.to(torch.float64).reshape(n_heads, d, 1)).reshape(b_q.shape)
    )
    return (
        Wq.to(W_q.dtype),
        None if bq is None or b_q is None else bq.to(b_q.dtype),
        Wk.to(W_k.dtype),
        None if bk is None or b_k is None else bk.to(b_k.dtype),
    )


def fold_gated(
    W_up: torch.Tensor, b_up: torch.Tensor | None, W_down: torch.Tensor, s: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """``(diag(s) W_up, s ⊙ b_up, W_down diag(s)⁻¹)`` for a gated MLP (``s`` nonzero)."""
    sd = s.to(torch.float64)
    Wu = (W_up.to(torch.float64) * sd.unsqueeze(1)).to(W_up.dtype)
    bu = None if b_up is None else (b_up.to(torch.float64) * sd).to(b_up.dtype)
    Wd = (W_down.to(torch.float64) / sd.unsqueeze(0)).to(W_down.dtype)
    return Wu, bu, Wd


def rotary_commuting(params: torch.Tensor) -> torch.Tensor:
    """Matrices commuting with every rotary rotation (rotate-half layout): for ``params`` of shape
    ``(k, 2, d/2)`` holding ``(a, b)`` per plane, ``M`` acts on ``(x_i, x_{i+d/2})`` as
    ``[[a, −b], [b, a]]`` (a complex scalar ``a + ib``). Returns ``(k, d, d)``."""
    a, b = params[:, 0], params[:, 1]
    A, B = torch.diag_embed(a), torch.diag_embed(b)
    top = torch.cat((A, -B), dim=-1)
    bottom = torch.cat((B, A), dim=-1)
    return torch.cat((top, bottom), dim=-2)


# ----------------------------------------------------------------------------------------------
# The pair proxy
# ----------------------------------------------------------------------------------------------


def _factor(moments: InputMoments | None, n: int, like: torch.Tensor) -> torch.Tensor | None:
    """``L`` with ``L Lᵀ = Σ`` (``(n, r)``), ``None`` for ``Σ = I``."""
    if moments is None or moments.is_identity:
        return None
    cols = []
    if moments.diag is not None:
        cols.append(torch.diag(moments.diag.to(like).clamp_min(0).sqrt()))
    else:
        cols.append(torch.eye(n, dtype=like.dtype, device=like.device))
    if moments.low_rank is not None:
        cols.append(moments.low_rank.to(like))
    return torch.cat(cols, dim=1)


@dataclass(frozen=True)
class PairProblem:
    """A head-wise product ``P_h = X_hᵀ Y_{g(h)}`` to preserve under quantization.

    ``kind="vo"``: ``X = W_O`` viewed per query head as ``W_O[:, h]ᵀ`` (``(d, out)``), ``Y = W_V``
    per value head (``(d, in)``), product ``W_O[:, h] W_V[g(h)]``, weighted on the right by the
    value input's moment ``Σ``. ``kind="qk"``: ``X = W_Q`` per head (``(d, in)``), ``Y = W_K``,
    product ``W_Q[h]ᵀ W_K[g(h)]``, weighted on both sides by ``Σ``.
    """

    kind: PairKind
    reader: torch.Tensor  # W_O (vo) or W_Q (qk), as stored in the Linear
    producer: torch.Tensor  # W_V or W_K
    n_heads: int
    n_kv_heads: int
    head_dim: int
    moments: InputMoments | None = None

    def x_heads(self, R: torch.Tensor) -> torch.Tensor:
        """Reader as ``(h, d, ·)``."""
        h, d = self.n_heads, self.head_dim
        if self.kind == "vo":
            return R.reshape(R.shape[0], h, d).permute(1, 2, 0)
        return R.reshape(h, d, -1)

    def y_heads(self, P: torch.Tensor) -> torch.Tensor:
        """Producer as ``(h, d, in)`` (value/key heads repeated for their query heads)."""
        kv, d = self.n_kv_heads, self.head_dim
        return _expand(P.reshape(kv, d, -1), self.n_heads)

    def loss(self, R_hat: torch.Tensor, P_hat: torch.Tensor) -> torch.Tensor:
        """``Σ_h`` squared weighted error of the product with quantized factors.

        Computed from ``d x d`` Gram matrices, ``||XᵀY − X̂ᵀŶ||² = tr(G_X G_Y) − 2 tr(X X̂ᵀ Ŷ Σ Yᵀ)
        + tr(G_X̂ G_Ŷ)``, never forming the ``out x in`` products (``O(d² (out + in))`` per head
        instead of ``O(d out in)``).
        """
        kv, d = self.n_kv_heads, self.head_dim
        m = self.moments
        mx = m if self.kind == "qk" else None
        X, Xh = self.x_heads(self.reader), self.x_heads(R_hat)
        Y, Yh = self.producer.reshape(kv, d, -1), P_hat.reshape(kv, d, -1)
        h = self.n_heads
        Gx, Cx, Gxh = _gram(X, X, mx), _gram(X, Xh, mx), _gram(Xh, Xh, mx)
        Gy = _expand(_gram(Y, Y, m), h)
        Cy = _expand(_gram(Yh, Y, m), h)
        Gyh = _expand(_gram(Yh, Yh, m), h)
        return (Gx * Gy.mT).sum() - 2 * (Cx * Cy.mT).sum() + (Gxh * Gyh.mT).sum()


def _gram(A: torch.Tensor, B: torch.Tensor, m: InputMoments | None) -> torch.Tensor:
    """``A Σ Bᵀ`` for batches ``(k, d, n)`` with ``Σ = diag + U Uᵀ`` (``None``: identity)."""
    if m is None or m.is_identity:
        return A @ B.mT
    out = (A * m.diag.to(A)) @ B.mT if m.diag is not None else A @ B.mT
    if m.low_rank is not None:
        U = m.low_rank.to(A)
        out = out + (A @ U) @ (B @ U).mT
    return out


def _fq_reader(kind: PairKind, R: torch.Tensor, fmt: QuantFormat, ste: bool) -> torch.Tensor:
    return fake_quantize(R, fmt, ste=ste)


def learn_pair_transform(
    problem: PairProblem,
    fmt: QuantFormat,
    *,
    rope: bool = False,
    steps: int = 100,
    lr: float = 5e-3,
    tol: float = 0.0,
) -> tuple[torch.Tensor, float, float]:
    """Learn the per-head ``M`` (``(n_kv_heads, d, d)``) of a V/O or Q/K pair against the product
    proxy with straight-through rounding (``tol``: stop at the knee, see :func:`_adam_best`).
    Returns ``(M, loss, initial_loss)`` (normalised)."""
    kv, d = problem.n_kv_heads, problem.head_dim
    ref = problem.producer
    zero_R = torch.zeros_like(problem.reader)
    zero_P = torch.zeros_like(problem.producer)
    norm = float(problem.loss(zero_R, zero_P)) or 1.0

    if rope:
        if d % 2:
            raise ValueError("rotary-commuting transforms need an even head_dim")
        start = torch.zeros(kv, 2, d // 2, dtype=ref.dtype, device=ref.device)
        start[:, 0] = 1.0

        def to_M(p: torch.Tensor) -> torch.Tensor:
            return rotary_commuting(p)
    else:
        start = torch.eye(d, dtype=ref.dtype, device=ref.device).expand(kv, d, d).clone()

        def to_M(p: torch.Tensor) -> torch.Tensor:
            return p

    def folded(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        Minv = torch.linalg.inv(M)
        h = problem.n_heads
        P = (M @ problem.producer.reshape(kv, d, -1)).reshape(problem.producer.shape)
        if problem.kind == "vo":
            o = problem.reader.shape[0]
            R = torch.einsum("ohd,hde->ohe", problem.reader.reshape(o, h, d), _expand(Minv, h))
        else:
            R = _expand(Minv.mT, h) @ problem.reader.reshape(h, d, -1)
        return R.reshape(problem.reader.shape), P

    def objective(p: torch.Tensor) -> torch.Tensor:
        R, P = folded(to_M(p))
        Rq = _fq_reader(problem.kind, R, fmt, True)
        Pq = fake_quantize(P, fmt, ste=True)
        return problem.loss(Rq, Pq) / norm

    best, loss, initial = _adam_best(objective, start, steps, lr, tol)
    return to_M(best).detach(), loss, initial


# ----------------------------------------------------------------------------------------------
# Alternating rounding
# ----------------------------------------------------------------------------------------------


def gptq_rows(
    Y: torch.Tensor,
    H: torch.Tensor,
    fmt: QuantFormat,
    *,
    col_weight: torch.Tensor | None = None,
    damp: float = 0.01,
    grid: tuple[float, ...] | None = DEFAULT_SHRINK_GRID,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round the rows of ``Y`` (``(k, d, in)``: ``k`` independent head blocks) one after the other.

    The loss is ``Σ_k tr((Y_k − Ŷ_k)ᵀ H_k (Y_k − Ŷ_k))`` (``H``: ``(k, d, d)``); each row's error is
    pushed onto the rows not yet rounded. Each row's group scales are fitted when it is reached.

    Returns ``(codes, scale, zero)`` for the ``(k d, in)`` matrix.
    """
    k, d, n = Y.shape
    g = fmt.group_size
    Y = Y.clone()
    H = H.clone()
    idx = torch.arange(d, device=H.device)
    H[:, idx, idx] += damp * H.diagonal(dim1=-2, dim2=-1).mean(-1, keepdim=True).clamp_min(1e-12)
    Lc = torch.linalg.cholesky(H)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(Lc), upper=True)  # (k, d, d)
    codes = torch.empty(k, d, n, dtype=torch.uint8, device=Y.device)
    scale = torch.empty(k, d, n // g, dtype=Y.dtype, device=Y.device)
    zero = torch.empty_like(scale)
    for r in range(d):
        row = Y[:, r, :]  # (k, n)
        s, z = fit_group_params(row, fmt, weight=col_weight, grid=grid)
        q = quantize_codes(row, s, z, fmt)
        codes[:, r], scale[:, r], zero[:, r] = q, s, z
        err = (row - dequantize_codes(q, s, z, g, row.dtype)) / Hinv[:, r, r].unsqueeze(1)
        if r + 1 < d:
            Y[:, r + 1 :, :] -= Hinv[:, r, r + 1 :].unsqueeze(-1) * err.unsqueeze(1)
    return codes.reshape(k * d, n), scale.reshape(k * d, -1), zero.reshape(k * d, -1)


@dataclass(frozen=True)
class PairRounding:
    """Codes of both matrices of a pair after alternating rounding."""

    reader: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    producer: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    loss: float
    initial_loss: float
    rounds: int


def alternating_rounding(
    problem: PairProblem,
    fmt: QuantFormat,
    *,
    rounds: int = 2,
    grid: tuple[float, ...] | None = DEFAULT_SHRINK_GRID,
    damp: float = 0.01,
) -> PairRounding:
    """Alternate GPTQ rounding of the producer (Hessian from the rounded reader) and of the reader
    (Hessian from the rounded producer), starting from round-to-nearest of both; keeps the best
    pair by the product proxy (normalised by the product's own weighted norm)."""
    g = fmt.group_size
    h, kv, d = problem.n_heads, problem.n_kv_heads, problem.head_dim
    R, P = problem.reader, problem.producer
    dt = R.dtype
    L = _factor(problem.moments, P.shape[1], P)
    Sigma = None if L is None else L @ L.T
    col_w = None
    if problem.moments is not None and not problem.moments.is_identity:
        col_w = torch.diagonal(Sigma) if Sigma is not None else None
    norm = float(problem.loss(torch.zeros_like(R), torch.zeros_like(P))) or 1.0

    def deq(c: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return dequantize_codes(c[0], c[1], c[2], g, dt)

    def rtn(
        W: torch.Tensor, w: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s, z = fit_group_params(W, fmt, weight=w, grid=grid)
        return quantize_codes(W, s, z, fmt), s, z

    r_codes = rtn(R, None if problem.kind == "vo" else col_w)
    p_codes = rtn(P, col_w)
    best = (r_codes, p_codes)
    best_loss = initial = float(problem.loss(deq(r_codes), deq(p_codes))) / norm
    X = problem.x_heads(R)  # (h, d, ·)
    Yfull = problem.y_heads(P)
    for _ in range(rounds):
        # --- producer given the reader: H_k = Σ_{h in group k} X̂_h W X̂_hᵀ, LS target
        Xh = problem.x_heads(deq(r_codes))
        XL = Xh @ L if (problem.kind == "qk" and L is not None) else Xh
        XfL = X @ L if (problem.kind == "qk" and L is not None) else X
        Hh = XL @ XL.mT  # (h, d, d)
        Ch = XL @ XfL.mT  # cross term X̂ W Xᵀ
        Hk = Hh.reshape(kv, h // kv, d, d).sum(1)
        rhs = (Ch @ Yfull).reshape(kv, h // kv, d, -1).sum(1)  # (kv, d, in)
        Hk_d = Hk + 1e-6 * Hk.diagonal(dim1=-2, dim2=-1).mean(-1).view(kv, 1, 1) * torch.eye(
            d, dtype=dt, device=R.device
        )
        Ystar = torch.linalg.solve(Hk_d, rhs)
        p_codes = gptq_rows(Ystar, Hk, fmt, col_weight=col_w, damp=damp, grid=grid)
        loss = float(problem.loss(deq(r_codes), deq(p_codes))) / norm
        if loss < best_loss:
            best, best_loss = (r_codes, p_codes), loss
        # --- reader given the producer
        Yh = problem.y_heads(deq(p_codes))  # (h, d, in)
        YS = Yh @ L if L is not None else Yh
        YfS = problem.y_heads(P) @ L if L is not None else problem.y_heads(P)
        Hy = YS @ YS.mT  # (h, d, d)
        Cy = YS @ YfS.mT
        Hy_d = Hy + 1e-6 * Hy.diagonal(dim1=-2, dim2=-1).mean(-1).view(h, 1, 1) * torch.eye(
            d, dtype=dt, device=R.device
        )
        if problem.kind == "vo":
            # W_O[:, h] target: W_O[:, h] Y Σ Ŷᵀ (Ŷ Σ Ŷᵀ)⁻¹, then GPTQ over W_O's columns.
            Xt = torch.linalg.solve(Hy_d, Cy @ X)  # (h, d, out)
            target = Xt.permute(2, 0, 1).reshape(R.shape)
            Hfull = torch.block_diag(*Hy.unbind(0))
            r_codes = gptq(target, Hfull, fmt, damp=damp, grid=grid)
            r_codes = (r_codes[0], r_codes[1].to(dt), r_codes[2].to(dt))
        else:
            Xt = torch.linalg.solve(Hy_d, Cy @ X)  # (h, d, in)
            r_codes = gptq_rows(Xt, Hy, fmt, col_weight=col_w, damp=damp, grid=grid)
        loss = float(problem.loss(deq(r_codes), deq(p_codes))) / norm
        if loss < best_loss:
            best, best_loss = (r_codes, p_codes), loss
    return PairRounding(best[0], best[1], best_loss, initial, rounds)


KNEE_WINDOW = 10
"""Steps over which :func:`_adam_best` measures the progress of a dual transform's loss."""


def _adam_best(
    objective: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    steps: int,
    lr: float,
    tol: float = 0.0,
) -> tuple[torch.Tensor, float, float]:
    """``steps`` Adam steps on ``objective`` from ``start`` with :func:`coreopt.minimize`, keeping
    the best iterate. Returns ``(best parameters, best loss, loss at start)``; with ``steps=0``
    the start itself.

    ``tol > 0`` stops at the knee of the loss curve: when the best loss fell by less than ``tol``
    times itself over the last :data:`KNEE_WINDOW` steps (the steps before are those of the full
    run)."""
    with torch.no_grad():
        initial = float(objective(start))
    if steps == 0:
        return start, initial, initial
    best: list[float] = []

    def knee(step: int, loss: float, _params: object) -> bool:
        best.append(min(loss, best[-1]) if best else loss)
        if tol <= 0 or step < KNEE_WINDOW:
            return False
        return best[-1 - KNEE_WINDOW] - best[-1] < tol * best[-1]

    with torch.enable_grad():
        res = minimize(
            cast(Objective, objective),
            start,
            MinimizeConfig(
                steps=steps, lr=lr, optimizer="adam", patience=None, keep_best=True, progress=False
            ),
            callback=knee,
        )
    return cast(torch.Tensor, res.raw_params), res.loss, initial


def learn_gated_scaling(
    W_down: torch.Tensor,
    hidden: InputMoments | None,
    fmt: QuantFormat,
    *,
    steps: int = 60,
    lr: float = 0.05,
    tol: float = 0.0,
) -> tuple[torch.Tensor, float, float]:
    """Learn the diagonal ``s`` of a gated MLP (``W_up ← diag(s) W_up``, ``W_down ← W_down
    diag(s)⁻¹``) against the down projection's proxy ``||(W_d − Q(W_d diag(s)⁻¹) diag(s))
    Σ_h^{1/2}||²``. Round-to-nearest per group is equivariant to scaling a row, so the up/gate
    side's error does not depend on ``s``; the scaling moves error between down's input columns.
    ``s = exp(t)`` stays positive; ``tol``: stop at the knee (see :func:`_adam_best`). Returns
    ``(s, loss, initial_loss)``."""
    from coreopt.quant.proxy import weighted_sq_error

    W = W_down
    norm = float(weighted_sq_error(W, hidden)) or 1.0

    def objective(t: torch.Tensor) -> torch.Tensor:
        s = torch.exp(t)
        Wq = fake_quantize(W / s, fmt, ste=True) * s
        return weighted_sq_error(W - Wq, hidden) / norm

    start = torch.zeros(W.shape[1], dtype=W.dtype, device=W.device)
    best, loss, initial = _adam_best(objective, start, steps, lr, tol)
    return torch.exp(best).detach(), loss, initial
