"""Green lists keyed by a secret and the last tokens, and vocabulary maps between tokenizers.

A *green list* ``S(c)`` is a pseudo-random subset of the vocabulary chosen by a secret key and the
*seeding n-gram* of a context ``c`` (its last ``w`` tokens). Fingerprinting nudges the teacher
towards green tokens; detection asks whether a student puts more than the chance mass ``γ`` on
them. Two green lists share one interface (:class:`GreenList`):

* :class:`HashGreenList` (antidistillation fingerprinting): each token is green independently with
  probability ``γ`` through a keyed integer hash of ``(key, n-gram, token)``, vectorised over the
  vocabulary and the batch; special tokens are never green.
* :class:`KGWGreenList` (the red/green-list watermark of Kirchenbauer et al., as shipped by
  ``transformers``): a fixed-size random subset of ``⌊γ V⌋`` tokens seeded by the previous token,
  computed by ``transformers.WatermarkLogitsProcessor`` itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from coreopt.sampling._checks import check_real, require_transformers

_MASK32 = 0xFFFFFFFF
_MUL = 0x45D9F3B  # < 2**27: products of 32-bit values stay below 2**59 in int64


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer hash (two multiply-xorshift rounds) on int64 tensors in
    ``[0, 2**32)``; no intermediate exceeds ``2**63``, so it is exact on every device."""
    x = x ^ (x >> 16)
    x = (x * _MUL) & _MASK32
    x = x ^ (x >> 16)
    x = (x * _MUL) & _MASK32
    return x ^ (x >> 16)


def key_words(key: int | str | bytes) -> tuple[int, int, int, int]:
    """Four 32-bit words derived from a secret key (BLAKE2b of its canonical bytes)."""
    if isinstance(key, bool) or not isinstance(key, int | str | bytes):
        raise TypeError(f"key must be an int, str or bytes, got {type(key).__name__}")
    raw = key if isinstance(key, bytes) else str(key).encode("utf-8")
    tag = b"int:" if isinstance(key, int) else b"str:" if isinstance(key, str) else b"bytes:"
    digest = hashlib.blake2b(tag + raw, digest_size=16, person=b"coreopt-adfp").digest()
    w = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    return w[0], w[1], w[2], w[3]


@runtime_checkable
class GreenList(Protocol):
    """What fingerprinting and detection need from a green list.

    Attributes:
        vocab_size: width of the masks (the teacher's vocabulary).
        context_width: ``w``, the number of previous tokens that seed the list.
        gamma: the chance probability that an eligible token is green.
    """

    @property
    def vocab_size(self) -> int: ...

    @property
    def context_width(self) -> int: ...

    @property
    def gamma(self) -> float: ...

    def mask(self, ngrams: torch.Tensor) -> torch.Tensor:
        """``(N, vocab_size)`` bool: the green tokens of each ``(N, w)`` seeding n-gram."""
        ...

    def eligible(self, device: Any = None) -> torch.Tensor:
        """``(vocab_size,)`` bool: the tokens that can be green (the rest never are)."""
        ...


def seed_ngrams(input_ids: torch.Tensor, width: int) -> torch.Tensor:
    """The last ``width`` tokens of each row, ``-1`` where the row is shorter (``(B, width)``)."""
    b, t = input_ids.shape
    if t >= width:
        return input_ids[:, t - width :]
    pad = torch.full((b, width - t), -1, dtype=input_ids.dtype, device=input_ids.device)
    return torch.cat([pad, input_ids], dim=1)


@dataclass(frozen=True)
class HashGreenList:
    """Keyed hash green list of antidistillation fingerprinting.

    Token ``t`` is green for the n-gram ``(c_1, …, c_w)`` iff
    ``H(key, c_1, …, c_w, t) < γ·2³²`` with ``H`` a chain of bijective 32-bit integer hashes
    seeded by 128 bits derived from the key; each token is therefore green independently with
    probability ``γ`` over keys, and the mask of a batch of n-grams is computed for the whole
    vocabulary at once. Special tokens are never green. (The hash is a fast pseudo-random
    function for a statistical test, not a cryptographic MAC.)

    Attributes:
        key: the secret (int, str or bytes).
        vocab_size: the teacher's vocabulary size (width of the masks).
        gamma: probability that an eligible token is green (0.5 in the paper).
        context_width: ``w``, the previous tokens that seed the list (2 in the paper).
        special_token_ids: token ids that are never green (end-of-sequence, padding, ...).

    Examples:
        >>> import torch
        >>> g = HashGreenList(key="secret", vocab_size=1000, special_token_ids=(0, 1))
        >>> m = g.mask(torch.tensor([[5, 7], [5, 8]]))
        >>> m.shape, bool(m[:, :2].any()), 0.4 < float(m.float().mean()) < 0.6
        (torch.Size([2, 1000]), False, True)
    """

    key: int | str | bytes
    vocab_size: int
    gamma: float = 0.5
    context_width: int = 2
    special_token_ids: tuple[int, ...] = ()
    _words: tuple[int, int, int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_words", key_words(self.key))
        if isinstance(self.vocab_size, bool) or not isinstance(self.vocab_size, int):
            raise TypeError(f"vocab_size must be an int, got {type(self.vocab_size).__name__}")
        if self.vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {self.vocab_size}")
        gamma = check_real("gamma", self.gamma)
        if not 0.0 < gamma < 1.0:
            raise ValueError(f"gamma must lie in (0, 1), got {self.gamma!r}")
        if isinstance(self.context_width, bool) or not isinstance(self.context_width, int):
            raise TypeError("context_width must be an int")
        if self.context_width < 1:
            raise ValueError(f"context_width must be >= 1, got {self.context_width}")
        specials = tuple(sorted({int(t) for t in self.special_token_ids}))
        bad = [t for t in specials if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"special_token_ids {bad} are outside the vocabulary")
        object.__setattr__(self, "special_token_ids", specials)

    def _seeds(self, ngrams: torch.Tensor) -> torch.Tensor:
        k0, k1, k2, _ = self._words
        x = ngrams.to(torch.int64)
        s = _mix32(torch.full((x.shape[0],), k0 ^ k1, dtype=torch.int64, device=x.device))
        for j in range(self.context_width):
            tok = (x[:, j] + 1) & _MASK32  # -1 (no token) -> 0
            s = _mix32(s ^ _mix32(tok ^ k2))
        return s

    def _token_words(self, device: torch.device) -> torch.Tensor:
        """The per-token hash ``P(t)`` (depends on the key only; cached per device)."""
        cache: dict[str, torch.Tensor] = self.__dict__.setdefault("_token_cache", {})
        words = cache.get(str(device))
        if words is None:
            vocab = torch.arange(self.vocab_size, dtype=torch.int64, device=device)
            words = _mix32(_mix32(vocab ^ self._words[3]) ^ self._words[2])
            cache[str(device)] = words
        return words

    def mask(self, ngrams: torch.Tensor) -> torch.Tensor:
        """``(N, vocab_size)`` bool green mask of ``(N, context_width)`` n-grams (``-1``: none)."""
        if ngrams.dim() != 2 or ngrams.shape[1] != self.context_width:
            raise ValueError(
                f"ngrams must have shape (N, {self.context_width}), got {tuple(ngrams.shape)}"
            )
        seeds = self._seeds(ngrams)
        # two multiply-xorshift rounds of (row seed XOR token word); one round is not enough:
        # some pairs of seeds then give strongly correlated lists
        x = seeds[:, None] ^ self._token_words(ngrams.device)[None, :]
        for _ in range(2):
            x ^= x >> 16
            x *= _MUL
            x &= _MASK32
        x ^= x >> 16
        green = x < int(self.gamma * 2**32)
        if self.special_token_ids:
            green[:, list(self.special_token_ids)] = False
        return green

    def eligible(self, device: Any = None) -> torch.Tensor:
        out = torch.ones(self.vocab_size, dtype=torch.bool, device=device)
        if self.special_token_ids:
            out[list(self.special_token_ids)] = False
        return out


class KGWGreenList:
    """The Kirchenbauer et al. red/green list as computed by ``transformers``.

    Wraps ``transformers.WatermarkLogitsProcessor`` with ``seeding_scheme="lefthash"``: the green
    list of a context is the first ``⌊γ V⌋`` entries of a permutation of the vocabulary seeded by
    ``key × (previous token)``. Every token can be green (special tokens included), so the chance
    rate is exactly ``⌊γ V⌋ / V`` (:attr:`gamma`).

    Args:
        vocab_size: the teacher's vocabulary size.
        gamma: the green-list ratio (``greenlist_ratio``; 0.25 is transformers' default).
        key: the hashing key (``hashing_key``; transformers' default is 15485863).
        bias: the logit bias ``δ`` added to green tokens when sampling.
        device: where transformers draws its permutations (must match at generation and
            detection).
    """

    context_width = 1

    def __init__(
        self,
        vocab_size: int,
        *,
        gamma: float = 0.25,
        key: int = 15485863,
        bias: float = 2.0,
        device: Any = "cpu",
    ) -> None:
        transformers = require_transformers()
        if isinstance(key, bool) or not isinstance(key, int):
            raise TypeError(f"the KGW key must be an int (transformers' hashing_key), got {key!r}")
        self.processor = transformers.WatermarkLogitsProcessor(
            vocab_size=int(vocab_size),
            device=str(device),
            greenlist_ratio=float(gamma),
            bias=float(bias),
            hashing_key=key,
            seeding_scheme="lefthash",
            context_width=1,
        )
        self.vocab_size = int(vocab_size)
        self.key = key
        self.bias = float(bias)
        self.gamma = self.processor.greenlist_size / self.vocab_size
        self._cache: dict[int, torch.Tensor] = {}

    def __repr__(self) -> str:
        return (
            f"KGWGreenList(vocab_size={self.vocab_size}, gamma={self.gamma:.4g}, "
            f"key={self.key}, bias={self.bias})"
        )

    def _row(self, prev: int) -> torch.Tensor:
        row = self._cache.get(prev)
        if row is None:
            ids = self.processor._get_greenlist_ids(torch.tensor([prev]))
            row = torch.zeros(self.vocab_size, dtype=torch.bool)
            row[ids.cpu()] = True
            if len(self._cache) < 1_000_000:
                self._cache[prev] = row
        return row

    def mask(self, ngrams: torch.Tensor) -> torch.Tensor:
        if ngrams.dim() != 2 or ngrams.shape[1] != 1:
            raise ValueError(f"ngrams must have shape (N, 1), got {tuple(ngrams.shape)}")
        rows = [self._row(int(t)) for t in ngrams[:, 0].tolist()]
        if not rows:
            return torch.zeros((0, self.vocab_size), dtype=torch.bool, device=ngrams.device)
        return torch.stack(rows).to(ngrams.device)

    def eligible(self, device: Any = None) -> torch.Tensor:
        return torch.ones(self.vocab_size, dtype=torch.bool, device=device)


# --------------------------------------------------------------------------------------------
# Vocabulary maps
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VocabMapping:
    """Maps a student's token ids to the teacher's through shared token strings.

    Attributes:
        to_teacher: ``(V_student,)`` long tensor: the teacher id of each student token, ``-1``
            where the student's token string has no teacher counterpart (or is special).
        teacher_vocab_size: width of the teacher's green masks.
    """

    to_teacher: torch.Tensor
    teacher_vocab_size: int

    def __post_init__(self) -> None:
        t = self.to_teacher
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.dtype != torch.long:
            raise TypeError("to_teacher must be a 1-d torch.long tensor")
        if t.numel() and int(t.max()) >= self.teacher_vocab_size:
            raise ValueError("to_teacher holds ids outside the teacher's vocabulary")

    @property
    def student_vocab_size(self) -> int:
        return int(self.to_teacher.numel())

    @property
    def coverage(self) -> float:
        """Fraction of student tokens with a teacher counterpart."""
        return float((self.to_teacher >= 0).float().mean())

    @classmethod
    def identity(cls, vocab_size: int) -> VocabMapping:
        """The mapping of a student that shares the teacher's tokenizer."""
        return cls(torch.arange(int(vocab_size)), int(vocab_size))

    @classmethod
    def from_tokenizers(
        cls,
        teacher_tokenizer: Any,
        student_tokenizer: Any,
        *,
        teacher_vocab_size: int | None = None,
        student_vocab_size: int | None = None,
    ) -> VocabMapping:
        """Match token strings of two tokenizers (``get_vocab()``); special tokens never match.

        Args:
            teacher_tokenizer, student_tokenizer: objects with ``get_vocab() -> {str: id}`` and
                (optionally) ``all_special_ids``, e.g. ``transformers`` tokenizers.
            teacher_vocab_size, student_vocab_size: the models' logit widths when larger than the
                tokenizers (padded embedding tables); default: the largest id plus one.
        """
        tv = teacher_tokenizer.get_vocab()
        sv = student_tokenizer.get_vocab()
        t_special = set(getattr(teacher_tokenizer, "all_special_ids", []) or [])
        s_special = set(getattr(student_tokenizer, "all_special_ids", []) or [])
        nt = teacher_vocab_size or (max(tv.values()) + 1)
        ns = student_vocab_size or (max(sv.values()) + 1)
        to_teacher = torch.full((ns,), -1, dtype=torch.long)
        for s, sid in sv.items():
            tid = tv.get(s)
            if tid is None or sid in s_special or tid in t_special or sid >= ns or tid >= nt:
                continue
            to_teacher[sid] = tid
        return cls(to_teacher, int(nt))

    def map_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Teacher ids of student ids (``-1`` for unmapped ones and for ``-1`` itself)."""
        table = self.to_teacher.to(ids.device)
        safe = ids.clamp(min=0)
        out = table[safe]
        return torch.where(ids < 0, torch.full_like(out, -1), out)


def ngram_keys(ngrams: torch.Tensor) -> list[tuple[int, ...]]:
    """Hashable keys of ``(N, w)`` n-grams (for de-duplication)."""
    return [tuple(row) for row in ngrams.tolist()]


def unique_first(keys: Iterable[tuple[int, ...]]) -> dict[tuple[int, ...], list[int]]:
    """``{key: [indices where it occurs]}`` in first-occurrence order."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    return groups


def special_ids_of(tokenizer: Any = None, model: Any = None, extra: Sequence[int] = ()) -> tuple:
    """Special token ids from a tokenizer (``all_special_ids``) or a model config (bos/eos/pad)."""
    ids: set[int] = {int(t) for t in extra}
    if tokenizer is not None:
        ids.update(int(t) for t in (getattr(tokenizer, "all_special_ids", None) or []))
    if model is not None:
        config = getattr(model, "config", None)
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            v = getattr(config, name, None) if config is not None else None
            if isinstance(v, int):
                ids.add(v)
            elif isinstance(v, list | tuple):
                ids.update(int(x) for x in v)
    return tuple(sorted(ids))
