"""Synthetic sequence tasks generated in-process (no download), and the bundled digits images.

Every generator returns a :class:`SequenceTask` for next-token training: ``inputs`` ``(n, L)``
and ``targets`` ``(n, L)`` token ids, where ``targets[i, t]`` is the token the model must emit
after reading ``inputs[i, :t+1]``, and :data:`IGNORE` (``-100``, the default ``ignore_index`` of
``F.cross_entropy``) marks positions that are not scored. Token 0 is padding/noise everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100
"""Target value of unscored positions (``F.cross_entropy``'s default ``ignore_index``)."""


@dataclass(frozen=True)
class SequenceTask:
    """Inputs and targets of a synthetic task (see the module docstring)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    vocab_size: int

    def __post_init__(self) -> None:
        if self.inputs.shape != self.targets.shape:
            raise ValueError("inputs and targets must have the same shape")

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def accuracy(self, logits: torch.Tensor) -> float:
        """Fraction of scored positions whose argmax is the target."""
        mask = self.targets != IGNORE
        return float((logits.argmax(-1)[mask] == self.targets[mask]).float().mean())


def _gen(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    if generator is not None:
        return generator
    g = torch.Generator()
    if seed is not None:
        g.manual_seed(seed)
    else:
        g.seed()
    return g


def mqar(
    num_examples: int,
    *,
    num_kv_pairs: int = 8,
    seq_len: int = 64,
    vocab_size: int = 64,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> SequenceTask:
    """Multi-query associative recall (Arora et al., "Zoology", 2023).

    Layout: ``k_1 v_1 … k_n v_n`` (distinct keys from the lower half of the vocabulary, values
    from the upper half), then the query region: every key appears once again, in a random order
    and at random positions (noise token 0 elsewhere). After reading a query key the model must
    emit its value; only those positions are scored.
    """
    n = num_kv_pairs
    half = vocab_size // 2
    if n < 1 or n > half - 1:
        raise ValueError(f"num_kv_pairs must be in [1, {half - 1}] for vocab_size {vocab_size}")
    if seq_len < 4 * n:
        raise ValueError(f"seq_len must be >= 4 * num_kv_pairs = {4 * n}, got {seq_len}")
    g = _gen(seed, generator)
    inputs = torch.zeros(num_examples, seq_len, dtype=torch.long)
    targets = torch.full((num_examples, seq_len), IGNORE, dtype=torch.long)
    for i in range(num_examples):
        keys = torch.randperm(half - 1, generator=g)[:n] + 1
        values = torch.randint(half, vocab_size, (n,), generator=g)
        inputs[i, 0 : 2 * n : 2] = keys
        inputs[i, 1 : 2 * n : 2] = values
        # query slots: n positions among the pairs (2n + 2j) of the query region
        slots = (seq_len - 2 * n) // 2
        pos = 2 * n + 2 * torch.randperm(slots, generator=g)[:n]
        order = torch.randperm(n, generator=g)
        inputs[i, pos] = keys[order]
        targets[i, pos] = values[order]
    return SequenceTask(inputs, targets, vocab_size)


def copying(
    num_examples: int,
    *,
    length: int = 16,
    vocab_size: int = 16,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> SequenceTask:
    """Copy a random string: ``x_1 … x_n SEP x_1 … x_{n-1}``, scored on emitting ``x_1 … x_n``
    after ``SEP``. Tokens from ``2 … vocab_size - 1``; ``SEP = 1``."""
    if vocab_size < 3 or length < 1:
        raise ValueError("copying needs vocab_size >= 3 and length >= 1")
    g = _gen(seed, generator)
    x = torch.randint(2, vocab_size, (num_examples, length), generator=g)
    sep = torch.ones(num_examples, 1, dtype=torch.long)
    seq = torch.cat([x, sep, x], dim=1)
    inputs, targets = seq[:, :-1].clone(), seq[:, 1:].clone()
    targets[:, :length] = IGNORE  # score only the positions from SEP on
    return SequenceTask(inputs, targets, vocab_size)


def selective_copying(
    num_examples: int,
    *,
    num_tokens: int = 8,
    seq_len: int = 32,
    vocab_size: int = 16,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> SequenceTask:
    """Selective copying (Gu & Dao, "Mamba", 2023): ``num_tokens`` tokens scattered at random
    positions of a noise region of length ``seq_len`` (noise = 0), then ``SEP = 1``; the model
    must emit the non-noise tokens in order. Tokens from ``2 … vocab_size - 1``."""
    if vocab_size < 3 or not 1 <= num_tokens <= seq_len:
        raise ValueError("selective_copying needs vocab_size >= 3 and 1 <= num_tokens <= seq_len")
    g = _gen(seed, generator)
    region = torch.zeros(num_examples, seq_len, dtype=torch.long)
    toks = torch.randint(2, vocab_size, (num_examples, num_tokens), generator=g)
    for i in range(num_examples):
        pos = torch.randperm(seq_len, generator=g)[:num_tokens].sort().values
        region[i, pos] = toks[i]
    sep = torch.ones(num_examples, 1, dtype=torch.long)
    seq = torch.cat([region, sep, toks], dim=1)
    inputs, targets = seq[:, :-1].clone(), seq[:, 1:].clone()
    targets[:, :seq_len] = IGNORE  # score only after SEP
    return SequenceTask(inputs, targets, vocab_size)


def digits(
    *, test_fraction: float = 0.25, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8x8 digits (1797 images, no download), scaled to ``[0, 1]``.

    Returns ``(x_train, y_train, x_test, y_test)``, images ``(n, 1, 8, 8)`` float32, a
    stratification-free random split fixed by ``seed``. Needs scikit-learn (dev extra).
    """
    from sklearn.datasets import load_digits  # optional dependency, imported on use

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = round(test_fraction * len(y))
    te, tr = perm[:n_test], perm[n_test:]
    return x[tr], y[tr], x[te], y[te]
