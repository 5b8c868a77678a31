"""Fault kind 2a: corrupt data files -- token shards, their manifest, the HellaSwag file.

Every reader must detect the damage and name the file: the shard library (as train and
eval use it), `python -m train`, `python -m eval`, `python -m data_prep.verify`. Nothing
may silently train or evaluate on bad data: a reader that accepts a damaged directory must
have read exactly the tokens it would have read before the damage ("harmless", e.g. a bit
flipped in the manifest's record of the input file names).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import HELLASWAG_VAL
from faults._inject import call_main, describe, flip_byte, is_clean_error, random_offsets, truncate
from pipeline.shards import MANIFEST, ShardError, load_shard_set, open_shard

SEED = 8


def tokens_by_split(directory: Path) -> dict[str, list[bytes]]:
    """What a careful reader gets from a shard directory (ShardError if it notices damage)."""
    shard_set = load_shard_set(directory)
    return {split: [open_shard(info, verify_hash=True).tobytes() for info in shard_set.split(split)]
            for split in ("train", "val")}


def library_verdict(directory: Path, original: dict, names: list[str]) -> tuple[bool, bool, str]:
    """(clean error naming one of names, harmless, message)."""
    try:
        got = tokens_by_split(directory)
    except ShardError as err:
        return any(n in str(err) for n in names), False, str(err)
    return False, got == original, "accepted"


@pytest.fixture(scope="module")
def original(tiny_shards):
    return tokens_by_split(tiny_shards)


@pytest.fixture()
def eval_run(tiny_run, tmp_path_factory):
    """A copy of the tiny run whose checkpoints eval reads (eval writes results beside them)."""
    run = tmp_path_factory.getbasetemp() / "corrupt-data-run"
    if not run.exists():
        shutil.copytree(tiny_run, run)
    yield run
    shutil.rmtree(run / "eval", ignore_errors=True)


@pytest.fixture()
def shards(tiny_shards, tmp_path):
    copy = tmp_path / "shards"
    shutil.copytree(tiny_shards, copy)
    return copy


# -- shards -----------------------------------------------------------------------------

def _rewrite(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=True)


def damage_shard(path: Path, how: str, rng: random.Random) -> str:
    """Damage one shard file in place; returns a description."""
    tokens = np.load(path)
    header = path.stat().st_size - tokens.nbytes
    if how == "flip data":
        offset = rng.randrange(header, path.stat().st_size)
        flip_byte(path, offset, 1 << rng.randrange(8))
        return f"bit flipped at byte {offset}"
    if how == "flip header":
        offset = rng.randrange(0, header)
        flip_byte(path, offset, 1 << rng.randrange(8))
        return f"bit flipped in the .npy header at byte {offset}"
    if how == "truncate":
        size = rng.randrange(0, path.stat().st_size)
        truncate(path, size)
        return f"truncated to {size} bytes"
    if how == "padded":
        with open(path, "ab") as f:
            f.write(b"\0" * 2 * rng.randrange(1, 100))
        return "trailing bytes appended"
    if how == "missing":
        path.unlink()
        return "deleted"
    if how == "text":
        path.write_text("this is not a .npy file\n")
        return "replaced by text"
    if how.startswith("dtype "):
        _rewrite(path, tokens.astype(how.removeprefix("dtype ")))
        return f"rewritten with np.save as {how.removeprefix('dtype ')}"
    if how == "2-D":
        _rewrite(path, tokens.reshape(2, -1))
        return "rewritten as a 2-D array"
    if how == "object":
        _rewrite(path, np.array(list(tokens[:100]), dtype=object))
        return "rewritten as a pickled object array"
    raise ValueError(how)


SHARD_FAULTS = ["flip data", "flip data", "flip header", "flip header", "truncate", "truncate", "padded", "missing",
                "text", "dtype int32", "dtype uint32", "dtype float32", "dtype float64", "dtype int64", "dtype uint8",
                "dtype >u2", "2-D", "object"]


@pytest.mark.parametrize("index", range(len(SHARD_FAULTS)))
def test_a_damaged_train_shard_is_named_by_every_reader(index, shards, original, tiny_config, tmp_path, fault_log):
    from data_prep.verify import main as verify_main
    from train.__main__ import main as train_main
    rng = random.Random(SEED * 1000 + index)
    how = SHARD_FAULTS[index]
    victim = sorted(shards.glob("*_train_*.npy"))[rng.randrange(9)]
    what = damage_shard(victim, how, rng)
    where = f"{victim.name}: {what}"

    lib_clean, harmless, message = library_verdict(shards, original, [victim.name])
    run = tmp_path / "run"
    code, _, err = call_main(train_main, ["--config", tiny_config, "--run-dir", run, f"--data.dir={shards}",
                                          "--train.max_steps=1"])
    train_clean = is_clean_error(code, err, victim.name) and not run.exists()
    vcode, vout, _ = call_main(verify_main, [shards])
    verify_clean = vcode == 1 and any(line.startswith(f"FAIL  {victim.name}") for line in vout.splitlines())
    clean = lib_clean and train_clean and verify_clean
    fault_log.record("corrupt shard", where, clean_error=clean, harmless=harmless and code == 0)
    assert lib_clean or harmless, f"{where}: library: {message}"
    assert train_clean or (harmless and code == 0), f"{where}: train: {describe(code, err)}"
    assert verify_clean, f"{where}: data_prep.verify exit {vcode}:\n{vout}"


@pytest.mark.parametrize("how", ["flip data", "truncate", "dtype int32"])
def test_a_damaged_val_shard_stops_eval_and_in_loop_validation(how, shards, eval_run, tiny_config, tmp_path,
                                                              fault_log):
    from eval.__main__ import main as eval_main
    from train.__main__ import main as train_main
    rng = random.Random(SEED + len(how))
    victim = next(shards.glob("*_val_*.npy"))
    where = f"{victim.name}: {damage_shard(victim, how, rng)}"
    ckpt = sorted((eval_run / "checkpoints").iterdir())[-1]
    code, _, err = call_main(eval_main, ["--checkpoint", ckpt, "--tasks", "val", "--val-data", shards,
                                         "--val-tokens", "256", "--no-report"])
    eval_clean = is_clean_error(code, err, victim.name) and not (eval_run / "eval").exists()
    run = tmp_path / "run"
    tcode, _, terr = call_main(train_main, ["--config", tiny_config, "--run-dir", run, f"--data.dir={shards}",
                                            "--train.max_steps=1", "--eval.eval_every=1"])
    train_clean = is_clean_error(tcode, terr, victim.name) and not run.exists()
    fault_log.record("corrupt shard", where, clean_error=eval_clean and train_clean)
    assert eval_clean, f"{where}: eval: {describe(code, err)}"
    assert train_clean, f"{where}: train: {describe(tcode, terr)}"


# -- the manifest -----------------------------------------------------------------------

def test_bit_flips_anywhere_in_the_manifest_are_detected_or_harmless(tiny_shards, original, tmp_path, fault_log):
    """400 single-bit flips at seeded offsets all over manifest.json."""
    manifest = tiny_shards / MANIFEST
    blob = manifest.read_bytes()
    names = [MANIFEST, *(p.name for p in tiny_shards.glob("*.npy"))]
    copy = tmp_path / "shards"
    shutil.copytree(tiny_shards, copy)
    rng = random.Random(SEED)
    bad = []
    for offset in random_offsets(manifest, 400, SEED):
        mask = 1 << rng.randrange(8)
        (copy / MANIFEST).write_bytes(blob)
        flip_byte(copy / MANIFEST, offset, mask)
        clean, harmless, message = library_verdict(copy, original, names)
        where = f"byte {offset} ^ {mask:#04x} ({blob[max(0, offset - 12):offset + 12]!r})"
        fault_log.record("corrupt manifest", where, clean_error=clean, harmless=harmless)
        if not (clean or harmless):
            bad.append(f"{where}: {message}")
    assert not bad, "\n".join(bad[:10])


@pytest.mark.parametrize("how", ["truncate", "empty", "not json", "hashes swapped"])
def test_a_damaged_manifest_stops_train_and_eval(how, shards, eval_run, tiny_config, tmp_path, fault_log):
    from eval.__main__ import main as eval_main
    from train.__main__ import main as train_main
    manifest = shards / MANIFEST
    if how == "truncate":
        truncate(manifest, manifest.stat().st_size // 2)
    elif how == "empty":
        truncate(manifest, 0)
    elif how == "not json":
        manifest.write_bytes(b"\x00\xff" * 40)
    else:  # two train shards' hashes swapped: the manifest no longer describes these files
        data = json.loads(manifest.read_text())
        a, b = data["shards"][1], data["shards"][2]
        a["sha256"], b["sha256"] = b["sha256"], a["sha256"]
        manifest.write_text(json.dumps(data))
    run = tmp_path / "run"
    code, _, err = call_main(train_main, ["--config", tiny_config, "--run-dir", run, f"--data.dir={shards}",
                                          "--train.max_steps=1"])
    train_clean = is_clean_error(code, err) and (MANIFEST in err or ".npy" in err) and not run.exists()
    ckpt = sorted((eval_run / "checkpoints").iterdir())[-1]
    ecode, _, eerr = call_main(eval_main, ["--checkpoint", ckpt, "--tasks", "val", "--val-data", shards,
                                           "--val-tokens", "256", "--no-report"])
    eval_clean = (is_clean_error(ecode, eerr) and (MANIFEST in eerr or ".npy" in eerr)
                  and not (eval_run / "eval").exists()) or how == "hashes swapped"  # eval reads only the val shard
    fault_log.record("corrupt manifest", how, clean_error=train_clean and eval_clean)
    assert train_clean, f"{how}: train: {describe(code, err)}"
    assert eval_clean, f"{how}: eval: {describe(ecode, eerr)}"


# -- HellaSwag --------------------------------------------------------------------------

def damage_hellaswag(path: Path, how: str, rng: random.Random) -> str:
    lines = path.read_bytes().splitlines(keepends=True)
    if how == "flip":
        offset = rng.randrange(path.stat().st_size)
        flip_byte(path, offset, 1 << rng.randrange(8))
        return f"bit flipped at byte {offset}"
    if how == "truncate at a row":
        keep = rng.randrange(1, len(lines))
        path.write_bytes(b"".join(lines[:keep]))
        return f"cut after row {keep}"
    if how == "truncate mid-row":
        size = rng.randrange(path.stat().st_size)
        truncate(path, size)
        return f"truncated to {size} bytes"
    if how == "row dropped":
        i = rng.randrange(len(lines))
        path.write_bytes(b"".join(lines[:i] + lines[i + 1:]))
        return f"row {i + 1} removed"
    if how == "label changed":
        i = rng.randrange(len(lines))
        row = json.loads(lines[i])
        row["label"] = (row["label"] + 1) % 4
        lines[i] = (json.dumps(row) + "\n").encode()
        path.write_bytes(b"".join(lines))
        return f"row {i + 1} label changed"
    raise ValueError(how)


HELLASWAG_FAULTS = ["flip", "flip", "flip", "truncate at a row", "truncate mid-row", "row dropped", "label changed"]


@pytest.mark.parametrize("index", range(len(HELLASWAG_FAULTS)))
def test_a_damaged_hellaswag_file_is_named_by_eval_and_the_in_loop_evaluation(index, eval_run, tiny_config, tmp_path,
                                                                              fault_log, hellaswag_pinned_to_generated):
    from eval.__main__ import main as eval_main
    from train.__main__ import main as train_main
    rng = random.Random(SEED * 100 + index)
    copy = tmp_path / "hellaswag_val.jsonl"
    shutil.copyfile(HELLASWAG_VAL, copy)
    where = damage_hellaswag(copy, HELLASWAG_FAULTS[index], rng)
    ckpt = sorted((eval_run / "checkpoints").iterdir())[-1]
    code, _, err = call_main(eval_main, ["--checkpoint", ckpt, "--tasks", "hellaswag", "--hellaswag", copy,
                                         "--limit", "4", "--no-report"])
    eval_clean = is_clean_error(code, err, copy) and not (eval_run / "eval").exists()
    run = tmp_path / "run"
    tcode, _, terr = call_main(train_main, ["--config", tiny_config, "--run-dir", run, "--train.max_steps=1",
                                            "--eval.eval_every=1", f"--eval.hellaswag_path={copy}",
                                            "--eval.hellaswag_limit=4"])
    train_clean = is_clean_error(tcode, terr, copy) and not run.exists()
    fault_log.record("corrupt HellaSwag file", where, clean_error=eval_clean and train_clean)
    assert eval_clean, f"{where}: eval: {describe(code, err)}"
    assert train_clean, f"{where}: train in-loop: {describe(tcode, terr)}"
