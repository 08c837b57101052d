"""Mimetic initialization of a tiny ViT on scikit-learn's digits: default init vs the recipe.

Builds the same ViT twice from the same seed, applies ``coreopt.init.apply(recipe="vision")`` to
one of them, checks it with ``coreopt.init.verify`` and trains both for a few hundred steps.
Run from the repository root (about a minute on one CPU core)::

    python examples/init_mimetic_vit.py --steps 150
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import coreopt.init as ci
from coreopt.models import VisionTransformer
from coreopt.models.tasks import digits


def train(model: torch.nn.Module, steps: int, seed: int) -> float:
    xtr, ytr, xte, yte = digits(seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(ytr), (128,), generator=g)
        loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        return 100.0 * float((model(xte).argmax(-1) == yte).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    for name in ("default (timm-style)", "mimetic (vision preset)"):
        torch.manual_seed(args.seed)
        vit = VisionTransformer(8, 2, 1, 10, embed_dim=64, depth=4, num_heads=4)
        if name.startswith("mimetic"):
            print(ci.apply(vit, recipe="vision", seed=args.seed))
            check = ci.verify(vit)
            print(check)
            assert check.ok, "the recipe's statistics do not match"
        results[name] = train(vit, args.steps, args.seed)
    for name, acc in results.items():
        print(f"{name:>26}: {acc:.1f}% test accuracy after {args.steps} steps")


if __name__ == "__main__":
    main()
