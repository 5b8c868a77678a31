"""Shared test fixtures: where the real data lives and how to run stages in subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TEXT_DIR = SHARED_DATA / "text"
HELLASWAG_VAL = SHARED_DATA / "hellaswag" / "hellaswag_val.jsonl"
TIKTOKEN_CACHE = SHARED_DATA / "tokenizer" / "tiktoken_cache"


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a stage run as `python -m ...` in a child process.

    PYTHONPATH pins the child to this checkout; one thread per process keeps 2-rank
    tests from oversubscribing a 2-core machine.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update(extra)
    return env


def run_module(module: str, *args: str, check: bool = True, timeout: float = 600,
               env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m module args...` from the repo root and capture its output."""
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd or REPO,
                          env=env or subprocess_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"python -m {module} {' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}")
    return proc


def run_torchrun(nproc: int, module: str, *args: str, check: bool = True, timeout: float = 600,
                 env: dict[str, str] | None = None, extra_torchrun: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run `torchrun --standalone --nproc_per_node=nproc -m module args...` (gloo on CPU)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           *extra_torchrun, "-m", module, *map(str, args)]
    proc = subprocess.run(cmd, cwd=REPO, env=env or subprocess_env(), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun {module} exited {proc.returncode}\n"
                             f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: tests read real data from ../shared/data")
    return SHARED_DATA


@pytest.fixture
def one_thread():
    """Tiny models are all overhead: a second intra-op thread only fights the other tests."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
