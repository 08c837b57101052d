"""Smoke test of benchmarks/orthogonal.py: the --quick run prints both tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_run_prints_both_tables() -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/orthogonal.py", "--quick", "--threads", "1", "--no-compile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "### Orthogonal convolution, float32" in out
    assert "### Dense orthogonal 32×32, float32" in out
    assert "training-path max|σ − 1|" in out.replace("\\|", "|")
    assert "(torch.compile)" not in out
