"""The shortcuts that make ``coreopt.quantize`` fast, each against the slow path it replaces: the
screen of the byte budget's transform options against pricing every option in full, the knee of
the dual transforms against the full run, the threads of the fan-out."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

import pytest
import torch
from torch import nn

import coreopt
from coreopt.quant import QuantizeConfig

QUANTIZE = sys.modules["coreopt.quant.quantize"]
SCREEN_STEPS = [max(1, int(frac * 100)) for frac, _ in QUANTIZE.SCREEN]


class _Outliers(nn.Module):
    """Wide layers with a few large input columns, for which the byte budget buys transforms
    (they spread the outliers), and a narrow plain one, for which no transform pays."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList([*(nn.Linear(64, 1024) for _ in range(3)), nn.Linear(64, 512)])
        with torch.no_grad():
            for i, m in enumerate(self.layers[:3]):
                m.weight[:, : 2 + i] *= 12


def test_budget_screen_keeps_every_transform_the_full_pricing_chooses(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # the screen stops learning transforms that cannot win; what it lets through is priced as
    # before, so the chosen formats, transforms and stored weights are those of full pricing
    kw = {
        "bits_per_weight": 3.5,
        "prior": "identity",
        "dual": False,
        "steps": 20,
        "progress": False,
        "block_options": (16, 32),
    }

    def run() -> tuple[list[tuple[int, int, int]], list[torch.Tensor]]:
        net = _Outliers()
        coreopt.quantize(net, **kw)
        rep = net.quantization_report
        return (
            [(r.bits, r.group_size, r.transform_block) for r in rep.layers],
            [m.effective_weight() for m in net.layers],
        )

    with caplog.at_level(logging.DEBUG, logger="coreopt.quant"):
        picks, weights = run()
    screened = [r for r in caplog.records if "screened out" in r.getMessage()]
    priced = [r for r in caplog.records if "transform priced" in r.getMessage()]
    assert screened, "the screen stopped nothing: the test no longer exercises it"
    assert priced
    assert any(block for _, _, block in picks)  # some transform is bought
    monkeypatch.setattr(QUANTIZE, "SCREEN", ())
    full_picks, full_weights = run()
    assert picks == full_picks
    for a, b in zip(weights, full_weights, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_budget_screen_stops_a_hopeless_transform_after_three_of_100_steps(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # the narrow plain layer's 16 x 16 transform cannot pay for its blocks at 3.5 bits: its
    # estimated loss after 3 steps is about 4x the loss it would need, so the first check
    # (SCREEN[0]: 3 of 100 steps) stops it; the wide outlier layers' transforms run in full
    assert SCREEN_STEPS[0] == 3
    with caplog.at_level(logging.DEBUG, logger="coreopt.quant"):
        coreopt.quantize(
            _Outliers(),
            bits_per_weight=3.5,
            prior="identity",
            dual=False,
            steps=100,
            progress=False,
            block_options=(16,),
        )
    msgs = [r.getMessage() for r in caplog.records]
    screened = [m for m in msgs if "screened out" in m]
    assert screened
    assert all(m.startswith("layers.3:") for m in screened)
    assert all("at step 3;" in m for m in screened), screened  # stopped at the first check
    assert sum("transform priced" in m for m in msgs) == 3


@pytest.mark.parametrize(
    ("need", "stop_step"),
    [(0.3, 3), (0.5, 10), (0.65, 15), (0.72, 25), (0.8, 50), (0.9, None)],
)
def test_budget_screen_checks_at_the_documented_steps_and_factors(
    monkeypatch: pytest.MonkeyPatch, need: float, stop_step: int | None
) -> None:
    # the schedule as docs/quant.md states it: after 3, 10, 15, 25 and 50 of 100 steps a run
    # whose estimated loss L has 0.35 L, 0.6 L, 0.68 L, 0.75 L, 0.85 L >= the loss it needs
    # stops; here L = 1 at every step, so the stop step follows from `need` alone
    monkeypatch.setattr(QUANTIZE, "estimate_loss", lambda *a, **k: 1.0)
    cfg = QuantizeConfig(steps=100)
    screen = QUANTIZE._ScreenStop([(torch.zeros(4, 32), None, cfg.format)], cfg, need)
    stopped = next((s for s in range(100) if screen(s, torch.eye(4))), None)
    assert stopped == stop_step


def test_dual_knee_stops_where_the_loss_curve_flattens() -> None:
    # the knee rule against the full run's own loss curve: the stopped run is the full run cut at
    # the first step where the best loss fell by less than tol x itself over KNEE_WINDOW steps
    from coreopt.quant.pairs import KNEE_WINDOW, _adam_best

    target = torch.linspace(-1, 1, 16)

    def traced() -> tuple[list[float], Callable[[torch.Tensor], torch.Tensor]]:
        seen: list[float] = []

        def f(x: torch.Tensor) -> torch.Tensor:
            v = ((x - target) ** 2).sum() + 0.1
            if v.requires_grad:
                seen.append(float(v.detach()))
            return v

        return seen, f

    full_seen, f = traced()
    _, full_loss, initial = _adam_best(f, torch.zeros(16), 200, 0.05)
    assert len(full_seen) == 200
    best = [min(full_seen[: i + 1]) for i in range(200)]
    tol = 0.01
    stop = next(
        i for i in range(KNEE_WINDOW, 200) if best[i - KNEE_WINDOW] - best[i] < tol * best[i]
    )
    knee_seen, f = traced()
    _, loss, initial2 = _adam_best(f, torch.zeros(16), 200, 0.05, tol)
    assert initial2 == initial
    assert knee_seen == full_seen[: stop + 1]
    assert loss == best[stop] >= full_loss
    assert stop < 150


def test_fan_out_shares_the_intra_op_threads_between_workers() -> None:
    # w worker threads each get torch.get_num_threads() // w intra-op threads (no
    # oversubscription), and the caller's setting is restored afterwards
    from coreopt.quant import register_method
    from coreopt.quant.config import _REGISTRY
    from coreopt.quant.methods import rtn_method

    seen: list[int] = []

    def recording(task: object, cfg: QuantizeConfig) -> list[object]:
        seen.append(torch.get_num_threads())
        return rtn_method(task, cfg)  # type: ignore[arg-type]

    before = torch.get_num_threads()
    register_method("recording", recording)
    try:
        torch.set_num_threads(4)
        for workers, inside in ((2, 2), (4, 1), (1, 4), (8, 1)):
            seen.clear()
            net = nn.Sequential(nn.Linear(64, 32), nn.Linear(32, 16))
            coreopt.quantize(net, bits=4, method="recording", max_workers=workers, progress=False)
            assert seen == [inside, inside], (workers, seen)
            assert torch.get_num_threads() == 4
    finally:
        _REGISTRY.pop("recording", None)
        torch.set_num_threads(before)


@pytest.mark.parametrize("zero_point", ["integer", "float"])
def test_range_search_matches_a_hand_written_search(zero_point: str) -> None:
    # fit_group_params scores each shrink factor as s² Σ w (q - y)² in place; a plain
    # dequantize-and-compare search must pick the same factor for every group
    from coreopt.quant.format import QuantFormat, dequantize_codes, quantize_codes, range_params
    from coreopt.quant.rounding import DEFAULT_SHRINK_GRID, fit_group_params

    gen = torch.Generator().manual_seed(0)
    W = torch.randn(32, 256, generator=gen, dtype=torch.float64)
    W[:, 3] *= 8  # an outlier column, so that shrinking pays in some groups
    w = torch.rand(256, generator=gen, dtype=torch.float64)
    fmt = QuantFormat(3, 64, zero_point=zero_point)  # type: ignore[arg-type]
    G = W.reshape(32, 4, 64)
    errs, params = [], []
    for a in DEFAULT_SHRINK_GRID:
        s, z = range_params(G.amin(-1), G.amax(-1), fmt, shrink=a)
        W_hat = dequantize_codes(quantize_codes(W, s, z, fmt), s, z, 64, torch.float64)
        errs.append((((W - W_hat) ** 2) * w).reshape(32, 4, 64).sum(-1))
        params.append((s, z))
    best = torch.stack(errs).argmin(0)
    s_ref = torch.stack([p[0] for p in params]).gather(0, best.unsqueeze(0))[0]
    z_ref = torch.stack([p[1] for p in params]).gather(0, best.unsqueeze(0))[0]
    s, z = fit_group_params(W, fmt, weight=w)
    assert float((best > 0).float().mean()) > 0.1  # the search does shrink some groups
    torch.testing.assert_close(s, s_ref, rtol=0, atol=0)
    torch.testing.assert_close(z, z_ref, rtol=0, atol=0)
