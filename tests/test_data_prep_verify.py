"""python -m data_prep.verify: every kind of damage is reported with its file, exit 1."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import TEXT_FILES, run_module
from data_prep import fineweb, verify

SHARD = 20_000


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    out = tmp_path_factory.mktemp("pristine")
    files = [TEXT_FILES[3], TEXT_FILES[7], TEXT_FILES[2]]  # 90, 90, 30 kB: 3 shards
    assert fineweb.main(["--files", *map(str, files), "--out", str(out), "--shard-size", str(SHARD),
                         "--workers", "0", "--no-progress"]) == 0
    return out


@pytest.fixture
def shards(pristine, tmp_path):
    out = tmp_path / "shards"
    shutil.copytree(pristine, out)
    return out


def run_verify(directory, capsys) -> tuple[int, str]:
    code = verify.main([str(directory)])
    return code, capsys.readouterr().out


def test_intact_directory_passes(shards, capsys):
    code, out = run_verify(shards, capsys)
    assert code == 0 and out.strip().endswith("all ok")
    assert out.count("\nok    ") + out.startswith("ok    ") == 3


def test_cli_exit_codes(shards, tmp_path):
    assert run_module("data_prep.verify", shards).returncode == 0
    (shards / "fineweb_train_000001.npy").unlink()
    assert run_module("data_prep.verify", shards, check=False).returncode == 1
    assert run_module("data_prep.verify", tmp_path / "nope", check=False).returncode == 2


def test_flipped_byte_is_caught(shards, capsys):
    path = shards / "fineweb_train_000001.npy"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # a single bit deep inside the token data
    path.write_bytes(bytes(data))
    code, out = run_verify(shards, capsys)
    assert code == 1
    assert "FAIL  fineweb_train_000001.npy: sha256 does not match" in out
    assert "ok    fineweb_val_000000.npy" in out and "1 problem(s)" in out


def test_truncated_shard_is_caught(shards, capsys):
    path = shards / "fineweb_train_000001.npy"
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 1000)
    code, out = run_verify(shards, capsys)
    assert code == 1
    assert f"FAIL  fineweb_train_000001.npy: file has {size - 1000:,} bytes, expected {size:,}" in out


def test_missing_stray_and_wrong_dtype_files(shards, capsys):
    (shards / "fineweb_train_000002.npy").unlink()
    np.save(shards / "fineweb_train_000003.npy", np.zeros(5, np.uint16))  # not in the manifest
    (shards / ".fineweb_train_000004.npy.tmp.123").write_bytes(b"partial")
    np.save(shards / "fineweb_val_000000.npy", np.zeros(SHARD, np.int32))
    code, out = run_verify(shards, capsys)
    assert code == 1
    assert "FAIL  fineweb_train_000002.npy: file is missing" in out
    assert "FAIL  fineweb_train_000003.npy: not listed in manifest.json" in out
    assert "FAIL  .fineweb_train_000004.npy.tmp.123: not listed" in out
    assert "FAIL  fineweb_val_000000.npy:" in out and "dtype int32" in out


def test_manifest_problems(shards, capsys):
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["complete"] = False
    actual = manifest["shards"][1]["documents"]
    manifest["shards"][1]["documents"] += 1
    manifest["shards"][2]["file"] = "fineweb_val_000002.npy"
    (shards / "manifest.json").write_text(json.dumps(manifest))
    code, out = run_verify(shards, capsys)
    assert code == 1
    assert "FAIL  manifest.json: incomplete" in out
    assert (f"FAIL  fineweb_train_000001.npy: {actual} documents start here (end-of-text tokens), "
            f"manifest says {actual + 1}") in out
    assert "entry 2 should be fineweb_train_000002.npy (split train)" in out
    (shards / "manifest.json").write_text("{ torn")
    code, out = run_verify(shards, capsys)
    assert code == 1 and out.startswith("FAIL  manifest.json: corrupt manifest")


def test_build_nanogpt_directory_without_manifest(tmp_path, capsys):
    np.save(tmp_path / "edufineweb_val_000000", np.arange(100, dtype=np.uint16))
    np.save(tmp_path / "edufineweb_train_000001", np.arange(50, dtype=np.uint16))
    code, out = run_verify(tmp_path, capsys)
    assert code == 0 and "format ok" in out
    (tmp_path / "edufineweb_train_000001.npy").write_bytes(b"\x93NUMPY garbage")
    code, out = run_verify(tmp_path, capsys)
    assert code == 1 and "FAIL  edufineweb_train_000001.npy" in out
