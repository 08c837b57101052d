"""generate: left padding, end of sequence, determinism, nucleus; CachedForward's cache reuse."""

from __future__ import annotations

import torch
from conftest import BOS, EOS, PAD, VOCAB, tiny_llama

from coreopt.sampling import TemperatureProcessor, Trace, generate
from coreopt.sampling._forward import CachedForward


def test_left_padded_batch_matches_each_prompt_alone() -> None:
    teacher = tiny_llama(0)
    prompts = [[BOS, 5, 6, 7, 8], [BOS, 9], [BOS, 10, 11]]
    batch = generate(teacher, prompts, max_new_tokens=6, do_sample=False, eos_token_id=[])
    for i, p in enumerate(prompts):
        alone = generate(teacher, [p], max_new_tokens=6, do_sample=False, eos_token_id=[])
        assert batch.completions[i] == alone.completions[0]
    assert batch.prompts() == prompts
    assert batch.traces()[1] == Trace(tuple(prompts[1]), tuple(batch.completions[1]))


def test_rows_stop_at_end_of_sequence() -> None:
    teacher = tiny_llama(0)
    prompt_len = 3

    def force_eos(ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Row 0 ends at its 2nd new token, row 1 at its 3rd; otherwise never EOS."""
        out = scores.clone()
        out[:, EOS] = -1e9
        step = ids.shape[1] - prompt_len
        for row, last in ((0, 1), (1, 2)):
            if step == last:
                out[row, EOS] = 1e9
        return out

    out = generate(
        teacher, [[BOS, 5, 6], [BOS, 6, 7]], processor=force_eos, max_new_tokens=8, seed=0
    )
    assert out.finished.tolist() == [True, True]
    assert out.steps == 3  # stopped as soon as every row finished
    assert [len(c) for c in out.completions] == [2, 3]
    assert [c[-1] for c in out.completions] == [EOS, EOS]
    assert out.sequences[0, -1].item() == PAD  # padding after row 0's EOS
    assert out.new_tokens == 5


def test_sampling_is_reproducible_and_leaves_the_global_generator_alone() -> None:
    teacher = tiny_llama(0)
    prompts = [[BOS, 5, 6]] * 4
    a = generate(teacher, prompts, max_new_tokens=8, seed=3, eos_token_id=[])
    b = generate(teacher, prompts, max_new_tokens=8, seed=3, eos_token_id=[])
    assert a.completions == b.completions
    # with a seed, the global generator is not touched
    torch.manual_seed(11)
    generate(teacher, prompts, max_new_tokens=2, seed=1, eos_token_id=[])
    after = torch.rand(3)
    torch.manual_seed(11)
    assert torch.equal(torch.rand(3), after)
    # without one, the seed comes from the global generator: reproducible under manual_seed
    torch.manual_seed(11)
    c = generate(teacher, prompts, max_new_tokens=8, eos_token_id=[])
    torch.manual_seed(11)
    d = generate(teacher, prompts, max_new_tokens=8, eos_token_id=[])
    assert c.completions == d.completions


def test_top_p_keeps_the_nucleus() -> None:
    teacher = tiny_llama(0)
    out = generate(
        teacher,
        [[BOS, 5]] * 16,
        processor=TemperatureProcessor(1.0),
        max_new_tokens=1,
        top_p=1e-6,
        seed=0,
        eos_token_id=[],
    )
    greedy = generate(teacher, [[BOS, 5]], max_new_tokens=1, do_sample=False, eos_token_id=[])
    assert {c[0] for c in out.completions} == {greedy.completions[0][0]}


def test_cached_forward_reuses_the_cache_and_rebuilds_it_for_a_new_prefix() -> None:
    model = tiny_llama(0)
    fwd = CachedForward(model)
    ids = torch.tensor([[PAD, BOS, 5], [BOS, 6, 7]])
    mask = (ids != PAD).long()
    fwd(ids, mask)
    longer = torch.cat([ids, torch.tensor([[8], [9]])], dim=1)
    assert fwd.extends(longer)
    cached = fwd(longer)
    full = model(
        longer,
        attention_mask=torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1),
        position_ids=(
            torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1).cumsum(-1) - 1
        ).clamp(min=0),
    ).logits[:, -1]
    torch.testing.assert_close(cached, full.float(), rtol=1e-4, atol=1e-5)
    other = torch.tensor([[BOS, 3, 3, 3]])
    assert not fwd.extends(other)
    torch.testing.assert_close(fwd(other), model(other).logits[:, -1].float(), rtol=1e-4, atol=1e-5)
    assert fwd.forwards == 3
    assert fwd(other).shape[-1] == VOCAB
