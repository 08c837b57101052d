"""Benchmark of coreopt.manifold: orthogonal convolutions and dense orthogonal matrices.

Table 1, convolutions (float32): ``CayleyConv2d`` against ``nn.Conv2d`` with circular padding (the
same operator class, unconstrained) and against ``nn.Conv2d`` whose weight is made orthogonal by
``torch.nn.utils.parametrizations.orthogonal`` (which only orthogonalises the kernel's k x k slices,
not the operator). Cases: (batch 8, 16->16, 32x32, k=3), (8, 64->64, 16x16), (128, 64->64, 16x16)
and a stride-2 layer (8, 16->32, 32x32; nn.Conv2d with stride 2, CayleyConv2d through its
orthogonal space-to-depth). Reported: forward+backward time (a training step's layer work: the
weight is recomputed each call), eval forward time (``torch.no_grad()``, model in eval mode, so
CayleyConv2d uses its cached per-frequency weight), and the operator's orthogonality error
``max |σ − 1|`` over all singular values of the whole linear operator, computed exactly from the
per-frequency matrices (the operator is block diagonal in the unitary DFT basis).

Table 2, dense 256x256 (float32): ``coreopt.orthogonal(nn.Linear(256, 256))`` against torch's
orthogonal parametrization (``cayley``, ``matrix_exp``) and geotorch (``expm``, ``cayley``):
forward+backward of a linear layer on a batch of 64 (the orthogonal weight recomputed each call)
and ``max |QᵀQ − I|``.

Timings: median over repeats, implementations round-robin (``_harness.time_interleaved``).

Run from the repository root::

    python benchmarks/orthogonal.py --threads 1           # print the tables
    python benchmarks/orthogonal.py --quick               # smoke test
    python benchmarks/orthogonal.py --threads 1 --record  # append them to benchmarks/RESULTS.md
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch
from _harness import BenchTable, Column, bench_parser, parse_args, report, time_interleaved
from torch import nn
from torch.nn.utils.parametrizations import orthogonal as torch_orthogonal

import coreopt
from coreopt.manifold import CayleyConv2d, kernel_spectrum

# (label, batch, in, out, size, stride)
CONV_CASES = [
    ("B=8, 16→16, 32×32, k=3", 8, 16, 16, 32, 1),
    ("B=8, 64→64, 16×16, k=3", 8, 64, 64, 16, 1),
    ("B=128, 64→64, 16×16, k=3", 128, 64, 64, 16, 1),
    ("B=8, 16→32, 32×32, k=3, stride 2", 8, 16, 32, 32, 2),
]
QUICK_CONV_CASES = [
    ("B=2, 4→4, 8×8, k=3", 2, 4, 4, 8, 1),
    ("B=2, 4→8, 8×8, stride 2", 2, 4, 8, 8, 2),
]


def conv_operator_error(module: nn.Module, size: int) -> float:
    """``max |σ − 1|`` over the singular values of the whole (circular) convolution operator."""
    with torch.no_grad():
        if isinstance(module, CayleyConv2d):
            Q = module._compute_spectrum(size // module.stride, size // module.stride)
            sv = torch.linalg.svdvals(Q.to(torch.complex128))
        else:  # a stride-1 circular nn.Conv2d: per-frequency matrices of its kernel
            W = module.weight.detach().double()
            sv = torch.linalg.svdvals(kernel_spectrum(W, size, size))
    return float((sv - 1).abs().max())


def conv_table(cases: list, *, device: torch.device, warmup: int, repeats: int) -> BenchTable:
    table = BenchTable(
        "Orthogonal convolution, float32",
        [
            Column("fb", "fwd+bwd ms (median)", "{:.3f}"),
            Column("ev", "eval fwd ms (median)", "{:.3f}"),
            Column("evr", "eval ÷ coreopt eval", "{:.2f}"),
            Column("orth", "operator max|σ − 1|", "{:.1e}"),
        ],
        time_key="fb",
        description=(
            "fwd+bwd: output.sum().backward() with gradients to the input and all parameters; "
            "eval: torch.no_grad(), eval mode (CayleyConv2d reuses its cached Q). Speedup = "
            "anchor fwd+bwd ÷ coreopt fwd+bwd (< 1: the anchor is faster)."
        ),
    )
    for label, batch, cin, cout, size, stride in cases:
        torch.manual_seed(0)
        x = torch.randn(batch, cin, size, size, device=device, requires_grad=True)
        impls: dict[str, nn.Module] = {
            "coreopt CayleyConv2d": CayleyConv2d(cin, cout, 3, stride=stride, device=device),
            "nn.Conv2d (circular)": nn.Conv2d(
                cin, cout, 3, stride=stride, padding=1, padding_mode="circular", device=device
            ),
        }
        if stride == 1 and cin == cout:
            impls["torch orthogonal(nn.Conv2d) (kernel slices)"] = torch_orthogonal(
                nn.Conv2d(cin, cout, 3, padding=1, padding_mode="circular", device=device)
            )

        def fwd_bwd(m: nn.Module, x: torch.Tensor = x) -> Callable[[], None]:
            def run() -> None:
                m.zero_grad(set_to_none=True)
                x.grad = None
                m(x).sum().backward()

            return run

        def eval_fwd(m: nn.Module, x: torch.Tensor = x) -> Callable[[], torch.Tensor]:
            def run() -> torch.Tensor:
                with torch.no_grad():
                    return m(x)

            return run

        for m in impls.values():
            m.train()
        fb = time_interleaved(
            {k: fwd_bwd(m) for k, m in impls.items()},
            warmup=warmup,
            repeats=repeats,
            device=device,
        )
        for m in impls.values():
            m.eval()
        ev = time_interleaved(
            {k: eval_fwd(m) for k, m in impls.items()},
            warmup=warmup,
            repeats=repeats,
            device=device,
        )
        ref_ev = ev["coreopt CayleyConv2d"].median
        for name, m in impls.items():
            table.add(
                label,
                name,
                fb=1e3 * fb[name].median,
                ev=1e3 * ev[name].median,
                evr=ev[name].median / ref_ev,
                orth=conv_operator_error(m, size)
                if stride == 1 or name.startswith("core")
                else None,
            )
    return table


def dense_table(
    n: int, batch: int, *, device: torch.device, warmup: int, repeats: int
) -> BenchTable:
    table = BenchTable(
        f"Dense orthogonal {n}×{n}, float32",
        [
            Column("fb", "fwd+bwd ms (median)", "{:.3f}"),
            Column("orth", "max|QᵀQ − I|", "{:.1e}"),
        ],
        time_key="fb",
        description=(
            f"A linear layer {n}→{n} on a batch of {batch}, the orthogonal weight recomputed "
            "from its parameter in every call; loss = output.sum()."
        ),
    )
    layers: dict[str, nn.Module] = {
        "coreopt orthogonal (cayley)": coreopt.orthogonal(nn.Linear(n, n, device=device)),
        "torch orthogonal (cayley)": torch_orthogonal(
            nn.Linear(n, n, device=device), orthogonal_map="cayley"
        ),
        "torch orthogonal (matrix_exp)": torch_orthogonal(
            nn.Linear(n, n, device=device), orthogonal_map="matrix_exp"
        ),
    }
    missing = importlib.util.find_spec("geotorch") is None
    if not missing:
        import geotorch

        for triv in ("expm", "cayley"):
            layer = nn.Linear(n, n, device=device)
            geotorch.orthogonal(layer, "weight", triv=triv)
            layers[f"geotorch ({triv})"] = layer
    x = torch.randn(batch, n, device=device)

    def step(m: nn.Module) -> Callable[[], None]:
        def run() -> None:
            m.zero_grad(set_to_none=True)
            m(x).sum().backward()

        return run

    timings = time_interleaved(
        {k: step(m) for k, m in layers.items()}, warmup=warmup, repeats=repeats, device=device
    )
    case = f"n={n}, B={batch}"
    for name, layer in layers.items():
        with torch.no_grad():
            Q = layer.weight.double()
            err = float((Q.T @ Q - torch.eye(n, dtype=torch.float64, device=device)).abs().max())
        table.add(case, name, fb=1e3 * timings[name].median, orth=err)
    if missing:
        table.skip(case, "geotorch", "geotorch is not installed (pip install geotorch)")
    return table


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see the module docstring for the options."""
    parser = bench_parser(__doc__)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)"
    )
    args = parse_args(parser, argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (2 if args.quick else 30)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)
    cases = QUICK_CONV_CASES if args.quick else CONV_CASES
    n = 32 if args.quick else 256
    tables = [
        conv_table(cases, device=args.device, warmup=warmup, repeats=repeats),
        dense_table(n, 64, device=args.device, warmup=warmup, repeats=repeats),
    ]
    title = (
        f"orthogonal: Cayley layers (benchmarks/orthogonal.py, {torch.get_num_threads()} threads)"
    )
    report(tables, args, title=title)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
