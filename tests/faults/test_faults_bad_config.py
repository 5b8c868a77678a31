"""Fault kind 4a: bad configuration. Property-based (hypothesis) over config keys and values,
given as --section.key=value overrides and as TOML files, fed to `python -m train`'s
main(argv) in this process.

Property: every invalid input ends in exit 2 with ONE `error: ...` line that names the key
(and the file, for a TOML file), no traceback from torch/numpy, and no started run: the
run directory is never created.

The invalid values come from the contract (DESIGN.md and the field comments), written out
here rather than read from pipeline/config.py's checks, so a check that disappears from the
code makes this test fail.
"""

from __future__ import annotations

import dataclasses
import math
import shutil

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from faults._inject import call_main, describe, is_clean_error
from faults._stages import TINY, tiny_config_text
from pipeline.config import Config, tomllib
from train.__main__ import main as train_main

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

FIELDS: dict[str, str] = {f"{section.name}.{f.name}": f.type  # e.g. {"train.seed": "int"}
                          for section in dataclasses.fields(Config)
                          for f in dataclasses.fields(getattr(Config(), section.name))}
SECTIONS = sorted({key.partition(".")[0] for key in FIELDS})

# The contract: which values each key refuses (beyond values of the wrong type).
POSITIVE = ["model.n_layer", "model.n_head", "model.n_embd", "model.block_size", "model.vocab_size",
            "model.pad_vocab_to", "train.total_batch_size", "train.micro_batch_size", "train.seq_len",
            "train.max_steps", "train.log_every", "train.checkpoint_every", "train.max_bad_steps",
            "train.keep_last", "eval.val_tokens"]
NON_NEGATIVE = ["data.seed", "optim.warmup_steps", "train.keep_every", "train.seed", "eval.eval_every",
                "eval.hellaswag_limit", "eval.sample_every", "eval.sample_tokens", "eval.num_samples",
                "eval.core_max_per_task"]
POSITIVE_FLOAT = ["optim.max_lr", "optim.eps", "optim.muon_lr", "model.rope_base", "train.dist_timeout_s"]
NON_NEGATIVE_FLOAT = ["optim.weight_decay", "optim.grad_clip", "train.target_loss", "train.peak_tflops",
                      "model.logit_softcap", "optim.embed_lr", "optim.head_lr", "optim.muon_weight_decay"]
UNIT_FLOAT = {"optim.min_lr_ratio": (0.0, 1.0, True), "optim.beta1": (0.0, 1.0, False),
              "optim.beta2": (0.0, 1.0, False), "optim.muon_momentum": (0.0, 1.0, False),
              "optim.cooldown_frac": (0.0, 1.0, True)}  # [lo, hi] or [lo, hi)
CHOICES = {"train.device": {"auto", "cuda", "mps", "cpu"}, "train.dtype": {"auto", "bfloat16", "float32"},
           "optim.fused": {"auto", "true", "false"}}
BOOL_WORDS = {"true", "1", "yes", "on", "false", "0", "no", "off"}
INT64 = 2**63


def _parses_int(text: str) -> bool:
    try:
        int(text.replace("_", ""))
        return True
    except ValueError:
        return False


def _parses_float(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _out_of_range(key: str) -> st.SearchStrategy[str]:
    if key in POSITIVE:
        return st.integers(-10**6, 0).map(str)
    if key in NON_NEGATIVE:
        return st.integers(-10**6, -1).map(str)
    if key in POSITIVE_FLOAT:
        return st.floats(max_value=0.0, allow_nan=False, allow_infinity=False).map(repr)
    if key in NON_NEGATIVE_FLOAT:
        return st.floats(max_value=-1e-300, allow_nan=False, allow_infinity=False).map(repr)
    if key in UNIT_FLOAT:
        lo, hi, closed = UNIT_FLOAT[key]
        above = st.floats(min_value=hi, exclude_min=closed, allow_nan=False, allow_infinity=False)
        below = st.floats(max_value=lo - 1e-300, allow_nan=False, allow_infinity=False)
        return st.one_of(above, below).map(repr)
    if key in CHOICES:
        return st.text(max_size=12).filter(lambda s: s not in CHOICES[key])
    if key == "data.dir":
        return st.just("")
    raise KeyError(key)


def _wrong_type(typ: str) -> st.SearchStrategy[str]:
    junk = st.text(max_size=12)
    if typ == "int":
        return st.one_of(st.sampled_from(["1.5", "1e3", "0x10", "ten", "true", "nan", ""]),
                         junk.filter(lambda s: not _parses_int(s)),
                         # beyond 64 bits: torch/numpy cannot hold it, the config must refuse it
                         st.integers(INT64, 10**30).map(str), st.integers(-10**30, -INT64 - 1).map(str))
    if typ == "float":
        return st.one_of(st.sampled_from(["nan", "inf", "-inf", "1e999", "one", "", "0x1p3"]),
                         junk.filter(lambda s: not _parses_float(s)))
    if typ == "bool":
        return junk.filter(lambda s: s.strip().lower() not in BOOL_WORDS)
    raise KeyError(typ)


RANGED = [k for k in FIELDS if k in POSITIVE + NON_NEGATIVE + POSITIVE_FLOAT + NON_NEGATIVE_FLOAT
          or k in UNIT_FLOAT or k in CHOICES or k == "data.dir"]
TYPED = [k for k, t in FIELDS.items() if t != "str"]
identifier = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True)


@st.composite
def bad_override(draw) -> tuple[list[str], list[str]]:
    """(override arguments, names the error line must contain)."""
    kind = draw(st.sampled_from(["range", "type", "unknown key", "unknown section", "cross", "shape"]))
    if kind == "range":
        key = draw(st.sampled_from(RANGED))
        return [f"--{key}={draw(_out_of_range(key))}"], [key]
    if kind == "type":
        key = draw(st.sampled_from(TYPED))
        value = draw(_wrong_type(FIELDS[key]))
        if draw(st.booleans()) and not value.startswith("-"):
            return [f"--{key}", value], [key]  # the two-argument spelling
        return [f"--{key}={value}"], [key]
    if kind == "unknown key":
        section = draw(st.sampled_from(SECTIONS))
        name = draw(identifier.filter(lambda n: f"{section}.{n}" not in FIELDS))
        return [f"--{section}.{name}=1"], [f"{section}.{name}"]
    if kind == "unknown section":
        section = draw(identifier.filter(lambda n: n not in SECTIONS))
        return [f"--{section}.{draw(identifier)}=1"], [section]
    if kind == "cross":
        if draw(st.booleans()):  # n_embd must be a multiple of n_head
            heads = draw(st.integers(3, 9))
            return [f"--model.n_head={heads}", f"--model.n_embd={heads * 8 + draw(st.integers(1, heads - 1))}"], \
                ["model.n_embd", "model.n_head"]
        return [f"--train.seq_len={TINY['block_size'] + draw(st.integers(1, 100))}"], ["train.seq_len", "model.block_size"]
    key = draw(st.sampled_from(TYPED))  # malformed argument shapes
    form = draw(st.sampled_from(["missing value", "no dot", "positional"]))
    if form == "missing value":
        return [f"--{key}"], [key]
    if form == "no dot":
        return [f"--{key.replace('.', '_')}=1"], [key.replace(".", "_")]
    word = draw(identifier)
    return [word], [word]


@pytest.fixture(scope="module")
def base_config(tmp_path_factory, tiny_shards):
    path = tmp_path_factory.mktemp("cfg") / "tiny.toml"
    path.write_text(tiny_config_text(tiny_shards))
    return path


@SETTINGS
@given(case=bad_override())
def test_a_bad_override_is_one_error_line_naming_the_key_and_starts_nothing(case, base_config, tmp_path,
                                                                            fault_log):
    overrides, names = case
    run = tmp_path / "run"
    shutil.rmtree(run, ignore_errors=True)
    code, _, err = call_main(train_main, ["--config", base_config, "--run-dir", run, *overrides])
    clean = is_clean_error(code, err, *names)
    fault_log.record("bad config override", " ".join(overrides), clean_error=clean and not run.exists())
    assert clean, f"{overrides}: {describe(code, err)}"
    assert not run.exists(), f"{overrides}: the run directory was created"


# -- TOML files -------------------------------------------------------------------------

TOML_VALUES = {  # TOML literal -> the TOML type it is
    "int": ["3", "-7", "0", "9223372036854775807"],
    "float": ["1.5", "-0.25", "nan", "inf", "1e300"],
    "str": ['"text"', '""', '"3"'],
    "bool": ["true", "false"],
    "array": ["[1, 2]", "[]", '["a"]'],
    "table": ["{ a = 1 }", "{}"],
    "datetime": ["1979-05-27T07:32:00Z", "1979-05-27"],
}
ACCEPTS = {"int": {"int"}, "float": {"int", "float"}, "str": {"str"}, "bool": {"bool"}}


@st.composite
def bad_toml(draw) -> tuple[str, str, str]:
    """(section, 'key = literal' line, name the error must contain): a wrong type, an
    out-of-range value, a non-finite float or an unknown key, in a config file."""
    key = draw(st.sampled_from(sorted(FIELDS)))
    section, _, name = key.partition(".")
    kind = draw(st.sampled_from(["type", "range", "unknown"]))
    if kind == "unknown":
        other = draw(identifier.filter(lambda n: f"{section}.{n}" not in FIELDS))
        return section, f"{other} = 1", f"{section}.{other}"
    if kind == "range" and key in RANGED and key not in CHOICES and key != "data.dir":
        value = draw(_out_of_range(key))
        return section, f"{name} = {value}", key
    wrong = [t for t in TOML_VALUES if t not in ACCEPTS[FIELDS[key]]]
    literal = draw(st.sampled_from(TOML_VALUES[draw(st.sampled_from(wrong))]))
    if FIELDS[key] == "float" and draw(st.booleans()):
        literal = draw(st.sampled_from(["nan", "inf", "-inf", "+nan"]))
    return section, f"{name} = {literal}", key


@SETTINGS
@given(case=bad_toml())
def test_a_bad_config_file_is_one_error_line_naming_the_key(case, tiny_shards, tmp_path, fault_log):
    section, line, key = case
    name = line.partition(" = ")[0]
    base = [t for t in tiny_config_text(tiny_shards).splitlines() if not t.startswith(f"{name} = ")]
    text = "\n".join(base).replace(f"[{section}]\n", f"[{section}]\n{line}\n", 1)
    config = tmp_path / "bad.toml"
    config.write_text(text)
    run = tmp_path / "run"
    shutil.rmtree(run, ignore_errors=True)
    code, _, err = call_main(train_main, ["--config", config, "--run-dir", run])
    clean = is_clean_error(code, err, key)
    fault_log.record("bad config file", f"[{section}] {line}", clean_error=clean and not run.exists())
    assert clean, f"[{section}] {line}: {describe(code, err)}"
    assert not run.exists()


def _is_toml(blob: bytes) -> bool:
    try:
        tomllib.loads(blob.decode())
        return True
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False


@SETTINGS
@given(blob=st.binary(min_size=1, max_size=200))
def test_a_config_file_that_is_not_toml_names_the_file(blob, tmp_path, fault_log):
    blob = b"[model]\n" + blob
    assume(not _is_toml(blob))
    config = tmp_path / "garbage.toml"
    config.write_bytes(blob)
    run = tmp_path / "run"
    code, _, err = call_main(train_main, ["--config", config, "--run-dir", run])
    clean = is_clean_error(code, err, "garbage.toml", "not valid TOML")
    fault_log.record("bad config file", f"bytes {blob[:20]!r}", clean_error=clean and not run.exists())
    assert clean, f"{blob!r}: {describe(code, err)}"
    assert not run.exists()


def test_the_contract_tables_cover_every_numeric_key():
    """A new numeric config key must be given its valid range here, or it escapes the property."""
    numeric = {k for k, t in FIELDS.items() if t in ("int", "float")}
    assert numeric <= set(RANGED), sorted(numeric - set(RANGED))


def test_the_extreme_valid_seeds_train_and_sample(tiny_config, tmp_path, fault_log):
    """The largest seeds the config accepts reach torch.manual_seed and the sampler's
    generator without overflowing (they used to end in a torch traceback mid-run)."""
    run = tmp_path / "run"
    argv = ["--config", tiny_config, "--run-dir", run, "--train.max_steps=1", f"--train.seed={INT64 - 1}",
            f"--data.seed={INT64 - 1}", "--eval.sample_every=1", "--eval.num_samples=1", "--eval.sample_tokens=2"]
    code, _, err = call_main(train_main, argv)
    fault_log.record("bad config override", "largest valid seeds, with sampling", harmless=code == 0)
    assert code == 0, describe(code, err)
