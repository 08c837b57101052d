"""Green lists: chance rate γ, independence across n-grams and keys, specials, vocab mapping."""

from __future__ import annotations

import pytest
import torch

from coreopt.sampling import HashGreenList, KGWGreenList, VocabMapping, seed_ngrams


def test_hash_green_list_is_a_fair_coin_per_token_and_independent_across_ngrams() -> None:
    v, n = 2048, 600
    g = HashGreenList("secret", v, gamma=0.5)
    grams = torch.randint(0, 50_000, (n, 2), generator=torch.Generator().manual_seed(0))
    m = g.mask(grams).float()
    assert abs(float(m.mean()) - 0.5) < 0.005
    centred = m - 0.5
    corr = (centred @ centred.T) * 4 / v
    off = corr[~torch.eye(n, dtype=torch.bool)]
    assert float(off.abs().max()) < 6 / v**0.5  # no pair of lists is related
    other = HashGreenList("other", v).mask(grams).float() - 0.5
    assert abs(float((centred * other).mean() * 4)) < 0.01  # another key: unrelated lists


@pytest.mark.parametrize("gamma", [0.25, 0.5, 0.75])
def test_gamma_and_special_tokens(gamma: float) -> None:
    g = HashGreenList(7, 4000, gamma=gamma, special_token_ids=(0, 3, 5))
    m = g.mask(torch.tensor([[1, 2], [-1, 9], [-1, -1]]))
    assert not m[:, [0, 3, 5]].any()
    assert abs(float(m.float().mean()) - gamma) < 0.03
    assert g.eligible().sum() == 3997
    # deterministic, device-independent integer arithmetic
    assert torch.equal(m, g.mask(torch.tensor([[1, 2], [-1, 9], [-1, -1]])))


def test_green_list_validation() -> None:
    with pytest.raises(ValueError, match="gamma"):
        HashGreenList("k", 10, gamma=1.0)
    with pytest.raises(ValueError, match="outside"):
        HashGreenList("k", 10, special_token_ids=(10,))
    with pytest.raises(TypeError, match="key"):
        HashGreenList(1.5, 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape"):
        HashGreenList("k", 10).mask(torch.tensor([[1, 2, 3]]))


def test_seed_ngrams_pads_short_rows() -> None:
    ids = torch.tensor([[4, 5, 6]])
    assert seed_ngrams(ids, 2).tolist() == [[5, 6]]
    assert seed_ngrams(ids, 4).tolist() == [[-1, 4, 5, 6]]


def test_kgw_green_list_uses_transformers_greenlist() -> None:
    g = KGWGreenList(100, gamma=0.25, key=42)
    m = g.mask(torch.tensor([[3], [3], [4]]))
    assert m.sum(-1).tolist() == [25, 25, 25]
    assert torch.equal(m[0], m[1])
    ids = g.processor._get_greenlist_ids(torch.tensor([4]))
    assert set(ids.tolist()) == set(m[2].nonzero()[:, 0].tolist())


class _Tok:
    def __init__(self, vocab: dict[str, int], special: list[int]) -> None:
        self._vocab, self.all_special_ids = vocab, special

    def get_vocab(self) -> dict[str, int]:
        return dict(self._vocab)


def test_vocab_mapping_through_shared_strings() -> None:
    teacher = _Tok({"<s>": 0, "a": 1, "b": 2, "c": 3, "dd": 4}, [0])
    student = _Tok({"<pad>": 0, "c": 1, "a": 2, "zz": 3, "<s>": 4}, [0, 4])
    m = VocabMapping.from_tokenizers(teacher, student)
    assert m.to_teacher.tolist() == [-1, 3, 1, -1, -1]  # specials never map
    assert m.teacher_vocab_size == 5
    assert m.map_ids(torch.tensor([[1, 3, -1]])).tolist() == [[3, -1, -1]]
    assert m.coverage == pytest.approx(0.4)
    assert VocabMapping.identity(3).to_teacher.tolist() == [0, 1, 2]
