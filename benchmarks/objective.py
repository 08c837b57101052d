"""Benchmark of the objective layer: orthogonal Procrustes through the Cayley map.

Problem: min over orthogonal Q of ||Q A - B||_F^2 with A of shape (n, 2n). Its closed form is
Q* = U V^T from the SVD B A^T = U S V^T. We build B = Q0 A + noise with Q0 = exp(S0) a rotation in
SO(n) whose rotation angles are at most pi/2 (S0 skew, spectral norm pi/2), so Q* lies well inside
the Cayley chart around the identity. (A Haar-random rotation has angles near pi, which the Cayley
map reaches only as its parameter goes to infinity: no first-order method from Q = I gets there in
a few hundred steps, whatever the library.)

Implementations, on the same float32 inputs, all starting from Q = I, all with Adam (same lr, same
number of steps, no early stopping, the last iterate returned):

* coreopt: ``coreopt.minimize(loss, W0 = 0, parametrization=lambda W: cayley(skew(W)))``;
  a second coreopt row runs it with lr ÷ 4. Reason: coreopt's ``skew(W) = W - W^T`` over a full
  ``W`` moves each skew entry by two Adam steps, and its Cayley map ``(I + A)^{-1}(I - A)`` has no
  1/2, while torch and geotorch skew a triangular ``X`` and map ``(I - A/2)^{-1}(I + A/2)``: at
  the same lr coreopt's effective step on the manifold is 4 times theirs, which shows in its
  last-iterate error. At lr ÷ 4 both take the same steps in exact arithmetic (Adam normalises
  per coordinate), so the errors agree with torch's Cayley rows up to float32 rounding;
* torch: ``torch.nn.utils.parametrizations.orthogonal`` on ``nn.Linear(n, n, bias=False)`` with
  ``orthogonal_map="cayley"`` and ``"matrix_exp"``, in a plain Adam loop;
* geotorch: ``geotorch.orthogonal`` on the same layer with ``triv="expm"`` (its default) and
  ``"cayley"`` (skipped with a note when geotorch is not installed).

Reported: milliseconds per step (a whole solve, setup included, divided by the number of steps;
best, median and interquartile range over the repeats, implementations timed round-robin), the
speedup of coreopt (anchor's best time ÷ coreopt's best time), max|Q - Q*| and max|Q^T Q - I|.
A second table times ``import coreopt`` against ``import torch`` in fresh interpreters
(``import coreopt`` is meant to be light: it must not import torch).

Run from the repository root::

    python benchmarks/objective.py            # print the tables
    python benchmarks/objective.py --quick    # smoke test (n = 16, a few steps)
    python benchmarks/objective.py --record   # also append them to benchmarks/RESULTS.md

On a small shared CPU machine add ``--threads 1``: with every core in torch's thread pool, any
other load on the machine stalls the pool and inflates timings erratically (tens of times).
"""

from __future__ import annotations

import importlib.util
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from _harness import BenchTable, Column, bench_parser, parse_args, report, time_interleaved
from torch import nn
from torch.nn.utils.parametrizations import orthogonal as torch_orthogonal

import coreopt
from coreopt.manifold import cayley, skew

SIZES = (64, 256)
QUICK_SIZES = (16,)
STEPS = 300
QUICK_STEPS = 10
LR = 1e-2
NOISE = 1e-2
MAX_ANGLE = math.pi / 2
MIN_TIME = 10.0  # seconds of timed solves per implementation and size, at least

COREOPT = "coreopt (cayley)"
COREOPT_LR4 = "coreopt (cayley, lr ÷ 4)"
TORCH_CAYLEY = "torch.nn.utils.parametrizations (cayley)"
TORCH_EXPM = "torch.nn.utils.parametrizations (matrix_exp)"
GEOTORCH_EXPM = "geotorch (expm)"
GEOTORCH_CAYLEY = "geotorch (cayley)"
IMPLEMENTATIONS = (COREOPT, COREOPT_LR4, TORCH_CAYLEY, TORCH_EXPM, GEOTORCH_EXPM, GEOTORCH_CAYLEY)


@dataclass(frozen=True)
class Procrustes:
    """One instance of ``min_Q ||Q A - B||_F^2`` over orthogonal ``Q``.

    Attributes:
        A: data, shape ``(n, 2n)``.
        B: targets, ``Q0 A`` plus noise, shape ``(n, 2n)``.
        Q_star: the exact minimiser ``U V^T`` (computed in float64, then cast).
    """

    A: torch.Tensor
    B: torch.Tensor
    Q_star: torch.Tensor

    @property
    def n(self) -> int:
        """The size of ``Q``."""
        return self.A.shape[0]

    def loss(self, Q: torch.Tensor) -> torch.Tensor:
        """``||Q A - B||_F^2``."""
        return ((Q @ self.A - self.B) ** 2).sum()


def make_problem(
    n: int,
    *,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    noise: float = NOISE,
    max_angle: float = MAX_ANGLE,
    seed: int = 0,
) -> Procrustes:
    """Build a Procrustes instance whose minimiser is reachable through the Cayley map.

    ``Q0 = exp(S0)`` with ``S0`` a random skew matrix scaled to spectral norm ``max_angle`` (so
    ``Q0`` is in SO(n) with rotation angles ``<= max_angle``); ``A`` has i.i.d. N(0, 1/(2n))
    entries; ``B = Q0 A + noise * N(0, 1/(2n))``. Everything is drawn in float64 on the CPU from a
    seeded generator, ``Q*`` is computed there, then all are cast to ``dtype`` on ``device``.
    """
    gen = torch.Generator().manual_seed(seed + n)
    G = torch.randn(n, n, generator=gen, dtype=torch.float64)
    S0 = G - G.T
    S0 *= max_angle / torch.linalg.matrix_norm(S0, ord=2)
    Q0 = torch.linalg.matrix_exp(S0)
    scale = 1.0 / math.sqrt(2 * n)
    A = torch.randn(n, 2 * n, generator=gen, dtype=torch.float64) * scale
    B = Q0 @ A + noise * scale * torch.randn(n, 2 * n, generator=gen, dtype=torch.float64)
    U, _, Vh = torch.linalg.svd(B @ A.T)
    Q_star = U @ Vh
    return Procrustes(*(t.to(device=device, dtype=dtype) for t in (A, B, Q_star)))


Solver = Callable[[Procrustes, int, float], torch.Tensor]
"""``solver(problem, steps, lr)`` -> the final ``Q`` (detached)."""


def solve_coreopt(p: Procrustes, steps: int, lr: float) -> torch.Tensor:
    """coreopt: optimize a free ``W`` from 0 (Q = I); the loss sees ``cayley(skew(W))``."""
    W0 = torch.zeros(p.n, p.n, device=p.A.device, dtype=p.A.dtype)
    res = coreopt.minimize(
        p.loss,
        W0,
        parametrization=lambda W: cayley(skew(W)),
        optimizer="adam",
        lr=lr,
        steps=steps,
        patience=None,
        keep_best=False,
        progress=False,
    )
    if not isinstance(res.params, torch.Tensor):
        raise TypeError(f"expected a tensor back, got {type(res.params).__name__}")
    return res.params


def _identity_layer(p: Procrustes) -> nn.Linear:
    layer = nn.Linear(p.n, p.n, bias=False, device=p.A.device, dtype=p.A.dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(p.n, device=p.A.device, dtype=p.A.dtype))
    return layer


def _adam_loop(p: Procrustes, layer: nn.Module, steps: int, lr: float) -> torch.Tensor:
    """The plain training loop a torch user writes; ``layer.weight`` is the parametrized ``Q``."""
    opt = torch.optim.Adam(layer.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = p.loss(layer.weight)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return layer.weight.detach().clone()


def torch_solver(orthogonal_map: str) -> Solver:
    """torch's own orthogonal parametrization (dynamic trivialization: weight = base @ map(X))."""

    def solve(p: Procrustes, steps: int, lr: float) -> torch.Tensor:
        layer = _identity_layer(p)
        # The start is orthogonal, so torch keeps it as the base: weight == I at step 0.
        torch_orthogonal(layer, "weight", orthogonal_map=orthogonal_map)
        return _adam_loop(p, layer, steps, lr)

    return solve


def geotorch_solver(triv: str) -> Solver:
    """geotorch's orthogonal constraint (weight = base @ triv(skew(X)))."""
    import geotorch

    def solve(p: Procrustes, steps: int, lr: float) -> torch.Tensor:
        layer = nn.Linear(p.n, p.n, bias=False, device=p.A.device, dtype=p.A.dtype)
        geotorch.orthogonal(layer, "weight", triv=triv)  # starts at a Haar-random rotation
        layer.weight = torch.eye(p.n, device=p.A.device, dtype=p.A.dtype)  # base <- I, X <- 0
        return _adam_loop(p, layer, steps, lr)

    return solve


def solvers() -> tuple[dict[str, Solver], dict[str, str]]:
    """Available implementations, and the reason for each one that is not."""
    available: dict[str, Solver] = {
        COREOPT: solve_coreopt,
        COREOPT_LR4: lambda p, steps, lr: solve_coreopt(p, steps, lr / 4),
        TORCH_CAYLEY: torch_solver("cayley"),
        TORCH_EXPM: torch_solver("matrix_exp"),
    }
    missing: dict[str, str] = {}
    if importlib.util.find_spec("geotorch") is None:
        for name in (GEOTORCH_EXPM, GEOTORCH_CAYLEY):
            missing[name] = "geotorch is not installed (pip install geotorch)"
    else:
        available[GEOTORCH_EXPM] = geotorch_solver("expm")
        available[GEOTORCH_CAYLEY] = geotorch_solver("cayley")
    return available, missing


def max_abs(X: torch.Tensor) -> float:
    """``max |X_ij|`` as a Python float."""
    return float(X.abs().max())


def orthogonality_error(Q: torch.Tensor) -> float:
    """``max |Q^T Q - I|``, evaluated in float64 so the check adds no rounding of its own."""
    Qd = Q.double()
    return max_abs(Qd.T @ Qd - torch.eye(Q.shape[1], dtype=torch.float64, device=Q.device))


def procrustes_table(
    sizes: tuple[int, ...],
    steps: int,
    lr: float,
    *,
    device: torch.device,
    warmup: int,
    repeats: int,
    min_time: float = 0.0,
) -> BenchTable:
    """Solve every size with every implementation and collect the table."""
    table = BenchTable(
        f"Orthogonal Procrustes, Adam lr={lr:g}, {steps} steps, float32",
        [
            Column("best", "ms/step (best)", "{:.3f}"),
            Column("median", "ms/step (median)", "{:.3f}"),
            Column("iqr", "IQR ms/step", "{:.3f}"),
            Column("solves", "solves", "{:d}"),
            Column("err", "max|Q − Q*|", "{:.2e}"),
            Column("orth", "max|QᵀQ − I|", "{:.2e}"),
        ],
        time_key="best",
        ratio_after="best",
        description=(
            "min_Q ‖QA − B‖²_F over orthogonal Q, A ∈ ℝ^{n×2n}, B = Q0·A + noise, Q0 ∈ SO(n) "
            f"with rotation angles ≤ π/2; start Q = I; no early stopping; last iterate. Per "
            f"implementation {warmup} warmup solve(s), then ≥ {repeats} timed solves "
            f"(round-robin, repeated until each has ≥ {min_time:g} s of samples; count in "
            "'solves'); a solve's time includes its setup. The speedup compares the best "
            "solves: on a shared machine other load only ever adds time, so the minimum is the "
            "reproducible estimate; median and IQR show the noise. "
            "Q* = UVᵀ from the SVD of BAᵀ. "
            "The lr ÷ 4 row: see the note on step sizes in benchmarks/objective.py."
        ),
    )
    available, missing = solvers()
    for n in sizes:
        case = f"n={n}"
        problem = make_problem(n, device=device)
        for name, solve in available.items():  # every implementation starts at Q = I
            start = solve(problem, 0, lr)
            if max_abs(start - torch.eye(n, device=device)) > 1e-5:
                raise RuntimeError(f"{name} does not start at the identity")
        timings = time_interleaved(
            {
                name: (lambda solve=solve, problem=problem: solve(problem, steps, lr))
                for name, solve in available.items()
            },
            warmup=warmup,
            repeats=repeats,
            min_time=min_time,
            device=device,
        )
        for name in IMPLEMENTATIONS:
            if name in missing:
                table.skip(case, name, missing[name])
                continue
            timing = timings[name]
            Q = timing.result
            if Q is None:
                raise RuntimeError(f"{name} returned nothing")
            table.add(
                case,
                name,
                best=1e3 * timing.min / steps,
                median=1e3 * timing.median / steps,
                iqr=1e3 * timing.iqr / steps,
                solves=len(timing.samples),
                err=max_abs(Q - problem.Q_star),
                orth=orthogonality_error(Q),
            )
    return table


# --------------------------------------------------------------------------------------------
# import time
# --------------------------------------------------------------------------------------------

IMPORTS: dict[str, tuple[str, str]] = {
    # row -> (statement run in a fresh interpreter, top-level package whose imports are counted)
    "coreopt (`import coreopt`)": ("import coreopt", "coreopt"),
    "coreopt, first use (`import coreopt; coreopt.minimize`)": (
        "import coreopt; coreopt.minimize",
        "coreopt",
    ),
    "torch (`import torch`)": ("import torch", "torch"),
}


def _importtime_ms(statement: str, package: str) -> float:
    """Cumulative import time (ms) of ``package`` and its submodules imported at top level.

    Parsed from ``python -X importtime``: the sum of the cumulative column over top-level entries
    (no nesting indent) whose module is ``package`` or ``package.*``; a lazily imported
    ``coreopt.objective`` therefore counts, the interpreter's own start-up imports do not.
    """
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", statement],
        capture_output=True,
        text=True,
        check=True,
    )
    total_us = 0
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        fields = line.split("|")
        if len(fields) != 3 or not fields[1].strip().isdigit():
            continue  # the header line
        name_field = fields[2]
        name = name_field.strip()
        top_level = len(name_field) - len(name_field.lstrip()) <= 1
        if top_level and (name == package or name.startswith(package + ".")):
            total_us += int(fields[1])
    return total_us / 1e3


def _wall_ms(statement: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], check=True)
    return 1e3 * (time.perf_counter() - start)


def _loads(statement: str, module: str) -> bool:
    probe = f"{statement}; import sys; print({module!r} in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    return out.strip().endswith("True")


def import_table(repeats: int, *, warmup: bool = True) -> BenchTable:
    """Time the imports in fresh interpreters (median of ``repeats``), with the interpreter alone.

    ``warmup`` first runs each statement once untimed (file-system and bytecode caches).
    """
    table = BenchTable(
        "Import time (fresh interpreter each)",
        [
            Column("best", "-X importtime (ms, best)", "{:.1f}"),
            Column("imp", "-X importtime (ms, median)", "{:.1f}"),
            Column("iqr", "IQR (ms)", "{:.1f}"),
            Column("wall", "process wall (ms, median)", "{:.0f}"),
            Column("net", "wall − bare `python -c pass` (ms)", "{:.0f}"),
            Column("torch", "torch in sys.modules", lambda v: "yes" if v else "no", numeric=False),
        ],
        time_key="best",
        ratio_after="best",
        description=(
            f"{repeats} runs each, interleaved. `-X importtime` sums the cumulative time of the "
            "package's top-level import entries; process wall includes interpreter start-up."
        ),
    )
    if warmup:
        _wall_ms("pass")
        for statement, package in IMPORTS.values():
            _importtime_ms(statement, package)
    bare = [_wall_ms("pass") for _ in range(repeats)]
    imp: dict[str, list[float]] = {row: [] for row in IMPORTS}
    wall: dict[str, list[float]] = {row: [] for row in IMPORTS}
    for _ in range(repeats):
        for row, (statement, package) in IMPORTS.items():
            imp[row].append(_importtime_ms(statement, package))
            wall[row].append(_wall_ms(statement))
    bare_ms = statistics.median(bare)
    for row, (statement, _) in IMPORTS.items():
        q = statistics.quantiles(imp[row], n=4, method="inclusive") if repeats > 1 else [0, 0, 0]
        table.add(
            "import",
            row,
            best=min(imp[row]),
            imp=statistics.median(imp[row]),
            iqr=q[2] - q[0],
            wall=statistics.median(wall[row]),
            net=statistics.median(wall[row]) - bare_ms,
            torch=_loads(statement, "torch"),
        )
    return table


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see the module docstring for the options."""
    args = parse_args(bench_parser(__doc__, threads=True), argv)
    sizes, steps = (QUICK_SIZES, QUICK_STEPS) if args.quick else (SIZES, STEPS)
    repeats = args.repeats or (1 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else 1
    tables = [
        procrustes_table(
            sizes,
            steps,
            LR,
            device=args.device,
            warmup=warmup,
            repeats=repeats,
            min_time=0.0 if args.quick else MIN_TIME,
        ),
        import_table(1, warmup=False) if args.quick else import_table(max(repeats, 5)),
    ]
    title = "objective: orthogonal Procrustes (benchmarks/objective.py)"
    if args.device.type == "cpu":
        threads = torch.get_num_threads()
        title = title[:-1] + f", {threads} thread{'s' if threads > 1 else ''})"
    report(tables, args, title=title)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
