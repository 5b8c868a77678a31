"""torch.compile under DDP (2 gloo ranks on CPU), as every shipped GPT-2 config trains:
the same losses as eager, a checkpoint that resumes in eager and in compiled mode, and
that eval and the HF export load.

Slow: inductor compiles the model once per process (~30 s here); the run is built once
and the compiled resume reuses inductor's on-disk cache of the same graphs.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from _train_support import TINY_TOML, losses, memo_dir, shared_shards, state, write_config
from conftest import run_torchrun, subprocess_env
from eval.__main__ import main as eval_main
from pipeline.atomic import read_jsonl
from pipeline.checkpoint import checkpoint_dir, load_model, strip_wrapper_prefixes
from pipeline.config import from_dict
from pipeline.hf import main as hf_main
from pipeline.hf import to_hf_state_dict
from pipeline.model import GPT

pytestmark = pytest.mark.slow

STEPS = 10
TOML = TINY_TOML.replace("max_steps = 6", f"max_steps = {STEPS}").replace("checkpoint_every = 3",
                                                                            "checkpoint_every = 5")
TOL = 1e-4


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
    """One inductor cache for this module's compiled runs (and nobody else's)."""
    return subprocess_env(TORCHINDUCTOR_CACHE_DIR=str(tmp_path_factory.mktemp("inductor")))


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return write_config(tmp_path_factory.mktemp("compile") / "tiny10.toml", shared_shards(tmp_path_factory), TOML)


def _two_ranks(config, run, env, *extra):
    return run_torchrun(2, "train", "--config", config, "--run-dir", run, *extra, env=env)


@pytest.fixture(scope="module")
def eager(tmp_path_factory, config):
    return memo_dir(tmp_path_factory, "eager10_2p", lambda p: _two_ranks(config, p / "run", subprocess_env())) / "run"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, config, cache_env):
    def build(path):
        proc = _two_ranks(config, path / "run", cache_env, "--train.compile=true")
        assert "compile True" in proc.stdout
    return memo_dir(tmp_path_factory, "compiled10_2p", build) / "run"


def test_compiled_ddp_losses_match_eager(compiled, eager):
    fast, slow = losses(compiled), losses(eager)
    assert list(fast) == list(range(1, STEPS + 1))
    for step in fast:
        assert abs(fast[step] - slow[step]) < TOL, (step, fast[step], slow[step])
    assert fast[STEPS] < fast[1] - 0.5  # it trained
    # The trainer saves the unwrapped model: no DDP 'module.' or compile '_orig_mod.' prefixes.
    saved = torch.load(checkpoint_dir(compiled, STEPS) / "model.pt", weights_only=True)
    assert not [k for k in saved if k.startswith(("module.", "_orig_mod."))]


@pytest.mark.parametrize("mode", ["eager", "compiled"])
def test_a_compiled_checkpoint_resumes_in_either_mode(compiled, config, cache_env, tmp_path, mode):
    run = tmp_path / "run"
    shutil.copytree(compiled, run)
    shutil.rmtree(checkpoint_dir(run, STEPS))  # resume from step 5
    _two_ranks(config, run, cache_env, f"--train.compile={str(mode == 'compiled').lower()}")
    resumed, reference = losses(run), losses(compiled)
    assert list(resumed) == list(range(1, STEPS + 1))
    for step in range(6, STEPS + 1):
        assert abs(resumed[step] - reference[step]) < TOL, (mode, step, resumed[step], reference[step])
    assert state(run, STEPS)["loader"] == state(compiled, STEPS)["loader"]


def test_eval_and_hf_export_load_the_compiled_checkpoint(compiled, tmp_path):
    transformers = pytest.importorskip("transformers")
    run = tmp_path / "run"
    shutil.copytree(compiled, run)
    ckpt = checkpoint_dir(run, STEPS)
    assert eval_main(["--checkpoint", str(ckpt), "--tasks", "val", "--no-report"]) == 0
    rows = [r for r in read_jsonl(run / "eval" / "results.jsonl") if r["step"] == STEPS and r["metric"] == "val_loss"]
    assert len(rows) == 1 and 0 < rows[0]["value"] < 11
    out = tmp_path / "hf"
    assert hf_main(["export", str(ckpt), str(out)]) == 0
    ours, _ = load_model(ckpt)
    theirs = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    idx = torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ours.eval()(idx)[0][..., :50257]
        got = theirs(idx).logits
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()


def test_wrapped_state_dict_prefixes_are_accepted():
    """A state dict saved from DDP(torch.compile(model)) (or the reverse) loads as the plain model's."""
    cfg = from_dict({"model": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 8}}).model
    plain = GPT(cfg).state_dict()
    for prefix in ("module._orig_mod.", "_orig_mod.module.", "module.", "_orig_mod."):
        wrapped = {prefix + k: v for k, v in plain.items()}
        model = GPT(cfg)
        model.load_state_dict(strip_wrapper_prefixes(wrapped))
        assert all(torch.equal(model.state_dict()[k], v) for k, v in plain.items())
        hf = to_hf_state_dict(wrapped, cfg)
        assert torch.equal(hf["transformer.wpe.weight"], plain["transformer.wpe.weight"])
