"""Executors for fanning out expensive, independent calls (LLM value queries, per-layer work).

Every entry point accepts an ``executor`` argument:

* ``None`` or ``"threads"``: an in-process :class:`~concurrent.futures.ThreadPoolExecutor`
  (the default; right for I/O-bound calls such as LLM requests and for torch work, which releases
  the GIL).
* ``"ray"``: a :class:`RayExecutor` that runs each call as a Ray task (``pip install
  'coreopt[ray]'``); it connects to a running cluster or starts a local one.
* any :class:`concurrent.futures.Executor` you built yourself (process pools, dask, ...). coreopt
  never shuts down an executor it did not create.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from typing import Any, TypeVar

from tqdm.auto import tqdm

from coreopt.errors import BackendNotInstalledError

T = TypeVar("T")
R = TypeVar("R")

ExecutorSpec = str | Executor | None
"""``None`` or ``"threads"`` (in-process threads), ``"ray"``, or a ready ``Executor``."""


def _import_ray() -> Any:
    """Import Ray, or raise :class:`BackendNotInstalledError` when it is not really installed.

    Detection is by importing it and checking what came back: a folder named ``ray`` without an
    ``__init__.py`` in the working directory (such as Ray's own temporary folder) imports as an
    empty namespace package when Ray is not installed, which ``find_spec`` reports as found.
    """
    try:
        import ray
    except ImportError as exc:
        raise BackendNotInstalledError("ray", "ray") from exc
    if getattr(ray, "__file__", None) is None or not hasattr(ray, "remote"):
        locations = list(getattr(ray, "__path__", []))
        raise BackendNotInstalledError("ray", "ray") from ImportError(
            f"'import ray' found a namespace package at {locations} (a stray 'ray' folder), "
            "not the Ray library"
        )
    return ray


class RayExecutor(Executor):
    """A :class:`concurrent.futures.Executor` whose calls run as Ray tasks.

    Args:
        num_cpus_per_task: CPUs reserved by each task (Ray's ``num_cpus``).
        num_gpus_per_task: GPUs reserved by each task (fractions allowed, e.g. ``0.25``).
        address: cluster to connect to (``"auto"`` for a running one); ``None`` starts or reuses a
            local instance. Ignored when Ray is already initialised.
        **init_kwargs: passed to ``ray.init`` when this executor initialises Ray
            (e.g. ``num_cpus=2`` for a local cluster).

    Functions and arguments are shipped with Ray's serializer (cloudpickle), so closures work.
    ``shutdown()`` cancels pending tasks it submitted; it does not stop the Ray cluster (call
    ``ray.shutdown()`` yourself) unless this executor started Ray.

    Examples:
        >>> from coreopt.parallel import RayExecutor  # doctest: +SKIP
        >>> with RayExecutor(num_cpus=2) as ex:  # doctest: +SKIP
        ...     assert ex.submit(pow, 2, 10).result() == 1024
    """

    def __init__(
        self,
        *,
        num_cpus_per_task: float = 1,
        num_gpus_per_task: float = 0,
        address: str | None = None,
        **init_kwargs: Any,
    ) -> None:
        ray = _import_ray()
        self._ray = ray
        self._started_ray = False
        if not ray.is_initialized():
            ray.init(address=address, ignore_reinit_error=True, **init_kwargs)
            self._started_ray = True
        self._remote = ray.remote(num_cpus=num_cpus_per_task, num_gpus=num_gpus_per_task)(_call)
        self._pending: list[Any] = []
        self._shutdown = False

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        """Run ``fn(*args, **kwargs)`` as a Ray task and return a future of its result.

        Raises:
            RuntimeError: the executor was shut down.
        """
        if self._shutdown:
            raise RuntimeError("cannot submit to a RayExecutor after shutdown()")
        ref = self._remote.remote(fn, *args, **kwargs)
        self._pending.append(ref)
        future: Future[R] = ref.future()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; cancel pending tasks (``cancel_futures``) or wait for them.

        Ray itself is shut down only if this executor started it.
        """
        self._shutdown = True
        if cancel_futures:
            for ref in self._pending:
                with contextlib.suppress(Exception):  # already finished: nothing to cancel
                    self._ray.cancel(ref)
        elif wait and self._pending:
            self._ray.wait(self._pending, num_returns=len(self._pending))
        self._pending.clear()
        if self._started_ray:
            self._ray.shutdown()
            self._started_ray = False


def _call(fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    return fn(*args, **kwargs)


def default_workers() -> int:
    """Default thread count: ``min(32, cpu_count + 4)`` as in the standard library."""
    return min(32, (os.cpu_count() or 1) + 4)


@contextmanager
def get_executor(
    executor: ExecutorSpec = None, *, max_workers: int | None = None
) -> Iterator[Executor]:
    """Resolve an executor specification; shut it down on exit only if it was created here.

    Args:
        executor: ``None``/``"threads"``, ``"ray"``, or a ready
            :class:`~concurrent.futures.Executor`.
        max_workers: thread count for ``"threads"`` (default :func:`default_workers`).

    Yields:
        The executor.

    Raises:
        ValueError: unknown name, or ``max_workers < 1``.
        TypeError: ``executor`` is neither a name nor an ``Executor``.
        BackendNotInstalledError: ``"ray"`` without Ray installed.
    """
    if max_workers is not None and max_workers < 1:
        raise ValueError(f"max_workers must be >= 1, got {max_workers}")
    if isinstance(executor, Executor):
        yield executor
        return
    if executor is None or executor == "threads":
        made: Executor = ThreadPoolExecutor(max_workers=max_workers or default_workers())
    elif executor == "ray":
        made = RayExecutor()
    elif isinstance(executor, str):
        raise ValueError(f"executor={executor!r} is unknown; use 'threads', 'ray' or an Executor")
    else:
        raise TypeError(
            f"executor must be None, 'threads', 'ray' or a concurrent.futures.Executor, "
            f"got {type(executor).__name__}"
        )
    try:
        yield made
    finally:
        made.shutdown(wait=True, cancel_futures=True)


def parallel_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    executor: ExecutorSpec = None,
    max_workers: int | None = None,
    progress: bool | None = None,
    desc: str | None = None,
    on_result: Callable[[int, R], None] | None = None,
) -> list[R]:
    """Apply ``fn`` to every item concurrently and return the results in input order.

    Results are handed to ``on_result(index, result)`` as soon as each finishes (in completion
    order), so a caller can persist them before a later failure. If any call raises, the
    not-yet-started calls are cancelled and the first exception is re-raised after the running ones
    finish; every result delivered to ``on_result`` before that stays delivered.

    Args:
        fn: the function; for ``"ray"`` it and the items must be picklable by cloudpickle.
        items: the inputs (materialised into a list).
        executor: see :func:`get_executor`.
        max_workers: thread count for the default executor.
        progress: tqdm bar; ``None`` shows it only on a terminal or notebook.
        desc: label of the bar.
        on_result: callback called in the calling thread for each finished item.

    Returns:
        ``[fn(item) for item in items]``, computed concurrently.

    Examples:
        >>> from coreopt.parallel import parallel_map
        >>> parallel_map(lambda x: x * x, range(5), progress=False)
        [0, 1, 4, 9, 16]
    """
    work = list(items)
    results: list[Any] = [None] * len(work)
    if not work:
        return []
    with get_executor(executor, max_workers=max_workers) as ex:
        futures = {ex.submit(fn, item): i for i, item in enumerate(work)}
        bar = tqdm(total=len(work), desc=desc, disable=None if progress is None else not progress)
        try:
            for fut in as_completed(futures):
                i = futures[fut]
                results[i] = fut.result()  # raises the call's own exception
                if on_result is not None:
                    on_result(i, results[i])
                bar.update(1)
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
        finally:
            bar.close()
    return results
