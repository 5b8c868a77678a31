"""Tokenize chunks of documents in worker processes, results in source order, memory bounded.

Each document becomes [EOT] + encode_ordinary(text) (GPT-2's <|endoftext|> *before* every
document, as build-nanogpt does). Workers return one flat uint16 array per chunk plus the
per-document lengths, so the main process only copies arrays into the shard buffer.

At most `window` chunks are in flight (submitted, not yet consumed): the reader never runs
ahead of the tokenizers by more than that, so memory does not grow with the dataset.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Iterable, Iterator

import numpy as np

from data_prep import DataPrepError
from pipeline.failpoints import fail_point
from data_prep.sources import Chunk
from pipeline.tokenizer import EOT, get_tokenizer

_encoding = None  # per worker process, created once by _init_worker


def encode_documents(texts: list[str], encoding=None) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, lengths): the chunk as one uint16 array of [EOT]+ids per document, and each
    document's token count including its EOT."""
    enc = encoding or _encoding or get_tokenizer()
    parts = [_encode_ordinary(enc, text) for text in texts]
    lengths = np.fromiter((len(p) + 1 for p in parts), dtype=np.int64, count=len(parts))
    ends = np.cumsum(lengths)
    tokens = np.empty(int(ends[-1]) if len(ends) else 0, dtype=np.uint16)
    for part, end in zip(parts, ends):
        start = end - len(part)
        tokens[start - 1] = EOT
        tokens[start:end] = part
    return tokens, lengths


def _encode_ordinary(enc, text: str) -> np.ndarray:
    # encode_to_numpy with no special tokens allowed or disallowed is encode_ordinary
    # (tiktoken: encode_ordinary == encode(disallowed_special=())) without building a
    # Python list of ints; tests compare it with encode_ordinary itself.
    if not hasattr(enc, "encode_to_numpy"):  # tiktoken < 0.8
        return np.asarray(enc.encode_ordinary(text), dtype=np.uint32)
    try:
        return enc.encode_to_numpy(text, allowed_special=set(), disallowed_special=())
    except UnicodeEncodeError:
        # Lone surrogates (e.g. "\ud800" from JSON): same repair as tiktoken's encode_ordinary.
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return enc.encode_to_numpy(text, allowed_special=set(), disallowed_special=())


def _worker_encode(texts: list[str]):
    fail_point("data_prep.worker")
    try:
        return encode_documents(texts)
    except Exception as err:  # reported by the main process as one clear line, not a worker traceback
        return f"{type(err).__name__}: {err}"


def _init_worker() -> None:
    global _encoding
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled once, by the main process
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the main process's graceful-stop handler
    _encoding = get_tokenizer()  # inherited already loaded under fork; loaded once otherwise
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()


def _exit_when_orphaned(parent_pid: int) -> None:
    # After `kill -9` of the main process nothing would ever close our task queue, and a
    # worker would wait on it forever; notice the re-parenting and leave instead.
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(1)


def _start_method() -> str | None:
    # fork keeps start-up cheap (no re-import, the tokenizer is inherited) but is only safe
    # while this process has a single thread; otherwise use a clean forkserver.
    if sys.platform == "linux":
        return "fork" if threading.active_count() == 1 else "forkserver"
    return None  # the platform default (spawn on macOS/Windows)


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


class TokenizerPool:
    """Ordered, bounded map of encode_documents over chunks; workers=0 tokenizes inline."""

    def __init__(self, workers: int):
        self.workers = workers
        self.window = 2 * workers + 2  # chunks in flight: every worker busy, one more queued each
        self._executor = None
        if workers > 0:
            get_tokenizer()  # load before forking so workers inherit it instead of each loading it
            context = multiprocessing.get_context(_start_method())
            self._executor = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker)
            # The first submit forks every worker (for fork, all at once): do it now, while this
            # process has no other threads yet (pyarrow and the executor start theirs later).
            self._executor.submit(int).result()

    def map(self, chunks: Iterable[Chunk], file_names: list[str]) -> Iterator[tuple[Chunk, np.ndarray, np.ndarray]]:
        """(chunk, tokens, lengths) for each chunk, in input order."""
        if self._executor is None:
            for chunk in chunks:
                yield (chunk, *encode_documents(chunk.texts))
            return
        pending = collections.deque()
        chunks, bad_input = iter(chunks), None
        try:
            while True:
                try:
                    chunk = next(chunks)
                except StopIteration:
                    break
                except DataPrepError as err:  # bad input ahead: first finish the documents before it
                    bad_input = err
                    break
                pending.append((chunk, self._executor.submit(_worker_encode, chunk.texts)))
                if len(pending) >= self.window:
                    yield self._result(*pending.popleft(), file_names)
            while pending:
                yield self._result(*pending.popleft(), file_names)
        except BrokenProcessPool:  # from submit() or result(), whichever notices first
            raise DataPrepError("a tokenizer worker process died (killed, or out of memory?); complete "
                                "shards are intact, re-run the same command to resume") from None
        if bad_input is not None:
            raise bad_input

    @staticmethod
    def _result(chunk: Chunk, future, file_names: list[str]) -> tuple[Chunk, np.ndarray, np.ndarray]:
        result = future.result()
        if isinstance(result, str):
            raise DataPrepError(f"{file_names[chunk.file]}: tokenizing rows {chunk.rows[0]}-{chunk.rows[-1]} "
                                f"failed: {result}")
        return (chunk, *result)

    def close(self) -> None:
        """Wait for the workers to exit; chunks not yet started (after --max-tokens) are dropped."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> "TokenizerPool":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()
