import itertools

import numpy as np
import pytest

from coreopt.game.coalitions import Players, incidence, members, popcounts, subset_sums


def test_players_from_int_and_labels() -> None:
    p = Players(3)
    assert p.labels == (0, 1, 2)
    assert p.grand == 0b111
    q = Players(["a", "b", "c"])
    assert q.mask({"a", "c"}) == 0b101
    assert q.coalition(0b110) == frozenset({"b", "c"})


@pytest.mark.parametrize(
    ("players", "error", "match"),
    [
        ([], ValueError, "empty"),
        (0, ValueError, "positive"),
        (["a", "a"], ValueError, "duplicate"),
        ([["unhashable"]], TypeError, "hashable"),
        (True, TypeError, "bool"),
        ("abc", TypeError, "sequence"),
    ],
)
def test_bad_players(players: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        Players(players)  # type: ignore[arg-type]


def test_unknown_label_is_named() -> None:
    with pytest.raises(KeyError, match="zed"):
        Players(["a"]).mask({"zed"})


def test_subset_sums_and_popcounts_match_brute_force() -> None:
    x = np.array([0.5, -1.0, 2.0, 3.25])
    sums = subset_sums(x)
    sizes = popcounts(4)
    for mask in range(16):
        assert sums[mask] == pytest.approx(sum(x[i] for i in members(mask)))
        assert sizes[mask] == len(members(mask))
    np.testing.assert_allclose(incidence(np.arange(16), 4) @ x, sums)


def test_members_and_incidence() -> None:
    assert members(0b1011) == [0, 1, 3]
    inc = incidence([0b101, 0b010], 3)
    np.testing.assert_array_equal(inc, [[1, 0, 1], [0, 1, 0]])
    for combo in itertools.combinations(range(5), 2):
        assert members(sum(1 << i for i in combo)) == list(combo)


def test_masks_beyond_64_bits_round_trip() -> None:
    from coreopt.game.coalitions import mask_array, masks_of

    n = 130
    players = Players(n)
    masks = [(1 << 129) | 5, 1 << 64, (1 << n) - 2, 3]
    inc = incidence(masks, n)
    assert inc.shape == (4, n)
    assert np.flatnonzero(inc[0]).tolist() == [0, 2, 129]
    assert np.flatnonzero(inc[1]).tolist() == [64]
    assert inc[2].sum() == n - 1
    assert inc[2, 0] == 0
    assert masks_of(inc) == masks
    arr = mask_array(masks, n)
    assert arr.dtype == object
    assert arr.tolist() == masks
    assert mask_array(np.array([5, 3]), 3).dtype == np.int64  # the fast path below 63 players
    assert players.coalition(masks[0]) == frozenset({0, 2, 129})
    assert players.mask({0, 2, 129}) == masks[0]
    with pytest.raises(ValueError, match="beyond"):
        incidence([1 << n], n)


def test_random_masks_at_any_n_are_proper_and_uniform() -> None:
    from coreopt.game.separation import random_masks

    rng = np.random.default_rng(0)
    for n in (10, 62, 63, 200):
        masks = random_masks(rng, n, 400)
        assert len(masks) == 400
        assert all(0 < m < (1 << n) - 1 for m in masks)
        # each player is in about half of them (binomial(400, 1/2): 4 sigma = 40)
        share = incidence(masks, n).mean(axis=0)
        assert np.all(np.abs(share - 0.5) < 0.1), n
