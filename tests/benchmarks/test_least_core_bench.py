"""Smoke test of benchmarks/least_core.py (coreopt alone: CI has no anchor environment)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
FAMILIES = ("coverage", "pairwise", "voting", "miner")


@pytest.mark.slow
def test_least_core_benchmark_quick_smoke() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH_DIR / "least_core.py"), "--quick", "--skip-anchors"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=BENCH_DIR.parent,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    for family in FAMILIES:
        assert any(row.startswith(f"| {family} n=") for row in rows), f"{family} missing:\n{out}"
    for title in (
        "### Summary: issue 3 targets",
        "### Exact least core from an explicit value table",
        "### Exact mode end to end",
        "### Approximate mode: budget 10% of 2^n value calls",
        "### Approximate mode alone at large n",
    ):
        assert title in out
    # The anchors were skipped, and their rows say so instead of showing numbers.
    assert "skipped: --skip-anchors" in out
    assert "coreopt least_core (approximate, budget 25)" in out
    assert "Device: CPU" in out
    assert "appended to" not in out
