"""Where documents come from, read as one ordered stream that can restart at any document.

A source is an ordered list of input files: local `.parquet`, `.jsonl`/`.jsonl.gz` (one JSON
object per line) and `.txt` (one document per file), or the parquet files of a Hugging Face
hub dataset config (see data_prep/hub.py). Every document has a position (file index, row)
where row is the parquet row, the 0-based jsonl line, or 0 for a text file, so a resumed run
re-opens the right file and skips straight to the right row (whole parquet row groups are
skipped from the footer metadata without reading them).

Text decoding policy for raw-byte inputs (.txt, .jsonl), chosen with --encoding-errors:
  strict   (default) invalid UTF-8 is an error naming the file/line and byte offset;
  cp1252   files or lines that are not valid UTF-8 are decoded as Windows-1252 (a superset of
           Latin-1 for printable text; its 5 unassigned bytes map to the same C1 code points
           as Latin-1), with a warning naming each such file;
  replace  invalid byte sequences become U+FFFD, with a warning naming the file and count.
Valid UTF-8 is never touched, so the policy only changes what happens to broken files.
"""

from __future__ import annotations

import codecs
import glob
import gzip
import json
import os
import queue
import random
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Callable, Iterator

from data_prep import DataPrepError
from data_prep.retry import RetriesExhausted, RetryPolicy, describe, is_transient, status_of

ENCODING_POLICIES = ("strict", "cp1252", "replace")
Warn = Callable[[str], None]


@dataclass(frozen=True)
class SourceFile:
    path: str  # local path or fsspec URL (hf://datasets/...)
    kind: str  # "parquet" | "jsonl" | "txt"


@dataclass(frozen=True)
class Position:
    """A point in the document stream: `tokens` tokens of document (file, row) are behind us."""
    file: int = 0
    row: int = 0
    tokens: int = 0


@dataclass
class Chunk:
    """Consecutive documents of one file, the unit of work sent to a tokenizer worker."""
    file: int
    rows: list[int]
    texts: list[str]
    nbytes: int


def kind_of(path: str) -> str:
    name = path.lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
        return "jsonl"
    if name.endswith(".txt"):
        return "txt"
    raise DataPrepError(f"{path}: unsupported input type (expected .parquet, .jsonl, .jsonl.gz or .txt)")


def expand_globs(patterns: list[str]) -> list[SourceFile]:
    """Files in argument order; each glob's matches sorted by name; duplicates kept once."""
    seen, files = set(), []
    for pattern in patterns:
        if os.path.isdir(pattern):
            raise DataPrepError(f"{pattern}: is a directory; pass its files, e.g. '{pattern}/*.parquet'")
        matches = sorted(glob.glob(pattern, recursive=True))
        if not matches:
            raise DataPrepError(f"{pattern}: matches no files")
        for path in matches:
            full = os.path.abspath(path)
            if full not in seen and os.path.isfile(full):
                seen.add(full)
                files.append(SourceFile(full, kind_of(full)))
    return files


def read_chunks(files: list[SourceFile], start: Position, text_column: str, encoding_errors: str,
                warn: Warn, target_bytes: int = 1 << 18, max_docs: int = 4096,
                retry: RetryPolicy | None = None) -> Iterator[Chunk]:
    """Documents from `start` on, grouped into chunks of about target_bytes of text.

    Chunks never span files. Chunk size only affects scheduling, never the output: shard
    positions are computed per document, so a resumed run that chunks differently still
    writes identical shards.
    """
    expect = start.row if start.tokens > 0 else None  # a resumed run must find its document again
    for index in range(start.file, len(files)):
        first = start.row if index == start.file else 0
        rows, texts, nbytes = [], [], 0
        for row, text, size in read_documents(files[index], first, text_column, encoding_errors, warn, retry):
            if expect is not None:
                if row != expect:
                    break
                expect = None
            rows.append(row)
            texts.append(text)
            nbytes += size
            if nbytes >= target_bytes or len(texts) >= max_docs:
                yield Chunk(index, rows, texts, nbytes)
                rows, texts, nbytes = [], [], 0
        if expect is not None:
            raise DataPrepError(f"{files[index].path}: has no document at row {expect}, where the previous run "
                                "stopped; the input changed since then (use --overwrite to start over)")
        if texts:
            yield Chunk(index, rows, texts, nbytes)


def read_documents(source: SourceFile, start_row: int, text_column: str, encoding_errors: str,
                   warn: Warn, retry: RetryPolicy | None = None) -> Iterator[tuple[int, str, int]]:
    """(row, text, utf-8 byte size) for each document of one file, from start_row on."""
    if source.kind == "parquet":
        return _read_parquet(source.path, start_row, text_column, retry or RetryPolicy(), warn)
    if source.kind == "jsonl":
        return _read_jsonl(source.path, start_row, text_column, encoding_errors, warn)
    return _read_txt(source.path, start_row, encoding_errors, warn)


def _read_parquet(path: str, start_row: int, column: str, retry: RetryPolicy,
                  warn: Warn) -> Iterator[tuple[int, str, int]]:
    """The rows of one parquet file. A hub file that fails mid-way (the request-level retries
    spent, or bytes that do not decode: a body garbled in transit) is re-opened and read on
    from the next row not yet yielded, whole row groups before it skipped via the footer, with
    backoff, up to retry.attempts times; a local file's errors are final."""
    import pyarrow as pa

    remote = "://" in path
    row, failures, first = start_row, 0, None
    while True:
        try:
            for row_, text, size in _parquet_rows(path, row, column, retry, warn):
                yield row_, text, size
                row = row_ + 1
            return
        except (pa.ArrowException, OSError, EOFError, RetriesExhausted) as err:
            status = status_of(err)
            permanent = status is not None and not is_transient(err)
            failures += 1
            first = first or time.monotonic()
            wait = min(retry.max_backoff, retry.backoff * 2 ** (failures - 1)) * random.uniform(0.5, 1.0)
            if (not remote or permanent or failures >= retry.attempts
                    or time.monotonic() - first + wait > retry.max_seconds):
                raise DataPrepError(_parquet_error(path, row, err, remote)) from None
            warn(f"retry {failures}/{retry.attempts - 1} in {wait:.1f} s: {path}: re-opening at row {row} "
                 f"after {describe(err)}")
            time.sleep(wait)


def _parquet_error(path: str, row: int, err: BaseException, remote: bool) -> str:
    if isinstance(err, RetriesExhausted) or (remote and status_of(err) is not None):
        fix = ("; re-run the same command to resume (complete shards are kept)"
               if is_transient(err) else "")
        return f"{path}: cannot read from the hub near row {row}: {err if isinstance(err, RetriesExhausted) else describe(err)}{fix}"
    return f"{path}: unreadable parquet file near row {row} ({' '.join(str(err).split())})"


def _parquet_rows(path: str, start_row: int, column: str, retry: RetryPolicy,
                  warn: Warn) -> Iterator[tuple[int, str, int]]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    row = 0
    with _open_binary(path, retry, warn) as handle:
        parquet = pq.ParquetFile(handle, pre_buffer=False)
        _check_text_column(path, parquet.schema_arrow, column)
        for group in range(parquet.num_row_groups):
            n = parquet.metadata.row_group(group).num_rows
            if row + n <= start_row:
                row += n
                continue
            for batch in parquet.iter_batches(batch_size=2048, row_groups=[group], columns=[column],
                                              use_threads=False):
                values = batch.column(0)
                if row < start_row:
                    values = values.slice(start_row - row)
                    row = start_row
                sizes = pc.binary_length(values).to_numpy(zero_copy_only=False)
                for i, text in enumerate(values.to_pylist()):
                    if text is None:
                        raise DataPrepError(f"{path}: row {row + i}: {column!r} is null")
                    yield row + i, text, int(sizes[i])
                row += len(values)


def _check_text_column(path: str, schema, column: str) -> None:
    import pyarrow as pa

    if column not in schema.names:
        raise DataPrepError(f"{path}: no column {column!r} (columns: {', '.join(schema.names)}); "
                            "pick one with --text-column")
    kind = schema.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)
            or getattr(pa.types, "is_string_view", lambda _: False)(kind)):
        raise DataPrepError(f"{path}: column {column!r} has type {kind}, expected a string column "
                            "(pick another with --text-column)")


def _open_binary(path: str, retry: RetryPolicy, warn: Warn):
    if path.startswith("hf://"):  # hub files: ranged reads of just what pyarrow asks for, retried
        from data_prep.hub_file import HubFile
        return HubFile(path, retry, warn)
    if "://" in path:  # other remote files: fsspec reads them in ranged blocks
        import fsspec
        return fsspec.open(path, "rb", block_size=8 << 20).open()
    return open(path, "rb")


def _read_jsonl(path: str, start_row: int, column: str, encoding_errors: str,
                warn: Warn) -> Iterator[tuple[int, str, int]]:
    for lineno, (text,), nbytes in read_jsonl_fields(path, start_row, (column,), encoding_errors, warn,
                                                     "pick one with --text-column"):
        yield lineno, text, nbytes


def read_jsonl_fields(path: str, start_row: int, columns: tuple[str, ...], encoding_errors: str, warn: Warn,
                      hint: str) -> Iterator[tuple[int, list[str], int]]:
    """(0-based line, the string values of `columns`, bytes of the line) per non-blank line
    from start_row on; a missing or non-string field is an error naming the file and line."""
    opener = gzip.open if path.lower().endswith(".gz") else open
    lineno = 0
    try:
        with opener(path, "rb") as lines:
            for lineno, line in enumerate(lines):
                if lineno < start_row or not line.strip():
                    continue
                where = f"{path}:{lineno + 1}"
                try:
                    obj = json.loads(decode_bytes(line, encoding_errors, where, warn))
                except json.JSONDecodeError as err:
                    raise DataPrepError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
                missing = [c for c in columns if c not in obj] if isinstance(obj, dict) else list(columns)
                if missing:
                    keys = ", ".join(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
                    raise DataPrepError(f"{where}: no {missing[0]!r} field (found: {keys}); {hint}")
                for column in columns:
                    if not isinstance(obj[column], str):
                        raise DataPrepError(f"{where}: {column!r} is {type(obj[column]).__name__}, "
                                            "expected a string")
                yield lineno, [obj[c] for c in columns], len(line)
    except (OSError, EOFError, zlib.error) as err:
        raise DataPrepError(f"{path}: unreadable near line {lineno + 1} ({err})") from None


def _read_txt(path: str, start_row: int, encoding_errors: str, warn: Warn) -> Iterator[tuple[int, str, int]]:
    if start_row > 0:
        return
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise DataPrepError(f"{path}: unreadable ({err.strerror or err})") from None
    yield 0, decode_bytes(data, encoding_errors, path, warn), len(data)


def _c1_passthrough(err: UnicodeDecodeError) -> tuple[str, int]:
    # cp1252 leaves 0x81, 0x8D, 0x8F, 0x90, 0x9D unassigned; Latin-1 maps them to C1 controls.
    return err.object[err.start:err.end].decode("latin-1"), err.end


codecs.register_error("gpt2pipeline-c1", _c1_passthrough)


def decode_bytes(data: bytes, policy: str, where: str, warn: Warn) -> str:
    """UTF-8 decode under the --encoding-errors policy (module docstring)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        if policy == "cp1252":
            warn(f"{where}: not valid UTF-8 (byte {err.start}), decoded as Windows-1252")
            return data.decode("cp1252", errors="gpt2pipeline-c1")
        if policy == "replace":
            text = data.decode("utf-8", errors="replace")
            replaced = text.count("\ufffd") - data.decode("utf-8", errors="ignore").count("\ufffd")
            warn(f"{where}: not valid UTF-8, {replaced} invalid byte sequence(s) replaced with U+FFFD")
            return text
        bad = data[err.start:err.start + 4]
        raise DataPrepError(f"{where}: not valid UTF-8 at byte {err.start} ({bad!r}...); re-run with "
                            "--encoding-errors cp1252 to read such files as Windows-1252/Latin-1, "
                            "or --encoding-errors replace to substitute U+FFFD") from None


def read_ahead(chunks: Iterator[Chunk], depth: int) -> Iterator[Chunk]:
    """The same chunks, read by a background thread up to `depth` chunks ahead.

    Hub parquet row groups arrive over HTTP; reading them in the consumer's thread would
    leave the tokenizer workers idle during every download. The bounded queue keeps memory
    fixed, and an error (bad row, lost connection) is raised here at its place in the stream,
    after every chunk before it.
    """
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():  # give up once the consumer has gone
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def produce() -> None:
        try:
            for chunk in chunks:
                if not put(chunk):
                    return
            put(done)
        except BaseException as err:  # handed to the consumer, raised there
            put(err)
        finally:
            getattr(chunks, "close", lambda: None)()  # close the input file now, not at garbage collection

    thread = threading.Thread(target=produce, name="read-ahead", daemon=True)
    thread.start()
    try:
        while (item := buffer.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
