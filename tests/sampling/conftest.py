"""Tiny randomly initialised causal LMs shared by the sampling tests (no downloads)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

VOCAB = 40
BOS, EOS, PAD = 1, 2, 0


def tiny_llama(seed: int = 0, *, vocab: int = VOCAB, tie: bool = False, layers: int = 2):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        attn_implementation="eager",
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        tie_word_embeddings=tie,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def tiny_gpt2(seed: int = 0, *, vocab: int = VOCAB):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        vocab_size=vocab,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=128,
        attn_implementation="eager",
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    return transformers.GPT2LMHeadModel(cfg).eval()


def random_traces(n: int = 10, seed: int = 0, vocab: int = VOCAB):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        p = int(torch.randint(2, 6, (1,), generator=g))
        c = int(torch.randint(3, 8, (1,), generator=g))
        prompt = [BOS, *torch.randint(3, vocab, (p,), generator=g).tolist()]
        out.append((prompt, torch.randint(3, vocab, (c,), generator=g).tolist()))
    return out


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread (on a shared 2-core machine two threads can be 100x
    slower for these sizes); restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def teacher():
    return tiny_llama(0)


@pytest.fixture
def proxy():
    return tiny_llama(1)


@pytest.fixture
def traces():
    return random_traces()
