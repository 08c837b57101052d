"""Shared helpers for coreopt's benchmarks: robust timing, side-by-side tables, recording.

Every ``benchmarks/<area>.py`` script uses this module the same way::

    from _harness import BenchTable, Column, bench_parser, parse_args, report, time_interleaved

    args = parse_args(bench_parser(__doc__))            # --device, --quick, --record, ...
    table = BenchTable("Title", [Column("ms", "ms/step", "{:.3f}")], time_key="ms")
    table.add("n=64", "coreopt", ms=1.2)                # the reference row of case "n=64"
    table.add("n=64", "torch", ms=2.4)                  # an anchor: speedup 2.00
    report([table], args, title="area: what is measured")

A script prints its tables (markdown) with a header naming the device, the torch version and the
date, and appends them to ``benchmarks/RESULTS.md`` only when run with ``--record``.

Scripts run as ``python benchmarks/<area>.py``, which puts this directory on ``sys.path``; tests add
it themselves. The module imports torch and coreopt, nothing else outside the standard library.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch

import coreopt
from coreopt.objective import resolve_device, synchronize

T = TypeVar("T")

BENCH_DIR: Path = Path(__file__).resolve().parent
"""The ``benchmarks/`` directory."""
REPO_ROOT: Path = BENCH_DIR.parent
"""The repository root (relative result paths are resolved against it)."""
DEFAULT_RESULTS: str = "benchmarks/RESULTS.md"
"""Where ``--record`` appends, relative to the repository root."""

RESULTS_HEADER: str = """\
# Benchmark results

Measured results of the scripts in `benchmarks/`, appended by `python benchmarks/<area>.py --record`
(never by a plain run). Each section names the machine, the exact command, the torch and coreopt
versions and the date. In every table the coreopt row of a case is the reference and each anchor
library's row carries a **speedup** = anchor time ÷ coreopt time measured in the same run
(> 1: coreopt is faster; < 1: the anchor is faster). Numbers from different machines or sections are
not comparable with each other.
"""

MISSING = "—"
"""Cell text for a value that was not measured (a skipped implementation, a reference row)."""


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing(Generic[T]):
    """Wall-clock samples of repeated runs of one callable, in seconds.

    Attributes:
        samples: one duration per timed repeat (warmup runs excluded), in seconds.
        result: what the callable returned on its last timed run (to check the answer).
    """

    samples: tuple[float, ...]
    result: T | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.samples:
            raise ValueError("samples is empty: a Timing needs at least one timed repeat")

    @property
    def median(self) -> float:
        """Median duration (s): the headline number, robust to a few slow outliers."""
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        """Fastest duration (s): the least disturbed run."""
        return min(self.samples)

    @property
    def quartiles(self) -> tuple[float, float]:
        """First and third quartiles (s); both equal the sample when there is only one."""
        if len(self.samples) == 1:
            return self.samples[0], self.samples[0]
        q1, _, q3 = statistics.quantiles(self.samples, n=4, method="inclusive")
        return q1, q3

    @property
    def iqr(self) -> float:
        """Interquartile range (s): the spread of the middle half of the samples."""
        q1, q3 = self.quartiles
        return q3 - q1


def _timed_run(fn: Callable[[], T], device: torch.device | str | None) -> tuple[float, T]:
    gc.collect()
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)  # queued CUDA kernels count: wait for them before reading the clock
    return time.perf_counter() - start, out


def time_callable(
    fn: Callable[[], T],
    *,
    warmup: int = 1,
    repeats: int = 5,
    device: torch.device | str | None = None,
) -> Timing[T]:
    """Time ``fn()`` robustly: ``warmup`` untimed runs, then ``repeats`` timed ones.

    The device is synchronised (:func:`coreopt.objective.synchronize`, a no-op on the CPU) before
    the clock starts and before it is read, so asynchronous CUDA work is counted; garbage is
    collected before each run so a collection does not land inside one.

    Args:
        fn: the work to time; called ``warmup + repeats`` times, so it must rebuild any state it
            consumes (e.g. construct its optimizer afresh).
        warmup: untimed runs first (allocator, kernel selection, lazy imports).
        repeats: timed runs; report :attr:`Timing.median` and :attr:`Timing.iqr`.
        device: the device ``fn`` computes on (``None`` or CPU: no synchronisation).

    Returns:
        A :class:`Timing` with one sample per timed run and the last run's result.

    Examples:
        >>> t = time_callable(lambda: sum(range(1000)), warmup=0, repeats=3)
        >>> len(t.samples), t.result, t.min <= t.median
        (3, 499500, True)
    """
    _check_counts(warmup, repeats)
    for _ in range(warmup):
        _timed_run(fn, device)
    samples: list[float] = []
    out: T | None = None
    for _ in range(repeats):
        seconds, out = _timed_run(fn, device)
        samples.append(seconds)
    return Timing(tuple(samples), out)


def time_interleaved(
    fns: Mapping[str, Callable[[], T]],
    *,
    warmup: int = 1,
    repeats: int = 5,
    min_time: float = 0.0,
    max_repeats: int = 100,
    device: torch.device | str | None = None,
) -> dict[str, Timing[T]]:
    """Time several callables round-robin, so slow drifts of the machine hit all of them alike.

    Each callable gets ``warmup`` untimed runs, then the timed repeats alternate between them
    (``a b c a b c ...``) instead of running ``a a a b b b ...``: on a shared or thermally limited
    machine this keeps the *ratios* between implementations honest. Same synchronisation rules
    as :func:`time_callable`.

    Args:
        fns: name -> callable, each doing one complete unit of work.
        warmup: untimed runs of each callable first.
        repeats: the least number of timed runs of each callable.
        min_time: after ``repeats`` rounds, keep timing each callable (still round-robin among
            those not yet done) until its samples add up to this many seconds, or it reaches
            ``max_repeats``: cheap callables get more samples, so their median and minimum resist
            a noisy machine better (like ``timeit``'s autorange).
        max_repeats: the most timed runs of each callable.
        device: the device the callables compute on.

    Returns:
        name -> :class:`Timing`, in the order of ``fns``.
    """
    _check_counts(warmup, repeats)
    if max_repeats < repeats:
        raise ValueError(f"max_repeats={max_repeats} is smaller than repeats={repeats}")
    for fn in fns.values():
        for _ in range(warmup):
            _timed_run(fn, device)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    results: dict[str, Any] = {}

    def wants_more(name: str) -> bool:
        done = samples[name]
        return len(done) < repeats or (len(done) < max_repeats and sum(done) < min_time)

    while todo := [name for name in fns if wants_more(name)]:
        for name in todo:
            seconds, results[name] = _timed_run(fns[name], device)
            samples[name].append(seconds)
    return {name: Timing(tuple(samples[name]), results[name]) for name in fns}


def _check_counts(warmup: int, repeats: int) -> None:
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """A metric column of a :class:`BenchTable`.

    Attributes:
        key: the keyword under which rows give the value (``table.add(..., key=value)``).
        header: the column title (say the unit: ``"ms/step"``).
        fmt: a ``str.format`` pattern for one value (``"{:.3g}"``) or a callable value -> text.
            ``None`` values render as ``—``.
        numeric: right-align the column.
    """

    key: str
    header: str
    fmt: str | Callable[[Any], str] = "{:.3g}"
    numeric: bool = True

    def render(self, value: Any) -> str:
        """Format one cell; ``None`` and NaN become ``—``."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return MISSING
        return self.fmt(value) if callable(self.fmt) else self.fmt.format(value)


@dataclass(frozen=True)
class Row:
    """One measured (or skipped) implementation of one case.

    Attributes:
        case: the problem instance, e.g. ``"n=256"``; rows of a case are compared with each other.
        implementation: who solved it, e.g. ``"coreopt (cayley)"`` or ``"geotorch (expm)"``.
        metrics: column key -> value (missing keys render as ``—``).
        note: free text shown in the last column (a skip reason, a caveat).
    """

    case: str
    implementation: str
    metrics: Mapping[str, Any]
    note: str = ""


class BenchTable:
    """Rows of (case, implementation, metrics) as one markdown table, anchors beside coreopt.

    In each case the *reference* row (the first whose implementation name starts with
    ``reference``, by default ``"coreopt"``) is listed first, followed by the other rows in the
    order they were added. Every non-reference row gets a **speedup** cell
    ``row[time_key] / reference[time_key]``: the anchor's time divided by coreopt's, so ``> 1``
    means coreopt is faster. The reference row shows ``ref``; further coreopt rows and rows
    without a time show ``—``.

    Args:
        title: the table's title (rendered as a ``###`` heading).
        columns: the metric columns, in display order.
        time_key: the column holding the time that the speedup compares (smaller is better).
        reference: prefix of the implementation name of the reference rows.
        ratio_after: key of the column after which the speedup column is placed
            (default: ``time_key``).
        ratio_header: the speedup column's title.
        description: a paragraph printed between the title and the table.

    Examples:
        >>> t = BenchTable("demo", [Column("ms", "ms", "{:.1f}")], time_key="ms")
        >>> t.add("n=8", "torch", ms=3.0)
        >>> t.add("n=8", "coreopt", ms=1.5)
        >>> print(t.to_markdown(title=False, footnote=False))
        | case | implementation | ms | speedup (anchor ÷ coreopt) |
        | :--- | :--- | ---: | ---: |
        | n=8 | coreopt | 1.5 | ref |
        | n=8 | torch | 3.0 | 2.00× |
    """

    def __init__(
        self,
        title: str,
        columns: Sequence[Column],
        *,
        time_key: str,
        reference: str = "coreopt",
        ratio_after: str | None = None,
        ratio_header: str = "speedup (anchor ÷ coreopt)",
        description: str = "",
    ) -> None:
        keys = [c.key for c in columns]
        if len(set(keys)) != len(keys):
            raise ValueError(f"column keys must be unique, got {keys}")
        if time_key not in keys:
            raise ValueError(f"time_key={time_key!r} is not one of the column keys {keys}")
        ratio_after = time_key if ratio_after is None else ratio_after
        if ratio_after not in keys:
            raise ValueError(f"ratio_after={ratio_after!r} is not one of the column keys {keys}")
        if not reference:
            raise ValueError("reference must be a non-empty implementation-name prefix")
        self.title = title
        self.columns: list[Column] = list(columns)
        self.time_key = time_key
        self.reference = reference
        self.ratio_after = ratio_after
        self.ratio_header = ratio_header
        self.description = description
        self.rows: list[Row] = []

    def add(self, case: str, implementation: str, *, note: str = "", **metrics: Any) -> None:
        """Add a row; ``metrics`` are keyed by :attr:`Column.key` (unknown keys raise)."""
        unknown = set(metrics) - {c.key for c in self.columns}
        if unknown:
            raise ValueError(
                f"unknown metric(s) {sorted(unknown)}; the columns are "
                f"{[c.key for c in self.columns]}"
            )
        self.rows.append(Row(case, implementation, dict(metrics), note))

    def skip(self, case: str, implementation: str, reason: str) -> None:
        """Add a row for an implementation that could not run here, with the reason as its note."""
        self.add(case, implementation, note=f"skipped: {reason}")

    def is_reference(self, row: Row) -> bool:
        """Whether ``row`` belongs to coreopt (its implementation starts with ``reference``)."""
        return row.implementation.startswith(self.reference)

    def cases(self) -> list[str]:
        """The cases, in the order they first appeared."""
        return list(dict.fromkeys(r.case for r in self.rows))

    def ordered_rows(self) -> list[Row]:
        """Rows grouped by case: within a case the reference rows first, then the anchors."""
        out: list[Row] = []
        for case in self.cases():
            in_case = [r for r in self.rows if r.case == case]
            out += [r for r in in_case if self.is_reference(r)]
            out += [r for r in in_case if not self.is_reference(r)]
        return out

    def reference_row(self, case: str) -> Row | None:
        """The row the speedups of ``case`` are measured against (``None`` if coreopt is absent)."""
        return next((r for r in self.rows if r.case == case and self.is_reference(r)), None)

    def ratio(self, row: Row) -> float | None:
        """``row``'s time ÷ the reference time of its case; ``None`` when undefined.

        Undefined for reference rows, and when either time is missing, non-finite or not positive.
        """
        if self.is_reference(row):
            return None
        ref = self.reference_row(row.case)
        if ref is None:
            return None
        num, den = row.metrics.get(self.time_key), ref.metrics.get(self.time_key)
        if not (_positive_finite(num) and _positive_finite(den)):
            return None
        return float(num) / float(den)

    def _ratio_cell(self, row: Row) -> str:
        if row is self.reference_row(row.case):
            return "ref"
        ratio = self.ratio(row)
        return MISSING if ratio is None else f"{ratio:.2f}×"

    def to_markdown(self, *, title: bool = True, footnote: bool = True) -> str:
        """The table as GitHub-flavoured markdown (title, description, table, footnote)."""
        with_notes = any(r.note for r in self.rows)
        headers = ["case", "implementation"]
        aligns = [":---", ":---"]
        for col in self.columns:
            headers.append(col.header)
            aligns.append("---:" if col.numeric else ":---")
            if col.key == self.ratio_after:
                headers.append(self.ratio_header)
                aligns.append("---:")
        if with_notes:
            headers.append("note")
            aligns.append(":---")

        lines = [_md_row(headers), _md_row(aligns)]
        for row in self.ordered_rows():
            cells = [row.case, row.implementation]
            for col in self.columns:
                cells.append(col.render(row.metrics.get(col.key)))
                if col.key == self.ratio_after:
                    cells.append(self._ratio_cell(row))
            if with_notes:
                cells.append(row.note)
            lines.append(_md_row(cells))

        parts: list[str] = []
        if title:
            parts.append(f"### {self.title}")
        if self.description:
            parts.append(self.description)
        parts.append("\n".join(lines))
        if footnote:
            time_header = next(c.header for c in self.columns if c.key == self.time_key)
            parts.append(
                f"Speedup = anchor {time_header} ÷ coreopt {time_header} in the same case "
                f"(> 1: coreopt is faster; `ref` marks the coreopt row it is measured against)."
            )
        return "\n\n".join(parts)

    def __str__(self) -> str:
        return self.to_markdown()


def _positive_finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def _md_cell(text: Any) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip()


def _md_row(cells: Iterable[Any]) -> str:
    return "| " + " | ".join(_md_cell(c) for c in cells) + " |"


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name (from ``/proc/cpuinfo`` on Linux, else :mod:`platform`)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_description(device: torch.device) -> str:
    """A short human description of ``device``: GPU name, or CPU model, cores and torch threads."""
    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    if device.type == "cpu":
        return (
            f"CPU {cpu_model()} ({os.cpu_count()} logical cores, "
            f"{torch.get_num_threads()} torch threads)"
        )
    return str(device)


def git_revision() -> str:
    """Short commit of the repository, with a mark when ``src/`` has uncommitted changes."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown commit"
    return f"{sha} + uncommitted src changes" if dirty else sha


def environment_line(device: torch.device) -> str:
    """One line naming the device, the torch/coreopt/Python versions, the commit and the date."""
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (
        f"Device: {device_description(device)} · torch {torch.__version__} · "
        f"coreopt {coreopt.__version__} ({git_revision()}) · Python {platform.python_version()} "
        f"· {platform.system()} {platform.machine()} · {now}"
    )


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that ran this script, as a user would type it from the repository root."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve() if argv else Path("?")
    try:
        shown = str(script.relative_to(REPO_ROOT))
    except ValueError:
        shown = str(script)
    return shlex.join(["python", shown, *argv[1:]])


# --------------------------------------------------------------------------------------------
# Command line, printing and recording
# --------------------------------------------------------------------------------------------


def bench_parser(
    description: str | None = None, *, threads: bool = False
) -> argparse.ArgumentParser:
    """The argument parser every benchmark script shares; scripts may add their own options.

    Options: ``--device`` (default ``auto``: CUDA when present, see
    :func:`coreopt.resolve_device`), ``--quick`` (tiny sizes: a smoke test, not a measurement),
    ``--record`` (append the tables to ``--results``), ``--results PATH``, ``--repeats N`` and
    ``--warmup N`` (override the script's defaults).

    Args:
        description: the ``--help`` text (a script passes its module docstring).
        threads: also offer ``--threads N`` (``torch.set_num_threads``, applied by
            :func:`parse_args`; the environment line reports the count in effect). On a small
            shared CPU machine one thread gives far steadier timings than several.
    """
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="cpu, cuda, cuda:N or auto (CUDA when available; default: %(default)s)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes and one repeat: a smoke test only"
    )
    parser.add_argument(
        "--record",
        action="store_true",
        help="append the tables to the results file (default: only print them)",
    )
    parser.add_argument(
        "--results",
        default=DEFAULT_RESULTS,
        help="file --record appends to, relative to the repository root (default: %(default)s)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement")
    parser.add_argument("--warmup", type=int, default=None, help="untimed warmup runs")
    if threads:
        parser.add_argument(
            "--threads",
            type=int,
            default=None,
            help="torch.set_num_threads(N) for the CPU (default: torch's choice)",
        )
    return parser


def parse_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """Parse ``argv``, resolve ``--device`` to a :class:`torch.device`, apply ``--threads``.

    Raises:
        SystemExit: bad options, an unavailable device, or ``--record`` with ``--quick`` (smoke-test
            numbers are not results).
    """
    args = parser.parse_args(argv)
    if args.record and args.quick:
        parser.error("--record with --quick would record smoke-test sizes; drop one of them")
    for name, least in (("repeats", 1), ("warmup", 0), ("threads", 1)):
        value = getattr(args, name, None)
        if value is not None and value < least:
            parser.error(f"--{name} must be >= {least}")
    if getattr(args, "threads", None) is not None:
        torch.set_num_threads(args.threads)
    try:
        args.device = resolve_device(args.device)
    except ValueError as exc:  # DeviceError subclasses ValueError
        parser.error(str(exc))
    return args


def render_section(
    tables: Sequence[BenchTable], *, device: torch.device, command: str | None = None
) -> str:
    """The environment line, the command and every table, as one markdown block."""
    parts = [f"_{environment_line(device)}_"]
    parts.append(f"Command: `{command or command_line()}`")
    parts += [t.to_markdown() for t in tables]
    return "\n\n".join(parts) + "\n"


def record(
    tables: BenchTable | Sequence[BenchTable],
    path: str | os.PathLike[str] = DEFAULT_RESULTS,
    *,
    title: str,
    device: torch.device,
    command: str | None = None,
) -> Path:
    """Append ``tables`` to the results file under a ``##`` heading naming ``title`` and the device.

    The file is created with :data:`RESULTS_HEADER` when missing. A relative ``path`` is taken from
    the repository root. Scripts call this through :func:`report`, which does so only when run
    with ``--record``.

    Returns:
        The path written.
    """
    tables = [tables] if isinstance(tables, BenchTable) else list(tables)
    target = Path(path)
    if not target.is_absolute():
        target = REPO_ROOT / target
    where = "GPU" if device.type == "cuda" else device.type.upper()
    heading = f"## {title} — {where}: {_short_device(device)}"
    body = render_section(tables, device=device, command=command)
    target.parent.mkdir(parents=True, exist_ok=True)
    new = not target.exists() or target.stat().st_size == 0
    with open(target, "a", encoding="utf-8") as fh:
        if new:
            fh.write(RESULTS_HEADER)
        fh.write(f"\n{heading}\n\n{body}")
    return target


def _short_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"{cpu_model()}, {os.cpu_count()} logical cores"
    return str(device)


def report(
    tables: Sequence[BenchTable],
    args: argparse.Namespace,
    *,
    title: str,
) -> str:
    """Print the tables (with the environment header); append them to the results if ``--record``.

    Args:
        tables: the script's tables, in display order.
        args: the namespace from :func:`parse_args` (uses ``device``, ``record``, ``results``).
        title: the section heading used in the results file, e.g. ``"objective: Procrustes"``.

    Returns:
        The printed markdown.
    """
    text = f"## {title}\n\n" + render_section(tables, device=args.device)
    print(text, flush=True)
    if args.record:
        written = record(tables, args.results, title=title, device=args.device)
        print(f"(appended to {written})", flush=True)
    return text
