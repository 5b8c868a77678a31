"""python -m train --plan: parameter counts, batch arithmetic and the memory estimate of the
four shipped GPT-2 configs, checked against the model, the trainer's rule and autograd."""

from __future__ import annotations

import contextlib

import pytest
import torch

from conftest import REPO
from pipeline.commands.run import main as run_main
from pipeline.config import from_dict, resolve
from pipeline.model import GPT
from train.__main__ import main
from train.plan import CARDS_GB, GIB, USABLE, make_plan, memory, param_count, pick_micro_batch
from train.schedule import grad_accum_steps

# The published sizes the config files state (tied embedding, vocab 50257).
CONFIGS = {"gpt2-124m": 124_439_808, "gpt2-350m": 354_823_168, "gpt2-774m": 774_030_080,
           "gpt2-1558m": 1_557_611_200}


def config_path(name: str) -> str:
    return str(REPO / "configs" / f"{name}.toml")


@pytest.mark.parametrize("options", [{"bias": True}, {"bias": False}, {"arch": "modern"}])
def test_param_count_is_the_models_own_count(options):
    cfg = from_dict({"model": {"n_layer": 3, "n_head": 2, "n_embd": 48, "block_size": 40, **options}})
    model = GPT(cfg.model)
    assert param_count(cfg) == model.num_params(include_padding=True)
    assert param_count(cfg, include_padding=False) == model.num_params()


@pytest.mark.parametrize("name", CONFIGS)
def test_the_shipped_configs_at_world_size_8(name):
    cfg = resolve(config_path(name), [])
    plan = make_plan(cfg, 8, name)
    tc = cfg.train
    assert plan.params == CONFIGS[name]
    assert plan.grad_accum == grad_accum_steps(tc.total_batch_size, tc.micro_batch_size, tc.seq_len, 8)
    assert plan.tokens_per_step == tc.micro_batch_size * tc.seq_len * 8 * plan.grad_accum
    assert plan.total_tokens == plan.tokens_per_step * plan.steps >= 9.99e9  # the 10B-token runs
    assert plan.checkpoint_bytes == 12 * param_count(cfg)
    parts = plan.memory
    assert parts["total"] == sum(v for k, v in parts.items() if k != "total")
    assert parts["ddp_buckets"] == parts["weights"] > 0 and parts["weight_copies"] == parts["weights"] // 2
    # Each config file says its micro batch fits an 80 GB GPU: the estimate must agree.
    assert parts["total"] <= USABLE * 80 * GIB
    assert plan.picks[80] is not None and plan.picks[80] >= tc.micro_batch_size
    for gb in CARDS_GB:
        b = plan.picks[gb]
        if b is None:
            continue
        assert memory(cfg, b, 8)["total"] <= USABLE * gb * GIB
        assert grad_accum_steps(tc.total_batch_size, b, tc.seq_len, 8) >= 1  # a valid micro batch
        larger = [m for m in range(b + 1, tc.total_batch_size // (tc.seq_len * 8) + 1)
                  if (tc.total_batch_size // (tc.seq_len * 8)) % m == 0]
        assert all(memory(cfg, m, 8)["total"] > USABLE * gb * GIB for m in larger)  # the largest that fits


def test_memory_estimate_responds_to_what_it_models():
    cfg = resolve(config_path("gpt2-124m"), [])
    one, eight = memory(cfg, 64, 1), memory(cfg, 64, 8)
    assert one["ddp_buckets"] == 0 and eight["total"] - one["total"] == eight["ddp_buckets"]
    assert memory(cfg, 32, 8)["activations"] * 2 == eight["activations"]
    assert eight["loss_chunk"] < 2 * GIB  # chunked loss: never the 64 x 1024 x 50304 logits
    capped = ["--model.logit_softcap=30"]  # the model's path through the full logits
    full = memory(resolve(config_path("gpt2-124m"), capped), 64, 8)
    eager = memory(resolve(config_path("gpt2-124m"), [*capped, "--train.compile=false"]), 64, 8)
    assert eager["loss_chunk"] > full["loss_chunk"] > 10 * eight["loss_chunk"]
    ckpt = memory(resolve(config_path("gpt2-124m"), ["--model.activation_checkpointing=true"]), 64, 8)
    assert ckpt["activations"] < eight["activations"] / 4
    xl = resolve(config_path("gpt2-1558m"), [])
    xl_ckpt = resolve(config_path("gpt2-1558m"), ["--model.activation_checkpointing=true"])
    assert (pick_micro_batch(xl, 8, 40) or 0) < pick_micro_batch(xl, 8, 80) < pick_micro_batch(xl_ckpt, 8, 80)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_activation_estimate_matches_what_autograd_saves(dtype):
    """The activation term is the bytes of the tensors the backward keeps (no params), here
    measured on CPU at a tiny size; under autocast the saved bf16 weight copies are the
    estimate's weight_copies term, and the chunked loss keeps its loss_kept term."""
    cfg = from_dict({"model": {"n_layer": 3, "n_head": 4, "n_embd": 128, "block_size": 64, "vocab_size": 64},
                     "train": {"micro_batch_size": 4, "seq_len": 64, "total_batch_size": 256, "dtype": dtype}})
    torch.manual_seed(0)
    model = GPT(cfg.model)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t
    rows = torch.randint(0, 64, (4, 65))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        model(rows[:, :-1], rows[:, 1:])
    est = memory(cfg, 4, 1, device="cpu")
    expected = est["activations"] + est["weight_copies"] + est["loss_kept"]
    assert abs(sum(saved.values()) - expected) / expected < 0.03, (sum(saved.values()), expected)


def test_plan_cli_prints_one_column_per_config(capsys):
    argv = ["--plan", "--plan-world-size", "8"]
    for name in CONFIGS:
        argv += ["--config", config_path(name)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert all(name in header for name in CONFIGS)
    for count in CONFIGS.values():
        assert f"{count:,}" in out
    assert "micro batch for 80 GB cards" in out and "total (estimate)" in out


def test_plan_errors_are_one_line(capsys):
    assert main(["--plan", "--config", config_path("gpt2-124m"), "--plan-world-size", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: train.total_batch_size = 524288") and len(err.splitlines()) == 1
    assert main(["--run-dir", "x", "--plan-world-size", "8"]) == 2
    assert "only meaningful with --plan" in capsys.readouterr().err
    assert main(["--config", "a.toml", "--config", "b.toml", "--run-dir", "x"]) == 2
    assert "several only with --plan" in capsys.readouterr().err
    assert main([]) == 2
    assert "--run-dir" in capsys.readouterr().err


def test_pipeline_run_dry_run_prints_the_train_plan(tmp_path, capsys):
    assert run_main(["--config", config_path("gpt2-350m"), "--run-dir", str(tmp_path / "run"), "--dry-run",
                     "--nproc-per-node", "4", "--train.micro_batch_size=16"]) == 0
    out = capsys.readouterr().out
    plan = out.split("train plan at world size 4")[1]
    assert "354,823,168" in plan and "16 x 1024" in plan
    row = next(line for line in plan.splitlines() if line.startswith("| grad_accum"))
    assert row.split("|")[2].strip() == "8"  # 524,288 / (16 x 1024 x 4)
