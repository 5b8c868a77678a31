"""Run configuration: nested dataclasses, TOML files, dotted command-line overrides.

Defaults are the GPT-2 124M / 10B-token FineWeb-Edu run (build-nanogpt's numbers).
Every user mistake (unknown key, wrong type, impossible value) raises ConfigError
naming the dotted key and the bad value.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib


class ConfigError(ValueError):
    """A configuration key or value the user must fix."""


@dataclass
class ModelConfig:
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 1024
    vocab_size: int = 50257  # GPT-2 BPE; the embedding is padded, see padded_vocab_size
    pad_vocab_to: int = 64  # 50257 -> 50304: a multiple of 64 makes the lm_head matmul faster
    bias: bool = True
    activation_checkpointing: bool = False
    # Modern options (pipeline/layers.py), all off = GPT-2. arch is a preset: "modern" sets
    # the keys below to MODEL_ARCHS["modern"] first, then keys given beside it apply, so
    # `arch = "modern"` plus `qk_norm = false` is the modern set without QK-norm.
    arch: str = "gpt2"  # gpt2 | modern
    pos_emb: str = "learned"  # learned (GPT-2) | rope | sinusoidal
    rope_base: float = 10000.0
    norm: str = "layernorm"  # layernorm | rmsnorm
    qk_norm: bool = False
    mlp: str = "gelu"  # gelu (tanh approximation, GPT-2) | relu2
    tie_embeddings: bool = True  # lm_head shares wte's weight (GPT-2)
    zero_init: bool = False  # residual projections (and an untied lm_head) start at zero
    logit_softcap: float = 0.0  # cap * tanh(logits / cap); 0 = off

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_to
        return ((self.vocab_size + m - 1) // m) * m

    def validate(self) -> None:
        for name in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "pad_vocab_to"):
            _require(getattr(self, name) > 0, f"model.{name}", getattr(self, name), "must be > 0")
        _require(self.n_embd % self.n_head == 0, "model.n_embd", self.n_embd,
                 f"must be divisible by model.n_head = {self.n_head}")
        for name, allowed in (("arch", MODEL_ARCHS), ("pos_emb", ("learned", "rope", "sinusoidal")),
                              ("norm", ("layernorm", "rmsnorm")), ("mlp", ("gelu", "relu2"))):
            _require(getattr(self, name) in allowed, f"model.{name}", getattr(self, name),
                     f"must be one of {', '.join(allowed)}")
        if self.pos_emb == "rope":
            _require((self.n_embd // self.n_head) % 2 == 0, "model.pos_emb", self.pos_emb,
                     f"rotary embeddings need an even head size (n_embd / n_head = {self.n_embd // self.n_head})")
        if self.pos_emb == "sinusoidal":
            _require(self.n_embd % 2 == 0, "model.pos_emb", self.pos_emb, "sinusoidal needs an even model.n_embd")
        _require(self.rope_base > 0, "model.rope_base", self.rope_base, "must be > 0")
        _require(self.logit_softcap >= 0, "model.logit_softcap", self.logit_softcap, "must be >= 0 (0 = off)")

    def gpt2_incompatible(self) -> list[str]:
        """The settings GPT-2's architecture (and so its HF format) cannot express."""
        return [f"model.{k} = {getattr(self, k)!r}" for k, v in MODEL_ARCHS["gpt2"].items()
                if k != "bias" and getattr(self, k) != v]


# The presets model.arch names. "modern" is the speedrun's set (modded-nanogpt's README:
# "Rotary embeddings, QK-Norm, and ReLU^2", "Untied head from embedding", "Projection and
# classification layers initialized to zero", "Logit softcapping (following Gemma 2)"; its
# models have no biases; cap 30 as in its 11/2024 records, later 15), with RMSNorm.
MODEL_ARCHS: dict[str, dict[str, Any]] = {
    "gpt2": dict(pos_emb="learned", norm="layernorm", qk_norm=False, mlp="gelu", tie_embeddings=True,
                 zero_init=False, logit_softcap=0.0, bias=True),
    "modern": dict(pos_emb="rope", norm="rmsnorm", qk_norm=True, mlp="relu2", tie_embeddings=False,
                   zero_init=True, logit_softcap=30.0, bias=False),
}


@dataclass
class DataConfig:
    dir: str = "data/fineweb-edu-10B"  # shards + manifest.json written by data_prep
    shuffle: bool = True  # per-epoch shard-order and sequence-order shuffling (train split only)
    seed: int = 1337
    # Packed sequences hold several documents. "across": attend across their boundaries (GPT-2
    # pretraining); "within": each token sees only its own document, positions restart at each;
    # "auto": within for prompt/response shards (data_prep.sft, they carry loss masks), else across.
    document_attention: str = "auto"

    def validate(self) -> None:
        _require(bool(self.dir), "data.dir", self.dir, "must name the shard directory")
        _require(self.document_attention in ("auto", "across", "within"), "data.document_attention",
                 self.document_attention, "must be one of auto, across, within")
        _require(self.seed >= 0, "data.seed", self.seed, "must be >= 0")


@dataclass
class OptimConfig:
    max_lr: float = 6e-4
    min_lr_ratio: float = 0.1  # cosine decays to min_lr_ratio * max_lr
    warmup_steps: int = 715  # 375M tokens / 524,288 (GPT-3 paper's warmup)
    weight_decay: float = 0.1  # only on >=2-D parameters
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 disables clipping
    fused: str = "auto"  # auto | true | false
    # "muon": torch.optim.Muon for the blocks' 2-D weight matrices, AdamW (max_lr, betas,
    # weight_decay above) for embeddings, head and 1-D parameters. See pipeline/optimizer.py.
    name: str = "adamw"  # adamw | muon
    muon_lr: float = 0.05  # Muon's peak lr (the schedule scales it like max_lr)
    muon_momentum: float = 0.95
    muon_weight_decay: float = 0.0
    embed_lr: float = 0.0  # AdamW lr of the token (and position) embeddings when name = muon; 0 = max_lr
    head_lr: float = 0.0  # AdamW lr of an untied lm_head when name = muon; 0 = max_lr
    # cosine: warmup, half cosine to min_lr (GPT-3). trapezoid: warmup, flat, then a linear
    # cooldown to min_lr over the last cooldown_frac of the steps (the speedrun's schedule).
    schedule: str = "cosine"  # cosine | trapezoid
    cooldown_frac: float = 0.4

    def validate(self) -> None:
        _require(self.max_lr > 0, "optim.max_lr", self.max_lr, "must be > 0")
        _require(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", self.min_lr_ratio,
                 "must be in [0, 1]")
        _require(self.warmup_steps >= 0, "optim.warmup_steps", self.warmup_steps, "must be >= 0")
        _require(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, "must be >= 0")
        _require(0 <= self.beta1 < 1, "optim.beta1", self.beta1, "must be in [0, 1)")
        _require(0 <= self.beta2 < 1, "optim.beta2", self.beta2, "must be in [0, 1)")
        _require(self.eps > 0, "optim.eps", self.eps, "must be > 0")
        _require(self.grad_clip >= 0, "optim.grad_clip", self.grad_clip, "must be >= 0 (0 = off)")
        _require(self.fused in ("auto", "true", "false"), "optim.fused", self.fused,
                 "must be one of auto, true, false")
        _require(self.name in ("adamw", "muon"), "optim.name", self.name, "must be one of adamw, muon")
        _require(self.muon_lr > 0, "optim.muon_lr", self.muon_lr, "must be > 0")
        _require(0 <= self.muon_momentum < 1, "optim.muon_momentum", self.muon_momentum, "must be in [0, 1)")
        for name in ("muon_weight_decay", "embed_lr", "head_lr"):
            _require(getattr(self, name) >= 0, f"optim.{name}", getattr(self, name), "must be >= 0")
        _require(self.schedule in ("cosine", "trapezoid"), "optim.schedule", self.schedule,
                 "must be one of cosine, trapezoid")
        _require(0 <= self.cooldown_frac <= 1, "optim.cooldown_frac", self.cooldown_frac, "must be in [0, 1]")


LOGGERS = ("jsonl", "tensorboard", "wandb")  # metrics sinks (pipeline/loggers.py)


@dataclass
class TrainConfig:
    total_batch_size: int = 524_288  # tokens per optimizer step (2**19, ~0.5M as in GPT-3 small)
    micro_batch_size: int = 64
    seq_len: int = 1024
    max_steps: int = 19_073  # 10e9 tokens / 524,288
    device: str = "auto"  # auto (cuda -> mps -> cpu) | cuda | mps | cpu
    dtype: str = "auto"  # auto (bfloat16 on cuda, float32 elsewhere) | bfloat16 | float32
    compile: bool = False
    tf32: bool = True
    seed: int = 1337
    log_every: int = 1
    checkpoint_every: int = 5000
    keep_last: int = 2  # most recent checkpoints kept...
    keep_every: int = 0  # ...plus every K-th step permanently (0 = none)
    max_bad_steps: int = 5  # consecutive non-finite steps before the run stops
    target_loss: float = 0.0  # stop once train loss <= target (0 = off)
    peak_tflops: float = 0.0  # bf16 peak for MFU when the device is unknown (0 = auto/none)
    # How long a rank waits in a collective before the process group gives up. NCCL's own
    # default (10 min) is shorter than the slowest checkpoint write of the largest preset:
    # GPT-2 XL saves 6.2 GB of weights + 12.5 GB of AdamW moments = 18.7 GB, which rank 0
    # writes, fsyncs and re-reads for its sha256 while every other rank waits in the next
    # collective. On a contended shared filesystem at 25 MB/s that is ~750 s writing plus the
    # hash; 1800 s keeps a 2x margin. A genuinely hung rank is then noticed within 30 min.
    dist_timeout_s: float = 1800.0
    # Start from these weights instead of a random init (fresh optimizer, step 0): a Hugging Face
    # GPT-2 directory or cached hub name, or a checkpoint / run directory. See train/init_from.py.
    init_from: str = ""
    # Metrics sinks on rank 0: jsonl (metrics.jsonl, always written), tensorboard, wandb
    # (optional extras; see pipeline/loggers.py). On the command line: --train.loggers=jsonl,wandb
    loggers: list[str] = field(default_factory=lambda: ["jsonl"])

    def validate(self) -> None:
        for name in ("total_batch_size", "micro_batch_size", "seq_len", "max_steps",
                     "log_every", "checkpoint_every", "max_bad_steps", "keep_last"):
            _require(getattr(self, name) > 0, f"train.{name}", getattr(self, name), "must be > 0")
        for name in ("keep_every", "seed"):
            _require(getattr(self, name) >= 0, f"train.{name}", getattr(self, name), "must be >= 0")
        _require(self.target_loss >= 0, "train.target_loss", self.target_loss, "must be >= 0")
        _require(self.peak_tflops >= 0, "train.peak_tflops", self.peak_tflops, "must be >= 0")
        _require(self.dist_timeout_s > 0, "train.dist_timeout_s", self.dist_timeout_s, "must be > 0 (seconds)")
        _require(self.device in ("auto", "cuda", "mps", "cpu"), "train.device", self.device,
                 "must be one of auto, cuda, mps, cpu")
        _require(self.dtype in ("auto", "bfloat16", "float32"), "train.dtype", self.dtype,
                 "must be one of auto, bfloat16, float32")
        _require(all(n in LOGGERS for n in self.loggers), "train.loggers",
                 self.loggers, f"each must be one of {', '.join(LOGGERS)}")


@dataclass
class EvalConfig:
    eval_every: int = 250  # steps between in-loop evaluations (0 = off)
    val_tokens: int = 10_485_760  # fixed budget: 20 x 524,288, the same tokens at any world size
    hellaswag_path: str = ""  # HellaSwag val jsonl; empty = skip HellaSwag in the loop
    hellaswag_limit: int = 0  # examples per in-loop HellaSwag (0 = all 10,042)
    # What `python -m eval` (and --watch) evaluates when --tasks is not given: "auto" (what
    # has data) or a comma-separated list of hellaswag, val, core.
    tasks: str = "auto"
    eval_bundle: str = ""  # CORE eval bundle directory (core.yaml, eval_meta_data.csv, eval_data/)
    core_max_per_task: int = 0  # rows per CORE task (0 = all)
    sample_every: int = 250  # steps between generated samples (0 = off)
    sample_tokens: int = 32
    num_samples: int = 4
    sample_prompt: str = "Hello, I'm a language model,"

    def validate(self) -> None:
        for name in ("eval_every", "hellaswag_limit", "sample_every", "sample_tokens", "num_samples",
                     "core_max_per_task"):
            _require(getattr(self, name) >= 0, f"eval.{name}", getattr(self, name), "must be >= 0")
        _require(self.val_tokens > 0, "eval.val_tokens", self.val_tokens, "must be > 0")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> "Config":
        for section in fields(self):
            getattr(self, section.name).validate()
        _require(self.train.seq_len <= self.model.block_size, "train.seq_len", self.train.seq_len,
                 f"must be <= model.block_size = {self.model.block_size}")
        return self

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


def _require(ok: bool, key: str, value: Any, why: str) -> None:
    if not ok:
        raise ConfigError(f"{key} = {value!r}: {why}")


def _section_classes() -> dict[str, type]:
    return {f.name: type(getattr(Config(), f.name)) for f in fields(Config)}


def _coerce(key: str, value: Any, typ: str) -> Any:
    """Check a TOML value against a field's declared type (ints are accepted as floats)."""
    if typ == "bool":
        if isinstance(value, bool):
            return value
    elif typ == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            # torch and numpy hold ints in 64 bits: a bigger one would fail deep inside them
            # (torch.manual_seed, tensor sizes) instead of here, naming the key.
            if not -2**63 <= value < 2**63:
                raise ConfigError(f"{key} = {value!r}: out of range (must fit in a signed 64-bit integer)")
            return value
    elif typ == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # No setting means anything at inf/nan, and nan slips past every `x > 0` check.
            if not math.isfinite(value):
                raise ConfigError(f"{key} = {value!r}: must be a finite number")
            return float(value)
    elif typ == "str":
        if isinstance(value, str):
            return value
    elif typ == "list[str]":
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
    raise ConfigError(f"{key} = {value!r}: expected {typ}, got {type(value).__name__}")


def _parse_cli_value(key: str, text: str, typ: str) -> Any:
    """Parse a command-line string by the field's type, e.g. '1e-3' for a float."""
    try:
        if typ == "bool":
            lowered = text.strip().lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if typ == "int":
            return int(text.replace("_", ""))
        if typ == "float":
            number = float(text)
        if typ == "list[str]":  # comma-separated
            return [part.strip() for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{key} = {text!r}: expected {typ}") from None
    return _coerce(key, number, typ) if typ == "float" else text


def _unknown(what: str, name: str, value: Any, known: list[str]) -> ConfigError:
    """The error for a misspelt section/key: names it, its value and the closest real name."""
    close = difflib.get_close_matches(name.rpartition(".")[2], known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown config {what} {name!r} (= {value!r}){hint} (known: {', '.join(known)})")


def from_dict(data: dict[str, Any], base: Config | None = None) -> Config:
    """Apply a nested {section: {key: value}} mapping onto base (default: the 124M config)."""
    cfg = dataclasses.replace(base) if base is not None else Config()
    classes = _section_classes()
    for section, values in data.items():
        if section not in classes:
            raise _unknown("section", section, values, list(classes))
        if not isinstance(values, dict):
            raise ConfigError(f"{section} = {values!r}: expected a table of keys ([{section}])")
        current = getattr(cfg, section)
        types = {f.name: f.type for f in fields(current)}
        updates = {}
        if section == "model" and "arch" in values:
            arch = _coerce("model.arch", values["arch"], "str")
            if arch not in MODEL_ARCHS:
                raise ConfigError(f"model.arch = {arch!r}: must be one of {', '.join(MODEL_ARCHS)}")
            updates.update(MODEL_ARCHS[arch])  # the preset first; keys given beside it win
        for key, value in values.items():
            dotted = f"{section}.{key}"
            if key not in types:
                raise _unknown("key", dotted, value, list(types))
            updates[key] = _coerce(dotted, value, types[key])
        setattr(cfg, section, dataclasses.replace(current, **updates))
    return cfg


def load_toml(path: str | Path, base: Config | None = None) -> Config:
    path = Path(path)
    try:
        with open(path, "rb") as f:  # TOML is UTF-8 whatever the locale says
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} not found") from None
    except OSError as err:  # a directory, no permission, ...
        raise ConfigError(f"config file {str(path)!r} cannot be read: {err.strerror or err}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {err}") from None
    return from_dict(data, base)


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ['--optim.max_lr=1e-3', '--train.compile', 'false', ...] style overrides."""
    classes = _section_classes()
    values: dict[str, dict[str, Any]] = {}
    items = list(overrides)
    i = 0
    while i < len(items):
        arg = items[i]
        if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
            raise ConfigError(f"unexpected argument {arg!r}: overrides look like --section.key=value")
        key, sep, text = arg[2:].partition("=")
        if not sep:
            if i + 1 >= len(items) or items[i + 1].startswith("--"):
                raise ConfigError(f"--{key}: missing value (use --{key}=VALUE)")
            text = items[i + 1]
            i += 1
        i += 1
        section, _, name = key.partition(".")
        if section not in classes:
            raise _unknown("section", section, text, list(classes))
        types = {f.name: f.type for f in fields(classes[section])}
        if name not in types:
            raise _unknown("key", key, text, list(types))
        values.setdefault(section, {})[name] = _parse_cli_value(key, text, types[name])
    return from_dict(values, cfg)


def resolve(config_path: str | Path | None, overrides: list[str]) -> Config:
    """The one way stages build a config: defaults <- TOML file <- overrides, then validate."""
    cfg = load_toml(config_path) if config_path else Config()
    return apply_overrides(cfg, overrides).validate()


# Model presets: the four published GPT-2 sizes (vocab 50257, block 1024).
MODEL_PRESETS: dict[str, dict[str, int]] = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
}


def model_preset(name: str) -> ModelConfig:
    if name not in MODEL_PRESETS:
        raise ConfigError(f"unknown model preset {name!r} (known: {', '.join(MODEL_PRESETS)})")
    return ModelConfig(**MODEL_PRESETS[name])
