"""`[torchrun --nproc_per_node=N] python -m train --config CFG --run-dir runs/NAME [--resume auto|none|PATH]
[--section.key=value ...]`: see docs/train.md."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.atomic import JsonlError
from pipeline.checkpoint import CheckpointError
from pipeline.cli import OneLineParser
from pipeline.config import ConfigError, resolve
from pipeline.shards import ShardError
from pipeline.tokenizer import TokenizerError
from train import EXIT_USER_ERROR
from train.run import run

USER_ERRORS = (ConfigError, ShardError, CheckpointError, TokenizerError, JsonlError)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m train", allow_abbrev=False,
                     description="Pretrain a GPT-2 model on token shards (one process, or torchrun for DDP).",
                     epilog="Any config key can be overridden as --section.key=value, e.g. --data.dir=DIR "
                            "--train.micro_batch_size=16 --optim.max_lr=1e-3. Exit codes: 0 finished, "
                            "2 user error, 3 preempted after a checkpoint (requeue), 4 non-finite loss.")
    parser.add_argument("--config", help="TOML config (default: built-in GPT-2 124M defaults)")
    parser.add_argument("--run-dir", required=True, help="run directory (config, metrics, checkpoints)")
    parser.add_argument("--resume", default="auto",
                        help="auto (default): latest complete checkpoint of --run-dir, if any; none: fresh "
                             "start; or a checkpoint / run directory to start from")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, overrides = build_parser().parse_known_args(argv)
    except SystemExit as exit_:  # --help, or a usage mistake already printed as one `error:` line
        return exit_.code
    try:
        cfg = resolve(args.config, overrides)
        return run(cfg, Path(args.run_dir), args.resume, argv)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    except OSError as err:  # the run directory cannot be written: disk full, quota, permissions
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or err}; fix this and re-run the same command to resume",
              file=sys.stderr, flush=True)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
