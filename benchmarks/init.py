"""Benchmark of coreopt.init: each paper's effect, default init vs the recipe, side by side.

Every case trains the same architecture from the same seeds twice or more, changing only the
init, and reports test accuracy (mean ± std over 3 seeds, and each seed). Cases:

1. **ViT on digits** (scikit-learn's bundled 8x8 digits, 1348 train / 449 test): tiny ViT
   (patch 2, width 64, depth 4, 4 heads), AdamW lr 1e-3, batch 128, 300 steps. Rows: timm-style
   default init, mimetic attention (Q·K and V·O), mimetic attention + MLP mean, MLP mean only.
2. **Mamba-2-style SSM on MQAR** (8 key-value pairs, length 64, vocab 64): 2 layers, width 64,
   d_state 16, Adam lr 3e-3, batch 64, 400 steps. Rows: mamba-ssm default init, mimetic SSM.
3. **Causal attention on MQAR** (same task, 2-layer Transformer): default, full mimetic, V·O only
   (the ``"language"`` preset) — the caution recorded in papers.md §4.
4. **ConvMixer on digits** (ConvMixer-64/4, kernel 5, patch 1): default vs covariance init of the
   depthwise filters, trained, and with the depthwise filters frozen at init.
5. **Oryx block on MQAR** (length 128, chunk 8 -> 16 chunks): all-attention, all-recurrent, and
   1 of 16 chunks (6 %) in attention mode (the last one), each trained and tested with that
   schedule; full mimetic init (vision preset: on MQAR the full recipe beat V·O-only in case 3)
   for all. The Oryx mixer has a shared short causal conv over [q|k|v] (set to identity by the
   recipe).

The time column is seconds per training run; the ratio column compares it with the case's
coreopt row (the harness's speedup convention) and is informational only here.

Run from the repository root::

    python benchmarks/init.py --threads 2             # print the tables
    python benchmarks/init.py --quick                 # smoke test (tiny steps)
    python benchmarks/init.py --threads 2 --record    # append them to benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _harness import BenchTable, Column, bench_parser, parse_args, report
from torch import nn

import coreopt.init as ci
from coreopt.models import ConvMixer, SequenceLM, VisionTransformer, chunk_schedule
from coreopt.models.tasks import SequenceTask, digits, mqar

SEEDS = (0, 1, 2)


def _columns() -> list[Column]:
    return [
        Column("acc", "test acc % (mean)", "{:.1f}"),
        Column("std", "± std", "{:.1f}"),
        Column("seeds", "per seed", "{}", numeric=False),
        Column("s", "s/run", "{:.1f}"),
    ]


def _table(title: str, description: str) -> BenchTable:
    return BenchTable(
        title,
        _columns(),
        time_key="s",
        ratio_header="time ÷ coreopt",
        description=description,
    )


def _add(table: BenchTable, case: str, name: str, accs: list[float], secs: list[float]) -> None:
    table.add(
        case,
        name,
        acc=statistics.mean(accs),
        std=statistics.stdev(accs) if len(accs) > 1 else 0.0,
        seeds=" / ".join(f"{a:.1f}" for a in accs),
        s=statistics.mean(secs),
    )


def train_classifier(
    model: nn.Module,
    data: tuple[torch.Tensor, ...],
    *,
    steps: int,
    lr: float,
    batch: int,
    seed: int,
    device: torch.device,
) -> float:
    xtr, ytr, xte, yte = (t.to(device) for t in data)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    g = torch.Generator().manual_seed(1000 + seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(ytr), (batch,), generator=g).to(device)
        loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        return 100.0 * float((model(xte).argmax(-1) == yte).float().mean())


def train_lm(
    model: nn.Module,
    train: SequenceTask,
    test: SequenceTask,
    *,
    steps: int,
    lr: float,
    batch: int,
    seed: int,
    device: torch.device,
    modes: torch.Tensor | str | None = None,
) -> float:
    model.to(device)
    xtr, ytr = train.inputs.to(device), train.targets.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(2000 + seed)

    def run(x: torch.Tensor) -> torch.Tensor:
        return model(x, modes) if modes is not None else model(x)

    for _ in range(steps):
        idx = torch.randint(len(xtr), (batch,), generator=g).to(device)
        logits = run(xtr[idx])
        loss = F.cross_entropy(logits.flatten(0, 1), ytr[idx].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        logits = run(test.inputs.to(device)).cpu()
    return 100.0 * test.accuracy(logits)


def _runs(fn: Callable[[int], float], seeds: tuple[int, ...]) -> tuple[list[float], list[float]]:
    accs, secs = [], []
    for seed in seeds:
        t0 = time.perf_counter()
        accs.append(fn(seed))
        secs.append(time.perf_counter() - t0)
    return accs, secs


def vit_case(args: argparse.Namespace, table: BenchTable) -> None:
    data = digits(seed=0)
    steps = 20 if args.quick else 300
    seeds = SEEDS[:1] if args.quick else SEEDS
    variants = [
        ("coreopt mimetic attention (Q·K, V·O)", ("attention",)),
        ("coreopt mimetic attention + MLP mean", ("attention", "mlp")),
        ("coreopt MLP mean only", ("mlp",)),
        ("default (timm-style init)", ()),
    ]
    for name, parts in variants:

        def one(seed: int, parts: tuple[str, ...] = parts) -> float:
            torch.manual_seed(seed)
            vit = VisionTransformer(8, 2, 1, 10, embed_dim=64, depth=4, num_heads=4)
            if parts:
                ci.apply(vit, parts=parts, seed=seed)
            return train_classifier(
                vit, data, steps=steps, lr=1e-3, batch=128, seed=seed, device=args.device
            )

        _add(table, f"ViT-64/4 digits, {steps} steps", name, *_runs(one, seeds))


def _mqar_data(quick: bool, seq_len: int = 64) -> tuple[SequenceTask, SequenceTask]:
    n_train = 256 if quick else 4096
    train = mqar(n_train, num_kv_pairs=8, seq_len=seq_len, vocab_size=64, seed=0)
    test = mqar(256 if quick else 1024, num_kv_pairs=8, seq_len=seq_len, vocab_size=64, seed=1)
    return train, test


def ssm_case(args: argparse.Namespace, table: BenchTable) -> None:
    train, test = _mqar_data(args.quick)
    steps = 20 if args.quick else 400
    seeds = SEEDS[:1] if args.quick else SEEDS
    for name, recipe in (("coreopt mimetic SSM", "mimetic"), ("default (mamba-ssm init)", None)):

        def one(seed: int, recipe: str | None = recipe) -> float:
            torch.manual_seed(seed)
            lm = SequenceLM(64, mixer="mamba2", dim=64, depth=2, d_state=16, headdim=16)
            if recipe:
                ci.apply(lm, recipe=recipe, parts=("ssm",), seed=seed)
            return train_lm(
                lm, train, test, steps=steps, lr=3e-3, batch=64, seed=seed, device=args.device
            )

        _add(table, f"Mamba-2 ×2, MQAR 8 pairs, {steps} steps", name, *_runs(one, seeds))


def attention_mqar_case(args: argparse.Namespace, table: BenchTable) -> None:
    train, test = _mqar_data(args.quick)
    steps = 20 if args.quick else 400
    seeds = SEEDS[:1] if args.quick else SEEDS
    variants = [
        ("coreopt V·O only (language preset)", "language"),
        ("coreopt full mimetic (Q·K and V·O)", "vision"),
        ("default (timm-style init)", None),
    ]
    for name, recipe in variants:

        def one(seed: int, recipe: str | None = recipe) -> float:
            torch.manual_seed(seed)
            lm = SequenceLM(64, mixer="attention", dim=64, depth=2, num_heads=4, max_len=64)
            if recipe:
                ci.apply(lm, recipe=recipe, parts=("attention",), seed=seed)
            return train_lm(
                lm, train, test, steps=steps, lr=3e-3, batch=64, seed=seed, device=args.device
            )

        _add(table, f"causal attention ×2, MQAR, {steps} steps", name, *_runs(one, seeds))


def convmixer_case(args: argparse.Namespace, table: BenchTable) -> None:
    data = digits(seed=0)
    steps = 20 if args.quick else 300
    seeds = SEEDS[:1] if args.quick else SEEDS
    for frozen in (False, True):
        for name, cov in (("coreopt covariance init", True), ("default (PyTorch init)", False)):

            def one(seed: int, cov: bool = cov, frozen: bool = frozen) -> float:
                torch.manual_seed(seed)
                net = ConvMixer(64, 4, kernel_size=5, patch_size=1, in_chans=1, num_classes=10)
                if cov:
                    ci.apply(net, recipe="covariance", seed=seed)
                if frozen:
                    for conv in net.depthwise_convs():
                        conv.weight.requires_grad_(False)
                return train_classifier(
                    net, data, steps=steps, lr=5e-3, batch=128, seed=seed, device=args.device
                )

            case = f"ConvMixer-64/4 k5 digits, {steps} steps" + (
                ", filters frozen" if frozen else ""
            )
            _add(table, case, name, *_runs(one, seeds))


def oryx_case(args: argparse.Namespace, table: BenchTable) -> None:
    seq_len, chunk = 128, 8
    train, test = _mqar_data(args.quick, seq_len=seq_len)
    steps = 20 if args.quick else 300
    seeds = SEEDS[:1] if args.quick else SEEDS
    n_chunks = seq_len // chunk
    mixed = chunk_schedule(n_chunks, 1 / n_chunks, kind="last")
    variants: list[tuple[str, torch.Tensor | str]] = [
        (f"coreopt Oryx, {int(mixed.sum())}/{n_chunks} chunks attention", mixed),
        ("Oryx all-attention", "attention"),
        ("Oryx all-recurrent", "recurrent"),
    ]
    for name, modes in variants:

        def one(seed: int, modes: torch.Tensor | str = modes) -> float:
            torch.manual_seed(seed)
            lm = SequenceLM(64, mixer="oryx", dim=64, depth=2, num_heads=4, chunk_size=chunk)
            ci.apply(lm, recipe="vision", seed=seed)
            return train_lm(
                lm,
                train,
                test,
                steps=steps,
                lr=3e-3,
                batch=32,
                seed=seed,
                device=args.device,
                modes=modes,
            )

        _add(table, f"Oryx ×2, MQAR len {seq_len}, {steps} steps", name, *_runs(one, seeds))


CASES = {
    "vit": (vit_case, "Mimetic attention and MLP init: tiny ViT on digits"),
    "ssm": (ssm_case, "Mimetic SSM init: Mamba-2-style model on MQAR"),
    "attention": (attention_mqar_case, "Mimetic attention on causal MQAR (caution)"),
    "convmixer": (convmixer_case, "Covariance init of depthwise filters: ConvMixer on digits"),
    "oryx": (oryx_case, "Oryx multi-mixer on MQAR: chunk schedules"),
}


def main() -> None:
    parser = bench_parser(__doc__, threads=True)
    parser.add_argument(
        "--cases",
        default=",".join(CASES),
        help="comma-separated subset of: " + ", ".join(CASES) + " (default: all)",
    )
    args = parse_args(parser)
    chosen = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in CASES]
    if unknown:
        parser.error(f"unknown cases {unknown}; choose from {list(CASES)}")
    tables = []
    for key in chosen:
        fn, title = CASES[key]
        table = _table(title, "Test accuracy (%) over seeds 0, 1, 2 (quick: seed 0 only).")
        fn(args, table)
        tables.append(table)
    report(tables, args, title="init: default init vs recipe (benchmarks/init.py)")


if __name__ == "__main__":
    main()
