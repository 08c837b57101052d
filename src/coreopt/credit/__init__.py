"""In-context credit assignment: pay the sources in an LLM's context by the least core.

``coreopt.credit.assign(query, sources)`` builds the game whose value of a coalition S is the
quality of the answer to ``query`` when only the sources in S are in context, solves its least core
with :func:`coreopt.least_core`, and returns per-source credit with the certificate. Paper: Harris,
Prasad, Trockman, *In-Context Credit Assignment via the Core*.
"""

from coreopt.credit.assign import (
    CreditItem,
    CreditResult,
    QueryCredit,
    assign,
    assign_items,
    load_items,
)

__all__ = [
    "CreditItem",
    "CreditResult",
    "QueryCredit",
    "assign",
    "assign_items",
    "load_items",
]
