"""Errors of :mod:`coreopt.sampling`."""

from __future__ import annotations

from coreopt.errors import CoreoptError


class VocabularyMismatchError(CoreoptError, ValueError):
    """Two models (or a model and its tokenizer) disagree about the vocabulary.

    Raised when the teacher's scores and the proxy's logits have different widths, when a token id
    is outside a model's embedding table, or when two tokenizers that must be the same differ.
    """


class GradientMismatchError(CoreoptError, ValueError):
    """A saved gradient does not fit the proxy: unknown parameter names, wrong shapes or a file
    that is not a gradient written by :func:`~coreopt.sampling.save_gradient`."""
