"""`[torchrun --nproc_per_node=N] python -m train --config CFG --run-dir runs/NAME [--resume auto|none|PATH]
[--section.key=value ...]`: see docs/train.md."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline.atomic import JsonlError
from pipeline.checkpoint import CheckpointError
from pipeline.cli import OneLineParser, UsageError
from pipeline.config import ConfigError, resolve
from pipeline.hf import HFError
from pipeline.shards import ShardError
from pipeline.tokenizer import TokenizerError
from train import EXIT_USER_ERROR
from train.init_from import adopt_model_config, explicit_model_keys, find_source
from train.run import run
from train.rundir import repeated_exit, write_exit

USER_ERRORS = (ConfigError, ShardError, CheckpointError, TokenizerError, JsonlError, HFError)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m train", raise_errors=True,
                     description="Pretrain a GPT-2 model on token shards (one process, or torchrun for DDP).",
                     epilog="Any config key can be overridden as --section.key=value, e.g. --data.dir=DIR "
                            "--train.micro_batch_size=16 --optim.max_lr=1e-3. Exit codes: 0 finished, "
                            "2 user error, 3 preempted after a checkpoint (requeue), 4 non-finite loss.")
    parser.add_argument("--config", action="append",
                        help="TOML config (default: built-in GPT-2 124M defaults); with --plan, may be repeated")
    parser.add_argument("--run-dir", help="run directory (config, metrics, checkpoints); required unless --plan")
    parser.add_argument("--resume", default="auto",
                        help="auto (default): latest complete checkpoint of --run-dir, if any; none: fresh "
                             "start; or a checkpoint / run directory to start from")
    parser.add_argument("--plan", action="store_true",
                        help="print parameters, batch arithmetic, steps, tokens and the estimated memory per GPU "
                             "(with the micro batch that fits 40/80 GB cards), then exit without training")
    parser.add_argument("--plan-world-size", type=int, default=None, metavar="N",
                        help="with --plan: the number of ranks to plan for (default: $WORLD_SIZE or 1)")
    return parser


def print_plan(configs: list[str | None], overrides: list[str], world_size: int | None) -> int:
    from pipeline.distributed import _env_int
    from train.plan import format_plans, make_plan
    world = world_size if world_size is not None else _env_int("WORLD_SIZE", 1)
    plans = [make_plan(resolve(path, overrides), world, Path(path).stem if path else "defaults")
             for path in configs]
    print(format_plans(plans), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    run_dir = None
    try:
        args, overrides = build_parser().parse_known_args(argv)
        configs = args.config or [None]
        if args.plan:
            return print_plan(configs, overrides, args.plan_world_size)
        if args.plan_world_size is not None:
            raise UsageError("--plan-world-size is only meaningful with --plan")
        if args.run_dir is None:
            raise UsageError("the following arguments are required: --run-dir")
        if len(configs) > 1:
            raise UsageError(f"--config given {len(configs)} times; training takes one (several only with --plan)")
        run_dir = Path(args.run_dir)
        if (record := repeated_exit(run_dir)) is not None:
            return _repeat(record)
        cfg = resolve(configs[0], overrides)
        if cfg.train.init_from:  # the weights decide the architecture (train/init_from.py)
            cfg = adopt_model_config(cfg, find_source(cfg.train.init_from), explicit_model_keys(configs[0], overrides))
        return run(cfg, run_dir, args.resume, argv)
    except (*USER_ERRORS, UsageError) as err:
        return _user_error(f"error: {err}", run_dir)
    except OSError as err:  # the run directory cannot be written: disk full, quota, permissions
        where = f"{err.filename}: " if err.filename else ""
        return _user_error(f"error: {where}{err.strerror or err}; fix this and re-run the same command to resume",
                           run_dir)


def _user_error(message: str, run_dir: Path | None) -> int:
    """Print the one error line; record it in exit.json (wrappers read it, and torchrun's
    restarts of this launch repeat it instead of replaying it) when the run directory exists."""
    print(message, file=sys.stderr, flush=True)
    if run_dir is not None and run_dir.is_dir():
        try:
            write_exit(run_dir, EXIT_USER_ERROR, message.removeprefix("error: ")[:500], None)
        except OSError:
            pass  # the error being reported may be this very directory
    return EXIT_USER_ERROR


def _repeat(record: dict) -> int:
    if os.environ.get("RANK", "0") == "0":
        at = f" at step {record['step']}" if record.get("step") is not None else ""
        print(f"error: this torchrun launch already stopped with exit {record['code']}{at} ({record.get('reason')}); "
              "torchrun restarted the workers, which repeat that exit instead of replaying it: fix the cause "
              "and start a new launch", file=sys.stderr, flush=True)
    return record["code"]


if __name__ == "__main__":
    sys.exit(main())
