"""Data-free proxies of the quantization loss.

A linear layer ``y = W x`` whose weight is replaced by ``Ŵ`` makes the output error
``E[||(W - Ŵ) x||²] = tr((W - Ŵ) Σ (W - Ŵ)ᵀ)`` with ``Σ = E[x xᵀ]`` the second moment of its
input. Without data, CafeQ takes ``Σ = I``: the proxy is the squared Frobenius error. coreopt
also offers a *structural* second moment read off the model itself (no data): a layer fed by a
LayerNorm/RMSNorm sees ``γ ⊙ x̂ + β`` with ``x̂`` modelled as white, so ``Σ = diag(γ²) + β βᵀ``;
see :mod:`coreopt.quant.structure` for the other cases. :class:`InputMoments` holds such a ``Σ``
as ``diag(d) + U Uᵀ`` (``d`` may be absent for ``Σ = I``; ``U`` may be absent).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class InputMoments:
    """``Σ = diag(d) + U Uᵀ``, the modelled second moment of a layer's input.

    Attributes:
        diag: ``d``, shape ``(in,)``, non-negative; ``None`` means ones (``Σ = I + U Uᵀ``).
        low_rank: ``U``, shape ``(in, r)``, or ``None``.
        source: how it was obtained (``"identity"``, ``"norm"``, ``"attention"``, ``"mlp"``, ...).
    """

    diag: torch.Tensor | None = None
    low_rank: torch.Tensor | None = None
    source: str = "identity"

    @property
    def is_identity(self) -> bool:
        return self.diag is None and self.low_rank is None

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> InputMoments:
        d = None if self.diag is None else self.diag.to(device=device, dtype=dtype)
        u = None if self.low_rank is None else self.low_rank.to(device=device, dtype=dtype)
        return InputMoments(d, u, self.source)

    def normalized(self) -> InputMoments:
        """The same ``Σ`` scaled to ``tr(Σ) / in = 1`` (the proxy's scale does not matter)."""
        if self.is_identity:
            return self
        tr = self.trace()
        n = self.dim()
        if not tr > 0:
            return InputMoments(source=self.source)
        c = n / tr
        d = None if self.diag is None else self.diag * c
        u = None if self.low_rank is None else self.low_rank * c**0.5
        if d is None and u is not None:  # Σ = I + U Uᵀ: scaling I too needs an explicit diagonal
            d = torch.full((n,), c, dtype=u.dtype, device=u.device)
        return InputMoments(d, u, self.source)

    def dim(self) -> int:
        if self.diag is not None:
            return int(self.diag.shape[0])
        if self.low_rank is not None:
            return int(self.low_rank.shape[0])
        raise ValueError("an identity InputMoments has no dimension of its own")

    def trace(self) -> float:
        t = 0.0
        n = self.dim()
        t += float(self.diag.sum()) if self.diag is not None else float(n)
        if self.low_rank is not None:
            t += float((self.low_rank**2).sum())
        return t

    def dense(self, n: int | None = None) -> torch.Tensor:
        """``Σ`` as an ``(in, in)`` matrix."""
        n = self.dim() if n is None else n
        ref = self.diag if self.diag is not None else self.low_rank
        dev = ref.device if ref is not None else None
        S = (
            torch.diag(self.diag)
            if self.diag is not None
            else torch.eye(n, device=dev, dtype=torch.float32)
        )
        if self.low_rank is not None:
            S = S + self.low_rank @ self.low_rank.T
        return S


def weighted_sq_error(E: torch.Tensor, moments: InputMoments | None = None) -> torch.Tensor:
    """``tr(E Σ Eᵀ)`` for an error matrix ``E`` of shape ``(out, in)``; ``Σ = I`` when ``None``."""
    if moments is None or moments.is_identity:
        return (E**2).sum()
    loss = (E**2 * moments.diag).sum() if moments.diag is not None else (E**2).sum()
    if moments.low_rank is not None:
        loss = loss + ((E @ moments.low_rank) ** 2).sum()
    return loss


def relative_error(W: torch.Tensor, W_hat: torch.Tensor) -> float:
    """``||W - Ŵ||_F / ||W||_F``."""
    return float(torch.linalg.norm(W - W_hat) / torch.linalg.norm(W).clamp_min(1e-30))


def product_sq_error(
    A: torch.Tensor,
    B: torch.Tensor,
    A_hat: torch.Tensor,
    B_hat: torch.Tensor,
    moments: InputMoments | None = None,
    heads: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Error of a product ``A B`` (``A: (o, m)``, ``B: (m, i)``), summed over heads.

    With ``heads = (h_a, h_b)``, the inner dimension is split into ``h_a`` heads on ``A``'s side and
    ``h_b`` heads on ``B``'s (grouped-query attention: ``h_a`` a multiple of ``h_b``, query head
    ``j`` reads key/value head ``j // (h_a / h_b)``), and the loss is
    ``Σ_j ||(A_j B_{g(j)} - Â_j B̂_{g(j)}) Σ^{1/2}||²`` (heads mix different token positions, so
    their errors are counted separately). Without ``heads`` it is ``||(A B - Â B̂) Σ^{1/2}||²``.
    """
    if heads is None:
        return weighted_sq_error(A @ B - A_hat @ B_hat, moments)
    ha, hb = heads
    o, m = A.shape
    d = m // ha
    rep = ha // hb
    Ah = A.reshape(o, ha, d).transpose(0, 1)  # (ha, o, d)
    Ahh = A_hat.reshape(o, ha, d).transpose(0, 1)
    Bh = B.reshape(hb, d, -1).repeat_interleave(rep, 0)  # (ha, d, i)
    Bhh = B_hat.reshape(hb, d, -1).repeat_interleave(rep, 0)
    E = (Ah @ Bh - Ahh @ Bhh).reshape(ha * o, -1)
    return weighted_sq_error(E, moments)


def balance_moments(W: torch.Tensor, cap: float = 100.0) -> InputMoments:
    """A second moment read off the weight itself: ``Σ_jj = (median_k ||W[:, k]|| / ||W[:, j]||)²``,
    clipped to ``[1 / cap, cap]``.

    It encodes the *balance* hypothesis: a trained layer reads each input channel with a strength
    inversely proportional to the channel's scale, so that channels contribute comparably. A column
    the layer barely reads is a channel carrying large activations: in attention, the value
    projection reads the residual stream's massive (attention-sink) channels with weights 5-10x
    smaller than the median, and an error there is broadcast by the sink to every token. Plain
    Frobenius error treats those weights like any other; this prior weighs them by the scale of
    what they multiply.
    """
    norms = torch.linalg.vector_norm(W.float(), dim=0)
    med = norms.median().clamp_min(1e-30)
    d = (med / norms.clamp_min(med / cap**0.5)) ** 2
    return InputMoments(d.clamp(1.0 / cap, cap), None, source="balance")


def combine_moments(*parts: InputMoments | None) -> InputMoments | None:
    """The mixture ``Σ_i Σ_i / (tr Σ_i / n)`` of normalised moments (``None``/identity parts count
    as ``I``); ``None`` when every part is the identity."""
    real = [p for p in parts if p is not None and not p.is_identity]
    if not real:
        return None
    n = real[0].dim()
    ref = real[0].diag if real[0].diag is not None else real[0].low_rank
    assert ref is not None
    d = torch.zeros(n, dtype=torch.float32, device=ref.device)
    lows = []
    n_identity = len(parts) - len(real)
    for p in real:
        q = p.normalized()
        d = d + (q.diag.to(d) if q.diag is not None else 1.0)
        if q.low_rank is not None:
            lows.append(q.low_rank.to(d))
    d = d + n_identity
    u = torch.cat(lows, dim=1) if lows else None
    return InputMoments(d, u, "+".join(p.source for p in real)).normalized()
