"""The data an evaluation scores, loaded once and identified by the sha256 of what is scored.

CORE: the tasks of a local eval bundle (eval/core.py), rows shuffled and cut as published.
HellaSwag: the rows of the jsonl file (all, or the first --limit); the whole file is
checked against the canonical validation set unless the user opts out.
Validation loss: the first val_tokens + 1 tokens of the val split, cut into seq_len
sequences, with pipeline/val_loss.py's definition (the trainer's in-loop number).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eval import EvalError
from eval.core import CoreBundle, load_bundle
from pipeline.config import Config
from pipeline.hellaswag import DEFAULT_HELLASWAG, Example, hellaswag_sha256, load_hellaswag, verify_hellaswag
from pipeline.shards import load_shard_set
from pipeline.val_loss import val_mask_stream, val_token_stream



@dataclass(frozen=True)
class HellaSwagTask:
    path: Path
    examples: list[Example]
    sha256: str
    batch_size: int
    metrics = ("hellaswag_acc", "hellaswag_acc_norm")


@dataclass(frozen=True)
class ValTask:
    directory: Path
    tokens: np.ndarray
    sha256: str
    seq_len: int
    batch_size: int
    mask: np.ndarray | None = None  # prompt/response shards: only the responses are scored
    metrics = ("val_loss", "val_bpb")


@dataclass(frozen=True)
class Tasks:
    hellaswag: HellaSwagTask | None
    val: ValTask | None
    core: CoreBundle | None = None
    core_batch_size: int = 16

    def all(self) -> list[HellaSwagTask | ValTask | CoreBundle]:
        return [t for t in (self.hellaswag, self.val, self.core) if t is not None]

    def describe(self) -> str:
        parts = []
        if self.hellaswag:
            parts.append(f"HellaSwag {len(self.hellaswag.examples)} examples from {self.hellaswag.path}")
        if self.val:
            parts.append(f"val loss on {len(self.val.tokens) - 1:,} tokens from {self.val.directory} "
                         f"(seq_len {self.val.seq_len})")
        if self.core:
            parts.append(f"CORE {len(self.core.tasks)} tasks, {sum(len(t.rows) for t in self.core.tasks)} "
                         f"items from {self.core.directory}")
        return "; ".join(parts)


def hellaswag_task(path: Path, limit: int, verify: bool, batch_size: int) -> HellaSwagTask:
    if verify:
        verify_hellaswag(path)  # the whole file, even with --limit: a wrong file is wrong
    return HellaSwagTask(path, load_hellaswag(path, limit), hellaswag_sha256(path, limit), batch_size)


def val_task(directory: Path, val_tokens: int, seq_len: int, batch_size: int) -> ValTask:
    shards = load_shard_set(directory)
    tokens = val_token_stream(shards, val_tokens)
    mask = val_mask_stream(shards, val_tokens)
    # The loss depends on the tokens, the loss mask and how they are cut into sequences.
    digest = hashlib.sha256(np.ascontiguousarray(tokens, dtype="<u2").tobytes())
    if mask is not None:
        digest.update(np.ascontiguousarray(mask).tobytes())
    digest.update(f"|seq_len={seq_len}".encode())
    return ValTask(directory, tokens, digest.hexdigest(), seq_len, batch_size, mask)


def build_tasks(*, tasks: str, hellaswag: str | None, limit: int, verify: bool, batch_size: int,
                val_data: str | None, val_tokens: int | None, seq_len: int | None, val_batch_size: int,
                run_config: Config, eval_bundle: str | None = None, max_per_task: int | None = None,
                core_batch_size: int = 16) -> Tasks:
    """tasks = 'auto' (what has data; a path given explicitly must exist) or a comma-separated
    list of hellaswag, val, core (each named task must have its data). None = the run
    config's eval.tasks."""
    tasks = tasks or run_config.eval.tasks
    wanted = {"hellaswag", "val", "core"} if tasks == "auto" else set(tasks.split(","))
    unknown = wanted - {"hellaswag", "val", "core"}
    if unknown:
        raise EvalError(f"--tasks {tasks!r}: unknown task(s) {sorted(unknown)} (known: hellaswag, val, core)")
    notes = []

    hs = None
    if "hellaswag" in wanted:
        path = Path(hellaswag) if hellaswag else DEFAULT_HELLASWAG
        if tasks == "auto" and not hellaswag and not path.is_file():
            notes.append(f"HellaSwag skipped: {path} not found (pass --hellaswag PATH, or install it "
                         "with python -m data_prep.hellaswag)")
        else:
            hs = hellaswag_task(path, limit, verify, batch_size)

    val = None
    if "val" in wanted:
        directory = Path(val_data) if val_data else Path(run_config.data.dir)
        if tasks == "auto" and not val_data and not directory.is_dir():
            notes.append(f"val loss skipped: the run's data.dir {directory} not found (pass --val-data DIR)")
        else:
            val = val_task(directory, val_tokens or run_config.eval.val_tokens,
                           seq_len or run_config.train.seq_len, val_batch_size)

    core = None
    if "core" in wanted:
        bundle = eval_bundle or run_config.eval.eval_bundle
        if not bundle:
            if tasks != "auto":
                raise EvalError("--tasks core needs --eval-bundle DIR (or eval.eval_bundle in the run's config); "
                                "see docs/eval.md for where to get the bundle")
        else:
            limit = run_config.eval.core_max_per_task if max_per_task is None else max_per_task
            core = load_bundle(bundle, limit)

    result = Tasks(hs, val, core, core_batch_size)
    if not result.all():
        raise EvalError("nothing to evaluate: " + "; ".join(notes))
    for note in notes:
        print(f"note: {note}", flush=True)
    return result

