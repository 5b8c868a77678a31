"""Real-text fixtures for the data_prep tests, plus an independent reference tokenization.

Documents come from the generated test corpus (tests/generated_data.py: real English prose
from the stdlib's documentation, two cp1252 files, one with \r\n line ends): each file is
split at blank lines into documents of a few hundred to a few thousand characters, like web pages. They are written as FineWeb-Edu-schema parquet (several
files, small row groups so a resume has row groups to skip), as jsonl and jsonl.gz.

The reference stream is built with plain `tiktoken.get_encoding("gpt2")` (tiktoken's own
loader, through a tiktoken cache built from the installed package's files), not with pipeline.tokenizer or data_prep code.
"""

from __future__ import annotations

import gzip
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from conftest import CP1252_FILES, CRLF_TEXT, TEXT_FILES, TIKTOKEN_CACHE

EOT = 50256
SHARD = 50_000  # small shards: many boundaries from a couple of MB of text
SPECIAL_DOCS = [
    "",  # an empty document is still a document: a lone end-of-text token
    "A page that quotes <|endoftext|> literally must not get the special token.",
    "naïve café, 日本語のテキスト, emoji 🙂🚀, math ∑x² — and\r\nWindows line ends\r\n",
]

FINEWEB_EDU_SCHEMA = pa.schema([
    ("text", pa.string()), ("id", pa.string()), ("dump", pa.string()), ("url", pa.string()),
    ("date", pa.string()), ("file_path", pa.string()), ("language", pa.string()),
    ("language_score", pa.float64()), ("token_count", pa.int64()), ("score", pa.float64()),
    ("int_score", pa.int64()),
])


def reference_encoding():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_CACHE))
    import tiktoken
    return tiktoken.get_encoding("gpt2")


def reference_stream(docs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(all tokens, per-document lengths) for [EOT] + encode_ordinary(doc) of each doc."""
    enc = reference_encoding()
    out, lengths = [], []
    for doc in docs:
        ids = [EOT] + enc.encode_ordinary(doc)
        out.extend(ids)
        lengths.append(len(ids))
    return np.array(out, dtype=np.uint16), np.array(lengths, dtype=np.int64)


def read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:  # CP1252_FILES are, as some real corpora are
        return data.decode("cp1252")


def split_documents(text: str, sizes=(400, 1500, 3000, 6000)) -> list[str]:
    docs, current, i = [], [], 0
    for para in text.split("\n\n"):
        current.append(para)
        if sum(map(len, current)) >= sizes[i % len(sizes)]:
            docs.append("\n\n".join(current))
            current, i = [], i + 1
    if current:
        docs.append("\n\n".join(current))
    return docs


@dataclass
class Corpus:
    root: Path
    docs: list[str]
    stream: np.ndarray
    lengths: np.ndarray
    parquet: list[Path]
    jsonl: list[Path]  # the same documents: a .jsonl then a .jsonl.gz


_CACHE: dict[str, Corpus] = {}


def corpus(root: Path) -> Corpus:
    """Build once per session (root: a session temp dir)."""
    if "corpus" in _CACHE:
        return _CACHE["corpus"]
    files = [*TEXT_FILES[:10], *CP1252_FILES, CRLF_TEXT, *TEXT_FILES[10:]]
    docs = []
    for i, path in enumerate(files):
        docs.extend(split_documents(read_text(path)))
        if i == 10:
            docs.extend(SPECIAL_DOCS)
    stream, lengths = reference_stream(docs)
    root.mkdir(parents=True, exist_ok=True)
    parquet = write_parquet(docs, lengths, root, n_files=3)
    half = len(docs) // 2
    jsonl = [write_jsonl(docs[:half], root / "docs_a.jsonl"), write_jsonl(docs[half:], root / "docs_b.jsonl.gz")]
    _CACHE["corpus"] = Corpus(root, docs, stream, lengths, parquet, jsonl)
    return _CACHE["corpus"]


def fineweb_rows(docs: list[str], lengths) -> dict[str, list]:
    n = len(docs)
    ids = [f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, str(i))}>" for i in range(n)]
    return {
        "text": docs, "id": ids, "dump": ["CC-MAIN-2021-43"] * n,
        "url": [f"https://example.org/page/{i}" for i in range(n)],
        "date": ["2021-10-15T21:20:12Z"] * n,
        "file_path": [f"s3://commoncrawl/crawl-data/CC-MAIN-2021-43/segments/1634323583083.92/warc/"
                      f"CC-MAIN-20211015192439-20211015222439-{i % 1000:05d}.warc.gz" for i in range(n)],
        "language": ["en"] * n, "language_score": [0.9 + (i % 10) / 100 for i in range(n)],
        "token_count": [int(x) - 1 for x in lengths],  # FineWeb counts exclude the end-of-text token
        "score": [2.5 + (i % 7) / 4 for i in range(n)], "int_score": [2 + i % 3 for i in range(n)],
    }


def write_parquet(docs: list[str], lengths, root: Path, n_files: int, row_group_size: int = 64,
                  name: str = "000_{:05d}.parquet") -> list[Path]:
    """Named like the real files (sample/10BT/000_00000.parquet)."""
    paths, per_file = [], -(-len(docs) // n_files)
    for k in range(n_files):
        part = slice(k * per_file, (k + 1) * per_file)
        table = pa.table(fineweb_rows(docs[part], lengths[part]), schema=FINEWEB_EDU_SCHEMA)
        path = root / name.format(k)
        pq.write_table(table, path, row_group_size=row_group_size)
        paths.append(path)
    return paths


def write_jsonl(docs: list[str], path: Path) -> Path:
    lines = "".join(json.dumps({"text": d, "id": f"doc-{i}"}) + "\n" for i, d in enumerate(docs)).encode()
    path.write_bytes(gzip.compress(lines, mtime=0) if path.suffix == ".gz" else lines)
    return path


def read_shards(out: Path) -> tuple[list[Path], np.ndarray]:
    """The shard files in index order and their concatenated tokens (read with plain np.load)."""
    paths = sorted(out.glob("*_[0-9][0-9][0-9][0-9][0-9][0-9].npy"), key=lambda p: p.name[-10:])
    arrays = [np.load(p) for p in paths]
    return paths, (np.concatenate(arrays) if arrays else np.zeros(0, np.uint16))


def dir_bytes(out: Path) -> dict[str, bytes]:
    """Every file in a directory by name (temp files included, the empty lock file not), for
    byte-identity comparisons."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file() and p.name != ".data_prep.lock"}
