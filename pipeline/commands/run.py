"""`python -m pipeline run --config CONFIG`: data -> train -> eval/report for a real config.

    python -m pipeline run --config configs/gpt2-124m.toml            # all GPUs of this node
    python -m pipeline run --config configs/gpt2-124m.toml --dry-run  # print the plan only
    python -m pipeline run --config configs/gpt2-124m.toml --train.micro_batch_size=32

Everything after the known options is a `--section.key=value` override, applied exactly
as the trainer applies it. Stages whose outputs are complete are skipped, so the same
command resumes a run after a crash or a preemption (exit code 3 is passed on from the
trainer, which is what Slurm requeues on).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from pipeline.cli import OneLineParser
from pipeline.config import Config, ConfigError, resolve
from pipeline.commands.orchestrate import (Stage, StageFailed, data_done, display, eval_done, python_module,
                                  run_stages, torchrun_module, train_done,
                                  trainer_exit_code)
from pipeline.hellaswag import DEFAULT_HELLASWAG
from pipeline.shards import ShardError, load_shard_set


def default_nproc() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 1


def existing_shards(data_dir: str) -> str | None:
    """data_done, or a directory of build-nanogpt shards (no manifest) that the trainer reads."""
    reason = data_done(data_dir)
    if reason or not Path(data_dir).is_dir() or (Path(data_dir) / "manifest.json").exists():
        return reason
    try:
        shards = load_shard_set(data_dir)
    except ShardError:
        return None
    return f"{len(shards.shards)} shards without a manifest in {data_dir}"


def hellaswag_plan(cfg: Config, explicit: str | None) -> tuple[list[str], Stage | None]:
    """eval's HellaSwag arguments, and a stage installing the file the config names if missing.

    With eval.hellaswag_path set (configs/gpt2-124m.toml does) the trainer needs the file
    before its first step, so it is installed first (python -m data_prep.hellaswag). With
    neither that nor --hellaswag, eval uses data/hellaswag/ when present and says so if not.
    """
    if explicit:
        if not Path(explicit).is_file():
            raise ConfigError(f"--hellaswag {explicit}: no such file")
        return ["--hellaswag", explicit], None
    if not cfg.eval.hellaswag_path:
        return [], None
    path = Path(cfg.eval.hellaswag_path)
    if path.name != DEFAULT_HELLASWAG.name:
        return ["--hellaswag", str(path)], None  # a file of the user's own: nothing to install
    stage = Stage("hellaswag", [python_module("data_prep.hellaswag", "--out", str(path.parent))],
                  done=lambda: f"{path} present" if path.is_file() else None)
    return ["--hellaswag", str(path)], stage


def eval_command(run_dir: Path, data_dir: str, *extra: str) -> list[str]:
    """Every checkpoint of the run (eval skips those already scored and rewrites the report)."""
    return python_module("eval", "--checkpoint", str(run_dir), "--all", "--val-data", data_dir, *extra)


def plan(cfg: Config, config_path: str, run_dir: Path, overrides: list[str], nproc: int,
         data_args: list[str], hellaswag: str | None) -> list[Stage]:
    data_dir = cfg.data.dir
    hellaswag_args, install = hellaswag_plan(cfg, hellaswag)
    data = Stage("data", [python_module("data_prep.fineweb", "--out", data_dir, *data_args)],
                 done=lambda: existing_shards(data_dir))
    train = Stage("train", [torchrun_module(nproc, "train", "--config", config_path, "--run-dir", str(run_dir),
                                            *overrides)],
                  done=lambda: train_done(run_dir, cfg.train.max_steps), exit_code=trainer_exit_code(run_dir))

    def eval_complete() -> str | None:
        # eval's default picks up data/hellaswag/ once it appears, so HellaSwag is wanted then.
        wants_hellaswag = bool(hellaswag_args) or DEFAULT_HELLASWAG.is_file()
        return eval_done(run_dir, ("val_loss", "hellaswag_acc_norm") if wants_hellaswag else ("val_loss",))

    evaluate = Stage("eval", [eval_command(run_dir, data_dir, *hellaswag_args)], done=eval_complete)
    return [data, *([install] if install else []), train, evaluate]


def print_train_plan(config_path: str, overrides: list[str], nproc: int) -> int:
    """The trainer's own --plan (its batch arithmetic and memory estimate) for this node's ranks."""
    cmd = python_module("train", "--plan", "--config", config_path, "--plan-world-size", str(nproc), *overrides)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    print(f"\ntrain plan at world size {nproc} ($ {display(cmd)}):")
    print(proc.stdout.rstrip() or proc.stderr.rstrip(), flush=True)
    return proc.returncode


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m pipeline run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="TOML config, e.g. configs/gpt2-124m.toml")
    p.add_argument("--run-dir", help="run directory (default: runs/<config file name>)")
    p.add_argument("--nproc-per-node", type=int, default=None,
                   help="trainer processes on this node (default: number of GPUs, or 1)")
    p.add_argument("--data-args", default="",
                   help="extra arguments for python -m data_prep.fineweb, one quoted string "
                        "(e.g. \"--files 'fineweb/*.parquet' --workers 32\")")
    p.add_argument("--hellaswag", help="HellaSwag val jsonl for eval (default: eval.hellaswag_path, "
                                       f"installed if missing; else {DEFAULT_HELLASWAG} when present)")
    p.add_argument("--dry-run", action="store_true", help="print each stage's state and command, run nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    args, overrides = build_parser().parse_known_args(argv)
    try:
        cfg = resolve(args.config, overrides)
        run_dir = Path(args.run_dir or Path("runs") / Path(args.config).stem)
        if args.nproc_per_node is not None and args.nproc_per_node < 1:
            raise ConfigError(f"--nproc-per-node {args.nproc_per_node}: must be >= 1")
        nproc = args.nproc_per_node or default_nproc()
        stages = plan(cfg, args.config, run_dir, overrides, nproc, shlex.split(args.data_args), args.hellaswag)
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        for i, stage in enumerate(stages, 1):
            reason = stage.done()
            state = f"complete ({reason})" if reason else "to run"
            print(f"[{i}/{len(stages)}] {stage.name}: {state}")
            for cmd in stage.commands:
                print(f"    $ {display(cmd)}")
        return print_train_plan(args.config, overrides, nproc)
    try:
        run_stages(stages)
    except StageFailed as err:
        print(f"error: {err}; re-run the same command to resume", file=sys.stderr)
        return err.code
    print(f"run complete: python -m pipeline status {run_dir}")
    return 0
