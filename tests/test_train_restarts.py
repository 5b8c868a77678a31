"""Cluster-safe exits of the trainer (issue 13 item 4(b), (c); issue 18 defect 2):

- `torchrun --max-restarts=N` (slurm/train.sbatch runs N=3; here 1) restarts the worker group after
  any non-zero exit. A deliberate stop -- a user error (exit 2) or a non-finite loss (exit 4)
  -- must not be replayed from the last checkpoint: the restarted workers find the exit
  recorded for their launch in exit.json and repeat it at once.
- SIGHUP and SIGQUIT, which torchrun forwards like SIGTERM, stop the run like SIGTERM: one
  checkpoint, exit 3.

Generated random-token shards (no ../shared). The torchrun tests are ~10-25 s each on a
loaded 2-core machine (measured 40-180 s when ~8 test runs shared the 2 cores): every
attempt of the group is a fresh Python importing torch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, run_torchrun, subprocess_env
from pipeline.atomic import read_jsonl, sha256_file
from pipeline.checkpoint import latest_checkpoint
from pipeline.shards import FORMAT, FORMAT_VERSION, shard_filename, write_manifest
from pipeline.tokenizer import tokenizer_fingerprint
from train import EXIT_NONFINITE, EXIT_PREEMPTED, EXIT_USER_ERROR
from train.rundir import repeated_exit, write_exit

CONFIG = """
[model]
n_layer = 1
n_head = 2
n_embd = 32
block_size = 32

[data]
dir = "{data}"

[optim]
warmup_steps = 2

[train]
total_batch_size = 64
micro_batch_size = 2
seq_len = 32
max_steps = {steps}
device = "cpu"
checkpoint_every = 2
max_bad_steps = 1

[eval]
eval_every = 0
sample_every = 0
val_tokens = 512
"""


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Random GPT-2 token ids in the shard format: a val shard and two train shards."""
    directory = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    entries = []
    for index, (split, size) in enumerate([("val", 2048), ("train", 6000), ("train", 6000)]):
        name = shard_filename("rand", split, index)
        np.save(directory / name, rng.integers(0, 50257, size, dtype=np.uint16))
        entries.append({"file": name, "split": split, "tokens": size, "documents": None,
                        "sha256": sha256_file(directory / name)})
    write_manifest(directory, {"format": FORMAT, "version": FORMAT_VERSION, "tokenizer": tokenizer_fingerprint(),
                               "complete": True, "source": {"files": "tests: random tokens"}, "shards": entries})
    return directory


def config(tmp_path: Path, data: Path, steps: int = 6) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(CONFIG.format(data=data, steps=steps))
    return path


def launches(run: Path) -> list[dict]:
    path = run / "run.json"
    return json.loads(path.read_text())["launches"] if path.exists() else []


def torchrun_with_restarts(*args, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run_torchrun(1, "train", *map(str, args), check=False, timeout=300, env=env,
                        extra_torchrun=("--max-restarts=1", "--monitor-interval=0.2"))


@pytest.mark.slow
def test_nonfinite_stop_is_not_replayed_by_torchrun_restarts(shards, tmp_path):
    run = tmp_path / "run"
    proc = torchrun_with_restarts("--config", config(tmp_path, shards), "--run-dir", run,
                                  env=subprocess_env(GPT2_PIPELINE_FAILPOINTS="train.nan_loss=return@step=3"))
    assert proc.returncode != 0
    record = json.loads((run / "exit.json").read_text())
    assert (record["code"], record["step"], record["attempt"]) == (EXIT_NONFINITE, 3, 0)
    # One launch trained; torchrun's restart repeated its exit without loading anything.
    assert len(launches(run)) == 1, proc.stderr[-3000:]
    assert proc.stderr.count("non-finite steps in a row") == 1
    assert proc.stderr.count("already stopped with exit 4") == 1, proc.stderr[-3000:]
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "train"] == [1, 2, 3]


@pytest.mark.slow
def test_user_error_is_not_replayed_by_torchrun_restarts(shards, tmp_path):
    run = tmp_path / "run"
    run.mkdir()  # a run directory that exists: the error is recorded there
    proc = torchrun_with_restarts("--config", config(tmp_path, shards), "--run-dir", run,
                                  "--data.dir", tmp_path / "no-such-shards", env=subprocess_env())
    assert proc.returncode != 0
    assert json.loads((run / "exit.json").read_text())["code"] == EXIT_USER_ERROR
    assert proc.stderr.count(f"error: {tmp_path / 'no-such-shards'}") == 1, proc.stderr[-3000:]
    assert proc.stderr.count("already stopped with exit 2") == 1, proc.stderr[-3000:]


def test_only_a_restart_of_the_same_launch_repeats_a_recorded_exit(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "4242-0")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    write_exit(tmp_path, EXIT_NONFINITE, "non-finite loss", 7)
    assert repeated_exit(tmp_path) is None  # the first attempt never repeats anything
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert repeated_exit(tmp_path)["code"] == EXIT_NONFINITE
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "4242-1")  # a requeued run of the job: a new launch
    assert repeated_exit(tmp_path) is None
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "4242-0")
    write_exit(tmp_path, EXIT_PREEMPTED, "preempted", 7)  # not deliberate: restarts resume
    assert repeated_exit(tmp_path) is None
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")  # not under torchrun
    assert repeated_exit(tmp_path) is None


@pytest.mark.slow
def test_sighup_checkpoints_and_exits_3_like_sigterm(shards, tmp_path):
    """End to end for one of them (SIGQUIT: tests/test_train_setup.py, in-process)."""
    sig = signal.SIGHUP
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "train", "--config", str(config(tmp_path, shards, steps=50)), "--run-dir", str(run)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(GPT2_PIPELINE_FAILPOINTS="train.after_step=sleep(0.3)"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not (run / "metrics.jsonl").exists() or not read_jsonl(run / "metrics.jsonl"):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the trainer logged no step in 180 s"
            time.sleep(0.05)
        os.kill(proc.pid, sig)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_PREEMPTED, err[-3000:]
    assert f"received {sig.name}" in err
    stopped = json.loads((run / "exit.json").read_text())["step"]
    assert latest_checkpoint(run).name == f"step_{stopped:06d}"
