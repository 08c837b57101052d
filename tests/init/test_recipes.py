import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from coreopt.init import (
    CovarianceConvConfig,
    MimeticMLPConfig,
    MimeticSSMConfig,
    apply,
    covariance_conv_,
    covariance_for_depth,
    estimate_filter_covariance,
    find_ssm,
    gaussian_covariance,
    mimetic_mlp_,
    mimetic_ssm_,
    resample_covariance,
    verify,
)


class TinySSM(nn.Module):
    """mamba-ssm attribute names and in_proj layout [z|x|B|C|dt] (stand-in for tests)."""

    def __init__(self, d_model: int = 32, d_state: int = 8, d_inner: int = 64, nheads: int = 4):
        super().__init__()
        self.d_inner, self.d_state, self.ngroups, self.nheads = d_inner, d_state, 1, nheads
        self.in_proj = nn.Linear(d_model, 2 * d_inner + 2 * d_state + nheads)
        conv_ch = d_inner + 2 * d_state
        self.conv1d = nn.Conv1d(conv_ch, conv_ch, 4, groups=conv_ch, padding=3)
        self.A_log = nn.Parameter(torch.log(torch.empty(nheads).uniform_(1, 16)))
        self.dt_bias = nn.Parameter(torch.zeros(nheads))


def test_mimetic_mlp_mean_std_and_default() -> None:
    fc = mimetic_mlp_(nn.Linear(256, 512), seed=0).requires_grad_(False)
    mean, std = MimeticMLPConfig().resolve(256)
    assert std == pytest.approx(1 / math.sqrt(3 * 256))
    assert mean == pytest.approx(0.25 * std)
    assert float(fc.weight.mean()) == pytest.approx(
        mean, abs=5 * std / math.sqrt(fc.weight.numel())
    )
    assert float(fc.weight.std()) == pytest.approx(std, rel=0.02)
    assert fc.bias is not None
    assert fc.bias.abs().max() == 0
    fc2 = mimetic_mlp_(nn.Linear(8, 8), MimeticMLPConfig(mean=0.5, std=0.01), seed=0)
    assert float(fc2.weight.detach().mean()) == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ValueError, match="std"):
        MimeticMLPConfig(std=0.0)
    with pytest.raises(ValueError, match="first layer"):
        mimetic_mlp_(nn.ReLU())


def test_mimetic_ssm_identities() -> None:
    m = mimetic_ssm_(TinySSM(), seed=0)
    p = find_ssm(m)
    assert p is not None
    torch.testing.assert_close(-m.A_log.exp(), torch.full((4,), -1e-3))
    torch.testing.assert_close(F.softplus(m.dt_bias), torch.ones(4))
    cb = p.cb_product()
    # W_C W_B^T is the rank-d_state truncation of a Z + b I: positive diagonal, rank 8
    assert cb.diagonal().mean() > 0.1
    assert torch.linalg.matrix_rank(cb) == 8
    x = torch.randn(1, m.conv1d.in_channels, 10)
    y = m.conv1d(x)[..., :10]  # causal: left padding, keep the first L outputs
    torch.testing.assert_close(y, x)
    report = verify(m)
    assert report.ok, str(report)
    with torch.no_grad():
        m.in_proj.weight[128:136].neg_()  # flip W_B
    assert not verify(m).ok
    with pytest.raises(ValueError, match="decay"):
        MimeticSSMConfig(decay=0.0)


def test_gaussian_covariance_is_separable_and_psd() -> None:
    S = gaussian_covariance(3, 1.5)
    K = torch.exp(-((torch.arange(3.0)[:, None] - torch.arange(3.0)) ** 2) / (2 * 1.5**2)).double()
    torch.testing.assert_close(S, torch.kron(K, K))
    assert torch.linalg.eigvalsh(S).min() > 0
    assert S[0, 1] == pytest.approx(math.exp(-1 / (2 * 1.5**2)))


def test_covariance_conv_statistics_and_depth_schedule() -> None:
    convs = nn.Sequential(*(nn.Conv2d(512, 512, 5, groups=512, padding=2) for _ in range(3)))
    report = apply(convs, recipe="covariance", seed=0)
    assert report.count("conv") == 3
    assert "sigma=1" in report.changed[0].detail
    assert "sigma=2" in report.changed[-1].detail
    for i, conv in enumerate(convs):
        w = conv.weight.detach().reshape(512, 25).double()
        emp = w.T @ w / 512
        target = gaussian_covariance(5, CovarianceConvConfig().sigma(i / 2)) / 75
        assert (emp - target).norm() / target.norm() < 0.3
    assert verify(convs, recipe="covariance").ok
    with torch.no_grad():
        convs[1].weight.normal_(0, 1 / math.sqrt(75))  # i.i.d. filters: no tap correlation
    assert not verify(convs, recipe="covariance").ok


def test_covariance_transfer_across_width_depth_and_kernel() -> None:
    trained = nn.Sequential(*(nn.Conv2d(256, 256, 3, groups=256) for _ in range(2)))
    for i, c in enumerate(trained):
        covariance_conv_(c, CovarianceConvConfig(sigma_first=0.7 + i, sigma_last=0.7 + i), seed=i)
    covs = estimate_filter_covariance(trained)
    assert len(covs) == 2
    assert covs[0].shape == (9, 9)
    mid = covariance_for_depth(covs, 0.5)
    torch.testing.assert_close(mid, (covs[0] + covs[1]) / 2)
    big = resample_covariance(covs[1], 7)
    assert big.shape == (49, 49)
    assert torch.linalg.eigvalsh(big).min() > -1e-9
    torch.testing.assert_close(resample_covariance(covs[0], 3), covs[0], rtol=1e-6, atol=1e-6)
    wide = nn.Conv2d(64, 64, 7, groups=64)
    covariance_conv_(wide, covariance=covs[1], seed=0)  # width 256 -> 64, kernel 3 -> 7
    assert wide.weight.shape == (64, 1, 7, 7)
    with pytest.raises(ValueError, match="depthwise"):
        covariance_conv_(nn.Conv2d(4, 8, 3))  # type: ignore[arg-type]
