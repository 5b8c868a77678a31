"""runs/NAME/eval/results.jsonl: one line per (checkpoint, metric), appended, never rewritten.

A result is identified by what was evaluated: the sha256 of the checkpoint's weights
(recorded in its COMPLETE marker, so no 500 MB file is re-hashed to ask), the sha256 of
the data scored (the HellaSwag rows, or the validation token budget) and the metric name.
A result whose key is already in the file is not computed again unless --force, which is
what makes `--watch` exactly-once across kills and restarts: a line is either fully in
the file (append_line is a single fsynced write) or absent and redone.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from pipeline.atomic import append_line, read_jsonl
from pipeline.checkpoint import CheckpointError, read_marker

EVAL_DIR = "eval"
RESULTS = "results.jsonl"

Key = tuple[str, str, str]  # (checkpoint_sha256, data_sha256, metric)


def results_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / EVAL_DIR / RESULTS


def read_results(run_dir: str | Path) -> list[dict]:
    return read_jsonl(results_path(run_dir))


def key_of(row: dict) -> Key:
    return (row["checkpoint_sha256"], row["data_sha256"], row["metric"])


def done_keys(run_dir: str | Path) -> set[Key]:
    return {key_of(row) for row in read_results(run_dir)}


def append_result(run_dir: str | Path, row: dict) -> None:
    path = results_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    append_line(path, json.dumps({**row, "time": round(time.time(), 3)}, sort_keys=True))


def checkpoint_sha256(checkpoint: Path) -> str:
    """The sha256 of model.pt as recorded when the checkpoint was completed."""
    digest = read_marker(checkpoint).get("sha256", {}).get("model.pt")
    if not isinstance(digest, str):
        raise CheckpointError(f"{checkpoint}: COMPLETE marker records no sha256 for model.pt")
    return digest


def state_dict_sha256(state_dict: dict) -> str:
    """A content hash of weights that have no file of ours (e.g. a Hugging Face model)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tensor.dtype).encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def latest_by_metric(rows: list[dict]) -> dict[tuple[int | None, str], dict]:
    """The newest row per (step, metric): what reports show when a result was --force'd."""
    latest: dict[tuple[int | None, str], dict] = {}
    for row in rows:
        latest[(row.get("step"), row["metric"])] = row
    return latest
