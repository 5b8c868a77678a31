"""Muon + the modern model through the real trainer: 2-rank gloo DDP equals one process on
the same global batch, SIGTERM + resume is bitwise identical to the uninterrupted run, and the
non-finite guard skips a step without touching Muon's state. (torch.compile of the modern
model: tests/test_modern_model.py; the trainer only wraps the model in it.)"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from _train_support import (STEPS, TINY_TOML, assert_bitwise_equal, losses, memo_dir, shared_shards, state,
                            train_here, train_rows, wait_for, weights, write_config)
from conftest import REPO, run_torchrun, subprocess_env
from pipeline.checkpoint import latest_checkpoint
from pipeline.failpoints import armed
from train import EXIT_PREEMPTED, EXIT_USER_ERROR
from train.__main__ import main

# micro 2 x seq 32: one process accumulates 2 micro-batches, two ranks take one each. The
# global batch (128 tokens) and its rows are the same; only who adds the gradients differs.
MUON_TOML = (TINY_TOML.replace("block_size = 64\n", 'block_size = 64\narch = "modern"\n')
             .replace("warmup_steps = 2\n", 'warmup_steps = 2\nname = "muon"\nmuon_lr = 0.02\n')
             .replace("micro_batch_size = 1\n", "micro_batch_size = 2\n"))


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    path = memo_dir(tmp_path_factory, "muon_config", lambda p: write_config(p / "muon.toml",
                                                                              shared_shards(tmp_path_factory),
                                                                              MUON_TOML))
    return path / "muon.toml"


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, config):
    """1 process, 6 uninterrupted steps."""
    return memo_dir(tmp_path_factory, "muon_1p",
                    lambda p: train_here("--config", config, "--run-dir", p / "run")) / "run"


def test_muon_run_trains_the_modern_model(baseline):
    rows = train_rows(baseline)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.2, [r["loss"] for r in rows]
    opt = torch.load(baseline / "checkpoints" / f"step_{STEPS:06d}" / "optimizer.pt", weights_only=True)
    assert set(opt) == {"muon", "adamw"} and len(opt["muon"]["state"]) == 2 * 4  # 4 matrices per block
    cfg = state(baseline, STEPS)["config"]
    assert cfg["optim"]["name"] == "muon" and cfg["model"]["pos_emb"] == "rope"


def test_two_ranks_match_one_process_on_the_same_global_batch(tmp_path, config, baseline):
    run_torchrun(2, "train", "--config", config, "--run-dir", tmp_path / "run")
    two, one = losses(tmp_path / "run"), losses(baseline)
    assert list(two) == list(range(1, STEPS + 1))
    for step in two:
        assert abs(two[step] - one[step]) < 1e-5, (step, two[step], one[step])
    a, b = weights(tmp_path / "run", STEPS), weights(baseline, STEPS)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, worst
    assert state(tmp_path / "run", STEPS)["loader"]["position"] == state(baseline, STEPS)["loader"]["position"]


def test_sigterm_then_resume_with_muon_is_bitwise_identical(tmp_path, config, baseline):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "train", "--config", str(config), "--run-dir", str(run)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(GPT2_PIPELINE_FAILPOINTS="train.after_step=sleep(0.5)"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(train_rows(run)) >= 2, proc, timeout=900)  # imports + 2 steps on a crowded machine
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, err[-2000:]
    stopped = json.loads((run / "exit.json").read_text())["step"]
    assert 2 <= stopped < STEPS and latest_checkpoint(run).name == f"step_{stopped:06d}"
    train_here("--config", config, "--run-dir", run)
    assert losses(run) == losses(baseline)  # exact float equality, every step
    assert_bitwise_equal(weights(run, STEPS), weights(baseline, STEPS))
    saved = torch.load(run / "checkpoints" / f"step_{STEPS:06d}" / "optimizer.pt", weights_only=True)
    reference = torch.load(baseline / "checkpoints" / f"step_{STEPS:06d}" / "optimizer.pt", weights_only=True)
    for part in ("muon", "adamw"):
        for index, slots in reference[part]["state"].items():
            for name, value in slots.items():
                assert torch.equal(saved[part]["state"][index][name], value), (part, index, name)


def test_resuming_with_another_optimizer_is_refused(tmp_path, config, baseline, capsys):
    run = tmp_path / "run"
    shutil.copytree(baseline, run)
    code = main(["--config", str(config), "--run-dir", str(run), "--optim.name=adamw", "--train.max_steps=8"])
    assert code == EXIT_USER_ERROR
    assert "optim.name = 'muon' in the checkpoint, 'adamw' now" in capsys.readouterr().err


def test_non_finite_step_is_skipped_and_muon_carries_on(tmp_path, config):
    with armed("train.nan_loss", "return@step=3"):
        train_here("--config", config, "--run-dir", tmp_path / "run")
    got = losses(tmp_path / "run")
    assert got[3] is None and all(got[s] is not None and got[s] == got[s] for s in (4, 5, 6))
    final = weights(tmp_path / "run", STEPS)
    assert all(torch.isfinite(t).all() for t in final.values())
