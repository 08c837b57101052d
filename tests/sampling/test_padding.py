"""Left padding inside ``transformers``' ``generate``: the processors read the pad id from the
proxy's config, so a padded row gets the same adjustment as the prompt alone."""

from __future__ import annotations

import pytest
import torch
from conftest import BOS, EOS, PAD, random_traces, tiny_gpt2, tiny_llama

from coreopt.sampling import (
    AntidistillationLogitsProcessor,
    FingerprintLogitsProcessor,
    downstream_gradient,
)
from coreopt.sampling._models import config_pad_id

transformers = pytest.importorskip("transformers")

PROMPTS = [[BOS, 5, 6, 7, 8], [BOS, 9], [BOS, 10, 11]]


def _left_pad(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    return ids, (torch.arange(width) >= width - torch.tensor([[len(p)] for p in prompts])).long()


@pytest.mark.parametrize("kind", ["ads", "adfp"])
def test_padded_rows_equal_each_prompt_alone_without_a_pad_argument(kind: str) -> None:
    proxy = tiny_llama(1)
    if kind == "ads":
        grad = downstream_gradient(proxy, random_traces(4), progress=False)
        make = lambda: AntidistillationLogitsProcessor(proxy, grad, lam=0.1)  # noqa: E731
    else:
        make = lambda: FingerprintLogitsProcessor(proxy, key=7, lam=4.0)  # noqa: E731
    ids, _ = _left_pad(PROMPTS, PAD)
    scores = torch.randn(len(PROMPTS), 40)
    batch = make().adjustment(ids, scores)
    for i, p in enumerate(PROMPTS):
        alone = make().adjustment(torch.tensor([p]), scores[i : i + 1])
        torch.testing.assert_close(batch[i : i + 1], alone, atol=1e-4, rtol=1e-4)


def test_hf_generate_with_left_padding_matches_unpadded_rows() -> None:
    teacher, proxy = tiny_llama(0), tiny_llama(1)
    grad = downstream_gradient(proxy, random_traces(4), progress=False)
    ids, mask = _left_pad(PROMPTS, PAD)

    def run(x: torch.Tensor, m: torch.Tensor) -> list[list[int]]:
        proc = AntidistillationLogitsProcessor(proxy, grad, lam=2.0)  # no pad_token_id=
        out = teacher.generate(
            x,
            attention_mask=m,
            logits_processor=transformers.LogitsProcessorList([proc]),
            do_sample=False,
            max_new_tokens=5,
            pad_token_id=PAD,
            eos_token_id=None,
        )
        return out[:, x.shape[1] :].tolist()

    batch = run(ids, mask)
    for i, p in enumerate(PROMPTS):
        assert batch[i] == run(torch.tensor([p]), torch.ones(1, len(p), dtype=torch.long))[0]


def test_pad_id_comes_from_pad_then_eos_of_the_config() -> None:
    model = tiny_gpt2(0)
    assert config_pad_id(model) == PAD
    model.config.pad_token_id = None
    model.generation_config.pad_token_id = None
    assert config_pad_id(model) == EOS  # what transformers' generate pads with
    assert config_pad_id(torch.nn.Linear(2, 2)) is None
    with pytest.raises(TypeError, match="pad_token_id"):
        FingerprintLogitsProcessor(model, key=1, lam=1.0, pad_token_id="0")  # type: ignore[arg-type]
