"""What a checkpoint must hold beyond the weights, and the checks made before resuming.

RNG states are kept for every rank (python, numpy, torch CPU, CUDA) as JSON: nothing in
GPT-2 training draws from them today (no dropout; the loader and the samples use their
own seeded generators), but anything added later that does -- dropout, a stochastic
data mix -- resumes exactly without a format change. Resuming at another world size
restores the ranks that existed and leaves the others as seeded.
"""

from __future__ import annotations

import base64
import dataclasses
import random
from pathlib import Path

import numpy as np
import torch

from pipeline.checkpoint import CheckpointError, latest_checkpoint, resolve_checkpoint
from pipeline.config import Config, ModelConfig

# Model keys that do not change parameter shapes: allowed to differ on resume.
SHAPE_NEUTRAL_KEYS = {"activation_checkpointing"}


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(text: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(text), dtype=np.uint8).copy())


def capture_rng(device: torch.device) -> dict:
    version, mt_state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(mt_state), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": _b64(torch.get_rng_state()),
        "cuda": None,
    }
    if device.type == "cuda":
        state["cuda"] = _b64(torch.cuda.get_rng_state(device))
    return state


def restore_rng(state: dict, device: torch.device) -> None:
    try:
        version, mt_state, gauss = state["python"]
        random.setstate((version, tuple(mt_state), gauss))
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(_unb64(state["torch"]))
        if device.type == "cuda" and state.get("cuda"):
            torch.cuda.set_rng_state(_unb64(state["cuda"]), device)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"train_state.json: unreadable RNG state ({type(err).__name__}: {err})") from None


def find_resume_checkpoint(resume: str, run_dir: Path) -> Path | None:
    """--resume auto: latest complete checkpoint of run_dir (None = fresh start);
    none: fresh start (refused if run_dir already has checkpoints); else a path."""
    if resume == "auto":
        return latest_checkpoint(run_dir)
    if resume == "none":
        existing = latest_checkpoint(run_dir)
        if existing is not None:
            raise CheckpointError(f"--resume none, but {run_dir} already has checkpoints (latest {existing.name}); "
                                  "use a new --run-dir or --resume auto")
        return None
    return resolve_checkpoint(resume)


def check_model_shape(state: dict, cfg: Config, path: Path) -> None:
    """Refuse a config whose model shape differs from the checkpoint's, naming the keys."""
    saved = (state.get("config") or {}).get("model")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: train_state.json has no config.model record")
    ours = cfg.to_dict()["model"]
    # A key the checkpoint lacks was added later; its default is what that run used.
    defaults = dataclasses.asdict(ModelConfig())
    diffs = [f"model.{k} = {saved.get(k, defaults[k])!r} in the checkpoint, {ours[k]!r} now"
             for k in ours if k not in SHAPE_NEUTRAL_KEYS and saved.get(k, defaults[k]) != ours[k]]
    if diffs:
        raise CheckpointError(f"{path}: the config changes the model shape ({'; '.join(diffs)}); "
                              "resume with the checkpoint's model settings or use a new --run-dir")


def check_optimizer_name(state: dict, cfg: Config, path: Path) -> None:
    """AdamW state cannot seed Muon + AdamW or the reverse: refuse, naming the key."""
    saved = ((state.get("config") or {}).get("optim") or {}).get("name", "adamw")
    if saved != cfg.optim.name:
        raise CheckpointError(f"{path}: optim.name = {saved!r} in the checkpoint, {cfg.optim.name!r} now; its "
                              "optimizer state does not carry over: resume with the checkpoint's optim.name "
                              "or use a new --run-dir")


def config_changes(state: dict, cfg: Config) -> list[str]:
    """Non-shape config keys that differ from the checkpoint's (printed as a note)."""
    saved = state.get("config") or {}
    out = []
    for section, values in cfg.to_dict().items():
        old = saved.get(section) or {}
        out += [f"{section}.{k}: {old.get(k)!r} -> {v!r}" for k, v in values.items()
                if k in old and old[k] != v]
    return out


def check_state(state: dict, path: Path) -> None:
    for key, kind in (("step", int), ("tokens_seen", int), ("loader", dict), ("rng", list)):
        if not isinstance(state.get(key), kind):
            raise CheckpointError(f"{path / 'train_state.json'}: missing or malformed {key!r}")
