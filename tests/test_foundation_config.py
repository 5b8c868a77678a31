"""pipeline/config.py: TOML round trip, dotted overrides, one error per kind of bad input,
and the shipped configs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import REPO
from pipeline.config import (Config, ConfigError, ModelConfig, apply_overrides, from_dict, load_toml,
                             model_preset, resolve)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIGS = REPO / "configs"


def test_round_trip_of_every_field(tmp_path):
    cfg = resolve(CONFIGS / "gpt2-124m.toml", ["--optim.max_lr=3e-4", "--eval.sample_prompt=Once upon a \"time\" 🙂\x7f\n\\"])
    (tmp_path / "c.toml").write_text(cfg.to_toml(), encoding="utf-8")
    again = load_toml(tmp_path / "c.toml")
    assert again == cfg
    assert again.to_toml() == cfg.to_toml()


_finite = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(prompt=st.text(), data_dir=st.text(), lr=_finite, eps=_finite, steps=st.integers(-2**62, 2**62),
       shuffle=st.booleans())
def test_round_trip_property(prompt, data_dir, lr, eps, steps, shuffle):
    """Any value a field can hold survives to_toml -> TOML parser -> from_dict unchanged."""
    cfg = Config()
    cfg.eval.sample_prompt, cfg.data.dir, cfg.data.shuffle = prompt, data_dir, shuffle
    cfg.optim.max_lr, cfg.optim.eps, cfg.train.max_steps = lr, eps, steps
    assert from_dict(tomllib.loads(cfg.to_toml())) == cfg


def test_overrides_both_spellings_and_precedence(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[optim]\nmax_lr = 1e-3\n[train]\nmicro_batch_size = 8\n")
    cfg = resolve(path, ["--optim.max_lr=2e-3", "--train.micro_batch_size", "16", "--train.compile=false",
                         "--data.dir", "shards/x", "--model.bias", "no", "--train.seq_len=512"])
    assert cfg.optim.max_lr == 2e-3 and isinstance(cfg.optim.max_lr, float)  # CLI beats the file
    assert cfg.train.micro_batch_size == 16 and isinstance(cfg.train.micro_batch_size, int)
    assert cfg.train.compile is False and cfg.model.bias is False
    assert cfg.data.dir == "shards/x" and cfg.train.seq_len == 512
    assert cfg.optim.warmup_steps == Config().optim.warmup_steps  # untouched keys keep defaults
    assert resolve(path, []).optim.max_lr == 1e-3  # the file beats the defaults
    # An int in a float field is accepted and stored as a float.
    assert apply_overrides(Config(), ["--optim.max_lr=1"]).optim.max_lr == 1.0


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return path


# (TOML text or None, overrides, substrings the error must contain)
BAD_INPUTS = {
    "unknown section": ("[modle]\nn_layer = 2\n", [], ["modle", "n_layer", "model"]),
    "unknown key (file)": ("[model]\nn_layers = 6\n", [], ["model.n_layers", "6", "n_layer"]),
    "unknown key (cli)": (None, ["--optim.lr=1e-3"], ["optim.lr", "1e-3"]),
    "unknown section (cli)": (None, ["--optimizer.max_lr=1e-3"], ["optimizer", "1e-3"]),
    "wrong type (file)": ("[model]\nn_layer = \"12\"\n", [], ["model.n_layer", "'12'", "int"]),
    "wrong type bool (file)": ("[train]\ncompile = 1\n", [], ["train.compile", "1", "bool"]),
    "wrong type (cli)": (None, ["--train.micro_batch_size=abc"], ["train.micro_batch_size", "abc", "int"]),
    "section not a table": ("model = 3\n", [], ["model", "3"]),
    "negative lr": (None, ["--optim.max_lr=-0.001"], ["optim.max_lr", "-0.001"]),
    "nan lr": (None, ["--optim.max_lr=nan"], ["optim.max_lr", "nan"]),
    "inf in file": ("[optim]\nweight_decay = inf\n", [], ["optim.weight_decay", "inf"]),
    "n_embd % n_head": (None, ["--model.n_embd=100"], ["model.n_embd", "100", "n_head = 12"]),
    "zero heads": (None, ["--model.n_head=0"], ["model.n_head", "0"]),
    "bad enum": (None, ["--train.device=tpu"], ["train.device", "tpu", "cuda"]),
    "bad enum (fused)": ("[optim]\nfused = \"maybe\"\n", [], ["optim.fused", "maybe"]),
    "beta out of range": (None, ["--optim.beta2=1.0"], ["optim.beta2", "1.0"]),
    "seq_len > block_size": (None, ["--train.seq_len=2048"], ["train.seq_len", "2048", "block_size = 1024"]),
    "override without value": (None, ["--optim.max_lr"], ["--optim.max_lr"]),
    "stray argument": (None, ["max_lr=3"], ["max_lr=3"]),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_names_key_and_value(name, tmp_path):
    text, overrides, needles = BAD_INPUTS[name]
    path = _write(tmp_path, text) if text is not None else None
    with pytest.raises(ConfigError) as err:
        resolve(path, overrides)
    for needle in needles:
        assert needle in str(err.value), f"{needle!r} not in {str(err.value)!r}"


def test_malformed_toml_names_the_file_and_line(tmp_path):
    path = _write(tmp_path, "[model]\nn_layer = 12\nn_head = \n")
    with pytest.raises(ConfigError, match="not valid TOML") as err:
        resolve(path, [])
    assert str(path) in str(err.value) and "line 3" in str(err.value)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="not found") as err:
        resolve(tmp_path / "nope.toml", [])
    assert "nope.toml" in str(err.value)
    with pytest.raises(ConfigError, match="cannot be read"):
        resolve(tmp_path, [])  # a directory
    (tmp_path / "latin1.toml").write_bytes(b"[data]\ndir = \"caf\xe9\"\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve(tmp_path / "latin1.toml", [])


SHIPPED = {"gpt2-124m.toml": "gpt2", "gpt2-350m.toml": "gpt2-medium",
           "gpt2-774m.toml": "gpt2-large", "gpt2-1558m.toml": "gpt2-xl"}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = resolve(path, [])
    tokens_per_micro_step = cfg.train.micro_batch_size * cfg.train.seq_len
    # The GPU configs must fit one node of any usual size; demo.toml is a 1-process CPU run.
    for world_size in ((1, 2, 4, 8) if path.name in SHIPPED else (1,)):
        assert cfg.train.total_batch_size % (tokens_per_micro_step * world_size) == 0, world_size
    if path.name in SHIPPED:
        assert cfg.model == model_preset(SHIPPED[path.name])
        assert cfg.data.dir == "data/fineweb-edu-10B"
        assert cfg.eval.hellaswag_path == "data/hellaswag/hellaswag_val.jsonl"
        assert cfg.train.compile is True


def test_124m_config_spells_out_every_default():
    raw = tomllib.loads((CONFIGS / "gpt2-124m.toml").read_text())
    defaults = Config().to_dict()
    assert {s: set(v) for s, v in raw.items()} == {s: set(v) for s, v in defaults.items()}
    cfg = from_dict(raw)
    expected = Config()
    expected.data.dir = "data/fineweb-edu-10B"
    expected.eval.hellaswag_path = "data/hellaswag/hellaswag_val.jsonl"
    expected.train.compile = True
    assert cfg == expected


def test_unknown_preset():
    with pytest.raises(ConfigError, match="gpt3"):
        model_preset("gpt3")
    assert model_preset("gpt2-xl") == ModelConfig(n_layer=48, n_head=25, n_embd=1600)
