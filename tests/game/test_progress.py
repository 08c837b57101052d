"""The approximate solver's progress bar: it counts every call paid for, phases named."""

from __future__ import annotations

import re

import pytest

import coreopt
from coreopt.game import games


def test_progress_bar_counts_the_calls_paid_while_the_payoff_is_chosen(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # the judge's probes (a twentieth of the budget) and the audit (100 calls) are paid after the
    # search; the bar used to stop at the search's share of the budget and close before them,
    # leaving minutes of LLM calls unreported
    n, budget = 30, 600
    res = coreopt.least_core(
        games.glove(12, 18), n, budget=budget, mode="approximate", progress=True
    )
    err = capsys.readouterr().err
    counts = [(int(a), int(b)) for a, b in re.findall(r"(\d+)/(\d+) \[", err)]
    assert counts, err
    assert counts[-1] == (res.value_calls, budget)
    assert res.value_calls > budget - 100  # the audit's and the judge's calls were paid
    assert "auditing the payoff" in err
    assert "choosing the payoff" in err
