"""`python -m pipeline demo`: every stage for real, on a laptop CPU, in a few minutes.

    corpus  Python's own documentation (pydoc topics + stdlib docstrings), as jsonl
    data    python -m data_prep.fineweb        -> uint16 shards + manifest
    train   python -m train                    a 7.2M-parameter GPT, loss falling, checkpoints
    eval    python -m eval                     val loss (+ HellaSwag if present) per checkpoint,
                                               report.md / report.html with plots
    then a few samples from the final checkpoint and the commands for the real run.
    --finetune: then fine-tune that model on stdlib questions and answers and show
    held-out answers before and after (pipeline/commands/demo_finetune.py).

Each stage is the same command a user would type (printed as it runs); a stage whose
output is complete is skipped, so a second run only redoes what is missing. Overrides
(`--train.max_steps=50`) go to the trainer as they would on its own command line.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from pipeline.atomic import read_jsonl
from pipeline.cli import OneLineParser
from pipeline.config import ConfigError, resolve
from pipeline.commands.orchestrate import (CODE_ROOT, REPORT, Stage, StageFailed, child_env, data_done, display,
                                  eval_done, format_seconds, python_module, run_stages,
                                  train_done, trainer_exit_code)
from pipeline.commands.demo_finetune import finetune_stages, print_before_after
from pipeline.commands.run import eval_command

DEFAULT_CONFIG = CODE_ROOT / "configs" / "demo.toml"
# Shard 0 (val) holds the first 32,768 tokens, about a tenth of the ~370K-token corpus.
SHARD_SIZE = 32_768
DEMO_PROMPTS = ("The Python interpreter", "A dictionary is", "This module provides")


class Layout:
    """Where the demo puts things, all under one work directory."""

    def __init__(self, work_dir: Path):
        self.work = work_dir
        self.corpus = work_dir / "data" / "demo" / "corpus.jsonl"
        self.shards = work_dir / "data" / "demo" / "shards"
        self.hellaswag_dir = work_dir / "data" / "hellaswag"
        self.hellaswag = self.hellaswag_dir / "hellaswag_val.jsonl"
        self.run = work_dir / "runs" / "demo"
        self.qa = work_dir / "data" / "demo" / "qa.jsonl"
        self.sft_shards = work_dir / "data" / "demo" / "sft"
        self.sft_run = work_dir / "runs" / "demo-sft"


def find_hellaswag(layout: Layout, explicit: str | None, offline: bool) -> tuple[Path | None, str]:
    """The HellaSwag file to evaluate on, and one line saying what was decided."""
    if explicit:
        if not Path(explicit).is_file():
            raise ConfigError(f"--hellaswag {explicit}: no such file")
        return Path(explicit), f"HellaSwag: using {explicit}"
    if layout.hellaswag.is_file():
        return layout.hellaswag, f"HellaSwag: using {layout.hellaswag}"
    how = f"add it with: python -m data_prep.hellaswag --from PATH --out {layout.hellaswag_dir}"
    if offline:
        return None, f"HellaSwag: skipped (--offline, no {layout.hellaswag}); {how}"
    cmd = python_module("data_prep.hellaswag", "--out", str(layout.hellaswag_dir), "--timeout", "30")
    print(f"HellaSwag: not found locally, trying $ {display(cmd)}", flush=True)
    try:
        proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        proc = None
    if proc is not None and proc.returncode == 0 and layout.hellaswag.is_file():
        return layout.hellaswag, f"HellaSwag: downloaded to {layout.hellaswag}"
    return None, f"HellaSwag: skipped (no {layout.hellaswag} and the download failed); {how}"


def demo_stages(layout: Layout, config: Path, overrides: list[str], hellaswag: Path | None,
                hellaswag_limit: int, hellaswag_unverified: bool = False) -> list[Stage]:
    shards = str(layout.shards)
    cfg = resolve(config, [f"--data.dir={shards}", *overrides])
    corpus = Stage("corpus", [python_module("pipeline.commands.demo_corpus", "--out", str(layout.corpus))],
                   done=lambda: f"{layout.corpus}" if layout.corpus.is_file() else None)
    data = Stage("data", [python_module("data_prep.fineweb", "--files", str(layout.corpus), "--text-column", "text",
                                        "--out", shards, "--prefix", "demo", "--shard-size", str(SHARD_SIZE))],
                 done=lambda: data_done(shards))
    train = Stage("train", [python_module("train", "--config", str(config), "--run-dir", str(layout.run),
                                          f"--data.dir={shards}", *overrides)],
                  done=lambda: train_done(layout.run, cfg.train.max_steps),
                  exit_code=trainer_exit_code(layout.run))
    tasks = ["--tasks", "val"] if hellaswag is None else ["--hellaswag", str(hellaswag), "--limit", str(hellaswag_limit)]
    if hellaswag is not None and hellaswag_unverified:
        tasks.append("--hellaswag-unverified")
    metrics = ("val_loss",) if hellaswag is None else ("val_loss", "hellaswag_acc_norm")
    evaluate = Stage("eval", [eval_command(layout.run, shards, *tasks)], done=lambda: eval_done(layout.run, metrics))
    return [corpus, data, train, evaluate]


def print_samples(layout: Layout, num_tokens: int = 40) -> None:
    from pipeline.commands.generate import generate_texts, load_model

    model, state = load_model(str(layout.run))
    print(f"\nSamples from {state['path']} (top-k 50, temperature 0.8):")
    for seed, prompt in enumerate(DEMO_PROMPTS, 1):
        text = generate_texts(model, prompt, 1, num_tokens, temperature=0.8, top_k=50, seed=seed)[0]
        print(f"  > {text!r}")


def loss_summary(layout: Layout) -> str:
    rows = read_jsonl(layout.run / "metrics.jsonl")
    train = [r for r in rows if r.get("kind") == "train"]
    val = [r for r in rows if r.get("kind") == "val"]
    parts = []
    if train:
        parts.append(f"train loss {train[0]['loss']:.2f} (step {train[0]['step']}) -> "
                     f"{train[-1]['loss']:.2f} (step {train[-1]['step']})")
    if val:
        parts.append(f"val loss {val[0]['loss']:.2f} -> {val[-1]['loss']:.2f}")
    return "; ".join(parts)


NEXT_STEPS = """\
The real run (GPT-2 124M, 10B FineWeb-Edu tokens, one node with 8 GPUs):
  python -m pipeline run --config configs/gpt2-124m.toml
or stage by stage:
  python -m data_prep.fineweb --out data/fineweb-edu-10B
  python -m data_prep.hellaswag
  torchrun --standalone --nproc_per_node=8 -m train --config configs/gpt2-124m.toml --run-dir runs/gpt2-124m
  python -m eval --watch runs/gpt2-124m          # in a second shell, while it trains
on a Slurm cluster (data -> train -> eval as dependent jobs, requeued on preemption):
  PARTITION=gpu slurm/submit.sh configs/gpt2-124m.toml
Where it stands: python -m pipeline status runs/gpt2-124m"""


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m pipeline demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", default=".", help="where data/demo/ and runs/demo/ go (default: .)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="demo config (default: configs/demo.toml)")
    p.add_argument("--hellaswag", help="HellaSwag val jsonl to use (default: WORK/data/hellaswag/, "
                                       "downloaded when possible)")
    p.add_argument("--hellaswag-limit", type=int, default=200,
                   help="HellaSwag examples per checkpoint (0 = all 10,042; the full set takes long on CPU)")
    p.add_argument("--hellaswag-unverified", action="store_true",
                   help="score a HellaSwag-format file of your own (eval --hellaswag-unverified)")
    p.add_argument("--offline", action="store_true", help="do not try to download HellaSwag")
    p.add_argument("--no-samples", action="store_true", help="skip the closing samples")
    p.add_argument("--finetune", action="store_true",
                   help="then fine-tune the demo model on stdlib questions/answers (runs/demo-sft)")
    return p


def main(argv: list[str] | None = None) -> int:
    args, overrides = build_parser().parse_known_args(argv)
    start = time.monotonic()
    layout = Layout(Path(args.work_dir))
    try:
        if args.hellaswag_limit < 0:
            raise ConfigError(f"--hellaswag-limit {args.hellaswag_limit}: must be >= 0")
        resolve(args.config, overrides)  # bad overrides fail here, before any work
        hellaswag, note = find_hellaswag(layout, args.hellaswag, args.offline)
        stages = demo_stages(layout, Path(args.config), overrides, hellaswag, args.hellaswag_limit,
                             args.hellaswag_unverified)
        if args.finetune:
            stages += finetune_stages(layout.qa, layout.sft_shards, layout.run, layout.sft_run, Path(args.config))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(note, flush=True)
    try:
        run_stages(stages)
    except StageFailed as err:
        print(f"error: {err}; re-run the same command to resume", file=sys.stderr)
        return err.code
    if not args.no_samples:
        print_samples(layout)
    if args.finetune:
        print_before_after(layout.qa, layout.sft_shards, layout.run, layout.sft_run)
    elapsed = format_seconds(time.monotonic() - start)
    report = layout.run / REPORT
    print(f"\nDemo complete in {elapsed}: {loss_summary(layout)}")
    print(f"  report:   {report.with_suffix('.html')}  ({report}, plots in {report.parent / 'plots'})")
    print(f"  status:   python -m pipeline status {layout.run}")
    print(f"  generate: python -m pipeline generate --checkpoint {layout.run} --prompt \"A list is\"")
    if hellaswag is None:
        print(f"  {note}")
    print("\n" + NEXT_STEPS)
    return 0
