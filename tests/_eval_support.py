"""Builders for eval tests: tiny-model runs with real checkpoints, real-text val shards.

Checkpoints are written with pipeline.checkpoint.save_checkpoint exactly as the trainer
writes them (model + state with step, tokens_seen, config); metrics.jsonl
follows the contract in HELPER_COMMON.md / DESIGN.md.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import torch

from pipeline.atomic import append_line, sha256_file
from pipeline.checkpoint import save_checkpoint
from pipeline.config import Config, from_dict
from pipeline.model import GPT
from pipeline.shards import FORMAT, FORMAT_VERSION, shard_filename, write_manifest
from pipeline.tokenizer import EOT, get_tokenizer, tokenizer_fingerprint
from conftest import LONG_TEXT

TOKENS_PER_STEP = 512


def tiny_config(data_dir: str | Path = "data/none", max_steps: int = 30, val_tokens: int = 2048) -> Config:
    # block_size 256 holds every HellaSwag example's context + longest ending (max 166 tokens).
    return from_dict({
        "model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 256},
        "data": {"dir": str(data_dir)},
        "train": {"total_batch_size": TOKENS_PER_STEP, "micro_batch_size": 8, "seq_len": 64,
                  "max_steps": max_steps, "device": "cpu"},
        "eval": {"val_tokens": val_tokens},
    }).validate()


def tiny_model(cfg: Config, seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg.model)


def save_tiny_checkpoint(run_dir: Path, cfg: Config, step: int, seed: int | None = None) -> Path:
    model = tiny_model(cfg, step if seed is None else seed)
    state = {"step": step, "tokens_seen": step * TOKENS_PER_STEP, "config": cfg.to_dict()}
    return save_checkpoint(run_dir, step, {"model": model.state_dict()}, state)


def make_run(run_dir: Path, cfg: Config, steps: list[int], metrics: bool = True) -> Path:
    """A run directory as the trainer leaves it: config.toml, metrics.jsonl, checkpoints."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(cfg.to_toml())
    for step in steps:
        save_tiny_checkpoint(run_dir, cfg, step)
    if metrics:
        write_metrics(run_dir, max(steps) if steps else cfg.train.max_steps)
    return run_dir


def write_metrics(run_dir: Path, last_step: int, seed: int = 0) -> None:
    """Plausible train/val/hellaswag/sample lines (a decaying loss with noise)."""
    rng = random.Random(seed)
    path = run_dir / "metrics.jsonl"
    for step in range(1, last_step + 1):
        loss = 4.0 + 7.0 * math.exp(-step / 8) + rng.gauss(0, 0.15)
        append_line(path, json.dumps({"step": step, "kind": "train", "loss": loss, "lr": 6e-4,
                                      "grad_norm": 1.0, "tokens": step * TOKENS_PER_STEP, "dt_ms": 10.0,
                                      "tok_per_s": 5e4, "mfu": None}))
        if step % 10 == 0:
            append_line(path, json.dumps({"step": step, "kind": "val", "loss": loss + 0.1,
                                          "tokens": step * TOKENS_PER_STEP}))
            append_line(path, json.dumps({"step": step, "kind": "hellaswag", "acc": 0.25, "acc_norm": 0.26,
                                          "n": 100, "tokens": step * TOKENS_PER_STEP}))
            append_line(path, json.dumps({"step": step, "kind": "sample",
                                          "text": f"Hello, I'm a language model, <step {step}> & more"}))


def make_val_shards(directory: Path, n_chars: int = 60_000, tokenizer: dict | None = None) -> Path:
    """Shards of real English (the generated test corpus's long document): val = the first part, train = the rest."""
    directory.mkdir(parents=True, exist_ok=True)
    text = LONG_TEXT.read_text(encoding="utf-8")[: 2 * n_chars]
    enc = get_tokenizer()
    parts = {"val": text[:n_chars], "train": text[n_chars:]}
    entries = []
    for index, (split, chunk) in enumerate(parts.items()):
        docs = [d for d in chunk.split("\n\n") if d.strip()]
        tokens = []
        for doc in docs:
            tokens += [EOT] + enc.encode_ordinary(doc)
        name = shard_filename("prose", split, index)
        np.save(directory / name, np.array(tokens, dtype=np.uint16))
        entries.append({"file": name, "split": split, "tokens": len(tokens), "documents": len(docs),
                        "sha256": sha256_file(directory / name)})
    write_manifest(directory, {"format": FORMAT, "version": FORMAT_VERSION,
                               "tokenizer": tokenizer or tokenizer_fingerprint(), "complete": True,
                               "source": {"files": [LONG_TEXT.name]}, "shards": entries})
    return directory


def results(run_dir: Path) -> list[dict]:
    path = run_dir / "eval" / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
