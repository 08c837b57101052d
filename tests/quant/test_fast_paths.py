"""The shortcuts that make ``coreopt.quantize`` fast, each against the slow path it replaces:
stacked GPTQ against per-layer GPTQ, and the screen of the byte budget's transform options
against pricing every option in full."""

from __future__ import annotations

import logging
import sys

import pytest
import torch
from torch import nn

import coreopt
from coreopt.quant import InputMoments, QuantizeConfig
from coreopt.quant.format import QuantFormat
from coreopt.quant.methods import MatrixTask, cafeq_matrix, stack_plain_rounding
from coreopt.quant.rounding import gptq, gptq_stacked

QUANTIZE = sys.modules["coreopt.quant.quantize"]


def test_gptq_stacked_equals_per_layer_gptq() -> None:
    # independent layers with their own Hessians (one with a dead input): the stacked loop must
    # give each layer exactly its own gptq result
    g = torch.Generator().manual_seed(0)
    fmt = QuantFormat(3, 32)
    L, out, n = 4, 24, 128
    W = torch.randn(L, out, n, generator=g, dtype=torch.float64)
    A = torch.randn(L, n, 12, generator=g, dtype=torch.float64)
    H = A @ A.mT + torch.diag_embed(torch.rand(L, n, generator=g, dtype=torch.float64))
    H[1, 5, :] = 0
    H[1, :, 5] = 0
    H[2] *= 1e3  # scales differ across the stack
    c, s, z = gptq_stacked(W, H, fmt, block_size=64)
    for i in range(L):
        ci, si, zi = gptq(W[i], H[i], fmt, block_size=64)
        assert torch.equal(c[i], ci), i
        torch.testing.assert_close(s[i], si, rtol=0, atol=0)
        torch.testing.assert_close(z[i], zi, rtol=0, atol=0)
    with pytest.raises(ValueError, match="H must have shape"):
        gptq_stacked(W, H[:2], fmt)


def test_stack_plain_rounding_gives_cafeq_matrix_its_own_result() -> None:
    # same-shaped matrices with non-diagonal priors (GPTQ runs), one with an identity prior (no
    # GPTQ: left alone) and one of another shape (its own stack)
    g = torch.Generator().manual_seed(1)
    cfg = QuantizeConfig(bits=3, group_size=32, transform="identity", prior="structure")

    def task(i: int, out: int, n: int, moments: InputMoments | None) -> MatrixTask:
        return MatrixTask(f"w{i}", torch.randn(out, n, generator=g), moments, seed=i)

    def low_rank(n: int) -> InputMoments:
        return InputMoments(torch.rand(n, generator=g) + 0.5, torch.randn(n, 3, generator=g))

    tasks = [task(i, 40, 96, low_rank(96)) for i in range(3)]
    tasks += [task(3, 40, 96, None), task(4, 16, 64, low_rank(64)), task(5, 16, 64, low_rank(64))]
    tasks.append(task(6, 8, 64, low_rank(64)))  # no partner: left to cafeq_matrix
    alone = [cafeq_matrix(t, cfg) for t in tasks]
    stack_plain_rounding([(t, cfg) for t in tasks], max_stack=2)
    assert [t.plain is not None for t in tasks] == [True] * 3 + [False] + [True] * 2 + [False]
    for t, ref in zip(tasks, alone, strict=True):
        out = cafeq_matrix(t, cfg)
        assert out.choice == ref.choice == ("gptq" if t.moments is not None else "rtn+clip")
        assert torch.equal(out.codes, ref.codes), t.name
        assert torch.equal(out.scale, ref.scale), t.name
        assert torch.equal(out.zero, ref.zero), t.name


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
