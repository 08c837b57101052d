"""The solver's arithmetic on one BLAS thread, the value function on the caller's threads.

A multi-threaded BLAS splits a matrix product's sums by thread, so their last digits depend on how
many threads the machine gives it; approximate mode's decisions (the surrogate's ranking, which
coalitions to pay for next, which payoff to return) amplify those digits. Measured on a 2-core
machine: coverage n = 40 with 5,000 calls returned payoffs differing by up to 0.55 per player
(``epsilon`` 44.66 with two OpenBLAS threads, 44.59 with one); a glove game with 1,200 calls was
exact with one thread and 1.3% of ``v(N)`` off with two. So :func:`solver_threads` limits BLAS to
one thread while ``least_core`` computes, and :func:`caller_threads` gives the value function
back the limits the caller had, for each batch of calls: the same game, budget and seed give the
same payoff whatever the machine's core count or load. Our choice (the paper does not discuss
it); the limit is process-wide while the solver computes (not while it waits for values), uses
`threadpoolctl <https://github.com/joblib/threadpoolctl>`_, and leaves OpenMP pools alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

_CALLER: ContextVar[tuple[Any, dict[str, int]] | None] = ContextVar(
    "coreopt_caller_blas_threads", default=None
)


@contextmanager
def solver_threads() -> Iterator[None]:
    """Run the body with one BLAS thread; :func:`caller_threads` inside it restores the caller's
    limits. Nested uses keep the outermost caller's limits."""
    from threadpoolctl import ThreadpoolController

    ctl = ThreadpoolController()
    saved = {c.prefix: c.num_threads for c in ctl.lib_controllers if c.user_api == "blas"}
    token = _CALLER.set((ctl, saved))
    try:
        with ctl.limit(limits=1, user_api="blas"):
            yield
    finally:
        _CALLER.reset(token)


@contextmanager
def caller_threads() -> Iterator[None]:
    """Run the body (the value function's calls) with the BLAS limits the caller of
    :func:`solver_threads` had; a no-op outside it."""
    current = _CALLER.get()
    if current is None or not current[1]:
        yield
        return
    ctl, saved = current
    with ctl.limit(limits=saved):
        yield
