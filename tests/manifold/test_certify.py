import math

import pytest
import torch
import torch.nn.functional as F

from coreopt.manifold import certified_accuracy, certified_radius
from coreopt.models import LipschitzConvNet


def test_certified_radius_formula() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 2.0]])
    torch.testing.assert_close(certified_radius(logits), torch.tensor([2 / math.sqrt(2), 0.0]))
    torch.testing.assert_close(
        certified_radius(logits, lipschitz=2.0), torch.tensor([1 / math.sqrt(2), 0.0])
    )
    with pytest.raises(ValueError, match="K >= 2"):
        certified_radius(torch.zeros(3, 1))
    with pytest.raises(ValueError, match="lipschitz"):
        certified_radius(logits, lipschitz=0.0)


def test_certified_accuracy_counts() -> None:
    model = torch.nn.Identity()
    x = torch.tensor([[3.0, 0.0], [0.0, 0.5], [1.0, 0.0]])
    y = torch.tensor([0, 1, 1])
    clean, cert = certified_accuracy(model, x, y, eps=1.0, batch_size=2)
    assert clean == pytest.approx(2 / 3)
    assert cert == pytest.approx(1 / 3)  # margins 3 (> √2) and 0.5 (< √2)
    with pytest.raises(ValueError, match="eps"):
        certified_accuracy(model, x, y, eps=-1.0)


def test_lipschitz_net_is_1_lipschitz() -> None:
    torch.manual_seed(0)
    net = LipschitzConvNet(1, 10, image_size=8, width=4, hidden=16).double()
    x = torch.randn(16, 1, 8, 8, dtype=torch.float64)
    d = torch.randn_like(x)
    out_diff = (net(x + d) - net(x)).norm(dim=1)
    assert (out_diff <= d.flatten(1).norm(dim=1) * (1 + 1e-9)).all()
    J = torch.autograd.functional.jacobian(lambda z: net(z.unsqueeze(0)).squeeze(0), x[0])
    assert torch.linalg.matrix_norm(J.reshape(10, -1), ord=2) <= 1 + 1e-9


def _pgd_l2(model, x, y, radius, steps=30):  # type: ignore[no-untyped-def]
    """Maximise the cross-entropy within per-sample L2 balls of ``radius`` (projected steps)."""
    delta = torch.zeros_like(x, requires_grad=True)
    r = radius.view(-1, 1, 1, 1)
    for _ in range(steps):
        logits = model(x + delta)
        # The margin loss (top other logit minus true logit) attacks certification directly.
        true = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), -1e9).amax(1)
        (other - true).sum().backward()
        with torch.no_grad():
            g = delta.grad
            g = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            delta += 0.25 * r * g
            norm = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            delta *= torch.where(norm > r, r / norm.clamp_min(1e-12), torch.ones_like(norm))
        delta.grad = None
    return (x + delta).detach()


@pytest.mark.slow
def test_pgd_never_flips_a_certified_prediction() -> None:
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    try:
        torch.manual_seed(0)
        data = load_digits()
        x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.tensor(data.target)
        x = x - x.mean()
        net = LipschitzConvNet(1, 10, image_size=8, width=8, hidden=32)
        opt = torch.optim.Adam(net.parameters(), lr=5e-3)
        for _ in range(4):
            for i in range(0, 1400, 64):
                logits = net(x[i : i + 64])
                shifted = logits - 0.5 * F.one_hot(y[i : i + 64], 10)
                loss = F.cross_entropy(4 * shifted, y[i : i + 64])
                opt.zero_grad()
                loss.backward()
                opt.step()
        net.eval().requires_grad_(False)
        xt, yt = x[1400:], y[1400:]
        with torch.no_grad():
            logits = net(xt)
        radius = certified_radius(logits)
        ok = (logits.argmax(1) == yt) & (radius > 1e-3)
        assert ok.float().mean() > 0.5  # the net learned something: the check is not vacuous
        xs, ys, rs = xt[ok], yt[ok], radius[ok]
        # Attack at 99.9% of each certified radius (float32 rounding of the logits is ~1e-6).
        adv = _pgd_l2(net, xs, ys, 0.999 * rs)
        assert ((adv - xs).flatten(1).norm(dim=1) <= rs * (1 + 1e-5)).all()
        with torch.no_grad():
            adv_pred = net(adv).argmax(1)
        assert (adv_pred == ys).all()
        # And the attack is real: at 3x the radius it does flip some predictions.
        far_adv = _pgd_l2(net, xs, ys, 3 * rs)
        with torch.no_grad():
            far = net(far_adv).argmax(1)
        assert (far != ys).any()
    finally:
        torch.set_num_threads(threads)
