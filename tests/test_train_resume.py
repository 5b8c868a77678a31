"""Exact resume in one process, with real kills: SIGKILL mid-run, SIGTERM (preemption),
and SIGKILL in the middle of a checkpoint write. Each interrupted-and-resumed run must
reproduce the uninterrupted run's per-step losses and final weights bit for bit
(CPU, fp32, one thread per process)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from _train_support import (STEPS, assert_bitwise_equal, baseline_1p, ckpt_dir, losses, state, train_here,
                            train_rows, wait_for, weights)
from conftest import REPO, run_module, subprocess_env
from pipeline.checkpoint import latest_checkpoint, list_checkpoints
from train import EXIT_PREEMPTED


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    return baseline_1p(tmp_path_factory)


@pytest.fixture(scope="module")
def config(baseline):
    return baseline.parent / "tiny.toml"


def assert_same_run(run, reference):
    assert losses(run) == losses(reference)  # exact float equality, every step
    assert_bitwise_equal(weights(run, STEPS), weights(reference, STEPS))
    assert state(run, STEPS)["loader"] == state(reference, STEPS)["loader"]
    assert state(run, STEPS)["tokens_seen"] == state(reference, STEPS)["tokens_seen"]


def start(config, run, env=None, *extra):
    cmd = [sys.executable, "-m", "train", "--config", str(config), "--run-dir", str(run), *extra]
    return subprocess.Popen(cmd, cwd=REPO, env=env or subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_baseline_trains(baseline):
    rows = train_rows(baseline)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert [p.name for p in list_checkpoints(baseline)] == ["step_000003", "step_000006"]


def test_sigkill_mid_run_then_resume_is_bitwise_identical(config, baseline, tmp_path):
    run = tmp_path / "run"
    killed = run_module("train", "--config", config, "--run-dir", run, check=False,
                        env=subprocess_env(GPT2_PIPELINE_FAILPOINTS="train.after_step=kill@step=5"))
    assert killed.returncode == -signal.SIGKILL
    assert latest_checkpoint(run).name == "step_000003"
    assert 3 <= max(losses(run)) <= 5  # rows after step 3 may have reached the disk before the kill
    train_here("--config", config, "--run-dir", run)  # --resume auto (the default)
    assert state(run, STEPS)["step"] == STEPS and "step_000003" in json.loads((run / "run.json").read_text())["resumed_from"]
    assert [r["step"] for r in train_rows(run)] == list(range(1, STEPS + 1))  # no duplicated rows
    assert_same_run(run, baseline)
    assert len(json.loads((run / "run.json").read_text())["launches"]) == 2


def test_sigterm_checkpoints_exits_3_and_resume_continues_the_same_trajectory(config, baseline, tmp_path):
    run = tmp_path / "run"
    proc = start(config, run, subprocess_env(GPT2_PIPELINE_FAILPOINTS="train.after_step=sleep(0.5)"))
    wait_for(lambda: len(train_rows(run)) >= 2, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, err
    assert "received SIGTERM" in err and "stopped by SIGTERM" in out
    stopped_at = json.loads((run / "exit.json").read_text())["step"]
    assert 2 <= stopped_at < STEPS
    assert latest_checkpoint(run).name == f"step_{stopped_at:06d}"  # saved at the step it stopped
    assert max(losses(run)) == stopped_at
    train_here("--config", config, "--run-dir", run)
    assert_same_run(run, baseline)


def test_sigkill_during_a_checkpoint_write_leaves_nothing_resume_would_load(config, baseline, tmp_path):
    run = tmp_path / "run"
    env = subprocess_env(GPT2_PIPELINE_FAILPOINTS="checkpoint.file_written=sleep(60)@step=4")  # stall the save of step 4 halfway
    proc = start(config, run, env, "--train.checkpoint_every=2")
    partial = ckpt_dir(run, 4).with_name("step_000004.tmp")
    wait_for(lambda: (partial / "model.pt").exists(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert partial.is_dir() and not ckpt_dir(run, 4).exists()
    assert latest_checkpoint(run).name == "step_000002"
    train_here("--config", config, "--run-dir", run, "--train.checkpoint_every=2")
    assert json.loads((run / "run.json").read_text())["resumed_from"].endswith("step_000002")
    assert not partial.exists()  # the resumed run cleared the leftover
    assert_same_run(run, baseline)
