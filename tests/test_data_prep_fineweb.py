"""data_prep.fineweb: token stream, shard boundaries, manifest, sources, --max-tokens, re-runs."""

from __future__ import annotations

import hashlib
import io
import json
import threading

import numpy as np
import pytest

from conftest import CRLF_TEXT, EMPTY_TEXT, LONG_TEXT, TEXT_FILES, run_module, subprocess_env
from data_prep import DataPrepError, fineweb, hub
from data_prep.progress import Progress
from data_prep.sources import read_ahead
from data_prep.tokenize import encode_documents
from data_prep_fixtures import SHARD, corpus, dir_bytes, read_shards, reference_encoding, reference_stream
from pipeline.shards import load_shard_set, open_shard
from pipeline.tokenizer import get_tokenizer, tokenizer_fingerprint


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return corpus(tmp_path_factory.getbasetemp() / "corpus")


@pytest.fixture(scope="module")
def parquet_out(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("parquet_out")
    proc = run_module("data_prep.fineweb", "--files", *data.parquet, "--out", out, "--shard-size", SHARD,
                      "--workers", "2")
    assert "wrote" in proc.stdout
    return out


def expected_documents_per_shard(lengths: np.ndarray, total: int) -> list[int]:
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    starts = starts[starts < total]
    return np.bincount(starts // SHARD, minlength=-(-total // SHARD)).tolist()


def test_token_stream_equals_independent_tokenization(data, parquet_out):
    paths, tokens = read_shards(parquet_out)
    assert len(tokens) == len(data.stream) > 5 * SHARD
    np.testing.assert_array_equal(tokens, data.stream)


def test_shard_boundaries_and_split(data, parquet_out):
    paths, _ = read_shards(parquet_out)
    n = -(-len(data.stream) // SHARD)
    assert [p.name for p in paths] == ["fineweb_val_000000.npy"] + [f"fineweb_train_{i:06d}.npy" for i in range(1, n)]
    for i, path in enumerate(paths):
        array = np.load(path)
        assert array.dtype == np.uint16 and array.ndim == 1
        np.testing.assert_array_equal(array, data.stream[i * SHARD:(i + 1) * SHARD])
    assert len(np.load(paths[-1])) == len(data.stream) - (n - 1) * SHARD


def test_manifest_describes_every_shard(data, parquet_out):
    manifest = json.loads((parquet_out / "manifest.json").read_text())
    assert manifest["format"] == "gpt2-pipeline-shards" and manifest["version"] == 1
    assert manifest["tokenizer"] == tokenizer_fingerprint()
    assert manifest["complete"] is True and manifest["shard_size"] == SHARD and manifest["prefix"] == "fineweb"
    assert manifest["source"]["kind"] == "files"
    assert [f["path"] for f in manifest["source"]["files"]] == [str(p) for p in data.parquet]
    docs = expected_documents_per_shard(data.lengths, len(data.stream))
    assert [s["documents"] for s in manifest["shards"]] == docs and sum(docs) == len(data.docs)
    for entry in manifest["shards"]:
        assert entry["sha256"] == hashlib.sha256((parquet_out / entry["file"]).read_bytes()).hexdigest()
        assert entry["split"] == ("val" if entry["file"].startswith("fineweb_val") else "train")
    shard_set = load_shard_set(parquet_out)
    assert [s.tokens for s in shard_set.shards] == [s["tokens"] for s in manifest["shards"]]
    assert len(shard_set.split("val")) == 1
    open_shard(shard_set.shards[-1], verify_hash=True)


def test_jsonl_and_gz_give_the_same_bytes_as_parquet(data, parquet_out, tmp_path):
    run_module("data_prep.fineweb", "--files", *data.jsonl, "--out", tmp_path, "--shard-size", SHARD)
    ours, theirs = dir_bytes(tmp_path), dir_bytes(parquet_out)
    ours.pop("manifest.json"), theirs.pop("manifest.json")
    assert ours == theirs


def test_text_files_are_one_document_each(tmp_path):
    files = [LONG_TEXT, TEXT_FILES[2], EMPTY_TEXT, CRLF_TEXT]  # a 1.5 MB document, an empty one, \r\n line ends
    assert fineweb.main(["--files", *map(str, files), "--out", str(tmp_path), "--shard-size", str(SHARD),
                         "--workers", "2", "--no-progress"]) == 0
    stream, lengths = reference_stream([f.read_bytes().decode() for f in files])  # keep \r\n
    _, tokens = read_shards(tmp_path)
    np.testing.assert_array_equal(tokens, stream)  # the long document alone spans many shards
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert sum(s["documents"] for s in manifest["shards"]) == 4


def test_inline_and_parallel_workers_agree(data, parquet_out, tmp_path):
    assert fineweb.main(["--files", *map(str, data.parquet), "--out", str(tmp_path), "--shard-size", str(SHARD),
                         "--workers", "0", "--no-progress"]) == 0
    assert dir_bytes(tmp_path) == dir_bytes(parquet_out)


@pytest.mark.parametrize("max_tokens", [123_457, 3 * SHARD])
def test_max_tokens_stops_with_a_partial_last_shard(data, tmp_path, max_tokens):
    assert fineweb.main(["--files", *map(str, data.parquet), "--out", str(tmp_path), "--shard-size", str(SHARD),
                         "--max-tokens", str(max_tokens), "--no-progress"]) == 0
    paths, tokens = read_shards(tmp_path)
    np.testing.assert_array_equal(tokens, data.stream[:max_tokens])
    assert len(paths) == -(-max_tokens // SHARD)  # no empty shard when it divides exactly
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["complete"] and manifest["max_tokens"] == max_tokens
    assert [s["documents"] for s in manifest["shards"]] == expected_documents_per_shard(data.lengths, max_tokens)


def test_finished_output_rerun_is_a_noop(data, parquet_out):
    before = {p.name: p.stat().st_mtime_ns for p in parquet_out.iterdir()}
    proc = run_module("data_prep.fineweb", "--files", *data.parquet, "--out", parquet_out, "--shard-size", SHARD)
    assert "already complete" in proc.stdout and "nothing to do" in proc.stdout
    assert {p.name: p.stat().st_mtime_ns for p in parquet_out.iterdir()} == before


def test_hub_source_streams_the_resolved_parquet_files(data, parquet_out, tmp_path, monkeypatch):
    # No network here: stand in for the hub's file resolution with fsspec URLs of local files,
    # so everything after resolution (fsspec reads, order, manifest, resume) is exercised.
    urls = [f"file://{p}" for p in data.parquet]
    calls = []

    def fake_resolve(dataset, name, split, revision, *retry_and_log):
        calls.append((dataset, name, split, revision))
        return "a" * 40, [fineweb.SourceFile(u, "parquet") for u in urls]

    monkeypatch.setattr(fineweb, "resolve_hub_files", fake_resolve)
    args = ["--out", str(tmp_path), "--shard-size", str(SHARD), "--no-progress"]
    assert fineweb.main(args) == 0
    assert calls == [(hub.DEFAULT_DATASET, hub.DEFAULT_NAME, "train", None)]
    source = json.loads((tmp_path / "manifest.json").read_text())["source"]
    assert source["kind"] == "hub" and source["dataset"] == "HuggingFaceFW/fineweb-edu"
    assert source["name"] == "sample-10BT" and source["resolved"] == {"commit": "a" * 40, "files": urls}
    ours, theirs = dir_bytes(tmp_path), dir_bytes(parquet_out)
    ours.pop("manifest.json"), theirs.pop("manifest.json")
    assert ours == theirs
    assert fineweb.main(args) == 0 and len(calls) == 1  # re-run: the manifest's pinned file list, no hub call


def test_hub_unreachable_is_one_clear_error(tmp_path):
    env_home = tmp_path / "hf_home"
    proc = run_module("data_prep.fineweb", "--out", tmp_path / "out", check=False,
                      env=subprocess_env(HF_HUB_OFFLINE="1", HF_HOME=str(env_home), HF_DATASETS_OFFLINE="1"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: cannot resolve hub dataset 'HuggingFaceFW/fineweb-edu'")
    assert "--files" in proc.stderr and "Traceback" not in proc.stderr


def test_encode_documents_matches_encode_ordinary_on_edge_cases():
    enc = reference_encoding()
    texts = ["", "<|endoftext|>", "a<|endoftext|>b", "lone surrogate \ud800 here", "  \n\n\t spaces ", "🙂" * 50]
    tokens, lengths = encode_documents(texts, get_tokenizer())
    expected = []
    for t in texts:
        expected += [50256] + enc.encode_ordinary(t)
    assert tokens.tolist() == expected
    assert lengths.tolist() == [1 + len(enc.encode_ordinary(t)) for t in texts]


def test_progress_lines_are_plain_in_logs():
    stream = io.StringIO()  # not a TTY: periodic lines instead of a bar
    progress = Progress(total_tokens=1000, stream=stream, log_every=0.0)
    progress.update(tokens=500, documents=7, nbytes=2_000_000, shards=1)
    text = stream.getvalue()
    assert "\r" not in text and text.endswith("\n")
    assert "500 tokens (50.0%)" in text and "7 documents" in text and "tok/s" in text and "MB/s" in text


def test_read_ahead_keeps_order_raises_in_place_and_stops_cleanly():
    def chunks():
        yield from range(5)
        raise DataPrepError("bad row 5")

    stream = read_ahead(chunks(), depth=2)
    assert [next(stream) for _ in range(5)] == [0, 1, 2, 3, 4]  # everything before the error first
    with pytest.raises(DataPrepError, match="bad row 5"):
        next(stream)
    stream = read_ahead(iter(range(10_000)), depth=2)
    assert next(stream) == 0
    stream.close()  # consumer stops early (--max-tokens): the reader thread must not hang
    assert not [t for t in threading.enumerate() if t.name == "read-ahead"]
