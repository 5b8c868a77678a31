"""GPT.forward's position_ids / segment_ids / hidden_states and appending several tokens
after a KV cache: each is checked against running the pieces as separate sequences."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import ModelConfig
from pipeline.model import GPT

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=101, pad_vocab_to=64)


def tiny(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(**TINY)).eval()


def tokens(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 101, shape, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_hidden_states_through_the_head_are_the_logits():
    model, idx = tiny(), tokens(2, 9)
    logits, _ = model(idx)
    head = model.lm_head(model.hidden_states(idx))
    torch.testing.assert_close(head[..., :101], logits[..., :101], rtol=0, atol=0)


@torch.no_grad()
def test_default_position_ids_equal_explicit_arange_and_start_pos():
    model, idx = tiny(), tokens(3, 7)
    plain = model(idx)[0]
    explicit = model(idx, position_ids=torch.arange(7).expand(3, 7))[0]
    torch.testing.assert_close(explicit, plain, rtol=0, atol=0)
    shifted = model(idx, start_pos=5)[0]  # positions 5..11 without a cache
    torch.testing.assert_close(model(idx, position_ids=torch.arange(5, 12).expand(3, 7))[0], shifted,
                               rtol=0, atol=0)
    assert not torch.allclose(shifted, plain)  # positions do matter


@torch.no_grad()
def test_packed_segments_equal_separate_sequences():
    """Three documents in one row (plus padding) give each document's own logits."""
    model = tiny(1)
    docs = [tokens(1, n, seed=n)[0] for n in (5, 11, 3)]
    row = torch.cat(docs + [torch.zeros(4, dtype=torch.long)])[None]
    segments = torch.cat([torch.full((len(d),), s) for s, d in enumerate(docs)] + [torch.full((4,), -1)])[None]
    positions = torch.cat([torch.arange(len(d)) for d in docs] + [torch.arange(4)])[None]
    packed = model(row, position_ids=positions, segment_ids=segments)[0][0]
    start = 0
    for d in docs:
        alone = model(d[None])[0][0]
        torch.testing.assert_close(packed[start:start + len(d)], alone, rtol=1e-5, atol=1e-5)
        start += len(d)


@torch.no_grad()
def test_several_tokens_after_a_cache_equal_the_full_sequence():
    model, idx = tiny(2), tokens(2, 12)
    full = model(idx)[0]
    cache = [None] * model.config.n_layer
    first = model(idx[:, :5], cache=cache)[0]
    rest = model(idx[:, 5:], cache=cache, start_pos=5)[0]
    torch.testing.assert_close(torch.cat([first, rest], 1), full, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_shared_prefix_in_cache_with_segments_and_positions():
    """Right-padded prefixes of different lengths cached once, then continuations that
    attend to their own prefix only (the padding is another segment) at the right positions."""
    model = tiny(3)
    prefixes = [tokens(6, seed=1), tokens(3, seed=2)]
    conts = [tokens(4, seed=3), tokens(4, seed=4)]
    width = 6
    batch = torch.zeros(2, width, dtype=torch.long)
    seg = torch.ones(2, width, dtype=torch.long)
    for b, p in enumerate(prefixes):
        batch[b, :len(p)] = p
        seg[b, len(p):] = -1
    cache = [None] * model.config.n_layer
    model.hidden_states(batch, cache, segment_ids=seg)
    positions = torch.stack([torch.arange(len(p), len(p) + 4) for p in prefixes])
    seg_all = torch.cat([seg, torch.ones(2, 4, dtype=torch.long)], 1)
    got = model(torch.stack(conts), cache=cache, start_pos=width, position_ids=positions, segment_ids=seg_all)[0]
    for b in range(2):
        alone = model(torch.cat([prefixes[b], conts[b]])[None])[0][0, len(prefixes[b]):]
        torch.testing.assert_close(got[b], alone, rtol=1e-5, atol=1e-5)


def test_bad_shapes_and_positions_are_clear_errors():
    model, idx = tiny(), tokens(2, 5)
    with pytest.raises(ValueError, match="position_ids has shape"):
        model(idx, position_ids=torch.arange(5))
    with pytest.raises(ValueError, match="exceeds block_size 64"):
        model(idx, position_ids=torch.full((2, 5), 64))
    with pytest.raises(ValueError, match="segment_ids has shape"):
        model(idx, segment_ids=torch.zeros(2, 4, dtype=torch.long))


def test_segments_and_positions_keep_gradients_flowing():
    model = tiny().train()
    idx = tokens(2, 8)
    seg = torch.tensor([[0] * 3 + [1] * 5] * 2)
    _, loss = model(idx, idx, segment_ids=seg, position_ids=torch.arange(8).expand(2, 8))
    loss.backward()
    assert model.transformer.wpe.weight.grad.abs().sum() > 0
