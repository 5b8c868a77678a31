"""A hand-built shard directory and run directory, in the stages' formats, for pipeline tests.

Built with the shared writers (pipeline.shards, pipeline.checkpoint, pipeline.atomic) so
the orchestrator and `pipeline status` are tested against the real formats without
running the stages.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from pipeline.atomic import append_line
from pipeline.checkpoint import save_checkpoint
from pipeline.config import resolve
from pipeline.model import GPT
from pipeline.shards import FORMAT, FORMAT_VERSION, shard_filename, write_manifest
from pipeline.tokenizer import tokenizer_fingerprint

TINY = ["--model.n_layer=1", "--model.n_head=2", "--model.n_embd=16", "--model.block_size=32",
        "--train.seq_len=32", "--train.micro_batch_size=2", "--train.total_batch_size=64",
        "--train.max_steps=30"]


def make_shards(directory: Path, sizes: tuple[int, ...] = (500, 1000, 700), complete: bool = True) -> Path:
    """Shard 0 val, the rest train, random token ids, and a manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    entries = []
    for i, n in enumerate(sizes):
        split = "val" if i == 0 else "train"
        name = shard_filename("test", split, i)
        np.save(directory / name, rng.integers(0, 50257, n).astype(np.uint16))
        entries.append({"file": name, "split": split, "tokens": n, "documents": n // 100, "sha256": None})
    write_manifest(directory, {"format": FORMAT, "version": FORMAT_VERSION, "tokenizer": tokenizer_fingerprint(),
                               "complete": complete, "shards": entries})
    return directory


def make_run(run_dir: Path, data_dir: Path, checkpoint_steps: tuple[int, ...] = (10, 20),
             train_steps: int = 20, evaluated: tuple[int, ...] = (), report: bool = False):
    """A run dir as the trainer (and optionally eval) leaves it after train_steps steps."""
    cfg = resolve(None, [*TINY, f"--data.dir={data_dir}"])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(cfg.to_toml())
    tokens_per_step = cfg.train.total_batch_size
    metrics = run_dir / "metrics.jsonl"
    for step in range(1, train_steps + 1):
        append_line(metrics, json.dumps({"step": step, "kind": "train", "loss": 11.0 - 0.1 * step, "lr": 1e-3,
                                         "grad_norm": 1.0, "tokens": step * tokens_per_step, "dt_ms": 100.0,
                                         "tok_per_s": 640.0, "mfu": 0.0}))
        if step % 10 == 0:
            append_line(metrics, json.dumps({"step": step, "kind": "val", "loss": 10.5 - 0.1 * step,
                                             "tokens": step * tokens_per_step}))
    torch.manual_seed(0)
    model = GPT(cfg.model)
    for step in checkpoint_steps:
        save_checkpoint(run_dir, step, {"model": model.state_dict(), "optimizer": {}},
                        {"step": step, "tokens_seen": step * tokens_per_step, "config": cfg.to_dict()})
    for step in evaluated:
        write_eval_result(run_dir, step, step * tokens_per_step, "val_loss", 9.0 - 0.01 * step, 1024)
        write_eval_result(run_dir, step, step * tokens_per_step, "hellaswag_acc_norm", 0.25 + 0.001 * step, 40)
    if report:
        (run_dir / "eval").mkdir(exist_ok=True)
        (run_dir / "eval" / "report.md").write_text("# report\n")
        (run_dir / "eval" / "report.html").write_text("<h1>report</h1>\n")
    return cfg, model


def write_eval_result(run_dir: Path, step: int, tokens: int, metric: str, value: float, n: int) -> None:
    (run_dir / "eval").mkdir(exist_ok=True)
    checkpoint = run_dir / "checkpoints" / f"step_{step:06d}"
    append_line(run_dir / "eval" / "results.jsonl", json.dumps(
        {"step": step, "tokens_seen": tokens, "metric": metric, "value": value, "n": n,
         "checkpoint": str(checkpoint), "checkpoint_sha256": "0" * 64, "data_sha256": "1" * 64}))
