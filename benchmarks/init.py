"""Benchmark of coreopt.init: each paper's effect, default init vs the recipe, side by side.

Every case trains the same architecture from the same seeds twice or more, changing only the
init, and reports test accuracy (mean ± std over 3 seeds, and each seed) at the end of training,
plus the **learning curve**: test accuracy every ``--eval-every`` steps (and at step 0) and the
mean training loss over each interval. Evaluation is in eval mode under ``torch.no_grad()`` and
draws no random numbers, so it does not change the training run; its time is excluded from the
s/run column. Cases:

1. ``vit`` — **ViT on digits** (scikit-learn's bundled 8x8 digits, 1348 train / 449 test): tiny
   ViT (patch 2, width 64, depth 4, 4 heads), AdamW lr 1e-3 one-cycle, batch 128, 300 steps.
   Rows: timm-style default init, mimetic attention (Q·K and V·O), mimetic attention + MLP mean,
   MLP mean only.
2. ``ssm`` — **Mamba-2-style SSM on MQAR** (8 key-value pairs, length 64, vocab 64): 2 layers,
   width 64, d_state 16, Adam lr 3e-3, batch 64, 400 steps. Rows: mamba-ssm default init,
   mimetic SSM.
3. ``attention`` — **causal attention on MQAR** (same task, 2-layer Transformer): default, full
   mimetic, V·O only (the ``"language"`` preset) — the caution of an earlier reproduction
   (full recipe hurting on causal MQAR), which is not in Trockman & Kolter (ICML 2023).
4. ``convmixer`` — **ConvMixer on digits** (ConvMixer-64/4, kernel 5, patch 1, AdamW lr 5e-3
   one-cycle, batch 128, 300 steps): default vs covariance init of the depthwise filters,
   trained, and with the depthwise filters frozen at init.
5. ``oryx`` — **Oryx block on MQAR** (length 128, chunk 8 -> 16 chunks): all-attention,
   all-recurrent, and 1 of 16 chunks (6 %) in attention mode (the last one), each trained and
   tested with that schedule; full mimetic init (vision preset) for all. Compares schedules,
   not inits.
6. ``mlp`` — **MLP mean init against its control**: the ViT of case 1 for 100 steps (short
   training, where the paper's effect is strongest) and 300 steps. The recipe also changes the
   first layer's *std* (PyTorch's ``1/sqrt(3 fan_in)`` instead of timm's 0.02), so a zero-mean
   row with the recipe's std is the control that isolates the mean; two larger means show the
   sensitivity to the default (0.25 std); at 300 steps also attention + the zero-mean control, to
   compare with case 1's "attention + MLP mean".
7. ``convmixer_small`` — **covariance init off the ceiling**: case 4 is at ~99 % with either init,
   so this one makes digits hard enough to show a difference: a narrow ConvMixer-32/4 (kernel 5,
   patch 1) trained on only the first 100 training images (batch 100, 200 steps, AdamW lr 5e-3
   one-cycle), trained and with frozen depthwise filters, 5 seeds (the effect is a few points).

The time column is seconds of training per run (evaluations excluded); the ratio column compares
it with the case's coreopt row (the harness's speedup convention) and is informational only here.

Run from the repository root::

    python benchmarks/init.py --threads 1                  # print the tables
    python benchmarks/init.py --threads 1 --plot           # + docs/_static/init_curves_<case>.png
    python benchmarks/init.py --quick                      # smoke test (tiny sizes)
    python benchmarks/init.py --threads 1 --record --plot  # append the tables to RESULTS.md
    python benchmarks/init.py --replot                     # redraw the figures from the JSON

``--plot`` draws, per case, the test-accuracy and train-loss curves (mean line, ± std band over
the seeds) into ``<plot-dir>/init_curves_<case>.png`` and writes the raw per-seed curves next to
it as ``init_curves_<case>.json`` (needs matplotlib: the ``dev`` or ``bench`` extra).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _harness import REPO_ROOT, BenchTable, Column, bench_parser, parse_args, report
from torch import nn

import coreopt.init as ci
from coreopt.models import ConvMixer, SequenceLM, VisionTransformer, chunk_schedule
from coreopt.models.tasks import SequenceTask, digits, mqar

SEEDS = (0, 1, 2)
QUICK_SEEDS = (0, 1)
QUICK_STEPS = 6
SMALL_TRAIN = 100
"""Training images of the ``convmixer_small`` case (the first ones of the fixed digits split)."""
SMALL_SEEDS = (0, 1, 2, 3, 4)
"""That case's effect is a few points, so it runs 5 seeds instead of 3."""
DEFAULT_PLOT_DIR = "docs/_static"


# --------------------------------------------------------------------------------------------
# Learning curves
# --------------------------------------------------------------------------------------------


@dataclass
class Curve:
    """One training run: test accuracy at ``steps`` and the mean train loss of each interval.

    ``train_loss[i]`` is the mean minibatch loss (each measured before its update) over the
    steps ``(steps[i-1], steps[i]]``; ``nan`` at step 0. ``seconds`` is the training time
    without the evaluations.
    """

    steps: list[int] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def final_acc(self) -> float:
        return self.test_acc[-1]

    @property
    def final_loss(self) -> float:
        return self.train_loss[-1]


def eval_points(steps: int, every: int) -> list[int]:
    """``0, every, 2 every, …`` and ``steps`` itself (always the last point)."""
    if steps < 1 or every < 1:
        raise ValueError(f"steps and every must be >= 1, got {steps}, {every}")
    return sorted({*range(0, steps, every), steps})


def run_curve(
    step: Callable[[], float], evaluate: Callable[[], float], *, steps: int, every: int
) -> Curve:
    """Call ``step`` (one update, returns its loss) ``steps`` times, ``evaluate`` at
    :func:`eval_points`; time only the steps."""
    curve = Curve()
    points = set(eval_points(steps, every))
    losses: list[float] = []
    for i in range(steps + 1):
        if i in points:
            curve.steps.append(i)
            curve.test_acc.append(evaluate())
            curve.train_loss.append(statistics.fmean(losses) if losses else math.nan)
            losses = []
        if i == steps:
            break
        t0 = time.perf_counter()
        losses.append(step())
        curve.seconds += time.perf_counter() - t0
    return curve


def summarize(curves: Sequence[Curve], attr: str) -> tuple[list[float], list[float]]:
    """Mean and std (0 for one seed) over seeds of ``attr`` at each point (same steps)."""
    steps = curves[0].steps
    if any(c.steps != steps for c in curves):
        raise ValueError("curves of one variant must share their evaluation steps")
    cols = list(zip(*(getattr(c, attr) for c in curves), strict=True))
    means = [statistics.fmean(col) for col in cols]
    stds = [statistics.stdev(col) if len(col) > 1 else 0.0 for col in cols]
    return means, stds


# --------------------------------------------------------------------------------------------
# Training loops
# --------------------------------------------------------------------------------------------


def train_classifier(
    model: nn.Module,
    data: tuple[torch.Tensor, ...],
    *,
    steps: int,
    lr: float,
    batch: int,
    seed: int,
    device: torch.device,
    every: int,
) -> Curve:
    """AdamW (wd 0.05) with a one-cycle schedule on ``(x_train, y_train, x_test, y_test)``."""
    xtr, ytr, xte, yte = (t.to(device) for t in data)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    g = torch.Generator().manual_seed(1000 + seed)

    def step() -> float:
        model.train()
        idx = torch.randint(len(ytr), (batch,), generator=g).to(device)
        loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        return loss.item()

    @torch.no_grad()
    def evaluate() -> float:
        model.eval()
        return 100.0 * float((model(xte).argmax(-1) == yte).float().mean())

    return run_curve(step, evaluate, steps=steps, every=every)


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
    every: int,
    modes: torch.Tensor | str | None = None,
) -> Curve:
    """Adam, constant lr, next-token cross-entropy on the scored positions of ``train``."""
    model.to(device)
    xtr, ytr = train.inputs.to(device), train.targets.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(2000 + seed)

    def run(x: torch.Tensor) -> torch.Tensor:
        return model(x, modes) if modes is not None else model(x)

    def step() -> float:
        model.train()
        idx = torch.randint(len(xtr), (batch,), generator=g).to(device)
        logits = run(xtr[idx])
        loss = F.cross_entropy(logits.flatten(0, 1), ytr[idx].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    @torch.no_grad()
    def evaluate() -> float:
        model.eval()
        x = test.inputs.to(device)
        logits = torch.cat([run(x[i : i + 256]).cpu() for i in range(0, len(x), 256)])
        return 100.0 * test.accuracy(logits)

    return run_curve(step, evaluate, steps=steps, every=every)


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------

Curves = dict[str, dict[str, list[Curve]]]
"""sub-case (table case) -> variant (implementation) -> one curve per seed."""


@dataclass
class CaseRun:
    """What a case needs from the command line, and where it puts its curves."""

    args: argparse.Namespace
    curves: Curves = field(default_factory=dict)
    seeds_used: tuple[int, ...] = ()

    @property
    def quick(self) -> bool:
        return bool(self.args.quick)

    @property
    def seeds(self) -> tuple[int, ...]:
        return QUICK_SEEDS if self.quick else SEEDS

    def steps(self, full: int) -> int:
        return QUICK_STEPS if self.quick else full

    @property
    def every(self) -> int:
        return 2 if self.quick else int(self.args.eval_every)

    def run(
        self,
        subcase: str,
        variant: str,
        fn: Callable[[int], Curve],
        seeds: Sequence[int] | None = None,
    ) -> None:
        self.seeds_used = tuple(self.seeds if seeds is None else seeds)
        self.curves.setdefault(subcase, {})[variant] = [fn(seed) for seed in self.seeds_used]

    def train_classifier(
        self, model: nn.Module, data: tuple[torch.Tensor, ...], **kwargs: Any
    ) -> Curve:
        """:func:`train_classifier` (``kwargs``: its ``steps``, ``lr``, ``batch``, ``seed``) on
        this run's device, evaluated every :attr:`every` steps."""
        return train_classifier(model, data, device=self.args.device, every=self.every, **kwargs)

    def train_lm(
        self, model: nn.Module, train: SequenceTask, test: SequenceTask, **kwargs: Any
    ) -> Curve:
        """:func:`train_lm` (``kwargs``: its ``steps``, ``lr``, ``batch``, ``seed``, ``modes``)
        on this run's device, evaluated every :attr:`every` steps."""
        return train_lm(model, train, test, device=self.args.device, every=self.every, **kwargs)


def _vit(seed: int, parts: tuple[str, ...], config: dict | None = None) -> VisionTransformer:
    torch.manual_seed(seed)
    vit = VisionTransformer(8, 2, 1, 10, embed_dim=64, depth=4, num_heads=4)
    if parts:
        ci.apply(vit, parts=parts, config=config, seed=seed)
    return vit


def vit_case(cr: CaseRun) -> None:
    data = digits(seed=0)
    steps = cr.steps(300)
    variants = [
        ("coreopt mimetic attention (Q·K, V·O)", ("attention",)),
        ("coreopt mimetic attention + MLP mean", ("attention", "mlp")),
        ("coreopt MLP mean only", ("mlp",)),
        ("default (timm-style init)", ()),
    ]
    for name, parts in variants:

        def one(seed: int, parts: tuple[str, ...] = parts) -> Curve:
            return cr.train_classifier(
                _vit(seed, parts), data, steps=steps, lr=1e-3, batch=128, seed=seed
            )

        cr.run(f"ViT-64/4 digits, {steps} steps", name, one)


def mlp_case(cr: CaseRun) -> None:
    data = digits(seed=0)
    no_mlp = ci.MimeticMLPConfig(relative_mean=0.0)
    for steps, with_attention in ((cr.steps(100), False), (cr.steps(300), True)):
        variants: list[tuple[str, tuple[str, ...], ci.MimeticMLPConfig | None]] = [
            ("coreopt MLP mean 0.25 std (default)", ("mlp",), ci.MimeticMLPConfig()),
            ("coreopt MLP mean 0.5 std", ("mlp",), ci.MimeticMLPConfig(relative_mean=0.5)),
            ("coreopt MLP mean 1.0 std", ("mlp",), ci.MimeticMLPConfig(relative_mean=1.0)),
            ("control: recipe's std, mean 0", ("mlp",), no_mlp),
            ("default (timm-style init)", (), None),
        ]
        if with_attention:  # compare with the vit case's "attention + MLP mean" row
            variants.append(
                ("control: attention + recipe's std, mean 0", ("attention", "mlp"), no_mlp)
            )
        for name, parts, cfg in variants:

            def one(
                seed: int,
                parts: tuple[str, ...] = parts,
                cfg: ci.MimeticMLPConfig | None = cfg,
                steps: int = steps,
            ) -> Curve:
                vit = _vit(seed, parts, {"mlp": cfg} if cfg is not None else None)
                return cr.train_classifier(vit, data, steps=steps, lr=1e-3, batch=128, seed=seed)

            short = "" if with_attention else " (short)"
            cr.run(f"ViT-64/4 digits, {steps} steps{short}", name, one)


def _mqar_data(quick: bool, seq_len: int = 64) -> tuple[SequenceTask, SequenceTask]:
    n_train = 128 if quick else 4096
    train = mqar(n_train, num_kv_pairs=8, seq_len=seq_len, vocab_size=64, seed=0)
    test = mqar(64 if quick else 1024, num_kv_pairs=8, seq_len=seq_len, vocab_size=64, seed=1)
    return train, test


def _mqar_init_case(
    cr: CaseRun,
    subcase: str,
    make: Callable[[], SequenceLM],
    part: str,
    variants: Sequence[tuple[str, str | None]],
) -> None:
    """Rows ``(name, recipe)`` of one model on MQAR (8 pairs, length 64): ``make()`` after
    seeding, then ``recipe`` applied to ``part`` (``None``: the model's default init)."""
    train, test = _mqar_data(cr.quick)
    steps = cr.steps(400)
    for name, recipe in variants:

        def one(seed: int, recipe: str | None = recipe) -> Curve:
            torch.manual_seed(seed)
            lm = make()
            if recipe:
                ci.apply(lm, recipe=recipe, parts=(part,), seed=seed)
            return cr.train_lm(lm, train, test, steps=steps, lr=3e-3, batch=64, seed=seed)

        cr.run(f"{subcase}, {steps} steps", name, one)


def ssm_case(cr: CaseRun) -> None:
    _mqar_init_case(
        cr,
        "Mamba-2 ×2, MQAR 8 pairs",
        lambda: SequenceLM(64, mixer="mamba2", dim=64, depth=2, d_state=16, headdim=16),
        "ssm",
        [("coreopt mimetic SSM", "mimetic"), ("default (mamba-ssm init)", None)],
    )


def attention_mqar_case(cr: CaseRun) -> None:
    _mqar_init_case(
        cr,
        "causal attention ×2, MQAR",
        lambda: SequenceLM(64, mixer="attention", dim=64, depth=2, num_heads=4, max_len=64),
        "attention",
        [
            ("coreopt V·O only (language preset)", "language"),
            ("coreopt full mimetic (Q·K and V·O)", "vision"),
            ("default (timm-style init)", None),
        ],
    )


def _convmixer_rows(
    cr: CaseRun,
    subcase: str,
    dim: int,
    data: tuple[torch.Tensor, ...],
    *,
    steps: int,
    batch: int,
    seeds: Sequence[int] | None = None,
) -> None:
    """ConvMixer-``dim``/4 (kernel 5, patch 1) on ``data``, default vs covariance init, trained
    and with the depthwise filters frozen at init (AdamW lr 5e-3 one-cycle)."""
    for frozen in (False, True):
        for name, cov in (("coreopt covariance init", True), ("default (PyTorch init)", False)):

            def one(seed: int, cov: bool = cov, frozen: bool = frozen) -> Curve:
                torch.manual_seed(seed)
                net = ConvMixer(dim, 4, kernel_size=5, patch_size=1, in_chans=1, num_classes=10)
                if cov:
                    ci.apply(net, recipe="covariance", seed=seed)
                if frozen:
                    for conv in net.depthwise_convs():
                        conv.weight.requires_grad_(False)
                return cr.train_classifier(net, data, steps=steps, lr=5e-3, batch=batch, seed=seed)

            case = f"{subcase}, {steps} steps" + (", filters frozen" if frozen else "")
            cr.run(case, name, one, seeds=seeds)


def convmixer_case(cr: CaseRun) -> None:
    _convmixer_rows(
        cr, "ConvMixer-64/4 k5 digits", 64, digits(seed=0), steps=cr.steps(300), batch=128
    )


def convmixer_small_case(cr: CaseRun) -> None:
    """The covariance init where digits is not at the ceiling: a narrow ConvMixer, 100 images."""
    xtr, ytr, xte, yte = digits(seed=0)
    n_train = SMALL_TRAIN
    _convmixer_rows(
        cr,
        f"ConvMixer-32/4 k5, {n_train} train digits",
        32,
        (xtr[:n_train], ytr[:n_train], xte, yte),
        steps=cr.steps(200),
        batch=n_train,
        seeds=cr.seeds if cr.quick else SMALL_SEEDS,
    )


def oryx_case(cr: CaseRun) -> None:
    seq_len, chunk = 128, 8
    train, test = _mqar_data(cr.quick, seq_len=seq_len)
    steps = cr.steps(300)
    n_chunks = seq_len // chunk
    mixed = chunk_schedule(n_chunks, 1 / n_chunks, kind="last")
    variants: list[tuple[str, torch.Tensor | str]] = [
        (f"coreopt Oryx, {int(mixed.sum())}/{n_chunks} chunks attention", mixed),
        ("Oryx all-attention", "attention"),
        ("Oryx all-recurrent", "recurrent"),
    ]
    for name, modes in variants:

        def one(seed: int, modes: torch.Tensor | str = modes) -> Curve:
            torch.manual_seed(seed)
            lm = SequenceLM(64, mixer="oryx", dim=64, depth=2, num_heads=4, chunk_size=chunk)
            ci.apply(lm, recipe="vision", seed=seed)
            return cr.train_lm(
                lm, train, test, steps=steps, lr=3e-3, batch=32, seed=seed, modes=modes
            )

        cr.run(f"Oryx ×2, MQAR len {seq_len}, {steps} steps", name, one)


CASES: dict[str, tuple[Callable[[CaseRun], None], str]] = {
    "vit": (vit_case, "Mimetic attention and MLP init: tiny ViT on digits"),
    "ssm": (ssm_case, "Mimetic SSM init: Mamba-2-style model on MQAR"),
    "attention": (attention_mqar_case, "Mimetic attention on causal MQAR (caution)"),
    "convmixer": (convmixer_case, "Covariance init of depthwise filters: ConvMixer on digits"),
    "oryx": (oryx_case, "Oryx multi-mixer on MQAR: chunk schedules"),
    "mlp": (
        mlp_case,
        "Mimetic MLP init (first-layer mean) and its zero-mean control: ViT on digits",
    ),
    "convmixer_small": (
        convmixer_small_case,
        "Covariance init off the ceiling: narrow ConvMixer, 100 training digits",
    ),
}


# --------------------------------------------------------------------------------------------
# Tables and figures
# --------------------------------------------------------------------------------------------


def final_table(title: str, curves: Curves, seeds: Sequence[int]) -> BenchTable:
    """Final test accuracy (mean, std, per seed), last-interval train loss, s/run."""
    table = BenchTable(
        title,
        [
            Column("acc", "test acc % (mean)", "{:.1f}"),
            Column("std", "± std", "{:.1f}"),
            Column("seeds", "per seed", "{}", numeric=False),
            Column("loss", "train loss (last interval)", "{:.3f}"),
            Column("s", "s/run", "{:.1f}"),
        ],
        time_key="s",
        ratio_header="time ÷ coreopt",
        description=(
            f"Test accuracy (%) after the last step over seeds {', '.join(map(str, seeds))}; "
            "train loss = mean minibatch loss over the last evaluation interval; s/run = "
            "training time per run (evaluations excluded)."
        ),
    )
    for subcase, variants in curves.items():
        for name, runs in variants.items():
            accs = [c.final_acc for c in runs]
            table.add(
                subcase,
                name,
                acc=statistics.fmean(accs),
                std=statistics.stdev(accs) if len(accs) > 1 else 0.0,
                seeds=" / ".join(f"{a:.1f}" for a in accs),
                loss=statistics.fmean(c.final_loss for c in runs),
                s=statistics.fmean(c.seconds for c in runs),
            )
    return table


def curve_checkpoints(steps: Sequence[int], most: int = 7) -> list[int]:
    """At most ``most`` evaluation steps, evenly spread, always the first and the last."""
    if len(steps) <= most:
        return list(steps)
    idx = {round(i * (len(steps) - 1) / (most - 1)) for i in range(most)}
    return [steps[i] for i in sorted(idx)]


def curve_table(title: str, curves: Curves) -> BenchTable:
    """Mean test accuracy at a few evaluation steps (the learning curve, in numbers)."""
    all_steps = sorted({s for v in curves.values() for runs in v.values() for s in runs[0].steps})
    shown = curve_checkpoints(all_steps)
    columns = [Column(f"at{s}", f"step {s}", "{:.1f}") for s in shown]
    columns.append(Column("s", "s/run", "{:.1f}"))
    table = BenchTable(
        f"{title}: learning curve",
        columns,
        time_key="s",
        ratio_header="time ÷ coreopt",
        description="Mean test accuracy (%) over the seeds at evaluation steps (step 0 = at init).",
    )
    for subcase, variants in curves.items():
        for name, runs in variants.items():
            means, _ = summarize(runs, "test_acc")
            at = dict(zip(runs[0].steps, means, strict=True))
            metrics = {f"at{s}": at[s] for s in shown if s in at}
            table.add(subcase, name, s=statistics.fmean(c.seconds for c in runs), **metrics)
    return table


def curves_json(
    key: str, title: str, curves: Curves, seeds: Sequence[int], device: str = ""
) -> dict:
    """The per-seed curves of a case as JSON-ready data (what :func:`plot_curves` draws)."""
    return {
        "case": key,
        "title": title,
        "seeds": list(seeds),
        "device": device,
        "subcases": {
            subcase: {
                name: {
                    "steps": runs[0].steps,
                    "test_acc": [[round(a, 3) for a in c.test_acc] for c in runs],
                    "train_loss": [[_round(x) for x in c.train_loss] for c in runs],
                    "seconds": [round(c.seconds, 2) for c in runs],
                }
                for name, runs in variants.items()
            }
            for subcase, variants in curves.items()
        },
    }


def _round(x: float) -> float | None:
    return None if math.isnan(x) else float(f"{x:.4g}")


def _style(name: str, i: int) -> dict:
    if name.startswith("default"):
        return {"color": "black", "linestyle": "--"}
    palette = ["tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown"]
    return {"color": palette[i % len(palette)], "linestyle": "-"}


def _band(vals: torch.Tensor, *, log: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centre line and band over seeds (rows): mean ± std, or on a log axis the geometric mean
    ×/÷ the geometric std (the mean ± std of the logarithms; a plain ± std would cross zero)."""
    x = vals.clamp_min(1e-12).log() if log else vals
    mean = x.mean(0)
    std = x.std(0) if x.shape[0] > 1 else torch.zeros_like(mean)
    lo, hi = mean - std, mean + std
    return (mean.exp(), lo.exp(), hi.exp()) if log else (mean, lo, hi)


def plot_curves(data: dict, path: Path) -> Path:
    """Draw one row per sub-case: test accuracy (left, mean ± std over seeds) and train loss
    (right, log axis, geometric mean ×/÷ geometric std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    subcases = data["subcases"]
    fig, axes = plt.subplots(
        len(subcases), 2, figsize=(10, 3.4 * len(subcases)), squeeze=False, constrained_layout=True
    )
    for row, (subcase, variants) in zip(axes, subcases.items(), strict=True):
        ax_acc, ax_loss = row
        for i, (name, v) in enumerate(variants.items()):
            steps = torch.tensor(v["steps"], dtype=torch.float64)
            style = _style(name, i)
            for ax, key in ((ax_acc, "test_acc"), (ax_loss, "train_loss")):
                vals = torch.tensor(  # (seeds, points); JSON null = no value (step 0's loss)
                    [[math.nan if x is None else x for x in seed] for seed in v[key]],
                    dtype=torch.float64,
                )
                keep = ~torch.isnan(vals[0])
                mid, lo, hi = _band(vals[:, keep], log=key == "train_loss")
                ax.plot(steps[keep], mid, label=name, linewidth=1.6, **style)
                ax.fill_between(steps[keep], lo, hi, color=style["color"], alpha=0.15, linewidth=0)
        ax_acc.set_title(subcase, fontsize=10)
        ax_acc.set_ylabel("test accuracy (%)")
        ax_acc.set_ylim(0, 102)
        ax_loss.set_title("train loss", fontsize=10)
        ax_loss.set_ylabel("train loss (interval mean)")
        ax_loss.set_yscale("log")
        ax_loss.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        low, high = ax_loss.get_ylim()
        if high / low > 20:  # several decades: label the powers of ten only
            ax_loss.yaxis.set_minor_formatter(NullFormatter())
        else:
            ax_loss.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
        for ax in row:
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        ax_acc.legend(fontsize=8, loc="best", framealpha=0.85)
    seeds = ", ".join(map(str, data["seeds"]))
    where = f", {data['device']}" if data.get("device") else ""
    fig.suptitle(f"{data['title']} (seeds {seeds}{where})", fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _where(device: torch.device) -> str:
    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)}"
    threads = torch.get_num_threads()
    return f"{device.type.upper()}, {threads} torch thread{'s' if threads > 1 else ''}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = bench_parser(__doc__, threads=True)
    parser.add_argument(
        "--cases",
        default=",".join(CASES),
        help="comma-separated subset of: " + ", ".join(CASES) + " (default: all)",
    )
    parser.add_argument(
        "--eval-every",
        type=int,
        default=25,
        help="evaluate the test accuracy every N steps (default: %(default)s; quick: 2)",
    )
    parser.add_argument(
        "--plot",
        action="store_true",
        help="draw the learning curves into <plot-dir>/init_curves_<case>.png (+ .json data)",
    )
    parser.add_argument(
        "--replot",
        action="store_true",
        help="only redraw <plot-dir>/init_curves_<case>.png from the saved .json (no training)",
    )
    parser.add_argument(
        "--plot-dir",
        default=DEFAULT_PLOT_DIR,
        help="where --plot writes, relative to the repository root (default: %(default)s)",
    )
    args = parse_args(parser, argv)
    if args.eval_every < 1:
        parser.error("--eval-every must be >= 1")
    chosen = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in CASES]
    if unknown:
        parser.error(f"unknown cases {unknown}; choose from {list(CASES)}")
    plot_dir = Path(args.plot_dir)
    if not plot_dir.is_absolute():
        plot_dir = REPO_ROOT / plot_dir
    if args.replot:
        for key in chosen:
            saved = plot_dir / f"init_curves_{key}.json"
            if not saved.is_file():
                print(f"(no {saved}: run with --plot first)", flush=True)
                continue
            path = plot_curves(json.loads(saved.read_text()), saved.with_suffix(".png"))
            print(f"(curves drawn to {path})", flush=True)
        return
    tables: list[BenchTable] = []
    written: list[Path] = []
    for key in chosen:
        fn, title = CASES[key]
        cr = CaseRun(args)
        fn(cr)
        tables.append(final_table(title, cr.curves, cr.seeds_used))
        tables.append(curve_table(title, cr.curves))
        if args.plot:
            data = curves_json(key, title, cr.curves, cr.seeds_used, _where(args.device))
            stem = plot_dir / f"init_curves_{key}"
            stem.with_suffix(".json").parent.mkdir(parents=True, exist_ok=True)
            stem.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
            written.append(plot_curves(data, stem.with_suffix(".png")))
    report(tables, args, title="init: default init vs recipe (benchmarks/init.py)")
    for path in written:
        print(f"(curves drawn to {path})", flush=True)


if __name__ == "__main__":
    main()
