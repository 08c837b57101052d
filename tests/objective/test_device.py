import pytest
import torch

from coreopt.errors import DeviceError
from coreopt.objective import DEVICE_ENV_VAR, resolve_device, resolve_dtype


def test_auto_picks_cuda_when_available_else_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DEVICE_ENV_VAR, raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device().type == expected
    assert resolve_device("auto").type == expected


def test_env_var_overrides_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DEVICE_ENV_VAR, "cpu")
    assert resolve_device() == torch.device("cpu")
    # an explicit argument beats the environment
    monkeypatch.setenv(DEVICE_ENV_VAR, "bogus")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="bogus"):
        resolve_device()


def test_explicit_cpu_and_torch_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_unknown_device_string_is_a_clear_error() -> None:
    with pytest.raises(DeviceError, match="not a device"):
        resolve_device("gpu0")
    assert issubclass(DeviceError, ValueError)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error path")
def test_requesting_missing_cuda_raises_instead_of_falling_back() -> None:
    with pytest.raises(DeviceError, match="CUDA is not available"):
        resolve_device("cuda")


@pytest.mark.gpu
def test_cuda_gets_an_explicit_index() -> None:
    dev = resolve_device("cuda")
    assert dev.type == "cuda"
    assert dev.index is not None
    with pytest.raises(DeviceError, match="visible"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, torch.float32),
        ("fp32", torch.float32),
        ("float64", torch.float64),
        ("double", torch.float64),
        ("bf16", torch.bfloat16),
        ("torch.float16", torch.float16),
        (torch.float64, torch.float64),
    ],
)
def test_resolve_dtype_aliases(spec: object, expected: torch.dtype) -> None:
    assert resolve_dtype(spec) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["int8", "float128", torch.int64])
def test_resolve_dtype_rejects_non_floating(bad: object) -> None:
    with pytest.raises(TypeError, match="floating"):
        resolve_dtype(bad)  # type: ignore[arg-type]
