"""Bad input and bad environments: one clear `error:` line naming the file/row, exit 2,
complete shards left intact."""

from __future__ import annotations

import errno
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import CP1252_FILES, TEXT_FILES, run_module
from data_prep import fineweb, shard_writer
from data_prep.output import output_lock
from data_prep_fixtures import corpus, dir_bytes, read_shards, reference_stream, write_jsonl
from pipeline.failpoints import armed
from pipeline.shards import load_shard_set, open_shard

SHARD = 20_000
LATIN1_FILE = CP1252_FILES[0]  # cp1252 bytes, not valid UTF-8 (tests/generated_data.py)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return corpus(tmp_path_factory.getbasetemp() / "corpus")


def prep(files, out, *extra) -> int:
    return fineweb.main(["--files", *map(str, files), "--out", str(out), "--shard-size", str(SHARD),
                         "--workers", "1", "--no-progress", *extra])


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_missing_and_non_string_text_columns(data, tmp_path, capsys):
    assert prep(data.parquet[:1], tmp_path / "a", "--text-column", "content") == 2
    line = error_line(capsys)
    assert str(data.parquet[0]) in line and "no column 'content'" in line and "text, id, dump" in line
    assert prep(data.parquet[:1], tmp_path / "b", "--text-column", "token_count") == 2
    assert "column 'token_count' has type int64" in error_line(capsys)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_parquet_names_the_file(data, tmp_path, damage):
    bad = tmp_path / "000_00009.parquet"
    raw = data.parquet[0].read_bytes()
    bad.write_bytes(b"not a parquet file at all" * 100 if damage == "garbage" else raw[:len(raw) // 2])
    proc = run_module("data_prep.fineweb", "--files", bad, "--out", tmp_path / "out", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: {bad}: unreadable parquet file")


def test_null_text_names_the_row(tmp_path, capsys):
    path = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"text": ["fine", "also fine", None, "never reached"]}), path)
    assert prep([path], tmp_path / "out") == 2
    assert f"{path}: row 2: 'text' is null" in error_line(capsys)


@pytest.mark.parametrize("line,message", [
    (b'{"text": "unterminated\n', "not valid JSON"),
    (b'{"body": "wrong field"}\n', "no 'text' field (found: body)"),
    (b'{"text": 42}\n', "'text' is int, expected a string"),
    (b'["a", "list"]\n', "no 'text' field (found: list)"),
])
def test_bad_jsonl_line_names_file_and_line(tmp_path, capsys, line, message):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b'{"text": "first"}\n\n{"text": "third line"}\n' + line + b'{"text": "later"}\n')
    assert prep([path], tmp_path / "out") == 2
    assert f"{path}:4: {message}" in error_line(capsys)


def test_truncated_gzip_names_the_file(data, tmp_path, capsys):
    path = tmp_path / "docs.jsonl.gz"
    path.write_bytes(data.jsonl[1].read_bytes()[:5000])
    assert prep([path], tmp_path / "out") == 2
    line = error_line(capsys)
    assert f"{path}: unreadable near line" in line


def test_non_utf8_text_strict_error_names_file_and_byte(tmp_path):
    raw = LATIN1_FILE.read_bytes()
    with pytest.raises(UnicodeDecodeError) as info:
        raw.decode("utf-8")
    proc = run_module("data_prep.fineweb", "--files", LATIN1_FILE, "--out", tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: {LATIN1_FILE}: not valid UTF-8 at byte {info.value.start} ")
    assert "--encoding-errors cp1252" in proc.stderr


@pytest.mark.parametrize("policy", ["cp1252", "replace"])
def test_non_utf8_text_policies_keep_every_document(tmp_path, capsys, policy):
    files = [TEXT_FILES[2], LATIN1_FILE, CP1252_FILES[1]]
    assert prep(files, tmp_path, "--encoding-errors", policy) == 0
    err = capsys.readouterr().err
    assert f"{LATIN1_FILE}: not valid UTF-8" in err and str(files[2]) in err and str(files[0]) not in err
    texts = [f.read_bytes().decode("cp1252" if policy == "cp1252" and f != files[0] else "utf-8",
                                   errors="strict" if policy == "cp1252" else "replace") for f in files]
    _, tokens = read_shards(tmp_path)
    np.testing.assert_array_equal(tokens, reference_stream(texts)[0])
    assert json.loads((tmp_path / "manifest.json").read_text())["source"]["encoding_errors"] == policy


def test_non_utf8_jsonl_line_is_named(tmp_path, capsys):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    assert prep([path], tmp_path / "out") == 2
    assert f"{path}:2: not valid UTF-8 at byte 13" in error_line(capsys)


def test_empty_inputs(tmp_path, capsys):
    assert prep([tmp_path / "nothing-*.parquet"], tmp_path / "a") == 2
    assert "nothing-*.parquet: matches no files" in error_line(capsys)
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"\n\n")
    assert prep([empty], tmp_path / "b") == 2
    assert "the input holds no documents" in error_line(capsys)
    (tmp_path / "table.csv").write_text("text\nhello\n")
    assert prep([tmp_path / "table.csv"], tmp_path / "c") == 2
    assert "unsupported input type" in error_line(capsys)
    (tmp_path / "file").write_text("x")
    assert prep([empty], tmp_path / "file") == 2
    assert "exists and is not a directory" in error_line(capsys)


def test_foreign_output_directories_are_refused(data, tmp_path, capsys):
    nanogpt = tmp_path / "nanogpt"
    nanogpt.mkdir()
    np.save(nanogpt / "edufineweb_val_000000", np.zeros(10, np.uint16))
    assert prep(data.jsonl[:1], nanogpt) == 2
    line = error_line(capsys)
    assert "edufineweb_val_000000.npy" in line and "no manifest.json" in line and "--overwrite" in line

    ours = tmp_path / "ours"
    assert prep(data.jsonl[:1], ours, "--max-tokens", "30000") == 0
    manifest = json.loads((ours / "manifest.json").read_text())
    manifest["tokenizer"]["name"] = "cl100k_base"
    (ours / "manifest.json").write_text(json.dumps(manifest))
    assert prep(data.jsonl[:1], ours, "--max-tokens", "30000") == 2
    assert "tokenizer" in error_line(capsys)
    capsys.readouterr()
    assert prep(data.jsonl[1:], tmp_path / "other", "--max-tokens", "30000") == 0
    assert prep(data.jsonl[:1], tmp_path / "other", "--max-tokens", "30000") == 2
    line = error_line(capsys)
    assert "different run (source was" in line and "--overwrite" in line


def test_disk_full_keeps_complete_shards_and_resumes(data, tmp_path, capsys):
    files = data.jsonl[:1]
    clean = tmp_path / "clean"
    assert prep(files, clean, "--max-tokens", "150000") == 0
    out = tmp_path / "out"
    # inside the third shard's temp-file write: the real cleanup path runs
    with armed("data_prep.shard_written", "raise(ENOSPC)@hit=3"):
        assert prep(files, out, "--max-tokens", "150000") == 2
    line = error_line(capsys)
    assert "fineweb_train_000002.npy: cannot write (disk full)" in line and "2 complete shard(s)" in line
    assert sorted(p.name for p in out.iterdir()) == [".data_prep.lock", "fineweb_train_000001.npy",
                                                      "fineweb_val_000000.npy", "manifest.json"]  # no temp file
    for info in load_shard_set(out, require_complete=False).shards:
        open_shard(info, verify_hash=True)
    assert prep(files, out, "--max-tokens", "150000") == 0
    assert dir_bytes(out) == dir_bytes(clean)


def test_disk_full_on_manifest_write(data, tmp_path, capsys, monkeypatch):
    files = data.jsonl[:1]
    clean = tmp_path / "clean"
    assert prep(files, clean, "--max-tokens", "90000") == 0
    real = shard_writer.write_manifest
    calls = {"n": 0}

    def full_disk(directory, manifest):
        calls["n"] += 1
        if calls["n"] == 3:  # the second shard is renamed into place, its manifest update fails
            raise OSError(errno.ENOSPC, "No space left on device")
        real(directory, manifest)

    monkeypatch.setattr(shard_writer, "write_manifest", full_disk)
    out = tmp_path / "out"
    assert prep(files, out, "--max-tokens", "90000") == 2
    assert "manifest.json: cannot write (disk full)" in error_line(capsys)
    monkeypatch.undo()
    assert prep(files, out, "--max-tokens", "90000") == 0
    assert dir_bytes(out) == dir_bytes(clean)


def test_error_mid_run_keeps_shards_then_fix_and_resume(data, tmp_path, capsys):
    good = data.jsonl[0]
    bad = tmp_path / "later.jsonl"
    write_jsonl(data.docs[-30:], bad)
    lines = bad.read_bytes().splitlines(keepends=True)
    bad.write_bytes(b"".join(lines[:20]) + b"{broken\n" + b"".join(lines[20:]))
    out = tmp_path / "out"
    assert prep([good, bad], out) == 2
    assert f"{bad}:21: not valid JSON" in error_line(capsys)
    kept = load_shard_set(out, require_complete=False).shards
    assert len(kept) >= 5
    for info in kept:
        open_shard(info, verify_hash=True)
    bad.write_bytes(b"".join(lines[:20]) + b" " * 7 + b"\n" + b"".join(lines[20:]))  # fixed, same size
    assert prep([good, bad], out) == 0  # resumes after the kept shards
    clean = tmp_path / "clean"
    assert prep([good, bad], clean) == 0
    assert dir_bytes(out) == dir_bytes(clean)


def test_gzip_reader_rejects_non_gzip(tmp_path, capsys):
    path = tmp_path / "docs.jsonl.gz"
    path.write_bytes(b'{"text": "plain, not gzipped"}\n')
    assert prep([path], tmp_path / "out") == 2
    assert f"{path}: unreadable near line 1" in error_line(capsys)


def test_concurrent_run_on_the_same_directory_is_refused(data, tmp_path):
    out = tmp_path / "out"
    with output_lock(out):  # as if another run were writing here
        proc = run_module("data_prep.fineweb", "--files", data.jsonl[0], "--out", out, check=False)
    assert proc.returncode == 2 and "another data_prep.fineweb run is writing this directory" in proc.stderr
    assert not (out / "manifest.json").exists()
