"""coreopt quickstart: the shared objective layer on a problem with a known answer.

Orthogonal Procrustes: find the rotation Q minimising ||Q A - B||_F. The closed form is Q* = U V^T
from the SVD of B A^T; coreopt finds it by optimizing an unconstrained matrix W through the Cayley
map Q = cayley(skew(W)), which keeps every iterate exactly orthogonal.

Run: ``make demo`` (sets up .venv first) or ``python examples/quickstart.py``.
"""

from __future__ import annotations

import torch

import coreopt
from coreopt.manifold import cayley, skew


def main(n: int = 32, m: int = 128, seed: int = 0) -> None:
    device = coreopt.resolve_device()  # CUDA when present, else CPU
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, m, generator=g, dtype=torch.float64)
    rotation = cayley(skew(0.2 * torch.randn(n, n, generator=g, dtype=torch.float64)))
    B = rotation @ A + 0.05 * torch.randn(n, m, generator=g, dtype=torch.float64)
    A, B = A.to(device), B.to(device)

    U, _, Vh = torch.linalg.svd(B @ A.T)
    Q_star = U @ Vh

    def loss(Q: torch.Tensor) -> torch.Tensor:
        return (Q @ A - B).pow(2).sum()

    res = coreopt.minimize(
        loss,
        torch.zeros(n, n, dtype=torch.float64, device=device),
        parametrization=lambda W: cayley(skew(W)),
        optimizer="adam",
        lr=0.02,
        steps=3000,
        desc="procrustes",
    )
    Q = res.params
    eye = torch.eye(n, dtype=Q.dtype, device=device)
    print(f"\ncoreopt {coreopt.__version__} on {device}")
    print(f"status            {res.status.value} after {res.steps} steps ({res.wall_time:.2f} s)")
    print(f"loss              {res.initial_loss:.6g} -> {res.loss:.10g}")
    print(f"closed-form loss  {loss(Q_star).item():.10g}")
    print(f"max |Q - Q*|      {(Q - Q_star).abs().max().item():.2e}")
    print(f"max |QᵀQ - I|     {(Q.T @ Q - eye).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
