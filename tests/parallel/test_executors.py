import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from coreopt.parallel import get_executor, parallel_map


def test_results_come_back_in_input_order_despite_completion_order() -> None:
    def slow_for_small(x: int) -> int:
        time.sleep(0.02 * (5 - x))  # item 0 finishes last
        return x * x

    delivered: list[int] = []
    out = parallel_map(
        slow_for_small,
        range(5),
        max_workers=5,
        progress=False,
        on_result=lambda i, r: delivered.append(i),
    )
    assert out == [0, 1, 4, 9, 16]
    assert sorted(delivered) == [0, 1, 2, 3, 4]
    assert delivered[-1] == 0  # on_result fires in completion order


def test_calls_really_run_concurrently() -> None:
    barrier = threading.Barrier(4, timeout=5)

    def wait_for_all(x: int) -> int:
        barrier.wait()  # deadlocks (then times out) unless 4 calls run at once
        return x

    assert parallel_map(wait_for_all, range(4), max_workers=4, progress=False) == [0, 1, 2, 3]


def test_first_exception_propagates_and_finished_results_are_kept() -> None:
    kept: dict[int, int] = {}

    def f(x: int) -> int:
        if x == 3:
            time.sleep(0.05)
            raise KeyError("item 3 failed")
        return x

    with pytest.raises(KeyError, match="item 3 failed"):
        parallel_map(f, range(4), max_workers=4, progress=False, on_result=kept.__setitem__)
    assert kept == {0: 0, 1: 1, 2: 2}


def test_user_executor_is_used_and_not_shut_down() -> None:
    names: set[str] = set()
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="mine") as pool:
        parallel_map(
            lambda x: names.add(threading.current_thread().name),
            range(6),
            executor=pool,
            progress=False,
        )
        assert pool.submit(lambda: 7).result() == 7  # still usable
    assert names
    assert all(n.startswith("mine") for n in names)


def test_empty_input() -> None:
    assert parallel_map(lambda x: x, [], progress=False) == []


def test_bad_specs() -> None:
    with pytest.raises(ValueError, match="unknown"), get_executor("dask"):
        pass
    with pytest.raises(TypeError, match="Executor"), get_executor(42):  # type: ignore[arg-type]
        pass
    with pytest.raises(ValueError, match="max_workers"), get_executor(max_workers=0):
        pass


@pytest.mark.distributed
def test_ray_executor_runs_tasks_in_other_processes() -> None:
    ray = pytest.importorskip("ray")
    import os

    from coreopt.parallel import RayExecutor

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        offset = 10  # closures are shipped with cloudpickle

        def work(x: int) -> tuple[int, int]:
            return x + offset, os.getpid()

        with RayExecutor() as ex:
            out = parallel_map(work, range(6), executor=ex, progress=False)
        assert [v for v, _ in out] == list(range(10, 16))
        assert all(pid != os.getpid() for _, pid in out)
        with pytest.raises(RuntimeError, match="after shutdown"):
            ex.submit(work, 1)

        def fail(x: int) -> int:
            raise ValueError(f"bad {x}")

        with pytest.raises(ValueError, match="bad"):
            parallel_map(fail, [1], executor="ray", progress=False)
    finally:
        ray.shutdown()


def test_a_stray_ray_folder_is_not_taken_for_ray(tmp_path, monkeypatch) -> None:
    # What `import ray` gives when Ray is not installed and the working directory holds a `ray`
    # folder without __init__.py (e.g. Ray's temporary folder): an empty namespace package.
    import importlib.machinery
    import importlib.util
    import sys

    from coreopt.errors import BackendNotInstalledError

    (tmp_path / "ray").mkdir()
    spec = importlib.machinery.PathFinder.find_spec("ray", [str(tmp_path)])
    assert spec is not None
    assert spec.origin is None  # a namespace package
    stray = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "ray", stray)
    with pytest.raises(BackendNotInstalledError, match="coreopt\\[ray\\]") as info:
        parallel_map(lambda x: x, [1], executor="ray", progress=False)
    assert "namespace package" in str(info.value.__cause__)
    # Nothing importable at all: the same error.
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(BackendNotInstalledError), get_executor("ray"):
        pass
