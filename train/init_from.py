"""`train.init_from`: start a new run from existing weights instead of a random init.

The source is a Hugging Face GPT-2 directory or a hub name already in the local HF cache
(e.g. `gpt2`; nothing is downloaded), or a checkpoint / run directory of this pipeline.
Only the weights come along: a fresh optimizer, step 0, this run's data and schedule.
A run started this way resumes its own checkpoints as usual; the weights are read only
when the run directory has no checkpoint yet.

The weights fix the architecture, so the model section of the config is taken from them.
A model key the user set explicitly (config file or --model.KEY) must agree with the
weights; a disagreement is one error naming every such key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.atomic import sha256_file
from pipeline.checkpoint import CheckpointError, load_model, resolve_checkpoint
from pipeline.config import Config, ConfigError, ModelConfig, from_dict, tomllib
from pipeline.hf import WEIGHT_FILES, HFError, config_from_hf, load_hf_gpt2, resolve_hf_dir

# Settings of the model section that change how it runs, not what its weights are.
NOT_ARCHITECTURE = ("activation_checkpointing",)


@dataclass(frozen=True)
class WeightSource:
    kind: str  # "hf" | "checkpoint"
    path: Path  # the HF model directory or the checkpoint directory
    model: ModelConfig

    def describe(self) -> dict:
        """What run.json records: where the weights came from and their sha256."""
        return {"init_from": {"kind": self.kind, "path": str(self.path), "sha256": weights_sha256(self)}}


def find_source(spec: str) -> WeightSource:
    """Locate init_from's weights and read the architecture they imply (no weights loaded)."""
    path = Path(spec).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        ckpt = resolve_checkpoint(path)
        state_file = ckpt / "train_state.json"
        try:
            recorded = json.loads(state_file.read_text())["config"]["model"]
            model = from_dict({"model": recorded}).model
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise CheckpointError(f"{state_file}: no usable model config ({err!r})") from None
        return WeightSource("checkpoint", ckpt, model)
    try:
        directory = resolve_hf_dir(spec)
        hf = json.loads((directory / "config.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise HFError(f"train.init_from = {spec!r}: cannot read its config.json ({err})") from None
    return WeightSource("hf", directory, config_from_hf(hf, directory / "config.json"))


def explicit_model_keys(config_path: str | None, overrides: list[str]) -> set[str]:
    """The model.* keys the user set, from the TOML file's [model] table and --model.KEY overrides
    (values as resolved in cfg are compared later, so only the names matter here)."""
    keys = set()
    if config_path:
        with open(config_path, "rb") as f:
            keys |= set(tomllib.load(f).get("model", {}))
    for arg in overrides:
        if arg.startswith("--model."):
            keys.add(arg[len("--model."):].split("=", 1)[0])
    return keys


def adopt_model_config(cfg: Config, source: WeightSource, explicit: set[str]) -> Config:
    """cfg with its model section taken from the weights; an explicit key that disagrees is an error."""
    mismatched = [f"model.{name} = {getattr(cfg.model, name)!r} (the weights have {getattr(source.model, name)!r})"
                  for name in sorted(explicit) if name not in NOT_ARCHITECTURE
                  and hasattr(source.model, name) and getattr(cfg.model, name) != getattr(source.model, name)]
    if mismatched:
        raise ConfigError(f"train.init_from = {cfg.train.init_from!r}: the config does not match the weights: "
                          + "; ".join(mismatched) + " -- remove these keys (the weights decide them) or fix them")
    keep = {name: getattr(cfg.model, name) for name in NOT_ARCHITECTURE}
    return dataclasses.replace(cfg, model=dataclasses.replace(source.model, **keep)).validate()


def load_weights(source: WeightSource) -> dict[str, torch.Tensor]:
    """The state dict to load into a fresh GPT of source.model's shape."""
    if source.kind == "checkpoint":
        model, _ = load_model(source.path)
    else:
        model = load_hf_gpt2(source.path)
    return model.state_dict()


def weights_sha256(source: WeightSource) -> str:
    """sha256 of the weight file(s): model.pt of a checkpoint, an HF directory's weight files."""
    if source.kind == "checkpoint":
        return sha256_file(source.path / "model.pt")
    files = [source.path / name for name in WEIGHT_FILES if (source.path / name).is_file()]
    if len(files) == 1 and not files[0].name.endswith(".index.json"):
        return sha256_file(files[0])
    digest = hashlib.sha256()  # sharded: the hash of the shards' hashes, in name order
    for shard in sorted(p for p in source.path.iterdir() if p.suffix in (".safetensors", ".bin")):
        digest.update(f"{shard.name} {sha256_file(shard)}\n".encode())
    return digest.hexdigest()
