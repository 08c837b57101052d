"""`import coreopt` stays light: no torch, cvxpy, transformers or ray, and no CUDA init."""

import subprocess
import sys

import pytest

HEAVY = ("torch", "cvxpy", "transformers", "ray", "scipy", "highspy", "networkx")


def run(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    ).stdout.strip()


def test_import_coreopt_imports_no_heavy_dependency() -> None:
    loaded = run(f"import sys, coreopt; print([m for m in {HEAVY!r} if m in sys.modules])")
    assert loaded == "[]"


def test_using_the_objective_layer_on_cpu_does_not_initialise_cuda() -> None:
    out = run(
        "import sys, torch, coreopt\n"
        "coreopt.minimize(lambda x: (x ** 2).sum(), torch.ones(2), steps=3, progress=False)\n"
        "coreopt.resolve_device('cpu')\n"
        "print(torch.cuda.is_initialized(), 'cvxpy' in sys.modules)"
    )
    assert out == "False False"


def test_lazy_attributes_resolve_and_unknown_ones_raise() -> None:
    import coreopt

    assert callable(coreopt.minimize)
    assert coreopt.Status.CONVERGED.value == "converged"
    assert "minimize" in dir(coreopt)
    with pytest.raises(AttributeError, match="no_such_thing"):
        coreopt.no_such_thing  # noqa: B018


def test_every_subpackage_is_a_lazy_attribute() -> None:
    out = run(
        "import sys, coreopt\n"
        "names = ['quant', 'llm', 'credit', 'game', 'init', 'sampling', 'manifold', 'parallel']\n"
        "print([n for n in names if getattr(coreopt, n).__name__ != 'coreopt.' + n])"
    )
    assert out == "[]"
