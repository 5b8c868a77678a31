"""Everything a report shows about one run, read from its files.

Sources: RUN/metrics.jsonl (the trainer's train/val/hellaswag/sample lines), RUN/eval/
results.jsonl (this stage), RUN/checkpoints/ and RUN/config.toml. Reading is tolerant:
a report is written while training and evaluation are still appending, and a line that
cannot be parsed is counted and shown, never fatal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from eval.results import latest_by_metric, results_path
from pipeline.atomic import read_jsonl
from pipeline.checkpoint import list_checkpoints, step_of
from pipeline.config import Config, ConfigError, load_toml


@dataclass
class RunData:
    name: str
    run_dir: Path
    config: Config | None = None
    train: list[tuple[float, float]] = field(default_factory=list)  # (tokens, loss)
    val_inloop: list[tuple[float, float]] = field(default_factory=list)
    val_eval: list[tuple[float, float]] = field(default_factory=list)
    hellaswag_inloop: list[tuple[float, float, int]] = field(default_factory=list)  # (tokens, acc_norm, n)
    hellaswag_eval: list[tuple[float, float, int]] = field(default_factory=list)
    bpb_inloop: list[tuple[float, float]] = field(default_factory=list)  # (tokens, val bits per byte)
    bpb_eval: list[tuple[float, float]] = field(default_factory=list)
    core_eval: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # "core" / task -> (tokens, centered)
    samples: list[tuple[int, str]] = field(default_factory=list)  # (step, text)
    results: list[dict] = field(default_factory=list)  # newest result per (step, metric)
    on_disk: dict[int, Path] = field(default_factory=dict)  # complete checkpoints by step
    unreadable_lines: int = 0

    def untimed(self, metric: str) -> list[tuple[str, float]]:
        """Results with no training position (e.g. `--hf gpt2`): drawn as horizontal lines."""
        return [(r["checkpoint"], r["value"]) for r in self.results
                if r["metric"] == metric and r.get("tokens_seen") is None]

    def table(self) -> list[dict]:
        """One row per checkpoint step (evaluated or on disk), oldest first."""
        rows: dict[int, dict] = {}
        for r in self.results:
            if r.get("step") is None:
                continue
            row = rows.setdefault(r["step"], {"step": r["step"], "tokens": r.get("tokens_seen")})
            row[r["metric"]] = r["value"]
            if r["metric"].startswith("hellaswag"):
                row["n"] = r["n"]
            row["sha256"] = r["checkpoint_sha256"]
        for step in self.on_disk:
            rows.setdefault(step, {"step": step, "tokens": None})
        for step, row in rows.items():
            row["on_disk"] = step in self.on_disk
        return [rows[s] for s in sorted(rows)]


def _jsonl(path: Path) -> tuple[list[dict], int]:
    """Rows of a JSON-lines file and the number of lines that were not valid JSON objects."""
    damaged: list[int] = []
    rows = read_jsonl(path, damaged)
    return rows, len(damaged)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def load_run(run_dir: str | Path) -> RunData:
    run_dir = Path(run_dir)
    data = RunData(name=run_dir.resolve().name, run_dir=run_dir)
    try:
        data.config = load_toml(run_dir / "config.toml") if (run_dir / "config.toml").is_file() else None
    except ConfigError:
        data.config = None  # a config from another version of the code: plot without it
    batch = data.config.train.total_batch_size if data.config else None

    def tokens(row: dict):
        if _number(row.get("tokens")):
            return row["tokens"]
        if _number(row.get("step")) and batch:
            return row["step"] * batch
        return None

    metrics, bad_metrics = _jsonl(run_dir / "metrics.jsonl")
    for row in metrics:
        kind, x = row.get("kind"), tokens(row)
        if kind == "sample" and isinstance(row.get("text"), str):
            data.samples.append((row.get("step"), row["text"]))
        elif x is None:
            continue
        elif kind == "train" and _number(row.get("loss")):
            data.train.append((x, row["loss"]))
        elif kind == "val" and _number(row.get("loss")):
            data.val_inloop.append((x, row["loss"]))
            if _number(row.get("bpb")):
                data.bpb_inloop.append((x, row["bpb"]))
        elif kind == "hellaswag" and _number(row.get("acc_norm")):
            data.hellaswag_inloop.append((x, row["acc_norm"], int(row.get("n", 0))))

    results, bad_results = _jsonl(results_path(run_dir))
    required = ("metric", "value", "checkpoint", "checkpoint_sha256")
    results = [r for r in results if all(k in r for k in required)]
    data.results = sorted(latest_by_metric(results).values(), key=lambda r: (r.get("step") or 0, r["metric"]))
    for r in data.results:
        x = r.get("tokens_seen")
        if x is None and r.get("step") is not None and batch:
            x = r["step"] * batch
        if x is None:
            continue
        if r["metric"] == "val_loss":
            data.val_eval.append((x, r["value"]))
        elif r["metric"] == "hellaswag_acc_norm":
            data.hellaswag_eval.append((x, r["value"], r["n"]))
        elif r["metric"] == "val_bpb":
            data.bpb_eval.append((x, r["value"]))
        elif r["metric"] == "core" or r["metric"].startswith("core_centered/"):
            data.core_eval.setdefault(r["metric"].removeprefix("core_centered/"), []).append((x, r["value"]))
    data.on_disk = {step_of(p): p for p in list_checkpoints(run_dir)}
    data.unreadable_lines = bad_metrics + bad_results
    return data
