"""coreopt quickstart: least-core credit assignment, then the shared objective layer.

1. Sixteen sources of a synthetic retrieval task: each covers some facts, and the value of a set of
   sources is the weight of the facts they cover together (the offline stand-in for "quality of the
   LLM's answer with only these sources in context"). ``coreopt.least_core`` pays the sources so
   that no group is under-paid by more than epsilon, first exactly (all 65,535 coalitions), then by
   constraint generation with a tenth of the calls, and compares the two.
2. Orthogonal Procrustes: ``coreopt.minimize`` through the Cayley map recovers the closed form.

Run: ``make demo`` (sets up .venv first) or ``python examples/quickstart.py``.
"""

from __future__ import annotations

import numpy as np
import torch

import coreopt
from coreopt.game import games
from coreopt.game.coalitions import subset_sums
from coreopt.manifold import cayley, skew


def credit_assignment(n: int = 16) -> None:
    game = games.coverage(n, seed=1)
    sources = [f"source-{i:02d}" for i in range(n)]
    index = {s: i for i, s in enumerate(sources)}

    def value(coalition: frozenset) -> float:  # what an LLM judge would return
        return game(frozenset(index[s] for s in coalition))

    exact = coreopt.least_core(value, sources, budget=2**n)
    approx = coreopt.least_core(value, sources, budget=2**n // 10, mode="approximate")
    truth = float((game.table() - subset_sums(approx.x))[1:-1].max())
    print(f"\nleast core of a {n}-source retrieval game")
    print(f"  exact:       e* = {exact.epsilon:.5f} with {exact.value_calls} value calls")
    print(
        f"  approximate: e in [{approx.epsilon:.5f}, {approx.epsilon_upper:.5f}] with "
        f"{approx.value_calls} calls ({approx.status.value}); true requirement of its payoff "
        f"{truth:.5f} ({(truth - exact.epsilon) / abs(exact.epsilon):+.2%} vs e*)"
    )
    top = sorted(exact.payoff.items(), key=lambda kv: -kv[1])[:5]
    print("  top credit:  " + ", ".join(f"{k} {v:.2f}" for k, v in top))
    print(f"  max |x_exact - x_approx| = {np.abs(exact.x - approx.x).max():.2e}")


def procrustes(n: int = 32, m: int = 128, seed: int = 0) -> None:
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
    print(f"\northogonal Procrustes on {device} with coreopt.minimize")
    print(f"  status            {res.status.value} after {res.steps} steps ({res.wall_time:.2f} s)")
    print(f"  loss              {res.initial_loss:.6g} -> {res.loss:.10g}")
    print(f"  closed-form loss  {loss(Q_star).item():.10g}")
    print(f"  max |Q - Q*|      {(Q - Q_star).abs().max().item():.2e}")
    print(f"  max |QᵀQ - I|     {(Q.T @ Q - eye).abs().max().item():.2e}")


if __name__ == "__main__":
    print(f"coreopt {coreopt.__version__}")
    credit_assignment()
    procrustes()
