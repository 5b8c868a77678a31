"""Process-level setup around the Trainer: process group, signal handlers, teardown."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Config
from pipeline.distributed import close, init_distributed
from train.signals import PreemptionFlag
from train.trainer import Trainer


def run(cfg: Config, run_dir: Path, resume: str, argv: list[str]) -> int:
    """Train per cfg in run_dir; returns the exit code (train.EXIT_*). User errors raise."""
    flag = PreemptionFlag().install()  # before the (possibly long) setup, so no signal is lost
    env = None
    try:
        env = init_distributed(cfg.train.device, cfg.train.dist_timeout_s)
        return Trainer(cfg, run_dir, resume, env, flag, argv).fit()
    finally:
        if env is not None:
            close(env)
        flag.uninstall()  # last: a late signal during teardown is still only a flag
