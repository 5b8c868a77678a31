"""Shared pieces of the train tests: real-text shards, a tiny config, reading a run's outputs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.atomic import read_jsonl, sha256_file
from pipeline.shards import FORMAT, FORMAT_VERSION, shard_filename, write_manifest
from pipeline.tokenizer import EOT, get_tokenizer, tokenizer_fingerprint
from train.__main__ import main

from conftest import LONG_TEXT, TEXT_FILES

# Uneven train shards, one shorter than a sequence, so sequences straddle shard ends.
TRAIN_SHARD_TOKENS = (20_000, 7_777, 31, 15_000, 30_000)
VAL_TOKENS = 8_000
STEPS = 6  # max_steps of TINY_TOML

TINY_TOML = """
[model]
n_layer = 2
n_head = 2
n_embd = 64
block_size = 64

[data]
dir = "{data}"

[optim]
max_lr = 3e-3
warmup_steps = 2

[train]
total_batch_size = 128
micro_batch_size = 1
seq_len = 32
max_steps = 6
device = "cpu"
checkpoint_every = 3
keep_last = 10

[eval]
eval_every = 0
sample_every = 0
val_tokens = 1024
"""


def corpus_tokens(n: int) -> np.ndarray:
    """GPT-2 tokens of real English (the generated test corpus, tests/generated_data.py), EOT before each file."""
    enc = get_tokenizer()
    files = [LONG_TEXT, *TEXT_FILES]
    out: list[int] = []
    for path in files:
        out += [EOT] + enc.encode_ordinary(path.read_text(encoding="utf-8", errors="replace"))
        if len(out) >= n:
            break
    assert len(out) >= n, "not enough text for the requested shard sizes"
    return np.array(out[:n], dtype=np.uint16)


def write_shards(directory: Path, train_sizes=TRAIN_SHARD_TOKENS, val_tokens=VAL_TOKENS,
                 manifest: bool = True, prefix: str = "text") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tokens = corpus_tokens(val_tokens + sum(train_sizes))
    sizes = [val_tokens, *train_sizes]
    entries, start = [], 0
    for index, size in enumerate(sizes):
        split = "val" if index == 0 else "train"
        name = shard_filename(prefix, split, index)
        np.save(directory / name, tokens[start:start + size])
        start += size
        entries.append({"file": name, "split": split, "tokens": size, "documents": None,
                        "sha256": sha256_file(directory / name)})
    if manifest:
        write_manifest(directory, {"format": FORMAT, "version": FORMAT_VERSION,
                                   "tokenizer": tokenizer_fingerprint(), "complete": True,
                                   "source": {"files": "tests: generated_data long text + prose"}, "shards": entries})
    return directory


def write_config(path: Path, data_dir: Path, text: str = TINY_TOML) -> Path:
    path.write_text(text.format(data=data_dir))
    return path


def memo_dir(tmp_path_factory, name: str, build) -> Path:
    """A directory built once per pytest session and shared by test modules: build(path)
    runs only if path has no DONE marker yet."""
    path = tmp_path_factory.getbasetemp() / name
    if not (path / "DONE").exists():
        import shutil
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        build(path)
        (path / "DONE").write_text("")
    return path


def shared_shards(tmp_path_factory) -> Path:
    return memo_dir(tmp_path_factory, "train_shards", lambda p: write_shards(p / "data")) / "data"


def train_here(*args) -> None:
    """`python -m train` in this process on one thread, as the subprocesses run (bitwise-comparable
    with them), skipping a child's ~5 s of imports."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([str(a) for a in args]) == 0
    finally:
        torch.set_num_threads(threads)


def baseline_1p(tmp_path_factory):
    """The uninterrupted reference: 6 steps, 1 process, grad_accum 4 (shared with the DDP tests)."""
    def build(path):
        config = write_config(path / "tiny.toml", shared_shards(tmp_path_factory))
        train_here("--config", config, "--run-dir", path / "run")
    return memo_dir(tmp_path_factory, "baseline_1p", build) / "run"


def wait_for(predicate, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited {proc.returncode} early:\n{proc.communicate()[1][-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the trainer")
        time.sleep(0.05)


def train_rows(run_dir: Path) -> list[dict]:
    return [r for r in read_jsonl(Path(run_dir) / "metrics.jsonl") if r["kind"] == "train"]


def losses(run_dir: Path) -> dict[int, float | None]:
    return {r["step"]: r["loss"] for r in train_rows(run_dir)}


def ckpt_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:06d}"


def weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return torch.load(ckpt_dir(run_dir, step) / "model.pt", weights_only=True)


def state(run_dir: Path, step: int) -> dict:
    return json.loads((ckpt_dir(run_dir, step) / "train_state.json").read_text())


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs"
