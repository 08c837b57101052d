"""Tests of benchmarks/init.py: learning-curve bookkeeping, tables, figures and a --quick run."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))


def _load() -> ModuleType:
    """Import ``benchmarks/init.py`` under a private name (no clash with ``coreopt.init``)."""
    spec = importlib.util.spec_from_file_location("_bench_init", BENCH_DIR / "init.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


bench = _load()


def test_eval_points_include_start_and_end() -> None:
    assert bench.eval_points(10, 4) == [0, 4, 8, 10]
    assert bench.eval_points(8, 4) == [0, 4, 8]
    assert bench.eval_points(3, 10) == [0, 3]
    with pytest.raises(ValueError, match=">= 1"):
        bench.eval_points(0, 1)


def test_run_curve_records_interval_means_and_evaluates_before_steps() -> None:
    calls: list[str] = []
    losses = iter([1.0, 3.0, 5.0, 7.0, 9.0])

    def step() -> float:
        calls.append("s")
        return next(losses)

    def evaluate() -> float:
        calls.append("e")
        return float(calls.count("s"))  # "accuracy" = steps taken so far

    curve = bench.run_curve(step, evaluate, steps=5, every=2)
    assert curve.steps == [0, 2, 4, 5]
    assert curve.test_acc == [0.0, 2.0, 4.0, 5.0]  # evaluated after exactly that many steps
    assert math.isnan(curve.train_loss[0])
    assert curve.train_loss[1:] == [2.0, 6.0, 9.0]  # mean loss of steps (0,2], (2,4], (4,5]
    assert "".join(calls) == "essessese"
    assert curve.final_acc == 5.0
    assert curve.final_loss == 9.0
    assert curve.seconds >= 0.0


def _curve(accs: list[float], losses: list[float]) -> object:
    return bench.Curve(steps=[0, 5, 10], test_acc=accs, train_loss=losses, seconds=1.0)


@pytest.fixture
def fake_curves() -> dict:
    nan = math.nan
    return {
        "toy, 10 steps": {
            "coreopt recipe": [
                _curve([10.0, 60.0, 90.0], [nan, 1.0, 0.5]),
                _curve([10.0, 70.0, 94.0], [nan, 0.8, 0.3]),
            ],
            "default": [
                _curve([10.0, 20.0, 50.0], [nan, 2.0, 1.5]),
                _curve([10.0, 30.0, 60.0], [nan, 2.2, 1.3]),
            ],
        }
    }


def test_summarize_mean_and_std_over_seeds(fake_curves: dict) -> None:
    means, stds = bench.summarize(fake_curves["toy, 10 steps"]["coreopt recipe"], "test_acc")
    assert means == pytest.approx([10.0, 65.0, 92.0])
    assert stds == pytest.approx([0.0, math.sqrt(50.0), math.sqrt(8.0)])
    mismatched = [_curve([1.0, 2.0, 3.0], [0.0] * 3), bench.Curve([0, 5], [1.0, 2.0], [0.0] * 2)]
    with pytest.raises(ValueError, match="share"):
        bench.summarize(mismatched, "test_acc")


def test_tables_report_final_accuracy_and_the_curve(fake_curves: dict) -> None:
    final = bench.final_table("toy", fake_curves, (0, 1)).to_markdown()
    assert (
        "| toy, 10 steps | coreopt recipe | 92.0 | 2.8 | 90.0 / 94.0 | 0.400 | 1.0 | ref |" in final
    )
    assert "| toy, 10 steps | default | 55.0 | 7.1 | 50.0 / 60.0 | 1.400 | 1.0 | 1.00× |" in final
    curve = bench.curve_table("toy", fake_curves).to_markdown()
    assert "| step 0 | step 5 | step 10 |" in curve
    assert "| toy, 10 steps | coreopt recipe | 10.0 | 65.0 | 92.0 |" in curve
    assert bench.curve_checkpoints(list(range(0, 401, 25))) == [0, 75, 125, 200, 275, 325, 400]


def test_plot_writes_a_figure_from_json_data(fake_curves: dict, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    data = json.loads(json.dumps(bench.curves_json("toy", "Toy", fake_curves, (0, 1), "CPU")))
    assert data["subcases"]["toy, 10 steps"]["default"]["train_loss"][0][0] is None
    path = bench.plot_curves(data, tmp_path / "init_curves_toy.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_loss_band_is_geometric_and_stays_positive() -> None:
    vals = torch.tensor([[1.0, 0.01], [100.0, 0.0001]], dtype=torch.float64)
    mid, lo, hi = bench._band(vals, log=True)
    assert mid.tolist() == pytest.approx([10.0, 0.001])
    assert bool((lo > 0).all())
    assert (hi / mid).tolist() == pytest.approx((mid / lo).tolist())
    mid, lo, hi = bench._band(vals, log=False)
    assert mid.tolist() == pytest.approx([50.5, 0.00505])
    assert float(lo[0]) < 0  # the plain ± std band would cross zero on a log axis


@pytest.fixture
def restore_threads() -> Iterator[None]:
    """``--threads`` sets torch's process-wide thread count: put it back afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("restore_threads")
def test_quick_run_prints_tables_and_draws_curves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--quick`` on the cheapest case, in process: tables, a figure and its JSON data."""
    pytest.importorskip("matplotlib")
    bench.main(
        ["--quick", "--threads", "1", "--cases", "ssm", "--plot", "--plot-dir", str(tmp_path)]
    )
    out = capsys.readouterr().out
    assert "### Mimetic SSM init: Mamba-2-style model on MQAR" in out
    assert "learning curve" in out
    assert "| coreopt mimetic SSM |" in out
    assert "Device: CPU" in out or "Device: GPU" in out
    assert "appended to" not in out
    assert (tmp_path / "init_curves_ssm.png").is_file()
    data = json.loads((tmp_path / "init_curves_ssm.json").read_text())
    runs = data["subcases"][next(iter(data["subcases"]))]["coreopt mimetic SSM"]
    assert len(runs["test_acc"]) == len(bench.QUICK_SEEDS)
    assert runs["steps"][0] == 0
    assert runs["steps"][-1] == bench.QUICK_STEPS
    # --replot redraws the figure from the saved data alone
    (tmp_path / "init_curves_ssm.png").unlink()
    bench.main(["--replot", "--cases", "ssm", "--plot-dir", str(tmp_path)])
    assert (tmp_path / "init_curves_ssm.png").is_file()


def test_record_with_quick_is_refused() -> None:
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--record", "--cases", "ssm"])


@pytest.mark.slow
def test_quick_smoke_all_cases(tmp_path: Path) -> None:
    """Every case in ``--quick`` mode, as a user runs it (a separate process)."""
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH_DIR / "init.py"),
            "--quick",
            "--threads",
            "1",  # two torch threads on tiny models are up to 15x slower on a busy 2-core CI box
            "--plot",
            "--plot-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=BENCH_DIR.parent,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    for key, (_, title) in bench.CASES.items():
        assert f"### {title}" in proc.stdout
        assert (tmp_path / f"init_curves_{key}.png").is_file()
        assert (tmp_path / f"init_curves_{key}.json").is_file()
