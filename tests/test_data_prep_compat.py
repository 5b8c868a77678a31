"""Byte compatibility with karpathy/build-nanogpt's fineweb.py.

`nanogpt_shards` re-implements that script's sharding loop independently of data_prep: a
fixed shard_size uint16 buffer is filled document by document (each [EOT] + encode_ordinary);
a document that does not fit (strictly: one that would make the buffer exactly full counts
too) fills the buffer up, the full buffer is np.save'd as "{name}_{split}_{index:06d}" (np.save
appends .npy; shard 0 is "val"), and the document's rest starts the next buffer; whatever is
left at the end is saved as the last shard. Its documents come from the same parquet the stage
reads (as load_dataset would give them), tokenized with plain tiktoken.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import run_module
from data_prep_fixtures import EOT, corpus, dir_bytes, reference_encoding, write_jsonl

SHARD_SIZE = 50_000


def nanogpt_shards(documents, out_dir, shard_size, name="edufineweb"):
    enc = reference_encoding()
    os.makedirs(out_dir, exist_ok=True)
    buffer = np.empty((shard_size,), dtype=np.uint16)
    count, index = 0, 0
    for text in documents:
        tokens = np.array([EOT] + enc.encode_ordinary(text))
        assert ((0 <= tokens) & (tokens < 2**16)).all()
        tokens = tokens.astype(np.uint16)
        if count + len(tokens) < shard_size:
            buffer[count:count + len(tokens)] = tokens
            count += len(tokens)
            continue
        split = "val" if index == 0 else "train"
        room = shard_size - count
        buffer[count:count + room] = tokens[:room]
        np.save(os.path.join(out_dir, f"{name}_{split}_{index:06d}"), buffer)
        index += 1
        buffer[0:len(tokens) - room] = tokens[room:]
        count = len(tokens) - room
    if count != 0:
        split = "val" if index == 0 else "train"
        np.save(os.path.join(out_dir, f"{name}_{split}_{index:06d}"), buffer[:count])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return corpus(tmp_path_factory.getbasetemp() / "corpus")


def parquet_documents(paths):
    for path in paths:  # what load_dataset("parquet", data_files=paths)["text"] iterates
        yield from pq.read_table(path, columns=["text"]).column("text").to_pylist()


def test_shards_are_byte_identical_to_build_nanogpt(data, tmp_path):
    reference = tmp_path / "nanogpt"
    nanogpt_shards(parquet_documents(data.parquet), reference, SHARD_SIZE)
    ours = tmp_path / "ours"
    run_module("data_prep.fineweb", "--files", *data.parquet, "--out", ours, "--prefix", "edufineweb",
               "--shard-size", SHARD_SIZE)
    produced = dir_bytes(ours)
    produced.pop("manifest.json")
    expected = dir_bytes(reference)
    assert len(expected) >= 5 and produced.keys() == expected.keys()
    for name in expected:
        assert produced[name] == expected[name], name


def test_exactly_full_shards_match_build_nanogpt(data, tmp_path):
    # Documents that end exactly on shard boundaries: build-nanogpt writes the full shard and
    # starts an empty buffer, and writes no empty shard at the end.
    docs = data.docs[:10] * 3
    shard_size = int(data.lengths[:10].sum())
    nanogpt_shards(docs, tmp_path / "nanogpt", shard_size)
    src = write_jsonl(docs, tmp_path / "docs.jsonl")
    ours = tmp_path / "ours"
    run_module("data_prep.fineweb", "--files", src, "--out", ours, "--prefix", "edufineweb",
               "--shard-size", shard_size)
    produced = dir_bytes(ours)
    produced.pop("manifest.json")
    assert len(produced) == 3 and produced == dir_bytes(tmp_path / "nanogpt")
