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
import sys
import time
from pathlib import Path

import torch

from pipeline.atomic import atomic_write_json, atomic_write_text, read_jsonl
from pipeline.checkpoint import EXIT, read_exit
from pipeline.config import Config
from pipeline.provenance import git_commit

METRICS = "metrics.jsonl"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return device.type


def write_launch_files(run_dir: Path, cfg: Config, argv: list[str], world_size: int,
                       device: torch.device, resumed_from: Path | None, extra: dict | None = None) -> None:
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
        **(extra or {}),  # e.g. train.init_from's weights and their sha256
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


def write_exit(run_dir: Path, code: int, reason: str, step: int | None) -> None:
    atomic_write_json(run_dir / EXIT, {"code": code, "reason": reason, "step": step,
                                              "launch": launch_id(), "attempt": _attempt(),
                                              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


# torchrun --max-restarts restarts the whole worker group after any non-zero worker exit, so
# a deliberate stop (bad config or data: exit 2; non-finite loss: exit 4) would be replayed
# from the last checkpoint, hours of GPU time for the same verdict. A restarted worker that
# finds such an exit recorded by its own launch repeats it at once instead.
DELIBERATE_EXITS = (2, 4)  # train.EXIT_USER_ERROR, train.EXIT_NONFINITE


def launch_id() -> str | None:
    """One torchrun launch (the same on every node and across its restarts); None outside torchrun.

    torchrun's run id is --rdzv-id (slurm/train.sbatch: job id and requeue count) or a fresh
    uuid with --standalone; without either it is "none" for every launch, so the agent (the
    worker's parent process) on this host tells launches apart.
    """
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if not run_id:
        return None
    return f"none@{socket.gethostname()}:{os.getppid()}" if run_id == "none" else run_id


def _attempt() -> int:
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def repeated_exit(run_dir: Path) -> dict | None:
    """The exit record of a deliberate stop of this launch, when this worker is torchrun's restart after it."""
    if _attempt() == 0 or launch_id() is None:
        return None
    record = read_exit(run_dir)
    if record is None or record.get("launch") != launch_id():
        return None
    if record.get("code") not in DELIBERATE_EXITS or not isinstance(record.get("attempt"), int):
        return None
    return record if record["attempt"] < _attempt() else None
