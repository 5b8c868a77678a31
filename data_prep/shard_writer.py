"""Cut the token stream into shards, write each atomically, record it in the manifest.

The stream is the concatenation of every document's [EOT] + encode_ordinary(text) in
source order; shard k holds stream tokens [k*shard_size, (k+1)*shard_size), the last shard
the remainder. That is exactly build-nanogpt's fineweb.py output for the same documents
(tests/test_data_prep_compat.py re-implements its loop and compares bytes).

Every manifest shard entry also records `end`: the document holding the shard's last token,
as {file, row, tokens} = "the first `tokens` tokens (EOT included) of document `row` of input
file `file` are in this or earlier shards". It depends only on the stream, never on how it
was chunked, so a resumed run, which restarts from the last entry's `end`, writes the same
bytes and the same manifest as an uninterrupted one.
"""

from __future__ import annotations

import errno
import hashlib
import io
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np

from data_prep import DataPrepError
from pipeline.failpoints import fail_point
from data_prep.sources import Position
from pipeline.atomic import atomic_write
from pipeline.shards import DTYPE, MASK_DTYPE, mask_filename, shard_filename, write_manifest


def npy_header(length: int, dtype: np.dtype = DTYPE) -> bytes:
    """The exact header np.save writes for a 1-D array of this length (uint16 tokens by default)."""
    header = io.BytesIO()
    fields = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (length,)}
    np.lib.format.write_array_header_1_0(header, fields)
    return header.getvalue()


def write_shard(path: Path, tokens: np.ndarray) -> str:
    """np.save-identical bytes via temp file + fsync + rename; returns the file's sha256.
    (Also writes uint8 loss masks: the header follows the array's dtype.)"""
    header = npy_header(len(tokens), tokens.dtype)
    digest = hashlib.sha256(header)
    digest.update(memoryview(tokens))

    def write(f):
        f.write(header)
        f.write(memoryview(tokens))
        f.flush()
        fail_point("data_prep.shard_written")  # temp file complete, not yet renamed

    atomic_write(path, write)
    return digest.hexdigest()


class ShardWriter:
    """Fills a shard-sized buffer from tokenized chunks; each full buffer is written, hashed and
    recorded by a background thread while the next one fills, so the tokenizer workers never
    wait for the disk. At most two buffers exist; shards are recorded strictly in order."""

    def __init__(self, out: Path, manifest: dict, shard_size: int, max_tokens: int | None,
                 with_mask: bool = False):
        self.out = out
        self.manifest = manifest
        self.shard_size = shard_size
        self.previous_tokens = sum(s["tokens"] for s in manifest["shards"])
        self.budget = None if max_tokens is None else max(0, max_tokens - self.previous_tokens)
        self.buffer = np.empty(shard_size, dtype=DTYPE)  # pages are only touched as they fill
        # prompt/response data (data_prep.sft): a parallel uint8 loss mask per shard
        self.with_mask = with_mask
        self.mask = np.empty(shard_size, dtype=MASK_DTYPE) if with_mask else None
        self.fill = 0
        self.fill_documents = 0  # documents whose end-of-text token is in the buffer
        self.last: Position | None = None  # where the last buffered token came from
        self.next_index = len(manifest["shards"])
        self.tokens = 0  # this run's tokens and documents (for progress and the summary)
        self.documents = 0
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
        self._pending: Future | None = None

    @property
    def done(self) -> bool:
        """True once --max-tokens is reached: the caller stops reading."""
        return self.budget == 0

    def add(self, file: int, rows: list[int], tokens: np.ndarray, lengths: np.ndarray, skip: int = 0,
            mask: np.ndarray | None = None) -> None:
        """Append one chunk: documents rows[i] of input `file`, `tokens` their concatenation,
        lengths[i] the token count of document i (and `mask` their loss mask when the writer
        has masks). The first `skip` tokens (a document that straddles the previous run's
        last shard) are already in a shard and are dropped."""
        ends = np.cumsum(lengths)
        starts = ends - lengths
        if skip > ends[0]:
            raise DataPrepError(f"input file #{file} row {rows[0]} is shorter than when the previous run "
                                "stopped in it: the input changed (use --overwrite to start over)")
        pos = skip
        while pos < len(tokens) and self.budget != 0:
            take = min(self.shard_size - self.fill, len(tokens) - pos)
            if self.budget is not None:
                take = min(take, self.budget)
                self.budget -= take
            self.buffer[self.fill:self.fill + take] = tokens[pos:pos + take]
            if self.mask is not None:
                self.mask[self.fill:self.fill + take] = mask[pos:pos + take]
            started = int(np.searchsorted(starts, pos + take) - np.searchsorted(starts, pos))
            self.fill += take
            self.fill_documents += started
            self.documents += started
            self.tokens += take
            pos += take
            # the document holding stream token pos-1: the first whose end is past it
            doc = int(np.searchsorted(ends, pos, side="left"))
            self.last = Position(file, rows[doc], int(pos - starts[doc]))
            if self.fill == self.shard_size:
                self._write_shard()

    def finish(self) -> None:
        """Write the remainder as the last shard and mark the manifest complete."""
        if self.fill:
            self._write_shard()
        self._wait()
        if not self.manifest["shards"]:
            raise DataPrepError("the input holds no documents: nothing to write")
        self.manifest["complete"] = True
        self._save_manifest()

    def close(self) -> None:
        """Let a shard being written finish (also after an error elsewhere: that error is the one
        reported), then stop the writer thread."""
        if self._pending is not None:
            wait([self._pending])
        self._thread.shutdown(wait=True)

    def _write_shard(self) -> None:
        self._wait()  # the previous shard is on disk and recorded before this one starts
        entry = {"index": self.next_index, "tokens": self.buffer[:self.fill], "documents": self.fill_documents,
                 "end": {"file": self.last.file, "row": self.last.row, "tokens": self.last.tokens},
                 "mask": None if self.mask is None else self.mask[:self.fill]}
        self._pending = self._thread.submit(self._store, **entry)
        self.next_index += 1
        self.buffer = np.empty(self.shard_size, dtype=DTYPE)  # the old one is the writer's now
        if self.mask is not None:
            self.mask = np.empty(self.shard_size, dtype=MASK_DTYPE)
        self.fill = self.fill_documents = 0

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()  # re-raises the writer's error (disk full ...) here

    def _store(self, index: int, tokens: np.ndarray, documents: int, end: dict,
               mask: np.ndarray | None) -> None:
        split = "val" if index == 0 else "train"  # build-nanogpt: shard 0 is the validation shard
        name = shard_filename(self.manifest["prefix"], split, index)
        extra = {}
        try:
            if mask is not None:  # the mask first: a listed shard always has its mask on disk
                extra["mask_sha256"] = write_shard(self.out / mask_filename(name), mask)
            sha256 = write_shard(self.out / name, tokens)
        except OSError as err:
            raise self._disk_error(err, name) from None
        fail_point("data_prep.shard_renamed")  # shard in place, manifest not yet updated
        self.manifest["shards"].append({"file": name, "split": split, "tokens": len(tokens),
                                        "documents": documents, "sha256": sha256, **extra, "end": end})
        self._save_manifest()
        fail_point("data_prep.manifest_written")

    def _save_manifest(self) -> None:
        try:
            write_manifest(self.out, self.manifest)
        except OSError as err:
            raise self._disk_error(err, "manifest.json") from None

    def _disk_error(self, err: OSError, name: str) -> Exception:
        kept = len(self.manifest["shards"])
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            what = "disk full"
        else:
            what = err.strerror or str(err)
        return DataPrepError(f"{self.out / name}: cannot write ({what}); the {kept} complete shard(s) listed in "
                             f"{self.out / 'manifest.json'} are intact: fix this and re-run the same command to resume")
