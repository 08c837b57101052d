"""Device and dtype resolution: CUDA when present, CPU otherwise, always overridable.

Nothing here runs at import time, so ``import coreopt`` never initialises CUDA.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch

from coreopt.errors import DeviceError

DEVICE_ENV_VAR = "COREOPT_DEVICE"
"""Environment variable that overrides the automatic device choice (e.g. ``cpu``, ``cuda:1``)."""

_DTYPE_ALIASES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float64": torch.float64,
    "fp64": torch.float64,
    "double": torch.float64,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Return the device coreopt should compute on.

    Resolution order: an explicit ``device`` argument; else the ``COREOPT_DEVICE`` environment
    variable; else ``cuda`` when a CUDA GPU is visible; else ``cpu``. ``"auto"`` means "choose as if
    nothing was given". An explicitly requested accelerator that is not present raises instead of
    silently falling back to the CPU.

    Args:
        device: ``None``/``"auto"``, a device string such as ``"cpu"``, ``"cuda"``, ``"cuda:1"``,
            ``"mps"``, or a :class:`torch.device`.

    Returns:
        A :class:`torch.device`; for CUDA it carries an explicit index.

    Raises:
        DeviceError: the string is not a device, or the device is not available here.

    Examples:
        >>> import coreopt
        >>> coreopt.resolve_device("cpu")
        device(type='cpu')
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        env = os.environ.get(DEVICE_ENV_VAR, "").strip()
        if env and env.lower() != "auto":
            return resolve_device(env)
        return torch.device("cuda", torch.cuda.current_device()) if _cuda_ok() else _cpu()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(
            f"device={device!r} is not a device; expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from exc
    if dev.type == "cuda":
        if not _cuda_ok():
            raise DeviceError(
                f"device={device!r} was requested but CUDA is not available on this machine "
                "(torch.cuda.is_available() is False); use device='cpu' or 'auto'"
            )
        index = torch.cuda.current_device() if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise DeviceError(
                f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
        return torch.device("cuda", index)
    if dev.type == "mps" and not (torch.backends.mps.is_available()):
        raise DeviceError(f"device={device!r} was requested but MPS is not available")
    return dev


def resolve_dtype(
    dtype: str | torch.dtype | None = None, device: torch.device | None = None
) -> torch.dtype:
    """Return a floating torch dtype from a dtype, an alias string, or ``None``.

    ``None`` gives ``float32`` (the safe default for optimization on every device). Aliases:
    ``float32/fp32``, ``float64/fp64/double``, ``float16/fp16/half``, ``bfloat16/bf16``.

    Args:
        dtype: the requested dtype or alias.
        device: if given and of type ``mps``, ``float64`` is rejected (MPS has no float64).

    Raises:
        TypeError: ``dtype`` is not floating point or not a known alias.
        DeviceError: the dtype is not supported on ``device``.
    """
    if dtype is None:
        out = torch.float32
    elif isinstance(dtype, torch.dtype):
        out = dtype
    elif isinstance(dtype, str) and dtype.strip().lower().removeprefix("torch.") in _DTYPE_ALIASES:
        out = _DTYPE_ALIASES[dtype.strip().lower().removeprefix("torch.")]
    else:
        raise TypeError(
            f"dtype={dtype!r} is not a floating dtype; expected one of "
            f"{sorted(_DTYPE_ALIASES)} or a torch floating dtype"
        )
    if not out.is_floating_point:
        raise TypeError(f"dtype={dtype!r} is not a floating-point dtype")
    if device is not None and device.type == "mps" and out == torch.float64:
        raise DeviceError("float64 is not supported on the 'mps' device")
    return out


def synchronize(device: torch.device | str | None) -> None:
    """Wait for queued kernels on ``device`` (a no-op on the CPU); use before reading a clock."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def init_linalg(devices: Iterable[torch.device | str | None]) -> None:
    """Initialise torch's CUDA linear-algebra backend on each CUDA device in ``devices``, in the
    calling thread (a no-op for other devices).

    PyTorch loads that backend lazily, on the first ``torch.linalg`` call; when several threads
    make their first call at once, all but one fail with ``RuntimeError: lazy wrapper should be
    called at most once`` (pytorch/pytorch#90613, still open; seen here with torch 2.11 on an
    H100). Call this before fanning CUDA work that factorises matrices out to threads.

    Examples:
        >>> import torch
        >>> init_linalg([torch.device("cpu"), None])  # nothing to do off CUDA
    """
    for dev in {torch.device(d) for d in devices if d is not None}:
        if dev.type == "cuda":
            eye = torch.eye(2, device=dev)
            torch.linalg.inv(eye)
            torch.linalg.cholesky(eye)


def _cuda_ok() -> bool:
    return torch.cuda.is_available()


def _cpu() -> torch.device:
    return torch.device("cpu")
