"""Fault kind 2b: corrupt checkpoint files -- flipped bits, truncation, empty and deleted
files in model.pt, optimizer.pt, train_state.json and the COMPLETE marker.

Readers: pipeline.checkpoint.load_checkpoint, `python -m train` resuming the run,
`python -m eval --checkpoint` and `python -m eval --watch`. Each must name the damaged
file (one `error:` line, exit 2; the watcher logs a warning naming it and skips the
checkpoint) -- or, if it accepts the checkpoint, must have loaded exactly the bytes it
would have loaded before the damage: e.g. eval never reads optimizer.pt, and a flipped
bit in COMPLETE's step number changes nothing that is loaded.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch

from conftest import HELLASWAG_VAL
from faults._inject import call_main, describe, flip_byte, is_clean_error, truncate
from pipeline.checkpoint import CheckpointError, load_checkpoint

SEED = 2
FILES = ["model.pt", "optimizer.pt", "train_state.json", "COMPLETE"]
DAMAGE = ["flip", "flip", "truncate", "empty", "delete"]
CASES = [(f, d, i) for f in FILES for i, d in enumerate(DAMAGE)]
STEP = 12


def damage(path: Path, how: str, rng: random.Random) -> str:
    size = path.stat().st_size
    if how == "flip":
        offset = rng.randrange(size)
        flip_byte(path, offset, 1 << rng.randrange(8))
        return f"bit flipped at byte {offset} of {size}"
    if how == "truncate":
        keep = rng.randrange(1, size)
        truncate(path, keep)
        return f"truncated to {keep} of {size} bytes"
    if how == "empty":
        truncate(path, 0)
        return "emptied"
    path.unlink()
    return "deleted"


def same_content(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, torch.Tensor):
            if not (isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)):
                return False
        elif isinstance(x, dict):
            if not (isinstance(y, dict) and same_content(x, y)):
                return False
        elif x != y:
            return False
    return True


@pytest.fixture(scope="module")
def pristine(tiny_run):
    ckpt = tiny_run / "checkpoints" / f"step_{STEP:06d}"
    return ckpt, load_checkpoint(ckpt, ("model", "optimizer"))


@pytest.fixture()
def run(tiny_run, tmp_path, pristine):
    """A run directory whose only (and so latest) checkpoint is a copy of step 12."""
    copy = tmp_path / "run"
    (copy / "checkpoints").mkdir(parents=True)
    for name in ("config.toml", "metrics.jsonl", "run.json"):
        shutil.copy(tiny_run / name, copy / name)
    shutil.copytree(pristine[0], copy / "checkpoints" / pristine[0].name)
    return copy


def library(ckpt: Path, names: tuple, original: tuple, damaged: str) -> tuple[bool, bool, str]:
    """(clean error naming the damaged file, harmless, message) for load_checkpoint."""
    try:
        loaded, state = load_checkpoint(ckpt, names)
    except CheckpointError as err:
        return damaged in str(err), False, str(err)
    objects, original_state = original
    harmless = state == original_state and all(same_content(loaded[n], objects[n]) for n in names)
    return False, harmless, "accepted"


@pytest.mark.parametrize("file,how,index", CASES, ids=[f"{f}-{d}{i}" for f, d, i in CASES])
def test_a_damaged_checkpoint_file_is_named_by_every_reader(file, how, index, run, pristine, tiny_config, fault_log):
    from eval.__main__ import main as eval_main
    from train.__main__ import main as train_main
    ckpt = run / "checkpoints" / f"step_{STEP:06d}"
    where = f"{file}: {damage(ckpt / file, how, random.Random(SEED * 100 + FILES.index(file) * 10 + index))}"
    verdicts = {}

    clean, harmless, message = library(ckpt, ("model", "optimizer"), pristine[1], file)
    verdicts["load_checkpoint"] = (clean, harmless, message)

    # eval reads model.pt and train_state.json (not optimizer.pt)
    model_only = library(ckpt, ("model",), ({"model": pristine[1][0]["model"]}, pristine[1][1]), file) \
        if file != "optimizer.pt" else (False, True, "not read by eval")
    hs = ["--hellaswag", HELLASWAG_VAL, "--hellaswag-unverified", "--limit", "2", "--tasks", "hellaswag", "--no-report"]
    code, _, err = call_main(eval_main, ["--checkpoint", ckpt, *hs])
    wrote = (run / "eval" / "results.jsonl").exists()
    verdicts["eval"] = (is_clean_error(code, err, file) and not wrote, code == 0 and model_only[1], describe(code, err))
    shutil.rmtree(run / "eval", ignore_errors=True)

    code, out, err = call_main(eval_main, ["--watch", run, "--interval", "0.05", "--max-idle", "0", *hs])
    wrote = (run / "eval" / "results.jsonl").exists()
    warned = code == 0 and any("warning: skipping" in line and file in line for line in out.splitlines())
    # A step_N directory without COMPLETE is an unfinished save: by design never looked at.
    unfinished = file == "COMPLETE" and how == "delete"
    verdicts["eval --watch"] = (warned and not wrote, code == 0 and (model_only[1] or unfinished and not wrote),
                                describe(code, out + err))
    shutil.rmtree(run / "eval", ignore_errors=True)

    # train: resume this run for one more step (last: it may legitimately start the run over)
    metrics = (run / "metrics.jsonl").read_bytes()
    code, out, err = call_main(train_main, ["--config", tiny_config, "--run-dir", run, f"--train.max_steps={STEP + 1}"])
    started = (run / "checkpoints" / f"step_{STEP + 1:06d}").exists() or (run / "metrics.jsonl").read_bytes() != metrics
    restarted = code == 0 and unfinished and "fresh start" in out  # no complete checkpoint: start over
    verdicts["train"] = (is_clean_error(code, err, file) and not started, code == 0 and harmless or restarted,
                         describe(code, err))

    handled = all(clean or harmless for clean, harmless, _ in verdicts.values())
    detected = any(clean for clean, _, _ in verdicts.values())  # by every reader that reads the file
    fault_log.record("corrupt checkpoint", where, clean_error=handled and detected,
                     harmless=handled and not detected)
    problems = {reader: message for reader, (clean, harmless, message) in verdicts.items() if not (clean or harmless)}
    assert not problems, f"{where}: " + json.dumps(problems, indent=1)
