"""Shared fixtures: GPU tests are skipped without CUDA; `devices` lists what this machine has."""

from __future__ import annotations

import pytest
import torch
from hypothesis import settings

# Property tests draw the same examples on every run: CI must not depend on a lucky draw.
settings.register_profile("coreopt", derandomize=True, deadline=None)
settings.load_profile("coreopt")


def _available_devices() -> list[str]:
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=_available_devices())
def device(request: pytest.FixtureRequest) -> torch.device:
    """Every device of this machine (cpu, and cuda when present)."""
    return torch.device(request.param)
