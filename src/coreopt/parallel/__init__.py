"""Executors: in-process threads by default, Ray when asked, any ``concurrent.futures.Executor``."""

from coreopt.parallel.executors import (
    ExecutorSpec,
    RayExecutor,
    default_workers,
    get_executor,
    parallel_map,
)

__all__ = ["ExecutorSpec", "RayExecutor", "default_workers", "get_executor", "parallel_map"]
