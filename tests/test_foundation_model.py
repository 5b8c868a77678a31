"""pipeline/model.py and pipeline/optimizer.py on tiny CPU models: loss definition, init,
KV-cache generation, sampling filters, activation checkpointing, AdamW groups, presets."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import MODEL_PRESETS, ModelConfig, OptimConfig, model_preset
from pipeline.model import GPT, sample_next
from pipeline.optimizer import build_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")


TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=101, pad_vocab_to=64)  # padded to 128


def tiny(seed: int = 0, sharp: bool = False, **overrides) -> GPT:
    torch.manual_seed(seed)
    model = GPT(ModelConfig(**{**TINY, **overrides}))
    if sharp:  # large embeddings -> decisive logits, so greedy argmax never hinges on 1e-7 noise
        torch.nn.init.normal_(model.transformer.wte.weight, std=1.0)
    return model.eval()


def test_loss_is_cross_entropy_over_the_real_vocab():
    model = tiny()
    idx = torch.randint(0, 101, (3, 20))
    targets = torch.randint(0, 101, (3, 20))
    targets[0, :5] = -1
    logits, _ = model(idx)
    none, loss = model(idx, targets)
    assert none is None  # with targets the full logits are never built (pipeline/chunked_loss.py)
    assert logits.shape == (3, 20, 128)
    real = logits[..., :101]
    expected = F.cross_entropy(real.reshape(-1, 101), targets.reshape(-1), ignore_index=-1)
    assert torch.allclose(loss, expected, atol=1e-6)
    # The pad columns carry no probability, so a softmax over the padded vocab is the real one.
    assert torch.allclose(logits.softmax(-1)[..., :101], real.softmax(-1), atol=1e-7)
    assert logits.softmax(-1)[..., 101:].max() == 0
    assert torch.isfinite(logits).all()  # finfo.min, not -inf: p * log p stays finite
    assert model(idx)[1] is None


def test_padding_rows_get_no_gradient_from_the_loss():
    model = tiny().train()
    idx = torch.randint(0, 101, (2, 16))
    _, loss = model(idx, idx)
    loss.backward()
    grad = model.transformer.wte.weight.grad
    assert grad[101:].abs().max() == 0 and grad[:101].abs().max() > 0


def test_init_and_weight_tying():
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=4, n_head=4, n_embd=256, block_size=64, vocab_size=1000)
    model = GPT(cfg)
    assert model.lm_head.weight is model.transformer.wte.weight
    residual_std = 0.02 / math.sqrt(2 * cfg.n_layer)
    for block in model.transformer.h:
        assert block.attn.c_proj.weight.std().item() == pytest.approx(residual_std, rel=0.05)
        assert block.mlp.c_proj.weight.std().item() == pytest.approx(residual_std, rel=0.05)
        assert block.mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert block.attn.c_attn.bias.abs().max() == 0
        assert torch.equal(block.ln_1.weight, torch.ones(256))
    assert model.transformer.wpe.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_forward_rejects_sequences_longer_than_block_size():
    model = tiny()
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="block_size"):
        model.generate(torch.zeros(1, 60, dtype=torch.long), max_new_tokens=5)


@pytest.mark.parametrize("batch,prompt_len,new", [(1, 1, 40), (3, 5, 30), (2, 17, 47)])
def test_kv_cache_greedy_equals_full_recompute(batch, prompt_len, new):
    model = tiny(seed=batch, sharp=True)
    prompt = torch.randint(0, 101, (batch, prompt_len), generator=torch.Generator().manual_seed(prompt_len))
    cached = model.generate(prompt, new, temperature=0, use_cache=True)
    full = model.generate(prompt, new, temperature=0, use_cache=False)
    assert cached.shape == (batch, prompt_len + new)
    assert torch.equal(cached, full)
    assert torch.equal(cached[:, :prompt_len], prompt)


def test_kv_cache_feeds_one_token_per_step():
    """Linear cost: after the prompt, each forward pass sees exactly one new position."""
    model = tiny()
    seen = []
    model.transformer.wte.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[1]))
    model.generate(torch.zeros(2, 7, dtype=torch.long), 10, temperature=0)
    assert seen == [7] + [1] * 9
    seen.clear()
    model.generate(torch.zeros(2, 7, dtype=torch.long), 10, temperature=0, use_cache=False)
    assert seen == list(range(7, 17))


def test_seeded_sampling_is_reproducible():
    model = tiny()
    prompt = torch.zeros(2, 3, dtype=torch.long)
    a = model.generate(prompt, 30, temperature=1.0, seed=7)
    b = model.generate(prompt, 30, temperature=1.0, seed=7)
    c = model.generate(prompt, 30, temperature=1.0, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(model.generate(prompt, 30, top_k=5, top_p=0.9, seed=3, use_cache=False),
                       model.generate(prompt, 30, top_k=5, top_p=0.9, seed=3, use_cache=True))
    assert int(a.max()) < 101  # never a padding id


def test_top_k_one_and_tiny_top_p_are_greedy():
    model = tiny(sharp=True)
    prompt = torch.randint(0, 101, (3, 4), generator=torch.Generator().manual_seed(1))
    greedy = model.generate(prompt, 20, temperature=0)
    assert torch.equal(model.generate(prompt, 20, temperature=1.0, top_k=1, seed=5), greedy)
    assert torch.equal(model.generate(prompt, 20, temperature=1.0, top_p=1e-6, seed=5), greedy)


def test_sample_next_filters():
    probs = torch.tensor([0.4, 0.3, 0.2, 0.06, 0.04])
    logits = probs.log().expand(4000, 5).contiguous()
    gen = torch.Generator().manual_seed(0)

    def draws(**kw) -> set[int]:
        return set(sample_next(logits, 1.0, kw.get("top_k"), kw.get("top_p"), gen).flatten().tolist())

    assert draws() == {0, 1, 2, 3, 4}
    assert draws(top_k=3) == {0, 1, 2}
    assert draws(top_p=0.5) == {0, 1}  # 0.4 < 0.5, so the second token is still needed
    assert draws(top_p=0.35) == {0}
    assert draws(top_p=0.8, top_k=2) == {0, 1}
    assert torch.equal(sample_next(logits[:3], 0.0, None, None, gen), torch.zeros(3, 1, dtype=torch.long))
    # Low temperature sharpens: almost everything becomes the top token.
    low = sample_next(logits, 0.05, None, None, gen)
    assert (low == 0).float().mean() > 0.99


def test_activation_checkpointing_gives_identical_loss_and_grads():
    plain = tiny(seed=3).train()
    ckpt = tiny(seed=3, activation_checkpointing=True).train()
    ckpt.load_state_dict(plain.state_dict())
    calls = []  # a pre-hook: the recompute stops early, before a forward hook would fire
    ckpt.transformer.h[0].register_forward_pre_hook(lambda *a: calls.append(1))
    idx = torch.randint(0, 101, (2, 32), generator=torch.Generator().manual_seed(0))
    losses = []
    for model in (plain, ckpt):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        losses.append(loss)
    assert len(calls) == 2  # the block really was recomputed in backward
    assert torch.equal(losses[0], losses[1])
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.equal(p.grad, q.grad), name


def test_optimizer_decays_only_matrices_and_reports_fused():
    model = tiny()
    opt, fused = build_optimizer(model, OptimConfig(weight_decay=0.1), "cpu")
    decay, no_decay = opt.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {names[id(p)] for p in decay["params"]} == {n for n, p in model.named_parameters() if p.dim() >= 2}
    assert all(names[id(p)].endswith(("bias", "ln_1.weight", "ln_2.weight", "ln_f.weight")) for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))  # tied wte once
    assert fused is True and opt.defaults["fused"] is True  # torch has a fused CPU AdamW
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["eps"] == 1e-8
    _, fused = build_optimizer(model, OptimConfig(fused="false"), "cpu")
    assert fused is False
    # One real step moves the weights.
    before = model.transformer.wpe.weight.detach().clone()
    model.train()
    model(torch.randint(0, 101, (2, 8)), torch.randint(0, 101, (2, 8)))[1].backward()
    opt.step()
    assert not torch.equal(before, model.transformer.wpe.weight)


PUBLISHED = {"gpt2": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080, "gpt2-xl": 1_557_611_200}


@pytest.mark.parametrize("name", list(MODEL_PRESETS))
def test_preset_parameter_counts(name):
    """The published GPT-2 sizes, cross-checked against transformers' GPT-2 of the same shape."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = model_preset(name)
    with torch.device("meta"):
        ours = GPT(cfg)
        theirs = GPT2LMHeadModel(GPT2Config(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd))
    assert ours.num_params() == PUBLISHED[name] == theirs.num_parameters()
    assert ours.num_params(include_padding=True) == PUBLISHED[name] + 47 * cfg.n_embd
