"""train.dist_timeout_s: the process-group timeout is a config key, reaches the process group,
and by default outlasts the slowest checkpoint write of the largest preset."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import train.run
from conftest import REPO, subprocess_env
from pipeline.config import ConfigError, resolve
from train.plan import checkpoint_bytes

SLOW_FILESYSTEM = 25e6  # bytes/s: the contended shared filesystem the default is sized for


def test_default_outlasts_the_largest_checkpoint_write_on_a_slow_filesystem():
    xl = resolve(REPO / "configs" / "gpt2-1558m.toml", [])
    write_s = checkpoint_bytes(xl) / SLOW_FILESYSTEM
    assert write_s > 600  # NCCL's own 10-minute default would not do
    assert xl.train.dist_timeout_s >= 2 * write_s  # the margin pipeline/config.py promises
    with pytest.raises(ConfigError, match="train.dist_timeout_s"):
        resolve(None, ["--train.dist_timeout_s=0"])


def test_the_trainer_passes_the_key_to_the_process_group(monkeypatch, tmp_path):
    seen = {}

    def fake_init(device, timeout_s=None):
        seen["timeout_s"] = timeout_s
        raise ConfigError("stop here")
    monkeypatch.setattr(train.run, "init_distributed", fake_init)
    with pytest.raises(ConfigError, match="stop here"):
        train.run.run(resolve(None, ["--train.dist_timeout_s=123.5"]), tmp_path, "auto", [])
    assert seen["timeout_s"] == 123.5


def test_a_collective_gives_up_after_the_timeout(tmp_path):
    """2 gloo ranks, timeout 2 s: rank 1 arrives 8 s late, so rank 0's barrier must fail."""
    script = tmp_path / "late.py"
    script.write_text(textwrap.dedent("""
        import os, sys, time
        sys.path.insert(0, sys.argv[1])
        from pipeline.distributed import barrier, init_distributed
        env = init_distributed("cpu", timeout_s=2.0)
        if env.rank == 1:
            time.sleep(8)
        began = time.monotonic()
        try:
            barrier(env)
        except Exception as err:
            print(f"rank {env.rank} gave up after {time.monotonic() - began:.0f} s: {type(err).__name__}", flush=True)
            os._exit(1)
        print(f"rank {env.rank} passed the barrier", flush=True)
    """))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(REPO)], cwd=REPO, env=subprocess_env(), capture_output=True,
                          text=True, timeout=300)
    assert "rank 0 gave up after" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert "rank 0 passed the barrier" not in proc.stdout
