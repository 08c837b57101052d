"""The Sphinx documentation in ``docs/`` builds offline without a single warning."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path: Path) -> None:
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_parser")
    out = tmp_path / "html"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            "-d",
            str(tmp_path / "doctrees"),
            str(DOCS),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"sphinx-build failed:\n{proc.stdout}\n{proc.stderr}"
    assert (out / "index.html").is_file()
    assert (out / "api.html").is_file()


def _python_blocks(page: Path) -> list[str]:
    """The ```` ```python ```` fences of a markdown page (other fences are not executed)."""
    return re.findall(r"^```python\n(.*?)^```$", page.read_text(encoding="utf-8"), re.S | re.M)


@pytest.mark.slow
@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_docs_examples_run(page: Path) -> None:
    """Every ```` ```python ```` block in the docs runs and its assertions hold.

    Each block is self-contained (its own imports). Blocks that need a cluster or undefined names
    use ```` ```{code-block} python ```` instead and are not executed.
    """
    torch = pytest.importorskip("torch")
    blocks = _python_blocks(page)
    for i, source in enumerate(blocks):
        with torch.random.fork_rng():
            exec(compile(source, f"{page.name}[python block {i}]", "exec"), {"__name__": "__doc__"})
