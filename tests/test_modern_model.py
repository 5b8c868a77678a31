"""The modern model options and Muon on tiny models: the arch preset, each option's effect,
KV-cache generation, HellaSwag scoring, checkpoint round trip, HF export refusal, and the
Muon + AdamW split and its state_dict."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pipeline.config import MODEL_ARCHS, Config, ConfigError, ModelConfig, OptimConfig, apply_overrides, from_dict
from _scoring_reference import reference_hellaswag
from pipeline.hellaswag import Example, score_hellaswag
from pipeline.hf import HFError, export_hf
from pipeline.model import GPT
from pipeline.optimizer import MuonAdamW, build_optimizer, muon_split

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=32)
OPTIONS = [dict(pos_emb="rope"), dict(pos_emb="sinusoidal"), dict(norm="rmsnorm"), dict(qk_norm=True),
           dict(mlp="relu2"), dict(tie_embeddings=False), dict(zero_init=True),
           dict(tie_embeddings=False, zero_init=True), dict(logit_softcap=5.0), dict(arch="modern")]


def model(seed: int = 0, **options) -> GPT:
    torch.manual_seed(seed)
    return GPT(from_dict({"model": {**TINY, **options}}).model)


def tokens(b=2, t=24, seed=1):
    return torch.randint(0, 50257, (b, t), generator=torch.Generator().manual_seed(seed))


def test_arch_is_a_preset_that_keys_beside_it_override():
    cfg = from_dict({"model": {"arch": "modern", "qk_norm": False}}).model
    assert {k: getattr(cfg, k) for k in MODEL_ARCHS["modern"]} == {**MODEL_ARCHS["modern"], "qk_norm": False}
    # The same on the command line, and the resolved config re-reads to the same model.
    over = apply_overrides(Config(), ["--model.arch=modern", "--model.qk_norm=false"]).model
    assert over == cfg
    assert from_dict({"model": dataclasses.asdict(cfg)}).model == cfg
    assert ModelConfig().gpt2_incompatible() == [] and len(cfg.gpt2_incompatible()) == 6


@pytest.mark.parametrize("bad", [dict(arch="llama"), dict(pos_emb="alibi"), dict(norm="batch"), dict(mlp="swiglu"),
                                 dict(logit_softcap=-1.0), dict(pos_emb="rope", n_head=32, n_embd=96)])
def test_bad_option_values_name_the_key(bad):
    key = next(iter(bad))
    with pytest.raises(ConfigError, match=f"model.{key}"):
        from_dict({"model": {**TINY, **bad}}).validate()


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_each_option_trains_and_generates_with_the_cache(options, one_thread):
    gpt2, m = model(), model(**options)
    idx = tokens()
    _, loss = m(idx[:, :-1], idx[:, 1:])
    assert torch.isfinite(loss)
    assert not torch.equal(m(idx)[0], gpt2(idx)[0])  # the option changes the function
    loss.backward()
    assert all(p.grad is not None for p in m.parameters())
    # KV cache == full recompute, token for token (greedy) and position by position.
    prompt = idx[:, :5]
    assert torch.equal(m.generate(prompt, 8, temperature=0), m.generate(prompt, 8, temperature=0, use_cache=False))
    full, _ = m(idx[:, :12])
    cache = [None] * TINY["n_layer"]
    m(idx[:, :8], cache=cache)
    step, _ = m(idx[:, 8:9], cache=cache, start_pos=8)
    torch.testing.assert_close(step[:, 0], full[:, 8], rtol=1e-5, atol=1e-5)


def test_modern_model_starts_uniform_and_has_its_own_head(one_thread):
    m = model(arch="modern")
    assert m.lm_head.weight is not m.transformer.wte.weight and "wpe" not in m.transformer
    assert all(not b.attn.c_proj.weight.any() and not b.mlp.c_proj.weight.any()
               for b in m.transformer.h)
    idx = tokens()
    logits, loss = m(idx[:, :-1], idx[:, 1:])
    assert loss.item() == pytest.approx(torch.log(torch.tensor(50257.0)).item(), abs=1e-4)
    padded = m.config.padded_vocab_size - m.config.vocab_size
    assert m.num_params() == m.num_params(include_padding=True) - 2 * padded * TINY["n_embd"]


def test_softcap_bounds_the_logits(one_thread):
    m = model(logit_softcap=2.0)
    with torch.no_grad():
        m.lm_head.weight.mul_(1000)  # tied: the embedding grows too; logits far beyond the cap
    logits, _ = m(tokens())
    real = logits[..., :m.config.vocab_size]
    assert real.abs().max() <= 2.0 and real.abs().max() > 1.9


def test_rotary_depends_on_relative_position_only(one_thread):
    """Shifting every position (start_pos) leaves a rope model's output unchanged; a learned
    or sinusoidal table does not have that property."""
    idx = tokens(t=8)
    for options, invariant in ((dict(pos_emb="rope"), True), (dict(pos_emb="sinusoidal"), False)):
        m = model(**options).eval()
        a, _ = m(idx)
        b, _ = m(idx, cache=[None] * TINY["n_layer"], start_pos=10)
        assert torch.allclose(a, b, atol=1e-4) == invariant, options


def test_hellaswag_scores_a_modern_model_like_its_forward(one_thread):
    m = model(arch="modern", seed=3)
    with torch.no_grad():  # leave the zero init so the four endings score differently
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    gen = torch.Generator().manual_seed(5)
    examples = [Example(ctx=torch.randint(0, 50257, (6,), generator=gen).tolist(),
                        endings=[torch.randint(0, 50257, (n,), generator=gen).tolist() for n in (2, 3, 4, 5)],
                        label=i % 4, line=i) for i in range(3)]
    torch.testing.assert_close(score_hellaswag(m, examples, torch.device("cpu")), reference_hellaswag(m, examples))


def test_checkpointed_modern_model_round_trips_and_export_is_refused(tmp_path, one_thread):
    m = model(arch="modern")
    with pytest.raises(HFError, match="model.pos_emb = 'rope'.*model.logit_softcap = 30.0"):
        export_hf(m, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    restored = GPT(m.config)
    restored.load_state_dict(m.state_dict())  # no rotary table in the state dict to go stale
    assert "rotary.inv_freq" not in m.state_dict()
    idx = tokens()
    assert torch.equal(restored(idx)[0], m(idx)[0])


def test_activation_checkpointing_passes_the_rotary_tables(one_thread):
    idx = tokens()
    plain, ckpt = model(arch="modern"), model(arch="modern", activation_checkpointing=True)
    for m in (plain, ckpt):
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.01)
    a, b = plain(idx[:, :-1], idx[:, 1:])[1], ckpt(idx[:, :-1], idx[:, 1:])[1]
    a.backward(), b.backward()
    assert torch.equal(a, b)
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.equal(p.grad, q.grad), name


# -- Muon ---------------------------------------------------------------------------------

def test_muon_takes_the_block_matrices_and_adamw_the_rest():
    for options in (dict(arch="modern"), {}):
        m = model(**options)
        hidden, embed, head, vectors = muon_split(m)
        ids = [id(p) for group in (hidden, embed, head, vectors) for p in group]
        assert len(ids) == len(set(ids)) == len({id(p) for p in m.parameters()})
        assert {id(p) for p in hidden} == {id(p) for p in m.transformer.h.parameters() if p.dim() == 2}
        assert all(p.dim() == 2 for p in embed + head) and all(p.dim() == 1 for p in vectors)
        assert len(head) == (0 if m.config.tie_embeddings else 1)
    cfg = OptimConfig(name="muon", max_lr=1e-3, muon_lr=0.02, embed_lr=0.3, head_lr=0.004)
    opt, _ = build_optimizer(model(arch="modern"), cfg, "cpu")
    assert isinstance(opt.muon, torch.optim.Muon) and isinstance(opt.adamw, torch.optim.AdamW)
    scales = [g["lr_scale"] for g in opt.param_groups]
    assert scales == pytest.approx([20.0, 300.0, 4.0, 1.0])


def test_muon_state_dict_round_trip_continues_bitwise(one_thread):
    """Save after 2 steps, load into a fresh optimizer + model, take 2 more: identical to 4
    straight steps (the momentum buffers and AdamW moments carry over)."""
    cfg = OptimConfig(name="muon", max_lr=3e-3, muon_lr=0.02)
    idx = tokens(b=4)

    def steps(m, opt, n):
        for _ in range(n):
            _, loss = m(idx[:, :-1], idx[:, 1:])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    straight = model(arch="modern")
    opt, _ = build_optimizer(straight, cfg, "cpu")
    steps(straight, opt, 4)
    first = model(arch="modern")
    opt1, _ = build_optimizer(first, cfg, "cpu")
    steps(first, opt1, 2)
    model_sd, opt_sd = first.state_dict(), opt1.state_dict()
    assert set(opt_sd) == {"muon", "adamw"} and opt_sd["muon"]["state"]
    second = model(arch="modern", seed=99)
    second.load_state_dict(model_sd)
    opt2, _ = build_optimizer(second, cfg, "cpu")
    opt2.load_state_dict(opt_sd)
    steps(second, opt2, 2)
    for (name, a), b in zip(straight.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name


def test_adamw_state_is_refused_by_muon():
    opt, _ = build_optimizer(model(), OptimConfig(name="muon"), "cpu")
    adamw, _ = build_optimizer(model(), OptimConfig(), "cpu")
    assert isinstance(opt, MuonAdamW)
    with pytest.raises(ValueError, match="optim.name"):
        opt.load_state_dict(adamw.state_dict())


@pytest.mark.parametrize("bad", [dict(name="sgd"), dict(muon_lr=0.0), dict(muon_momentum=1.0), dict(head_lr=-1.0),
                                 dict(schedule="linear"), dict(cooldown_frac=1.5)])
def test_bad_optim_values_name_the_key(bad):
    key = next(iter(bad))
    with pytest.raises(ConfigError, match=f"optim.{key}"):
        from_dict({"optim": bad}).validate()


def test_packed_rows_with_position_and_segment_ids_equal_separate_rows(one_thread):
    """Rotary reads position_ids: two documents packed in one row (positions restarting at
    0, segments keeping them apart) score exactly as each document alone."""
    m = model(arch="modern", seed=4)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    a, b = tokens(b=1, t=7, seed=2), tokens(b=1, t=5, seed=3)
    packed = torch.cat([a, b], dim=1)
    positions = torch.cat([torch.arange(7), torch.arange(5)])[None]
    segments = torch.tensor([[1] * 7 + [2] * 5])
    logits, _ = m(packed, position_ids=positions, segment_ids=segments)
    torch.testing.assert_close(logits[:, :7], m(a)[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits[:, 7:], m(b)[0], rtol=1e-5, atol=1e-5)
    hidden = m.hidden_states(packed, position_ids=positions, segment_ids=segments)
    assert torch.equal(m.output_logits(hidden), logits)  # the soft-cap is in output_logits


def test_modern_model_compiles_and_steps_with_muon(one_thread):
    """torch.compile traces every option (rotary tables, soft-cap, QK-norm) without graph
    breaks that change results. The eager backend runs dynamo's full-graph tracing, what the options
    could break; inductor adds minutes of C++ codegen on a 2-core machine (a 3-step
    trainer run with --train.compile=true and Muon matched eager within 1e-3, run by hand)."""
    idx = tokens(b=4)
    results = []
    for compiled in (False, True):
        m = model(arch="modern", logit_softcap=5.0)
        opt, _ = build_optimizer(m, OptimConfig(name="muon", max_lr=3e-3, muon_lr=0.02), "cpu")
        run = torch.compile(m, backend="eager", fullgraph=True) if compiled else m
        losses = []
        for _ in range(3):
            _, loss = run(idx[:, :-1], idx[:, 1:])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        results.append(losses)
    assert results[0] == pytest.approx(results[1], abs=1e-5)
    assert results[0][2] < results[0][0]


def test_soft_capped_loss_is_chunked_and_equals_the_full_logits_loss(one_thread):
    """The cap sits inside pipeline/chunked_loss.py (so a capped head never builds the full
    logits): its loss and gradients equal F.cross_entropy over output_logits()."""
    import torch.nn.functional as F
    from pipeline.chunked_loss import linear_cross_entropy
    m = model(arch="modern", logit_softcap=3.0, seed=6)
    with torch.no_grad():
        m.lm_head.weight.normal_(0, 0.5)  # logits well into tanh's curve
    hidden = torch.randn(40, TINY["n_embd"], requires_grad=True)
    targets = tokens(b=1, t=40)[0]
    targets[::7] = -1
    ours = linear_cross_entropy(hidden, m.lm_head.weight, targets, m.config.vocab_size, rows=16, softcap=3.0)
    ours.backward()
    got = (hidden.grad.clone(), m.lm_head.weight.grad.clone())
    hidden.grad, m.lm_head.weight.grad = None, None
    reference = F.cross_entropy(m.output_logits(hidden).float(), targets, ignore_index=-1)
    reference.backward()
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[0], hidden.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], m.lm_head.weight.grad, rtol=1e-5, atol=1e-6)
    assert m.loss_from_hidden(hidden, targets).item() == pytest.approx(reference.item(), abs=1e-5)
