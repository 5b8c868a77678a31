"""The checkpoint format shared by train (writer) and eval (reader).

runs/NAME/checkpoints/step_000500/
    model.pt           state dict of the unwrapped model
    optimizer.pt       optimizer state dict
    train_state.json   step, tokens seen, loader state, RNG states, config, ...
    COMPLETE           JSON: step and the sha256 of every file above (written last)

Everything is written into step_000500.tmp/ and renamed when complete, so a directory
named step_NNNNNN always holds a whole checkpoint; one without COMPLETE (or with a
file whose hash differs) is never loaded. Tensor files load with weights_only=True:
a checkpoint from a stranger cannot run code.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from pipeline.atomic import atomic_write_json, fsync_dir, sha256_file
from pipeline.config import Config, ConfigError, from_dict
from pipeline.failpoints import fail_point
from pipeline.model import GPT

CHECKPOINTS = "checkpoints"
COMPLETE = "COMPLETE"
STATE = "train_state.json"
EXIT = "exit.json"  # in the run directory: how the trainer's latest launch ended
STEP_RE = re.compile(r"^step_(\d{6,})$")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or corrupt (names the path)."""


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step_{step:06d}"


def _save_tensor_file(obj: Any, path: Path) -> None:
    try:
        with open(path, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except RuntimeError as err:
        # torch's zip writer reports a failed write (disk full, quota) as a RuntimeError
        # raised while handling the OSError; callers handle the OSError.
        if isinstance(err.__context__, OSError):
            raise err.__context__ from None
        raise


def save_checkpoint(run_dir: str | Path, step: int, tensors: dict[str, Any], state: dict) -> Path:
    """Write tensors ({'model': sd, 'optimizer': sd}) and the JSON state as step_{step}/."""
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)  # leftover of a save that was killed
    tmp.mkdir()
    hashes = {}
    for name, obj in tensors.items():
        _save_tensor_file(obj, tmp / f"{name}.pt")
        hashes[f"{name}.pt"] = sha256_file(tmp / f"{name}.pt")
        fail_point("checkpoint.file_written", step=step)
    atomic_write_json(tmp / STATE, state)
    hashes[STATE] = sha256_file(tmp / STATE)
    atomic_write_json(tmp / COMPLETE, {"step": step, "sha256": hashes})
    fsync_dir(tmp)
    if final.exists():  # re-saving the same step (e.g. preempted right after a periodic save)
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    fsync_dir(final.parent)
    return final


def is_complete(path: Path) -> bool:
    return STEP_RE.match(path.name) is not None and (path / COMPLETE).is_file()


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint directories of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and is_complete(p)]
    return sorted(found, key=lambda p: int(STEP_RE.match(p.name).group(1)))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def step_of(path: Path) -> int:
    match = STEP_RE.match(Path(path).name)
    if match is None:
        raise CheckpointError(f"{path}: not a checkpoint directory (expected step_NNNNNN)")
    return int(match.group(1))


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint dir as given, or the latest complete checkpoint of a run dir."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or run directory")
    if (path / CHECKPOINTS).is_dir() or not STEP_RE.match(path.name):
        latest = latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"{path}: no complete checkpoint in {path / CHECKPOINTS}")
        return latest
    return path


def read_marker(path: Path) -> dict:
    marker = path / COMPLETE
    if not marker.is_file():
        raise CheckpointError(f"{path}: incomplete checkpoint (no {COMPLETE} marker; the save was interrupted)")
    try:
        return json.loads(marker.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{marker}: corrupt completion marker ({err})") from None


def read_state(path: str | Path) -> dict:
    """A checkpoint's train_state.json (the one reader)."""
    file = Path(path) / STATE
    try:
        state = json.loads(file.read_text())
    except OSError as err:
        raise CheckpointError(f"{file}: unreadable ({err.strerror or err})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{file}: corrupt ({err})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{file}: corrupt (not a JSON object)")
    return state


def load_checkpoint(path: str | Path, names: tuple[str, ...] = ("model", "optimizer"),
                    map_location: str | torch.device = "cpu", verify: bool = True) -> tuple[dict, dict]:
    """Return ({name: loaded object}, train_state) after checking every file's sha256."""
    path = Path(path)
    hashes = read_marker(path).get("sha256", {})
    files = [f"{n}.pt" for n in names] + [STATE]
    for name in files:
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file}: missing from checkpoint")
        if verify and name in hashes and sha256_file(file) != hashes[name]:
            raise CheckpointError(f"{file}: sha256 does not match the checkpoint's {COMPLETE} record (corrupt file)")
    state = read_state(path)
    loaded = {}
    for name in names:
        try:
            loaded[name] = torch.load(path / f"{name}.pt", map_location=map_location, weights_only=True)
        except Exception as err:  # torch raises many types for a bad pickle/zip
            raise CheckpointError(f"{path / (name + '.pt')}: cannot be loaded safely ({type(err).__name__}: {err})") from None
    return loaded, state


def prune_checkpoints(run_dir: str | Path, keep_last: int, keep_every: int) -> list[Path]:
    """Delete complete checkpoints beyond the newest keep_last, except multiples of keep_every."""
    found = list_checkpoints(run_dir)
    doomed = found[:-keep_last] if keep_last > 0 else list(found)
    removed = []
    for path in doomed:
        if keep_every > 0 and step_of(path) % keep_every == 0:
            continue
        shutil.rmtree(path)
        removed.append(path)
    return removed


def remove_partial_checkpoints(run_dir: str | Path) -> list[Path]:
    """Delete leftovers of interrupted saves (step_N.tmp/, step_N.old/): never loadable, only disk.
    Call only from the one process that writes checkpoints of this run."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    doomed = [p for p in root.iterdir() if p.is_dir() and p.suffix in (".tmp", ".old")
              and STEP_RE.match(p.stem)]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def read_exit(run_dir: str | Path) -> dict | None:
    """The trainer's record of how its latest launch ended ({code, reason, step, time}, written
    by train/rundir.py), or None when it is missing or unreadable (the one reader)."""
    try:
        info = json.loads((Path(run_dir) / EXIT).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def strip_wrapper_prefixes(state_dict: dict) -> dict:
    """Accept weights saved from a DDP- or torch.compile-wrapped model too (in either order)."""
    out = {}
    for name, tensor in state_dict.items():
        while name.startswith(("module.", "_orig_mod.")):
            name = name.partition(".")[2]
        out[name] = tensor
    return out


def config_of(state: dict, path: str | Path) -> Config:
    """The run's config recorded in a checkpoint's train_state.json (the one place that rebuilds it)."""
    config = state.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{Path(path) / STATE}: has no config.model; cannot rebuild the model")
    try:
        return from_dict(config)
    except ConfigError as err:
        raise CheckpointError(f"{Path(path) / STATE}: config recorded in train_state.json is not usable ({err})") from None


def load_model(path: str | Path, map_location: str | torch.device = "cpu"):
    """Rebuild the GPT stored in a checkpoint dir from its recorded config; returns (model, state).

    The one place that turns a checkpoint into a model (eval, generate, demo use it)."""
    path = Path(path)
    loaded, state = load_checkpoint(path, names=("model",), map_location=map_location)
    model = GPT(config_of(state, path).model)
    try:
        model.load_state_dict(strip_wrapper_prefixes(loaded["model"]))
    except RuntimeError as err:
        first = " ".join(str(err).strip().splitlines()[:2])
        raise CheckpointError(f"{path / 'model.pt'}: weights do not fit the model config in "
                              f"train_state.json ({first})") from None
    return model, state
