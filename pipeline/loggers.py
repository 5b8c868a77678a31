"""Metrics to TensorBoard and Weights & Biases, besides metrics.jsonl (always written).

`train.loggers = ["jsonl", "tensorboard", "wandb"]` picks the sinks; the trainer and
`python -m eval` hand every metrics row ({"step", "kind", ...numbers}) to the same sinks,
on rank 0 only. A row becomes scalars named "<kind>/<field>" (train/loss, val/loss,
hellaswag/acc_norm; eval's rows: eval/val_loss, ...) at its step. Each sink records the
run name, the resolved config and the git commit. Both packages are optional extras
(`pip install 'gpt2-pipeline[tensorboard]'`, `[wandb]`), imported only when named, so a
missing one is one clear error before the first step. W&B honours its own environment
(WANDB_MODE=offline, WANDB_DIR, WANDB_PROJECT, WANDB_ENTITY).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any

from pipeline.config import LOGGERS, ConfigError

PACKAGE = {"tensorboard": "tensorboard", "wandb": "wandb"}  # logger -> its package = its pyproject extra


def check_loggers(names: list[str], key: str = "train.loggers") -> list[str]:
    """The optional sinks among names (jsonl is always on); unknown names are an error."""
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise ConfigError(f"{key} = {names!r}: unknown logger {unknown[0]!r} (known: {', '.join(LOGGERS)})")
    return [n for n in dict.fromkeys(names) if n != "jsonl"]


def require_packages(names: list[str], key: str = "train.loggers") -> None:
    """Fail fast (before any work) when a named sink's package is not installed."""
    for name in check_loggers(names, key):
        if importlib.util.find_spec(PACKAGE[name]) is None:
            raise _missing(name, key, ImportError(f"no module named {PACKAGE[name]!r}"))


def _missing(name: str, key: str, err: ImportError) -> ConfigError:
    return ConfigError(f"{key} includes {name!r} but its package is not installed ({err}): "
                       f"pip install 'gpt2-pipeline[{PACKAGE[name]}]' or remove {name!r} from {key}")


def scalars(row: dict) -> dict[str, float]:
    """The finite numbers of a metrics row, named <kind>/<field> (step and kind excluded)."""
    kind = row.get("kind", "metric")
    out = {}
    for field, value in row.items():
        if field in ("step", "kind") or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[f"{kind}/{field}"] = float(value)
    return out


class TensorBoardSink:
    def __init__(self, log_dir: Path, run_name: str, config: dict, commit: dict, key: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise _missing("tensorboard", key, err) from None
        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.writer.add_text("run", f"name: {run_name}\n\ngit: {json.dumps(commit)}", 0)
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", 0)

    def log(self, step: int, values: dict[str, float], texts: dict[str, str]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        for tag, text in texts.items():
            self.writer.add_text(tag, text, step)

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    def __init__(self, log_dir: Path, run_name: str, config: dict, commit: dict, key: str, job: str):
        try:
            import wandb
        except ImportError as err:
            raise _missing("wandb", key, err) from None
        self.wandb = wandb
        log_dir.mkdir(parents=True, exist_ok=True)
        # One W&B run per stage launch, grouped by the run name: the trainer and a concurrent
        # `eval --watch` must not write into the same W&B run.
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "gpt2-pipeline"), name=f"{run_name}-{job}",
                              group=run_name, job_type=job, dir=os.environ.get("WANDB_DIR", str(log_dir)),
                              config={**config, "git": commit}, reinit="create_new")

    def log(self, step: int, values: dict[str, float], texts: dict[str, str]) -> None:
        self.run.log({**values, **texts}, step=step)

    def close(self) -> None:
        self.run.finish()


class Loggers:
    """The optional sinks of one process; a no-op on ranks other than 0 or with none named."""

    def __init__(self, names: list[str], log_dir: Path, run_name: str, config: dict, commit: dict,
                 enabled: bool = True, key: str = "train.loggers", job: str = "train"):
        self.sinks: list[Any] = []
        if not enabled:
            return
        for name in check_loggers(names, key):
            if name == "tensorboard":
                self.sinks.append(TensorBoardSink(Path(log_dir) / "tensorboard", run_name, config, commit, key))
            else:
                self.sinks.append(WandbSink(Path(log_dir) / "wandb", run_name, config, commit, key, job))

    def row(self, row: dict) -> None:
        if not self.sinks or row.get("step") is None:
            return
        texts = {f"{row['kind']}/text": row["text"]} if isinstance(row.get("text"), str) else {}
        values = scalars(row)
        for sink in self.sinks:
            sink.log(int(row["step"]), values, texts)

    def close(self) -> None:
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            sink.close()
