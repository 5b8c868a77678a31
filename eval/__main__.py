"""python -m eval: HellaSwag, validation loss/bits-per-byte and CORE on checkpoints, once or --watch'ing a run.

  python -m eval --checkpoint runs/NAME              # latest complete checkpoint of a run
  python -m eval --checkpoint runs/NAME --all        # every complete checkpoint
  python -m eval --checkpoint runs/NAME/checkpoints/step_005000
  python -m eval --hf gpt2 --out runs/hf-gpt2        # OpenAI's GPT-2 as a baseline
  python -m eval --watch runs/NAME --interval 300 --exit-when-done
  python -m eval --checkpoint runs/NAME --tasks core --eval-bundle eval_bundle --max-per-task 100
  torchrun --nproc_per_node=8 -m eval --checkpoint runs/NAME   # same numbers, 8x faster

Results go to RUN/eval/results.jsonl (what is already there is not recomputed unless
--force) and the report to RUN/eval/report.{md,html}. User errors print one line and
exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from eval import EvalError
from eval.evaluate import (Runtime, Target, checkpoint_target, evaluate_target, hf_target,
                           setup_runtime, teardown)
from eval.tasks import Tasks, build_tasks
from eval.watch import WatchOptions, watch
from pipeline.atomic import JsonlError
from pipeline.checkpoint import CheckpointError, config_of, list_checkpoints, read_state, resolve_checkpoint
from pipeline.cli import OneLineParser
from pipeline.config import Config, ConfigError, load_toml
from pipeline.hellaswag import HellaSwagError
from pipeline.loggers import Loggers, check_loggers, require_packages
from pipeline.provenance import git_commit
from pipeline.shards import ShardError
from pipeline.tokenizer import TokenizerError

USER_ERRORS = (EvalError, CheckpointError, ConfigError, ShardError, HellaSwagError, TokenizerError, JsonlError)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = OneLineParser(prog="python -m eval", description=__doc__.split("\n\n")[0])
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", metavar="PATH", help="a checkpoint dir, or a run dir (its latest complete checkpoint)")
    what.add_argument("--hf", metavar="NAME_OR_DIR", help="GPT-2 weights in Hugging Face format (hub name or local dir)")
    what.add_argument("--watch", metavar="RUN_DIR", help="evaluate each new complete checkpoint of a run, once")
    p.add_argument("--all", action="store_true", help="with --checkpoint RUN_DIR: every complete checkpoint")
    p.add_argument("--out", metavar="DIR", help="where results/report go for --hf (default runs/hf-NAME)")
    p.add_argument("--tasks", help="auto (those with data) or a list such as hellaswag,val,core "
                   "(default: the run config's eval.tasks, auto)")
    p.add_argument("--eval-bundle", metavar="DIR", help="CORE eval bundle: core.yaml, eval_meta_data.csv, eval_data/")
    p.add_argument("--max-per-task", type=int, help="CORE rows per task (default: eval.core_max_per_task, 0 = all)")
    p.add_argument("--core-batch-size", type=int, default=16, help="CORE items per forward pass")
    p.add_argument("--hellaswag", metavar="PATH", help="HellaSwag val jsonl (default data/hellaswag/hellaswag_val.jsonl)")
    p.add_argument("--hellaswag-unverified", action="store_true",
                   help="score a HellaSwag-format file that is not the canonical validation set")
    p.add_argument("--limit", type=int, default=0, help="first N HellaSwag rows only (0 = all 10,042)")
    p.add_argument("--batch-size", type=int, default=32, help="HellaSwag examples per forward pass")
    p.add_argument("--val-data", metavar="DIR", help="shard dir for val loss (default: the run's data.dir)")
    p.add_argument("--val-tokens", type=int, help="val loss token budget (default: the run's eval.val_tokens)")
    p.add_argument("--seq-len", type=int, help="val loss sequence length (default: the run's train.seq_len)")
    p.add_argument("--val-batch-size", type=int, default=16, help="val sequences per forward pass")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--dtype", default="auto", help="auto (bfloat16 on CUDA, else float32), float32, bfloat16")
    p.add_argument("--force", action="store_true", help="re-evaluate results already in results.jsonl")
    p.add_argument("--no-report", action="store_true", help="do not rewrite report.md/html after evaluating")
    p.add_argument("--loggers", help="metrics sinks besides results.jsonl, e.g. tensorboard,wandb "
                                     "(default: the run's train.loggers)")
    w = p.add_argument_group("--watch")
    w.add_argument("--interval", type=float, default=60.0, help="seconds between polls (default 60)")
    w.add_argument("--until-step", type=int, help="exit once a checkpoint at step >= N is evaluated")
    w.add_argument("--exit-when-done", action="store_true",
                   help="exit once the run's final checkpoint (step >= train.max_steps) is evaluated")
    w.add_argument("--max-idle", type=float, help="exit after S seconds without a new checkpoint")
    w.add_argument("--stop-file", metavar="PATH", help="exit (after the current evaluation) once PATH exists")
    args = p.parse_args(argv)
    for name in ("limit", "batch_size", "val_tokens", "seq_len", "val_batch_size", "max_per_task", "core_batch_size"):
        value = getattr(args, name)
        zero_ok = name in ("limit", "max_per_task")
        if value is not None and (value < 0 or (value == 0 and not zero_ok)):
            p.error(f"--{name.replace('_', '-')} must be {'>= 0' if zero_ok else '> 0'}, got {value}")
    if args.all and not args.checkpoint:
        p.error("--all goes with --checkpoint RUN_DIR")
    if args.out and not args.hf:
        p.error("--out goes with --hf (checkpoint results go to their run's eval/ directory)")
    return args


def make_tasks(args: argparse.Namespace, config: Config | None) -> Tasks:
    return build_tasks(tasks=args.tasks, hellaswag=args.hellaswag, limit=args.limit,
                       verify=not args.hellaswag_unverified, batch_size=args.batch_size,
                       val_data=args.val_data, val_tokens=args.val_tokens, seq_len=args.seq_len,
                       val_batch_size=args.val_batch_size, run_config=config or Config(),
                       eval_bundle=args.eval_bundle, max_per_task=args.max_per_task,
                       core_batch_size=args.core_batch_size)


def write_report(rt: Runtime, run_dir: Path, args: argparse.Namespace) -> None:
    if rt.main and not args.no_report:
        from eval.report import write_report as write  # matplotlib: only imported when used
        paths = write(run_dir)
        rt.log(f"report: {paths[0]}")


def run_dir_of(checkpoint: Path) -> Path:
    if checkpoint.parent.name != "checkpoints":
        raise EvalError(f"{checkpoint}: not inside RUN/checkpoints/, so there is no run to write results to")
    return checkpoint.parent.parent


def evaluate_once(args: argparse.Namespace, rt: Runtime) -> int:
    targets: list[Target]
    if args.hf:
        target = hf_target(args.hf)
        out = output_dir(args)
        targets, config = [target], None
    else:
        path = Path(args.checkpoint)
        if args.all:
            found = list_checkpoints(path)
            if not found:
                raise CheckpointError(f"{path}: no complete checkpoint in {path / 'checkpoints'}")
        else:
            found = [path if path.name.endswith(".tmp") else resolve_checkpoint(path)]
        targets = [checkpoint_target(p) for p in found]
        out = run_dir_of(Path(targets[-1].name))
        config = config_of(read_state(targets[-1].name), targets[-1].name)
    tasks = make_tasks(args, config)
    rt.log(f"tasks: {tasks.describe()}")
    wrote = False
    for target in targets:
        wrote |= bool(evaluate_target(target, tasks, rt, out, args.force))
    if wrote or not (out / "eval" / "report.md").exists():
        write_report(rt, out, args)
    return 0


def output_dir(args: argparse.Namespace) -> Path:
    """The run directory whose eval/ the results go to."""
    if args.hf:
        return Path(args.out or f"runs/hf-{Path(args.hf).name or 'model'}")
    path = Path(args.watch or args.checkpoint)
    return path.parent.parent if path.parent.name == "checkpoints" else path


def open_loggers(args: argparse.Namespace, rt: Runtime) -> Runtime:
    """Rank 0 reports to the run's TensorBoard/W&B (--loggers, else the run's train.loggers)."""
    run_dir = output_dir(args)
    if args.loggers is not None:
        names = [n.strip() for n in args.loggers.split(",") if n.strip()]
        key = "--loggers"
    else:
        config_file = run_dir / "config.toml"
        names = load_toml(config_file).train.loggers if config_file.exists() else []
        key = f"train.loggers of {config_file}"
    require_packages(names, key)
    if not rt.main or not check_loggers(names, key):
        return rt
    config = {"eval": {k: v for k, v in vars(args).items()}}
    return dataclasses.replace(rt, sinks=Loggers(names, run_dir, run_dir.resolve().name, config, git_commit(),
                                                 key=key, job="eval"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rt = None
    try:
        rt = setup_runtime(args.device, args.dtype)
        rt = open_loggers(args, rt)
        if args.watch:
            run_dir = Path(args.watch)
            opts = WatchOptions(args.interval, args.until_step, Path(args.stop_file) if args.stop_file else None,
                                args.exit_when_done, args.max_idle, args.force)
            return watch(run_dir, lambda config: make_tasks(args, config), rt, opts,
                         lambda: write_report(rt, run_dir, args))
        return evaluate_once(args, rt)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished results are saved", file=sys.stderr)
        return 130
    finally:
        if rt is not None:
            if rt.sinks is not None:
                rt.sinks.close()
            teardown(rt)


if __name__ == "__main__":
    sys.exit(main())
