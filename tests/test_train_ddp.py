"""2-rank gloo DDP (torchrun) on CPU: equivalence with one process, exact resume after a kill
and after a preemption signal that reached only one rank, and resume at another world size."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _train_support import (STEPS, assert_bitwise_equal, baseline_1p, losses, memo_dir, state, train_here,
                            train_rows, wait_for, weights)
from conftest import REPO, run_torchrun, subprocess_env
from pipeline.checkpoint import latest_checkpoint
from train import EXIT_PREEMPTED


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    return baseline_1p(tmp_path_factory)  # 1 process: micro 1 x accum 4


@pytest.fixture(scope="module")
def config(baseline):
    return baseline.parent / "tiny.toml"


@pytest.fixture(scope="module")
def straight(tmp_path_factory, config):
    """2 ranks x micro 1 x accum 2 = the same 128-token global batch, uninterrupted."""
    def build(path):
        run_torchrun(2, "train", "--config", config, "--run-dir", path / "run")
    return memo_dir(tmp_path_factory, "straight_2p", build) / "run"


@pytest.fixture(scope="module")
def killed(tmp_path_factory, config):
    """2 ranks, every rank SIGKILLed right after step 5 (last checkpoint: step 3)."""
    def build(path):
        proc = run_torchrun(2, "train", "--config", config, "--run-dir", path / "run", check=False,
                            env=subprocess_env(GPT2_PIPELINE_FAILPOINTS="train.after_step=kill@step=5"))
        assert proc.returncode != 0
    return memo_dir(tmp_path_factory, "killed_2p", build) / "run"


def assert_close_weights(a, b):
    """Equal up to summation order. The attention key bias has an exactly-zero true gradient
    (softmax ignores a per-query constant), so Adam turns its rounding noise into updates of
    up to ~lr/100: atol 5e-5, while one wrong micro-batch would move weights by ~lr = 3e-3."""
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-4, atol=5e-5), (name, (a[name] - b[name]).abs().max())


def test_two_ranks_with_accum_k_match_one_process_with_accum_2k(straight, baseline):
    two, one = losses(straight), losses(baseline)
    assert list(two) == list(range(1, STEPS + 1))
    for step in two:
        assert abs(two[step] - one[step]) < 1e-5, (step, two[step], one[step])
    assert_close_weights(weights(straight, STEPS), weights(baseline, STEPS))
    assert state(straight, STEPS)["loader"]["position"] == state(baseline, STEPS)["loader"]["position"]
    assert len(state(straight, STEPS)["rng"]) == 2  # every rank's RNG state is kept


def worker_pids(torchrun: subprocess.Popen) -> dict[int, int]:
    """{rank: pid} of torchrun's worker processes (read from /proc)."""
    out = {}
    children = Path(f"/proc/{torchrun.pid}/task/{torchrun.pid}/children").read_text().split()
    for pid in map(int, children):
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        ranks = [e.split(b"=", 1)[1] for e in env if e.startswith(b"RANK=")]
        if ranks:
            out[int(ranks[0])] = pid
    return out


@pytest.mark.slow  # ~25 s: a killed 2-rank run, a signalled one and the resume
def test_kill_then_signal_on_one_rank_then_resume_is_bitwise_identical(killed, straight, config, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(killed, run)
    assert latest_checkpoint(run).name == "step_000003"
    # Resume; SIGTERM only rank 1 mid-run: both ranks must stop after the same step and save.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "train", "--config", str(config), "--run-dir", str(run)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(GPT2_PIPELINE_FAILPOINTS="train.after_step=sleep(1.5)"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    trimmed = []  # the copied metrics may hold steps 4-5 of the killed run until the trainer trims them

    def training_again() -> bool:
        steps = len(losses(run))
        trimmed.append(steps <= 3)
        return any(trimmed) and steps >= 4 and len(worker_pids(proc)) == 2
    wait_for(training_again, proc)
    pids = worker_pids(proc)
    os.kill(pids[1], signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    stopped = json.loads((run / "exit.json").read_text())
    assert stopped["code"] == EXIT_PREEMPTED and 4 <= stopped["step"] < STEPS, (out, err[-2000:])
    assert "stopped by a signal on another rank" in out  # rank 0 never saw the signal itself
    assert latest_checkpoint(run).name == f"step_{stopped['step']:06d}"
    run_torchrun(2, "train", "--config", config, "--run-dir", run)
    assert losses(run) == losses(straight)
    assert_bitwise_equal(weights(run, STEPS), weights(straight, STEPS))
    assert state(run, STEPS)["loader"] == state(straight, STEPS)["loader"]


def test_resume_a_two_rank_run_on_one_process_at_the_same_token(killed, straight, config, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(killed, run)
    train_here("--config", config, "--run-dir", run)  # world size 1: micro 1 x accum 4
    resumed, reference = losses(run), losses(straight)
    assert list(resumed) == list(range(1, STEPS + 1))
    for step in range(4, STEPS + 1):
        assert abs(resumed[step] - reference[step]) < 1e-5, (step, resumed[step], reference[step])
    assert_close_weights(weights(run, STEPS), weights(straight, STEPS))
    assert state(run, STEPS)["loader"] == state(straight, STEPS)["loader"]
    assert state(run, STEPS)["world_size"] == 1 and [r["step"] for r in train_rows(run)][:3] == [1, 2, 3]
