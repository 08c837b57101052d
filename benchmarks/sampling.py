"""Benchmark of coreopt.sampling: tokens/s and peak memory of plain, ADS, ADFP and KGW sampling.

A randomly initialised teacher (Llama architecture, 8 layers, width 512, vocabulary 4096, tied
embeddings) and a proxy of half its size (4 layers, same width) sample ``--new-tokens`` tokens
after a 16-token prompt, at batch 1 and 32, every row running to the full length (no stop token).
All samplers go through ``coreopt.sampling.generate`` (one teacher forward per step with a KV
cache; each proxy has its own KV cache):

* plain — temperature sampling (the reference row: ratio 1);
* ADS (batched) — antidistillation sampling with one proxy and one forward of the doubled batch:
  rows ``[:B]`` at θ + εg and rows ``[B:]`` at θ − εg, through forward hooks that add ``±ε`` times
  each linear layer's / embedding's / norm's output at ``g`` (what ``proxy_mode="auto"`` picks
  when two more proxies do not fit in memory);
* ADS (inplace) — one proxy perturbed in place, module by module, around each of its two forwards
  (θ + εg, then θ − εg; parameters restored bit-exactly);
* ADS (copies) — the same with two perturbed deep copies of the proxy (the reference code's way;
  what ``proxy_mode="auto"`` picks when they fit in a quarter of the free memory);
* ADFP — antidistillation fingerprinting (one unperturbed proxy forward and a green-list mask);
* KGW — transformers' WatermarkLogitsProcessor (no proxy);
* transformers generate — ``teacher.generate`` with the same plain sampling, and with the ADS
  processor in its ``logits_processor`` list (anchors for the loop itself).

Reported: milliseconds per generated token (per step over the batch: time ÷ (batch × new tokens)),
tokens/s, the cost relative to plain sampling in the same run (``× plain``), and the peak memory
*added* by sampling: tensors allocated between the start of the run (models loaded, the gradient
in memory for ADS) and its end, as recorded by ``torch.profiler`` with ``profile_memory=True`` on
the CPU (``torch.cuda.max_memory_allocated`` on CUDA). The target of the issue: ADS at most 2× the
cost of plain sampling when the proxy is half the teacher's size.

Run from the repository root::

    python benchmarks/sampling.py --threads 1            # print the tables
    python benchmarks/sampling.py --quick                # smoke test (tiny models)
    python benchmarks/sampling.py --threads 1 --record   # also append to benchmarks/RESULTS.md
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable
from typing import Any

import torch
from _harness import BenchTable, Column, bench_parser, parse_args, report, time_interleaved

from coreopt.sampling import (
    AntidistillationLogitsProcessor,
    FingerprintLogitsProcessor,
    KGWLogitsProcessor,
    TemperatureProcessor,
    generate,
)

PROMPT = 16


class CostTable(BenchTable):
    """A BenchTable whose ratio column is a relative cost (row time ÷ plain sampling time)."""

    def to_markdown(self, *, title: bool = True, footnote: bool = True) -> str:
        text = super().to_markdown(title=title, footnote=False)
        if footnote:
            text += (
                "\n\n× plain = the row's ms/token ÷ plain sampling's ms/token in the same case "
                "(the cost of the method; < 1 is faster than plain sampling)."
            )
        return text


def build_models(
    quick: bool, device: torch.device, proxy_layers: int = 4
) -> tuple[Any, Any, dict[str, torch.Tensor]]:
    import transformers

    dims = (
        {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "vocab_size": 512}
        if quick
        else {
            "hidden_size": 512,
            "intermediate_size": 1536,
            "num_attention_heads": 8,
            "vocab_size": 4096,
        }
    )
    common = {
        **dims,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "tie_word_embeddings": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
    }
    torch.manual_seed(0)
    teacher = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(num_hidden_layers=8, **common)
    ).eval()
    proxy = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(num_hidden_layers=proxy_layers, **common)
    ).eval()
    teacher.to(device)
    proxy.to(device)
    gen = torch.Generator().manual_seed(1)
    # a stand-in for downstream_gradient(...): only its shape and scale matter for the cost
    grad = {
        n: (torch.randn(p.shape, generator=gen) * 1e-3).to(device)
        for n, p in proxy.named_parameters()
    }
    return teacher, proxy, grad


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def peak_memory(fn: Callable[[], Any], device: torch.device) -> float:
    """Peak bytes of tensors allocated by ``fn`` above what was allocated before it (MiB)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()  # type: ignore[union-attr]
        if e.name() == "[memory]"
    )
    cur = peak = 0
    for _, nbytes in events:
        cur += nbytes
        peak = max(peak, cur)
    return peak / 2**20


def bench_batch(
    table: BenchTable,
    teacher: Any,
    prompts: torch.Tensor,
    make: Callable[[str], Any],
    labels: dict[str, str],
    new: int,
    warmup: int,
    repeats: int,
    device: torch.device,
) -> None:
    """Time every sampler (and the transformers anchors) at one batch size; add the rows."""
    b = prompts.shape[0]
    mask = torch.ones_like(prompts)
    procs = {name: make(name) for name in labels}

    def run(proc: Any) -> Callable[[], Any]:
        def go() -> Any:
            return generate(
                teacher,
                prompts,
                attention_mask=mask,
                processor=proc,
                max_new_tokens=new,
                eos_token_id=[],
                seed=0,
            )

        return go

    def hf_run(proc: Any = None) -> Callable[[], Any]:
        def go() -> Any:
            kw: dict[str, Any] = {}
            if proc is not None:
                kw["logits_processor"] = [proc]
                proc.begin(mask)
            with torch.no_grad():
                return teacher.generate(
                    prompts,
                    attention_mask=mask,
                    do_sample=True,
                    temperature=1.0,
                    top_k=0,
                    top_p=1.0,
                    max_new_tokens=new,
                    min_new_tokens=new,
                    pad_token_id=0,
                    **kw,
                )

        return go

    fns = {name: run(p) for name, p in procs.items()}
    fns["hf-plain"] = hf_run()
    fns["hf-ads"] = hf_run(make("ads-batched"))
    timings = time_interleaved(fns, warmup=warmup, repeats=repeats, device=device)
    mems = {name: peak_memory(lambda name=name: run(make(name))(), device) for name in labels}
    rows = [(name, label, mems[name]) for name, label in labels.items()]
    rows += [
        ("hf-plain", "transformers generate, plain sampling", None),
        ("hf-ads", "transformers generate + AntidistillationLogitsProcessor", None),
    ]
    for name, label, mem in rows:
        t = timings[name]
        if not math.isfinite(t.median):
            raise RuntimeError(f"{name}: timing is not finite")
        ms = t.median / (b * new) * 1e3
        q1, q3 = t.quartiles
        table.add(
            f"batch {b}", label, ms=ms, tps=1e3 / ms, iqr=(q3 - q1) / (b * new) * 1e3, mem=mem
        )


def main() -> None:
    parser = bench_parser(__doc__, threads=True)
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens generated per row")
    parser.add_argument(
        "--batches", type=int, nargs="*", default=[1, 32], help="batch sizes (default: 1 32)"
    )
    parser.add_argument(
        "--proxy-layers", type=int, default=4, help="proxy depth (teacher: 8; default 4)"
    )
    args = parse_args(parser)
    device = args.device
    new = args.new_tokens or (8 if args.quick else 64)
    repeats = args.repeats or (1 if args.quick else 3)
    warmup = args.warmup if args.warmup is not None else 1
    teacher, proxy, grad = build_models(args.quick, device, args.proxy_layers)
    vocab = teacher.config.vocab_size
    gen = torch.Generator().manual_seed(0)

    def make(name: str) -> Any:
        if name == "plain":
            return TemperatureProcessor(1.0)
        if name == "ads-batched":
            return AntidistillationLogitsProcessor(proxy, grad, lam=0.1, proxy_mode="batched")
        if name == "ads-inplace":
            return AntidistillationLogitsProcessor(proxy, grad, lam=0.1, proxy_mode="inplace")
        if name == "ads-copies":
            return AntidistillationLogitsProcessor(proxy, grad, lam=0.1, proxy_mode="copies")
        if name == "adfp":
            return FingerprintLogitsProcessor(
                proxy, key="bench", lam=4.0, special_token_ids=(0, 1, 2), eos_token_id=2
            )
        if name == "kgw":
            return KGWLogitsProcessor(vocab, bias=2.0, gamma=0.25, device=str(device))
        raise ValueError(name)

    labels = {
        "plain": "coreopt plain sampling",
        "ads-batched": "ADS, one proxy, doubled batch",
        "ads-inplace": "ADS, one proxy perturbed in place",
        "ads-copies": "ADS, two perturbed proxy copies",
        "adfp": "ADFP (one proxy forward + green list)",
        "kgw": "KGW (transformers WatermarkLogitsProcessor)",
    }
    columns = [
        Column("ms", "ms/token (median)", "{:.3f}"),
        Column("tps", "tokens/s", "{:.0f}"),
        Column("iqr", "IQR ms/token", "{:.3f}"),
        Column("mem", "peak added memory MiB", "{:.1f}"),
    ]
    table = CostTable(
        f"Sampling throughput, {new} new tokens after a {PROMPT}-token prompt, float32",
        columns,
        time_key="ms",
        reference="coreopt plain",
        ratio_header="× plain (time)",
        description=(
            f"Teacher {n_params(teacher) / 1e6:.1f} M parameters (8 layers), proxy "
            f"{n_params(proxy) / 1e6:.1f} M ({args.proxy_layers} layers, "
            f"{n_params(proxy) / n_params(teacher):.2f}× "
            f"the teacher). ms/token = wall time ÷ (batch × new tokens); samplers timed "
            f"round-robin ({repeats} timed runs each after {warmup} warmup). Peak added memory: "
            "tensors allocated during the run above those present before it (models, and for "
            "ADS the gradient g, are present before it: g is the size of the proxy); for ADS "
            "(copies) it includes the two copies, built inside the measured run."
        ),
    )
    for b in args.batches:
        prompts = torch.randint(3, vocab, (b, PROMPT), generator=gen).to(device)
        bench_batch(table, teacher, prompts, make, labels, new, warmup, repeats, device)
    threads = torch.get_num_threads()
    report(
        [table],
        args,
        title=f"sampling: plain vs antidistillation (benchmarks/sampling.py, {threads} thread(s))",
    )


if __name__ == "__main__":
    main()
