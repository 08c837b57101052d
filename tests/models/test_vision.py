import torch

from coreopt.init import apply, covariance_conv_, is_depthwise, verify
from coreopt.models import ConvMixer, TransformerLM, VisionTransformer
from coreopt.models.tasks import IGNORE, copying, digits, mqar, selective_copying

TIMM_VIT_NAMES = {
    "cls_token",
    "pos_embed",
    "patch_embed.proj.weight",
    "blocks.0.norm1.weight",
    "blocks.0.attn.qkv.weight",
    "blocks.0.attn.qkv.bias",
    "blocks.0.attn.proj.weight",
    "blocks.0.mlp.fc1.weight",
    "blocks.0.mlp.fc2.weight",
    "norm.weight",
    "head.weight",
}
TIMM_CONVMIXER_NAMES = {
    "stem.0.weight",
    "stem.2.running_var",
    "blocks.0.0.fn.0.weight",
    "blocks.0.0.fn.2.weight",
    "blocks.0.1.weight",
    "blocks.0.3.weight",
    "head.weight",
}


def test_vit_shapes_names_and_mimetic_init(device: torch.device) -> None:
    vit = VisionTransformer(8, 2, 1, 10, embed_dim=32, depth=2, num_heads=4).to(device)
    assert set(vit.state_dict()) >= TIMM_VIT_NAMES
    assert vit(torch.randn(3, 1, 8, 8, device=device)).shape == (3, 10)
    report = apply(vit, seed=0)
    assert report.count("attention") == 2
    assert report.count("mlp") == 2
    assert verify(vit).ok


def test_convmixer_names_depthwise_and_covariance_init() -> None:
    net = ConvMixer(32, 2, kernel_size=5, patch_size=2, in_chans=1, num_classes=10)
    assert set(net.state_dict()) >= TIMM_CONVMIXER_NAMES
    assert all(is_depthwise(c) for c in net.depthwise_convs())
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert apply(net, recipe="covariance", seed=0).count("conv") == 2
    covariance_conv_(net.depthwise_convs()[0], seed=1)


def test_transformer_lm_is_causal() -> None:
    lm = TransformerLM(16, dim=32, depth=1, num_heads=2, max_len=16)
    t = torch.randint(16, (2, 10))
    t2 = t.clone()
    t2[:, 6:] = (t2[:, 6:] + 1) % 16
    torch.testing.assert_close(lm(t)[:, :6], lm(t2)[:, :6])


def test_tasks() -> None:
    t = mqar(5, num_kv_pairs=4, seq_len=24, vocab_size=32, seed=0)
    assert t.inputs.shape == (5, 24)
    assert int((t.targets != IGNORE).sum()) == 5 * 4
    for i in range(5):  # every scored query key is followed, in the kv section, by its value
        kv = dict(zip(t.inputs[i, 0:8:2].tolist(), t.inputs[i, 1:8:2].tolist(), strict=True))
        for pos in (t.targets[i] != IGNORE).nonzero().flatten().tolist():
            assert kv[int(t.inputs[i, pos])] == int(t.targets[i, pos])
    assert torch.equal(mqar(3, seed=1).inputs, mqar(3, seed=1).inputs)
    c = copying(4, length=5, vocab_size=10, seed=0)
    scored = c.targets[c.targets != IGNORE].reshape(4, 5)
    assert torch.equal(scored, c.inputs[:, :5])
    s = selective_copying(4, num_tokens=3, seq_len=10, vocab_size=10, seed=0)
    region = s.inputs[:, :10]
    assert torch.equal(
        s.targets[s.targets != IGNORE].reshape(4, 3), region[region > 0].reshape(4, 3)
    )
    xtr, ytr, _xte, yte = digits()
    assert xtr.shape[1:] == (1, 8, 8)
    assert len(ytr) + len(yte) == 1797
