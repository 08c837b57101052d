"""Tests of benchmarks/_harness.py (tables, timing, recording) and a smoke run of a benchmark."""

from __future__ import annotations

import argparse
import importlib.util
import math
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import _harness  # noqa: E402
from _harness import BenchTable, Column, Timing  # noqa: E402


def _table_lines(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("|")]


def _cells(line: str) -> list[str]:
    # split on unescaped pipes
    inner = line.strip()[1:-1]
    cells, current, i = [], "", 0
    while i < len(inner):
        if inner[i] == "\\" and i + 1 < len(inner):
            current += inner[i : i + 2]
            i += 2
            continue
        if inner[i] == "|":
            cells.append(current.strip())
            current = ""
        else:
            current += inner[i]
        i += 1
    cells.append(current.strip())
    return cells


def _load_benchmark(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` under a private name (no clash with ``tests/<name>/``)."""
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH_DIR / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fake_table() -> BenchTable:
    table = BenchTable(
        "fake",
        [
            Column("ms", "ms/step", "{:.2f}"),
            Column("iqr", "IQR", "{:.2f}"),
            Column("err", "max|err|", "{:.1e}"),
        ],
        time_key="ms",
        ratio_after="iqr",
    )
    # Added in a scrambled order: the anchor first, cases interleaved.
    table.add("n=64", "torch (cayley)", ms=3.0, iqr=0.1, err=1e-6)
    table.add("n=64", "coreopt (cayley)", ms=1.5, iqr=0.2, err=2e-6)
    table.add("n=256", "coreopt (cayley)", ms=10.0, iqr=0.5, err=3e-6)
    table.add("n=64", "geotorch (expm)", ms=0.75, iqr=0.1, err=4e-6)
    table.add("n=256", "torch (cayley)", ms=25.0, iqr=1.0, err=5e-6)
    table.skip("n=256", "geotorch (expm)", "geotorch is not installed")
    return table


def test_ratio_is_anchor_time_over_coreopt_time(fake_table: BenchTable) -> None:
    by_key = {(r.case, r.implementation): r for r in fake_table.rows}
    assert fake_table.ratio(by_key["n=64", "torch (cayley)"]) == pytest.approx(2.0)
    assert fake_table.ratio(by_key["n=64", "geotorch (expm)"]) == pytest.approx(0.5)
    assert fake_table.ratio(by_key["n=256", "torch (cayley)"]) == pytest.approx(2.5)
    assert fake_table.ratio(by_key["n=64", "coreopt (cayley)"]) is None
    assert fake_table.ratio(by_key["n=256", "geotorch (expm)"]) is None  # skipped: no time


def test_markdown_is_well_formed(fake_table: BenchTable) -> None:
    md = fake_table.to_markdown()
    assert md.startswith("### fake")
    lines = _table_lines(md)
    header, separator, body = _cells(lines[0]), _cells(lines[1]), [_cells(x) for x in lines[2:]]
    assert header == [
        "case",
        "implementation",
        "ms/step",
        "IQR",
        "speedup (anchor ÷ coreopt)",
        "max\\|err\\|",
        "note",
    ]
    assert all(set(s) <= set(":-") and "---" in s for s in separator)
    assert len(separator) == len(header)
    assert len(body) == 6
    assert all(len(row) == len(header) for row in body)
    # Grouped by case in first-appearance order, coreopt first in each case.
    assert [(r[0], r[1]) for r in body] == [
        ("n=64", "coreopt (cayley)"),
        ("n=64", "torch (cayley)"),
        ("n=64", "geotorch (expm)"),
        ("n=256", "coreopt (cayley)"),
        ("n=256", "torch (cayley)"),
        ("n=256", "geotorch (expm)"),
    ]
    ratio = header.index("speedup (anchor ÷ coreopt)")
    assert [r[ratio] for r in body] == ["ref", "2.00×", "0.50×", "ref", "2.50×", "—"]
    assert body[1][2] == "3.00"
    assert body[5][2] == "—"
    assert body[5][-1] == "skipped: geotorch is not installed"
    assert "Speedup = anchor ms/step ÷ coreopt ms/step" in md


def test_no_note_column_without_notes() -> None:
    table = BenchTable("t", [Column("s", "s")], time_key="s")
    table.add("a", "coreopt", s=1.0)
    table.add("a", "other", s=4.0)
    header = _cells(_table_lines(table.to_markdown())[0])
    assert header == ["case", "implementation", "s", "speedup (anchor ÷ coreopt)"]


def test_case_without_coreopt_has_no_ratio() -> None:
    table = BenchTable("t", [Column("s", "s")], time_key="s")
    table.add("a", "torch", s=1.0)
    (row,) = table.rows
    assert table.ratio(row) is None
    assert _cells(_table_lines(table.to_markdown())[2])[-1] == "—"


def test_bad_table_definitions_raise() -> None:
    with pytest.raises(ValueError, match="time_key"):
        BenchTable("t", [Column("s", "s")], time_key="ms")
    with pytest.raises(ValueError, match="unique"):
        BenchTable("t", [Column("s", "s"), Column("s", "t")], time_key="s")
    table = BenchTable("t", [Column("s", "s")], time_key="s")
    with pytest.raises(ValueError, match="unknown metric"):
        table.add("a", "coreopt", ms=1.0)


def test_timing_statistics() -> None:
    t = Timing((1.0, 2.0, 3.0, 4.0, 100.0))
    assert t.median == 3.0
    assert t.min == 1.0
    assert t.iqr == pytest.approx(2.0)
    assert Timing((5.0,)).iqr == 0.0
    with pytest.raises(ValueError, match="samples"):
        Timing(())


def test_time_callable_counts_runs() -> None:
    calls: list[int] = []
    t = _harness.time_callable(lambda: calls.append(1) or len(calls), warmup=2, repeats=3)
    assert len(calls) == 5
    assert len(t.samples) == 3
    assert t.result == 5


def test_time_interleaved_round_robin() -> None:
    order: list[str] = []
    out = _harness.time_interleaved(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, warmup=1, repeats=2
    )
    assert order == ["a", "b", "a", "b", "a", "b"]
    assert set(out) == {"a", "b"}
    assert all(len(t.samples) == 2 for t in out.values())


def test_time_interleaved_min_time_gives_cheap_callables_more_samples() -> None:
    out = _harness.time_interleaved(
        {"cheap": lambda: None, "slow": lambda: time.sleep(0.02)},
        warmup=0,
        repeats=2,
        min_time=0.05,
        max_repeats=50,
    )
    assert 3 <= len(out["slow"].samples) <= 4  # stops once its samples reach 0.05 s
    assert len(out["cheap"].samples) == 50  # never reaches 0.05 s: capped by max_repeats


def test_parse_args_defaults_and_quick_record_conflict() -> None:
    parser = _harness.bench_parser("x")
    args = parser.parse_args([])
    assert (args.device, args.quick, args.record) == ("auto", False, False)
    args = _harness.parse_args(_harness.bench_parser("x"), ["--device", "cpu", "--quick"])
    assert args.device == torch.device("cpu")
    with pytest.raises(SystemExit):
        _harness.parse_args(_harness.bench_parser("x"), ["--quick", "--record"])
    with pytest.raises(SystemExit):  # --threads is opt-in
        _harness.parse_args(_harness.bench_parser("x"), ["--threads", "1"])


def test_threads_option_sets_torch_threads() -> None:
    before = torch.get_num_threads()
    try:
        args = _harness.parse_args(_harness.bench_parser("x", threads=True), ["--threads", "1"])
        assert args.threads == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_environment_line_names_device_torch_and_date() -> None:
    line = _harness.environment_line(torch.device("cpu"))
    assert line.startswith("Device: CPU ")
    assert f"torch {torch.__version__}" in line
    assert any(ch.isdigit() for ch in line.rsplit("·", 1)[-1])


def test_report_records_only_when_asked(
    fake_table: BenchTable, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "RESULTS.md"
    args = argparse.Namespace(device=torch.device("cpu"), record=False, results=str(results))
    _harness.report([fake_table], args, title="area: fake")
    assert not results.exists()
    assert "| n=64 | torch (cayley) |" in capsys.readouterr().out

    args.record = True
    _harness.report([fake_table], args, title="area: fake")
    _harness.report([fake_table], args, title="area: fake")
    text = results.read_text(encoding="utf-8")
    assert text.startswith("# Benchmark results")
    assert text.count("# Benchmark results") == 1
    assert text.count("## area: fake — CPU: ") == 2
    assert text.count("### fake") == 2
    assert "Command: `python " in text


@pytest.mark.slow
def test_objective_benchmark_quick_smoke() -> None:
    script = BENCH_DIR / "objective.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=BENCH_DIR.parent,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    rows = [_cells(line) for line in _table_lines(out)]
    implementations = {r[1] for r in rows if len(r) > 1}
    for name in _load_benchmark("objective").IMPLEMENTATIONS:
        assert name in implementations, f"{name} missing from:\n{out}"
    assert "torch (`import torch`)" in implementations
    assert "coreopt (`import coreopt`)" in implementations
    # import coreopt must not load torch.
    (coreopt_import,) = [r for r in rows if r[1] == "coreopt (`import coreopt`)"]
    assert coreopt_import[-1] == "no"
    assert "Device: CPU" in out
    assert "appended to" not in out


@pytest.mark.slow
def test_sampling_benchmark_quick_smoke_checks_its_numbers() -> None:
    pytest.importorskip("transformers")
    script = BENCH_DIR / "sampling.py"
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            "--quick",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--batches",
            "2",
            "--new-tokens",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=BENCH_DIR.parent,
    )
    assert proc.returncode == 0, proc.stderr
    lines = _table_lines(proc.stdout)
    header = _cells(lines[0])
    rows = {r[1]: dict(zip(header, r, strict=True)) for r in map(_cells, lines[2:])}
    ms = {name: float(r["ms/token (median)"]) for name, r in rows.items()}
    assert all(math.isfinite(v) and v > 0 for v in ms.values()), ms
    plain = ms["coreopt plain sampling"]
    for name, r in rows.items():
        cell = r["× plain (time)"].rstrip("×")
        if cell not in ("ref", "—", ""):
            # the ratio column is the row's time over plain sampling's, as printed
            assert float(cell) == pytest.approx(ms[name] / plain, rel=0.02, abs=0.01), name
    key = "peak added memory MiB"
    mem = {n: float(r[key]) for n, r in rows.items() if r[key] not in ("", "—")}
    # two perturbed copies hold two more proxies; the doubled batch holds none
    assert mem["ADS, two perturbed proxy copies"] > mem["ADS, one proxy, doubled batch"]
