"""Benchmark of coreopt.manifold: orthogonal convolutions and dense orthogonal matrices.

Table 1, convolutions (float32): ``CayleyConv2d`` against ``nn.Conv2d`` with circular padding (the
same operator class, unconstrained) and against ``nn.Conv2d`` whose weight is made orthogonal by
``torch.nn.utils.parametrizations.orthogonal`` (which only orthogonalises the kernel's k x k slices,
not the operator). Cases: (batch 8, 16->16, 32x32, k=3), (8, 64->64, 16x16), (128, 64->64, 16x16)
and a stride-2 layer (8, 16->32, 32x32; nn.Conv2d with stride 2, CayleyConv2d through its
orthogonal space-to-depth). Reported: forward+backward time (a training step's layer work: the
weight is recomputed each call), eval forward time (``torch.no_grad()``, model in eval mode, so
CayleyConv2d uses its cached per-frequency weight), each also as a ratio to nn.Conv2d (the
issue's targets: fwd+bwd within 4x and eval within 1.5x at batch 8, 16->16, 32x32), and the
operator's orthogonality error ``max |σ − 1|`` over all singular values of the whole linear
operator, computed exactly from the per-frequency matrices (the operator is block diagonal in the
unitary DFT basis): once for ``Q_f`` (the eval path) and once for the matrices that the training
forward applies without forming ``Q_f``. The first case also times the layer under
``torch.compile`` (inductor; ``--no-compile`` skips it).

Table 2, dense 256x256 (float32): ``coreopt.orthogonal(nn.Linear(256, 256))`` against torch's
orthogonal parametrization (``cayley``, ``matrix_exp``) and geotorch (``expm``, ``cayley``):
forward+backward of a linear layer on a batch of 64 (the orthogonal weight recomputed each call)
and ``max |QᵀQ − I|``.

Timings: median (and best) over repeats, implementations round-robin
(``_harness.time_interleaved``), each timed for at least 2 s; on a CPU shared with other jobs the
ratios between implementations are more reliable than the absolute times.

Run from the repository root::

    python benchmarks/orthogonal.py --threads 1           # print the tables
    python benchmarks/orthogonal.py --quick               # smoke test
    python benchmarks/orthogonal.py --threads 1 --record  # append them to benchmarks/RESULTS.md
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable

import torch
from _harness import (
    BenchTable,
    Column,
    Timing,
    bench_parser,
    parse_args,
    report,
    time_interleaved,
)
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


def training_operator_error(module: CayleyConv2d, size: int, batch: int) -> float:
    """``max |σ − 1|`` of the operator that the *training* forward applies: it never forms
    ``Q_f`` but solves against the batch (or applies ``M^{-1}``), so its per-frequency matrices
    are recovered by running that code on identity matrices (``_training_spectrum``)."""
    h = size // module.stride
    c = module.in_channels * module.stride**2 // module.groups
    k = min(module.out_channels // module.groups, c)
    with torch.no_grad():
        T = module._training_spectrum(h, h, solve_batch=3 * batch < 2 * k)
        sv = torch.linalg.svdvals(T.to(torch.complex128))
    return float((sv - 1).abs().max())


def _ratio_text(value: tuple[float, float]) -> str:
    return f"{value[0]:.2f}× ({value[1]:.2f}×)"


def conv_table(
    cases: list, *, device: torch.device, warmup: int, repeats: int, min_time: float, compiled: bool
) -> BenchTable:
    table = BenchTable(
        "Orthogonal convolution, float32",
        [
            Column("fb", "fwd+bwd ms (median)", "{:.3f}"),
            Column("fbr", "fwd+bwd ÷ nn.Conv2d, median (best)", _ratio_text),
            Column("ev", "eval fwd ms (median)", "{:.3f}"),
            Column("evr", "eval ÷ nn.Conv2d, median (best)", _ratio_text),
            Column("orth", "operator max|σ − 1|", "{:.1e}"),
            Column("orth_train", "training-path max|σ − 1|", "{:.1e}"),
        ],
        time_key="fb",
        description=(
            "fwd+bwd: output.sum().backward() with gradients to the input and all parameters "
            "(train mode: CayleyConv2d never forms Q_f, it solves against the batch or applies "
            "M^{-1}); eval: torch.no_grad(), eval mode (CayleyConv2d reuses its cached Q_f). "
            "÷ nn.Conv2d: this row's time over the circular nn.Conv2d's in the same case, from "
            "the medians and (in parentheses) the best runs; the issue's targets are fwd+bwd "
            "≤ 4× and eval ≤ 1.5× at B=8, 16→16, 32×32. Operator error: from Q_f (the eval "
            "path); training-path error: from the per-frequency matrices the training forward "
            "applies. The torch.compile row (first case only, inductor, compile time excluded) "
            "is the same layer compiled. The CPU is shared with other jobs: timings are "
            "interleaved round-robin, so the ratios hold better than the absolute times; the "
            "best runs are the least disturbed."
        ),
    )
    for index, (label, batch, cin, cout, size, stride) in enumerate(cases):
        torch.manual_seed(0)
        x = torch.randn(batch, cin, size, size, device=device, requires_grad=True)
        layer = CayleyConv2d(cin, cout, 3, stride=stride, device=device)
        impls: dict[str, nn.Module] = {"coreopt CayleyConv2d": layer}
        if compiled and index == 0:
            torch._dynamo.reset()
            impls["coreopt CayleyConv2d (torch.compile)"] = torch.compile(copy.deepcopy(layer))
        impls["nn.Conv2d (circular)"] = nn.Conv2d(
            cin, cout, 3, stride=stride, padding=1, padding_mode="circular", device=device
        )
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

        def timed(fns: dict[str, Callable[[], object]]) -> dict[str, Timing[object]]:
            return time_interleaved(
                fns, warmup=warmup, repeats=repeats, min_time=min_time, device=device
            )

        for m in impls.values():
            m.train()
        fb = timed({k: fwd_bwd(m) for k, m in impls.items()})
        for m in impls.values():
            m.eval()
        ev = timed({k: eval_fwd(m) for k, m in impls.items()})
        conv = "nn.Conv2d (circular)"
        for name, m in impls.items():
            eager = m._orig_mod if hasattr(m, "_orig_mod") else m
            table.add(
                label,
                name,
                fb=1e3 * fb[name].median,
                fbr=(fb[name].median / fb[conv].median, fb[name].min / fb[conv].min),
                ev=1e3 * ev[name].median,
                evr=(ev[name].median / ev[conv].median, ev[name].min / ev[conv].min),
                orth=conv_operator_error(eager, size)
                if stride == 1 or name.startswith("core")
                else None,
                orth_train=training_operator_error(eager, size, batch)
                if isinstance(eager, CayleyConv2d)
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
    parser.add_argument(
        "--no-compile",
        dest="compile",
        action="store_false",
        help="skip the torch.compile row of the first convolution case",
    )
    args = parse_args(parser, argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (2 if args.quick else 30)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)
    min_time = 0.0 if args.quick else 2.0
    cases = QUICK_CONV_CASES if args.quick else CONV_CASES
    n = 32 if args.quick else 256
    tables = [
        conv_table(
            cases,
            device=args.device,
            warmup=warmup,
            repeats=repeats,
            min_time=min_time,
            compiled=args.compile,
        ),
        dense_table(n, 64, device=args.device, warmup=warmup, repeats=repeats),
    ]
    title = (
        f"orthogonal: Cayley layers (benchmarks/orthogonal.py, {torch.get_num_threads()} threads)"
    )
    report(tables, args, title=title)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
