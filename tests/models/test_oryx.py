import pytest
import torch
import torch.nn.functional as F

from coreopt.init import apply, verify
from coreopt.models import OryxBlock, OryxMixer, SequenceLM, chunk_schedule
from coreopt.models.tasks import mqar


def test_at_least_90_percent_of_parameters_are_shared() -> None:
    block = OryxBlock(64, 4)
    assert block.shared_fraction() >= 0.9
    groups = block.parameter_groups()
    assert "mixer.k_proj.weight" in groups["shared"]
    assert "mixer.v_proj.weight" in groups["shared"]
    assert "mixer.conv1d.weight" in groups["shared"]
    assert "mixer.attn_q_up" in groups["attention"]
    assert "mixer.A_log" in groups["recurrent"]
    mixer_params = dict(block.mixer.named_parameters())
    only = set(OryxMixer.ATTENTION_ONLY) | set(OryxMixer.RECURRENT_ONLY)
    shared = sum(p.numel() for n, p in mixer_params.items() if n not in only)
    assert shared / sum(p.numel() for p in mixer_params.values()) >= 0.9  # the mixer alone too


@pytest.mark.parametrize("modes", ["attention", "recurrent", "mixed"])
def test_both_modes_from_the_same_weights_and_which_parameters_they_use(modes: str) -> None:
    torch.manual_seed(0)
    block = OryxBlock(32, 4, chunk_size=4)
    x = torch.randn(2, 16, 32)
    m = torch.tensor([False, False, False, True]) if modes == "mixed" else modes
    y = block(x, m)
    assert y.shape == x.shape
    y.square().sum().backward()
    groups = block.parameter_groups()
    params = dict(block.named_parameters())
    used = set(groups["shared"])
    if modes != "recurrent":
        used |= set(groups["attention"])
    if modes != "attention":
        used |= set(groups["recurrent"])
    for name, p in params.items():
        touched = p.grad is not None and bool(p.grad.abs().sum() > 0)
        # attn_q_up / rec_q_up start at zero, so their down-projections get no gradient yet
        if name.endswith("_q_down"):
            continue
        assert touched == (name in used), name


def test_attention_mode_is_causal_softmax_attention() -> None:
    torch.manual_seed(0)
    mixer = OryxMixer(16, 2, chunk_size=4).double()
    with torch.no_grad():  # the shared short conv as the identity (what mimetic_ssm_ sets)
        mixer.conv1d.weight.zero_()
        mixer.conv1d.weight[:, 0, -1] = 1.0
        mixer.conv1d.bias.zero_()
    x = torch.randn(1, 8, 16, dtype=torch.float64)
    q = mixer.q_proj(x).reshape(1, 8, 2, 8).transpose(1, 2)
    k = mixer.k_proj(x).reshape(1, 8, 2, 8).transpose(1, 2)
    v = mixer.v_proj(x).reshape(1, 8, 2, 8).transpose(1, 2)
    logits = q @ k.transpose(-1, -2) / 8**0.5
    logits = logits.masked_fill(~torch.ones(8, 8, dtype=torch.bool).tril(), float("-inf"))
    ref = (logits.softmax(-1) @ v).transpose(1, 2).reshape(1, 8, 16)
    torch.testing.assert_close(mixer(x, "attention"), mixer.o_proj(ref))


def test_mixed_positions_take_each_modes_output_and_modes_are_validated() -> None:
    torch.manual_seed(0)
    mixer = OryxMixer(16, 2, chunk_size=4)
    x = torch.randn(2, 10, 16)  # 3 chunks, the last one partial
    mask = torch.tensor([True, False, True])
    y = mixer(x, mask)
    ya, yr = mixer(x, "attention"), mixer(x, "recurrent")
    pos = mask.repeat_interleave(4)[:10]
    torch.testing.assert_close(y[:, pos], ya[:, pos])
    torch.testing.assert_close(y[:, ~pos], yr[:, ~pos])
    with pytest.raises(ValueError, match="chunks"):
        mixer(x, torch.tensor([True, False]))
    with pytest.raises(ValueError, match="modes"):
        mixer(x, "both")


def test_chunk_schedule() -> None:
    assert chunk_schedule(10, 0.1).tolist() == [False] * 9 + [True]
    assert int(chunk_schedule(20, 0.1, kind="strided").sum()) == 2
    assert int(chunk_schedule(20, 0.05, kind="random", generator=torch.Generator()).sum()) == 1
    assert not chunk_schedule(5, 0.0).any()
    with pytest.raises(ValueError, match="attention_fraction"):
        chunk_schedule(5, 1.5)


def test_a_mixed_schedule_trains_and_the_init_applies() -> None:
    torch.manual_seed(0)
    task = mqar(32, num_kv_pairs=4, seq_len=32, vocab_size=32, seed=0)
    lm = SequenceLM(32, mixer="oryx", dim=32, depth=1, num_heads=2, chunk_size=8)
    report = apply(lm, seed=0)
    assert {e.part for e in report.changed} == {"attention", "ssm", "mlp"}
    assert verify(lm).ok
    opt = torch.optim.Adam(lm.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(20):
        modes = chunk_schedule(4, 0.25, kind="random", generator=g)
        loss = F.cross_entropy(lm(task.inputs, modes).flatten(0, 1), task.targets.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.3
