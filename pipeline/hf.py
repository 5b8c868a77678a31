"""Hugging Face GPT-2 interop: import HF weights into our GPT, export ours for transformers.

    python -m pipeline.hf export CHECKPOINT_OR_RUN_DIR OUT_DIR [--force]

HF's GPT-2 keeps the four attention/MLP projections as Conv1D modules, whose weight is
(in, out): the transpose of nn.Linear's. Its embedding has the real 50257 rows; ours is
padded (pad rows are zero on import, sliced off on export). Loading never unpickles
arbitrary objects: safetensors files are read by the `safetensors` package and .bin files
only through torch.load(weights_only=True). A hub name is looked up in the local HF cache
(huggingface_hub, local_files_only) and never downloaded: compute nodes are offline, and a
run must not depend on the network.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save as safetensors_bytes

from pipeline.atomic import atomic_write_bytes, atomic_write_json
from pipeline.checkpoint import CheckpointError, load_model, resolve_checkpoint, strip_wrapper_prefixes
from pipeline.cli import OneLineParser
from pipeline.config import ConfigError, ModelConfig
from pipeline.model import GPT
from pipeline.tokenizer import EOT, TokenizerError, official_bpe_files

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Causal-mask buffers stored by older transformers (not c_attn.bias, which is a weight).
BUFFERS = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")
# The four GPT-2 sizes moved to the openai-community org; the old names still resolve on the hub.
HUB_ALIASES = {n: f"openai-community/{n}" for n in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin", "pytorch_model.bin.index.json")


class HFError(RuntimeError):
    """A Hugging Face directory, name or tensor set that cannot be imported/exported."""


# ---------------------------------------------------------------- locating weights

def resolve_hf_dir(name_or_dir: str | Path) -> Path:
    """A directory as given, or the snapshot of a hub name in the local HF cache."""
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise HFError(f"{path}: not a directory (expected a Hugging Face model directory)")
    name = str(name_or_dir)
    ids = [name] + [i for i in (HUB_ALIASES.get(name), {v: k for k, v in HUB_ALIASES.items()}.get(name)) if i]
    for repo_id in ids:
        try:
            return Path(snapshot_download(repo_id, local_files_only=True))
        except (LocalEntryNotFoundError, ValueError):  # ValueError: not a valid repo id
            pass
    raise HFError(f"{name!r} is neither a directory nor a model in the local Hugging Face cache "
                  f"({hub_constants.HF_HUB_CACHE}); "
                  f"nothing is downloaded at run time: fetch it once where there is internet "
                  f"(`hf download {ids[-1]}`) and point HF_HOME at that cache, or pass the model directory")


def _read_weight_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            return load_safetensors(path)
        except SafetensorError as err:
            raise HFError(f"{path}: not a valid safetensors file ({err})") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # an UnpicklingError for anything but plain tensors, or a broken zip
        raise HFError(f"{path}: refused or unreadable with torch.load(weights_only=True) "
                      f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise HFError(f"{path}: not a state dict of tensors")
    return loaded


def read_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF model directory (single file or sharded with an index)."""
    for name in WEIGHT_FILES:
        path = directory / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return _read_weight_file(path)
        try:
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise HFError(f"{path}: malformed shard index ({err})") from None
        tensors: dict[str, torch.Tensor] = {}
        for shard in shards:
            tensors.update(_read_weight_file(directory / shard))
        return tensors
    raise HFError(f"{directory}: no weights ({' or '.join(WEIGHT_FILES)})")


# ---------------------------------------------------------------- configs

def config_from_hf(hf: dict, source: str | Path) -> ModelConfig:
    """Our ModelConfig for an HF GPT-2 config.json; anything our GPT cannot express is an error."""
    def bad(key: str, why: str) -> HFError:
        return HFError(f"{source}: {key} = {hf.get(key)!r}: {why}")

    if hf.get("model_type", "gpt2") != "gpt2":
        raise bad("model_type", "only GPT-2 models can be imported")
    if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise bad("activation_function", "our MLP uses the tanh GELU (gelu_new)")
    if abs(hf.get("layer_norm_epsilon", 1e-5) - 1e-5) > 1e-12:
        raise bad("layer_norm_epsilon", "our LayerNorm uses 1e-5")
    for key, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                      ("add_cross_attention", False), ("tie_word_embeddings", True)):
        if hf.get(key, want) != want:
            raise bad(key, f"must be {want} for our GPT")
    cfg = ModelConfig(n_layer=hf.get("n_layer", 12), n_head=hf.get("n_head", 12), n_embd=hf.get("n_embd", 768),
                      block_size=hf.get("n_positions", 1024), vocab_size=hf.get("vocab_size", 50257))
    if hf.get("n_inner") not in (None, 4 * cfg.n_embd):
        raise bad("n_inner", f"our MLP is 4 x n_embd = {4 * cfg.n_embd}")
    try:
        cfg.validate()
    except (ConfigError, TypeError) as err:
        raise HFError(f"{source}: {err}") from None
    return cfg


def hf_config(cfg: ModelConfig) -> dict:
    """config.json for transformers.GPT2LMHeadModel describing exactly our model."""
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": cfg.vocab_size, "n_positions": cfg.block_size, "n_ctx": cfg.block_size,
        "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": None,
        "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "initializer_range": 0.02,
        # We train without dropout; 0 says so (HF's GPT-2 default is 0.1).
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False, "tie_word_embeddings": True, "use_cache": True,
        "bos_token_id": EOT, "eos_token_id": EOT,
    }


# ---------------------------------------------------------------- tensors

def _expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Our state dict's names and shapes, from a model built on the meta device (no memory)."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in GPT(cfg).state_dict().items()}


def _hf_name(key: str) -> str:
    return key.removeprefix("transformer.")


def _check_names(got: dict[str, tuple], want: dict[str, tuple], what: str) -> None:
    """One error naming every missing, unexpected and mismatched tensor."""
    def show(names: list[str]) -> str:
        return ", ".join(names[:8]) + (f" (+{len(names) - 8} more)" if len(names) > 8 else "")
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    mismatched = sorted(f"{k} {list(got[k])} != expected {list(want[k])}"
                        for k in set(got) & set(want) if tuple(got[k]) != tuple(want[k]))
    problems = [f"{label}: {show(names)}" for label, names in
                (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)) if names]
    if problems:
        raise HFError(f"{what}: " + "; ".join(problems))


def from_hf_state_dict(hf_sd: dict[str, torch.Tensor], cfg: ModelConfig, source: str = "weights") -> dict[str, torch.Tensor]:
    """HF GPT-2 tensors (with or without the 'transformer.' prefix) -> our state dict (fp32)."""
    tensors = {_hf_name(k): v for k, v in hf_sd.items() if not BUFFERS.match(_hf_name(k))}
    lm_head = tensors.pop("lm_head.weight", None)
    want = {}
    for key, shape in _expected_shapes(cfg).items():
        if key != "lm_head.weight":
            name = _hf_name(key)
            want[name] = (cfg.vocab_size, shape[1]) if name == "wte.weight" else \
                shape[::-1] if name.endswith(CONV1D) else shape
    _check_names({k: tuple(v.shape) for k, v in tensors.items()}, want, str(source))
    if lm_head is not None and not torch.equal(lm_head, tensors["wte.weight"]):
        raise HFError(f"{source}: lm_head.weight differs from wte.weight; our GPT ties them")
    ours = {}
    for name, t in tensors.items():
        t = t.float()
        if name.endswith(CONV1D):
            t = t.t()
        if name == "wte.weight":  # pad rows are zero: never an input, masked out of the logits
            t = torch.cat([t, t.new_zeros(cfg.padded_vocab_size - cfg.vocab_size, t.size(1))])
        ours["transformer." + name] = t.contiguous()
    ours["lm_head.weight"] = ours["transformer.wte.weight"]
    return ours


def to_hf_state_dict(sd: dict[str, torch.Tensor], cfg: ModelConfig, source: str = "model") -> dict[str, torch.Tensor]:
    """Our state dict -> HF GPT2LMHeadModel tensors (Conv1D layout, real vocab, fp32)."""
    sd = strip_wrapper_prefixes(sd)
    _check_names({k: tuple(v.shape) for k, v in sd.items()}, _expected_shapes(cfg), str(source))
    hf = {}
    for key, t in sd.items():
        if key == "lm_head.weight":  # tied: transformers re-ties it from wte on load
            continue
        name = _hf_name(key)
        t = t.detach().float().cpu()
        if name.endswith(CONV1D):
            t = t.t()
        if name == "wte.weight":
            t = t[: cfg.vocab_size]
        hf["transformer." + name] = t.contiguous().clone()
        # HF GPT-2 always has biases; zero biases are exactly a model without them.
        if not cfg.bias and (name.endswith(CONV1D) or name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight"))):
            hf["transformer." + name.removesuffix("weight") + "bias"] = torch.zeros(t.size(-1) if name.endswith(CONV1D) else t.size(0))
    return hf


# ---------------------------------------------------------------- public API

def load_hf_gpt2(name_or_dir: str | Path) -> GPT:
    """Our GPT (fp32, CPU, eval mode) with the weights of an HF GPT-2 directory or cached hub name."""
    directory = resolve_hf_dir(name_or_dir)
    try:
        hf = json.loads((directory / "config.json").read_text())
    except FileNotFoundError:
        raise HFError(f"{directory}: no config.json (not a Hugging Face model directory)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise HFError(f"{directory / 'config.json'}: not valid JSON ({err})") from None
    cfg = config_from_hf(hf, directory / "config.json")
    sd = from_hf_state_dict(read_hf_weights(directory), cfg, str(directory))
    with torch.device("meta"):  # no random init of weights that are about to be replaced
        model = GPT(cfg)
    model.load_state_dict(sd, strict=True, assign=True)
    model.lm_head.weight = model.transformer.wte.weight  # assign=True replaced the tied Parameter twice
    return model.eval()


def _tokenizer_files(block_size: int) -> dict[str, bytes]:
    """vocab.json / merges.txt (= OpenAI's encoder.json / vocab.bpe) so AutoTokenizer works offline."""
    try:
        files = official_bpe_files()
    except TokenizerError:
        files = None
    if files is None:
        return {}
    config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": block_size, "add_prefix_space": False,
              "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    return {"vocab.json": files["encoder.json"], "merges.txt": files["vocab.bpe"],
            "tokenizer_config.json": (json.dumps(config, indent=2) + "\n").encode()}


def export_hf(model_or_checkpoint: GPT | str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write a GPT (or a checkpoint / run directory) as an HF GPT-2 directory; returns out_dir."""
    out = Path(out_dir)
    metadata = {"format": "pt", "exported_by": "gpt2-pipeline"}
    if isinstance(model_or_checkpoint, GPT):
        cfg, sd, source = model_or_checkpoint.config, model_or_checkpoint.state_dict(), "model"
    else:
        path = resolve_checkpoint(model_or_checkpoint)
        model, state = load_model(path)
        cfg, sd, source = model.config, model.state_dict(), str(path / "model.pt")
        metadata.update({k: str(state[k]) for k in ("step", "tokens_seen") if k in state})
    incompatible = cfg.gpt2_incompatible()
    if incompatible:
        raise HFError(f"{source}: cannot export to Hugging Face's GPT-2 format, which cannot hold "
                      f"{', '.join(incompatible)} (only GPT-2's architecture exports; keep the checkpoint)")
    if (out / "model.safetensors").exists() and not overwrite:
        raise HFError(f"{out / 'model.safetensors'} exists; pass --force to overwrite")
    hf_sd = to_hf_state_dict(sd, cfg, source)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "model.safetensors", safetensors_bytes(hf_sd, metadata))
    for name, data in _tokenizer_files(cfg.block_size).items():
        atomic_write_bytes(out / name, data)
    atomic_write_json(out / "config.json", hf_config(cfg))  # last: its presence means the export is whole
    return out


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m pipeline.hf", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="write a checkpoint as a Hugging Face GPT-2 directory")
    exp.add_argument("checkpoint", help="checkpoint dir (runs/NAME/checkpoints/step_NNNNNN) or run dir (latest)")
    exp.add_argument("out_dir", help="output directory (config.json, model.safetensors, tokenizer files)")
    exp.add_argument("--force", action="store_true", help="overwrite an existing export")
    args = parser.parse_args(argv)
    try:
        out = export_hf(args.checkpoint, args.out_dir, overwrite=args.force)
    except (HFError, CheckpointError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported to {out} (load with transformers.GPT2LMHeadModel.from_pretrained({str(out)!r}))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
