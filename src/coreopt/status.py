"""The one status enum shared by every coreopt solver result."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """Why a solver stopped. A ``str`` enum, so it prints and serialises as its value.

    Examples:
        >>> from coreopt.status import Status
        >>> Status.CONVERGED == "converged"
        True
    """

    CONVERGED = "converged"
    """An optimality or early-stopping criterion was met."""
    ESTIMATED = "estimated"
    """A sampling-based stopping rule was met: the answer is an estimate, not certified
    (e.g. approximate least core: unseen coalitions were only probed)."""
    TARGET_REACHED = "target_reached"
    """The objective reached the user's target value."""
    MAX_ITERATIONS = "max_iterations"
    """The iteration (step) limit was reached before convergence."""
    BUDGET_EXHAUSTED = "budget_exhausted"
    """A call, token or time budget ran out; the result is partial but valid."""
    STOPPED_BY_CALLBACK = "stopped_by_callback"
    """A user callback asked to stop."""
    NON_FINITE = "non_finite"
    """The objective returned NaN or infinity; the best finite iterate is kept."""
