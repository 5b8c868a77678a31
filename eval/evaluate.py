"""Score one model (a checkpoint of ours or Hugging Face GPT-2 weights) on the tasks.

Under torchrun every rank takes part in every evaluation (examples and val sequences are
dealt round-robin, counts and loss sums all-reduced), rank 0 decides what to evaluate and
is the only one that writes results.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from eval import EvalError
from eval.core import evaluate_core
from eval.results import append_result, checkpoint_sha256, done_keys, state_dict_sha256
from eval.tasks import Tasks
from pipeline.checkpoint import CheckpointError, load_model, read_marker, read_state, step_of
from pipeline.distributed import autocast_dtype, init_distributed
from pipeline.hellaswag import evaluate_hellaswag
from pipeline.hf import load_hf_gpt2
from pipeline.model import GPT
from pipeline.val_loss import compute_val_loss


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None
    rank: int = 0
    world_size: int = 1
    sinks: Any = None  # pipeline.loggers.Loggers of rank 0 (TensorBoard, W&B), or None

    @property
    def main(self) -> bool:
        return self.rank == 0

    def log(self, message: str) -> None:
        if self.main:
            print(f"[eval {time.strftime('%H:%M:%S')}] {message}", flush=True)

    @contextlib.contextmanager
    def progress(self, total: int, what: str):
        """A tqdm bar on rank 0 when stderr is a terminal; yields a callback(n) or None."""
        if not (self.main and sys.stderr.isatty()):
            yield None
            return
        from tqdm import tqdm
        with tqdm(total=total, desc=what, unit="ex", leave=False) as bar:
            yield bar.update

    def agree(self, obj: Any) -> Any:
        """Rank 0's value on every rank (all ranks must call this together)."""
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def setup_runtime(device: str = "auto", dtype: str = "auto") -> Runtime:
    """The trainer's process-group setup (pipeline/distributed.py, its restart fix included)."""
    env = init_distributed(device, key="--device")
    return Runtime(env.device, autocast_dtype(dtype, env.device, key="--dtype"), env.rank, env.world_size)


def teardown(rt: Runtime) -> None:
    if rt.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


@dataclass
class Target:
    """Something to evaluate: identity and position in training known before any loading."""
    name: str  # checkpoint path, or "hf:NAME"
    sha256: str
    step: int | None
    tokens_seen: int | None
    load: Callable[[torch.device], GPT]


def checkpoint_target(path: Path) -> Target:
    """Read a checkpoint's marker and train_state.json; the weights load later, on demand."""
    if path.name.endswith(".tmp"):
        raise CheckpointError(f"{path}: a checkpoint still being written (or an interrupted save); "
                              "only complete step_NNNNNN directories are evaluated")
    read_marker(path)  # raises for an incomplete checkpoint
    sha = checkpoint_sha256(path)
    state = read_state(path)
    step = int(state.get("step", step_of(path)))

    def load(device: torch.device) -> GPT:
        return load_model(path)[0].to(device)

    return Target(str(path), sha, step, state.get("tokens_seen"), load)


def hf_target(name: str) -> Target:
    try:
        model = load_hf_gpt2(name)
    except (OSError, ValueError) as err:  # a missing directory / unknown name / foreign weights
        raise EvalError(f"--hf {name}: cannot load GPT-2 weights ({err})") from None
    sha = state_dict_sha256(model.state_dict())
    return Target(f"hf:{name}", sha, None, None, lambda device: model.to(device))


def pending(target: Target, tasks: Tasks, out_dir: Path, force: bool) -> dict[str, list[str]]:
    """{task kind: metrics not yet in results.jsonl for this target and data}."""
    done = set() if force else done_keys(out_dir)
    todo = {}
    for kind, task in (("hellaswag", tasks.hellaswag), ("val", tasks.val), ("core", tasks.core)):
        if task is None:
            continue
        missing = [m for m in task.metrics if (target.sha256, task.sha256, m) not in done]
        if missing:
            todo[kind] = missing
    return todo


def evaluate_target(target: Target, tasks: Tasks, rt: Runtime, out_dir: Path, force: bool = False) -> list[dict]:
    """Evaluate what is pending for target; rank 0 appends each result as soon as it has it."""
    todo = rt.agree(pending(target, tasks, out_dir, force) if rt.main else None)
    label = f"step {target.step}" if target.step is not None else target.name
    if not todo:
        rt.log(f"{label}: already evaluated on this data (use --force to redo)")
        return []
    model = target.load(rt.device)
    base = dict(step=target.step, tokens_seen=target.tokens_seen, checkpoint=target.name,
                checkpoint_sha256=target.sha256, device=rt.device.type, world_size=rt.world_size,
                dtype=str(rt.autocast_dtype or torch.float32).removeprefix("torch."))
    rows = []

    def record(kind: str, value, n, data: Path, data_sha256: str) -> None:
        """Rows of `kind`'s pending metrics (value(metric), n(metric)), appended as soon as known."""
        new = [dict(base, metric=m, value=value(m), n=n(m), data=str(data), data_sha256=data_sha256)
               for m in todo[kind]]
        rows.extend(new)
        _write(rt, out_dir, new)

    if "hellaswag" in todo:
        hs = tasks.hellaswag
        t0 = time.time()
        with rt.progress(len(hs.examples), "HellaSwag") as bar:
            result = evaluate_hellaswag(model, hs.examples, rt.device, rt.autocast_dtype, hs.batch_size,
                                        rt.rank, rt.world_size, bar)
        rt.log(f"{label}: HellaSwag acc {result['acc']:.4f} acc_norm {result['acc_norm']:.4f} "
               f"(n={result['n']}, {result['n'] / (time.time() - t0):.1f} examples/s)")
        record("hellaswag", lambda m: result[m.removeprefix("hellaswag_")], lambda m: result["n"], hs.path,
               hs.sha256)
    if "val" in todo:
        val = tasks.val
        if val.seq_len > model.config.block_size:
            raise EvalError(f"val seq_len {val.seq_len} exceeds the model's block_size "
                            f"{model.config.block_size} (pass --seq-len)")
        t0 = time.time()
        n_seq = (len(val.tokens) - 1) // val.seq_len
        with rt.progress(len(range(rt.rank, n_seq, rt.world_size)), "val loss") as bar:
            val_result = compute_val_loss(model, val.tokens, val.seq_len, val.batch_size, rt.device,
                                          rt.autocast_dtype, rt.rank, rt.world_size, progress=bar, mask=val.mask)
        rt.log(f"{label}: val loss {val_result.loss:.4f}, {val_result.bpb:.4f} bits/byte ({val_result.tokens:,} "
               f"tokens, {val_result.tokens / (time.time() - t0):,.0f} tokens/s)")
        record("val", lambda m: val_result.loss if m == "val_loss" else val_result.bpb,
               lambda m: val_result.tokens, val.directory, val.sha256)
    if "core" in todo:
        bundle = tasks.core
        t0 = time.time()
        items = sum(len(t.rows) for t in bundle.tasks)
        with rt.progress(items, "CORE") as bar:
            result = evaluate_core(model, bundle, rt.device, rt.autocast_dtype, tasks.core_batch_size, rt.rank,
                                   rt.world_size, bar, log=lambda m: rt.log(f"{label}: {m}"))
        values = {"core": result["core"]}
        for name, r in result["tasks"].items():
            values[f"core_acc/{name}"], values[f"core_centered/{name}"] = r["acc"], r["centered"]
        rt.log(f"{label}: CORE {result['core']:.4f} over {len(result['tasks'])} tasks "
               f"({items / (time.time() - t0):.1f} items/s)")
        record("core", values.__getitem__,
               lambda m: items if m == "core" else result["tasks"][m.split("/", 1)[1]]["n"],
               bundle.directory, bundle.sha256)
    return rows


def _write(rt: Runtime, out_dir: Path, rows: list[dict]) -> None:
    if rt.main:
        for row in rows:
            append_result(out_dir, row)
            if rt.sinks is not None and row["step"] is not None:
                # The same numbers to TensorBoard/W&B as eval/<metric> at the checkpoint's step.
                rt.sinks.row({"step": row["step"], "kind": "eval", row["metric"]: row["value"]})
