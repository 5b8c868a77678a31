"""The files of a run directory besides checkpoints: config.toml, run.json, metrics.jsonl, exit.json.

runs/NAME/
    config.toml      resolved config of the latest launch (every default spelled out)
    run.json         git commit, command, world size, torch version, device; one entry per launch
    metrics.jsonl    one JSON row per line (train / val / hellaswag / sample)
    exit.json        how the latest launch ended: code, reason, step (for wrappers such as
                     Slurm scripts: torchrun itself reports any non-zero worker exit as 1)
    checkpoints/     see pipeline/checkpoint.py
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from pipeline.atomic import atomic_write_json, atomic_write_text, read_jsonl
from pipeline.checkpoint import EXIT
from pipeline.config import Config

METRICS = "metrics.jsonl"
REPO = Path(__file__).resolve().parents[1]


def git_commit() -> dict:
    """The checkout's commit and whether it had local changes (None outside a git checkout)."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return device.type


def write_launch_files(run_dir: Path, cfg: Config, argv: list[str], world_size: int,
                       device: torch.device, resumed_from: Path | None) -> None:
    """config.toml (this launch's resolved config) and a run.json entry for this launch."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.toml", cfg.to_toml())
    launch = {
        **git_commit(),
        "command": [sys.executable, "-m", "train", *argv],
        "world_size": world_size,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device_name(device),
        "host": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "resumed_from": str(resumed_from) if resumed_from else None,
    }
    previous = []
    path = run_dir / "run.json"
    if path.exists():
        try:
            previous = json.loads(path.read_text()).get("launches", [])
        except (json.JSONDecodeError, AttributeError):
            previous = []  # run.json is informational; a damaged one is replaced
    atomic_write_json(path, {**launch, "launches": [*previous, launch]})


def trim_metrics(run_dir: Path, resume_step: int) -> int:
    """Drop rows logged after the checkpoint being resumed (they belong to the abandoned
    trajectory; the resumed run logs those steps again), so metrics.jsonl describes one run.
    Returns how many rows were dropped."""
    path = run_dir / METRICS
    rows = read_jsonl(path)
    keep = [r for r in rows if not (isinstance(r.get("step"), int) and r["step"] > resume_step)]
    if len(keep) != len(rows) or (path.exists() and not path.read_bytes().endswith(b"\n")):
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))
    return len(rows) - len(keep)


def write_exit(run_dir: Path, code: int, reason: str, step: int) -> None:
    atomic_write_json(run_dir / EXIT, {"code": code, "reason": reason, "step": step,
                                              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
