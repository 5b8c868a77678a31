"""The chunked lm_head + cross-entropy equals F.linear + F.cross_entropy, loss and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.chunked_loss import chunk_rows, linear_cross_entropy, token_losses


def full_loss(hidden, weight, targets, vocab):
    """Today's definition: logits over the real vocab, mean over targets != -1."""
    logits = F.linear(hidden, weight[:vocab])
    return F.cross_entropy(logits.float().reshape(-1, vocab), targets.reshape(-1), ignore_index=-1)


def case(seed: int, n: int, c: int, vocab: int, padded: int):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, c, generator=g, dtype=torch.float64).float()
    weight = (torch.randn(padded, c, generator=g) * 0.5)
    targets = torch.randint(0, vocab, (n,), generator=g)
    targets[torch.rand(n, generator=g) < 0.2] = -1
    return hidden, weight, targets


def grads(fn, hidden, weight, targets, vocab, **kw):
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    loss = fn(h, w, targets, vocab, **kw)
    (loss * 3.0).backward()  # a non-unit incoming gradient must be honoured
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("seed,n,c,vocab,padded,rows", [
    (0, 37, 16, 101, 128, 8),     # vocab and tokens not multiples of the chunk, a partial last chunk
    (1, 64, 32, 250, 256, 24),
    (2, 5, 8, 1000, 1024, 64),    # one chunk larger than the whole batch
    (3, 50, 12, 97, 97, 7),       # no padding at all
])
def test_equals_full_loss_and_gradients(seed, n, c, vocab, padded, rows):
    hidden, weight, targets = case(seed, n, c, vocab, padded)
    ref = grads(full_loss, hidden, weight, targets, vocab)
    got = grads(linear_cross_entropy, hidden, weight, targets, vocab, rows=rows)
    for a, b in zip(got, ref):
        assert a.shape == b.shape and (a - b).abs().max() <= 1e-5
    assert (got[2][vocab:] == 0).all()  # padding rows: no gradient
    assert got[0].item() == pytest.approx(ref[0].item(), abs=1e-6)


@pytest.mark.parametrize("seed,n,c,vocab,padded,rows,softcap", [
    (0, 37, 16, 101, 128, 8, 0.0),  # a partial last chunk, ignored targets (-1 -> 0)
    (2, 5, 8, 1000, 1024, 64, 0.0),  # one chunk larger than the batch
    (5, 40, 12, 97, 128, 16, 3.0),  # soft-capped logits
])
def test_token_losses_equal_per_token_cross_entropy(seed, n, c, vocab, padded, rows, softcap):
    hidden, weight, targets = case(seed, n, c, vocab, padded)
    logits = F.linear(hidden, weight[:vocab])
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    ref = F.cross_entropy(logits, targets, ignore_index=-1, reduction="none")
    got = token_losses(hidden.view(1, n, c), weight, targets.view(1, n), vocab, rows=rows, softcap=softcap)
    assert got.shape == (1, n) and got.dtype == torch.float32
    assert (got.view(-1) - ref).abs().max() <= 1e-5 and (got.view(-1)[targets == -1] == 0).all()
    # and their mean over the counted targets is the training loss
    assert abs(got.sum() / (targets != -1).sum() - linear_cross_entropy(hidden, weight, targets, vocab, rows=rows,
                                                                          softcap=softcap)) <= 1e-5


def test_batched_shape_and_no_grad_path():
    hidden, weight, targets = case(4, 48, 16, 101, 128)
    expected = full_loss(hidden, weight, targets, 101)
    with torch.no_grad():
        got = linear_cross_entropy(hidden.view(4, 12, 16).requires_grad_(), weight, targets.view(4, 12), 101, rows=16)
    assert (got - expected).abs() <= 1e-6


def test_all_targets_ignored_is_zero_with_zero_gradients_not_nan():
    """F.cross_entropy gives 0/0 = nan here; a loss-masked micro-batch that is all prompt
    (possible in fine-tuning) must not poison the step, so this loss is 0 and so are its grads."""
    hidden, weight, _ = case(5, 8, 4, 11, 16)
    targets = torch.full((8,), -1)
    hidden.requires_grad_(True)
    loss = linear_cross_entropy(hidden, weight, targets, 11, rows=8)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(hidden.grad, torch.zeros_like(hidden))


def test_chunk_rows_bounds_the_chunk_memory():
    rows = chunk_rows(50257, torch.device("cpu"))
    assert rows % 8 == 0 and rows * 50257 * 4 <= 32 << 20
    assert chunk_rows(10 ** 9, torch.device("cpu")) == 8


def test_under_torch_compile():
    """Slow-ish (~30 s on a 2-core CPU): the one compile test of the chunked loss."""
    hidden, weight, targets = case(6, 40, 16, 101, 128)
    ref = grads(full_loss, hidden, weight, targets, 101)
    compiled = torch.compile(lambda h, w, t, v: linear_cross_entropy(h, w, t, v, rows=16), fullgraph=True)
    got = grads(compiled, hidden, weight, targets, 101)
    for a, b in zip(got, ref):
        assert (a - b).abs().max() <= 1e-5


def test_gpt_forward_loss_and_grads_equal_the_full_logits_loss():
    """GPT.forward(idx, targets) through the chunked loss vs F.cross_entropy over the model's
    own full logits (pad columns masked), SFT-style -1 targets included."""
    from pipeline.config import ModelConfig
    from pipeline.model import GPT
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=101)
    a, b = GPT(cfg), GPT(cfg)
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, 101, (3, 24))
    targets = torch.randint(0, 101, (3, 24))
    targets[1, :10] = -1
    logits, none = a(idx)
    assert none is None
    ref = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
    ref.backward()
    none, loss = b(idx, targets)
    assert none is None
    loss.backward()
    assert (loss - ref).abs() <= 1e-6
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert (p.grad - q.grad).abs().max() <= 1e-5, name


def test_val_loss_equals_the_full_logits_sum():
    import numpy as np
    from pipeline.config import ModelConfig
    from pipeline.model import GPT
    from pipeline.val_loss import compute_val_loss
    torch.manual_seed(1)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=50))
    tokens = np.random.default_rng(0).integers(0, 50, 16 * 5 + 1)
    got, n, _ = compute_val_loss(model, tokens, 16, 2, torch.device("cpu"))
    seqs = torch.from_numpy(np.stack([tokens[i * 16: i * 16 + 17] for i in range(5)]))
    with torch.no_grad():
        logits, _ = model(seqs[:, :-1])
    ref = F.cross_entropy(logits.reshape(-1, logits.size(-1)), seqs[:, 1:].reshape(-1))
    assert n == 80 and abs(got - ref.item()) <= 1e-6
