"""FineWeb (or any text corpus) -> build-nanogpt compatible uint16 token shards.

    python -m data_prep.fineweb                      # FineWeb-Edu sample-10BT from the hub
    python -m data_prep.fineweb --files 'dl/*.parquet' --out data/edu10B
    python -m data_prep.fineweb --files 'books/*.txt' --out data/books --shard-size 1e6

Documents are read in source order, tokenized by worker processes as [EOT] + encode_ordinary
(text), and cut into --shard-size token shards ({prefix}_val_000000.npy, then _train_...),
each written atomically and recorded in manifest.json. Re-running the same command after a
crash resumes and produces byte-identical output; on a finished directory it does nothing.
See docs/data_prep.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Callable

from data_prep import DataPrepError
from data_prep.hub import DEFAULT_DATASET, DEFAULT_NAME, DEFAULT_SPLIT, check_pinned_revision, resolve_hub_files
from data_prep.output import open_output, output_lock
from data_prep.progress import Progress, peak_rss_mb
from data_prep.retry import RetryPolicy
from data_prep.shard_writer import ShardWriter
from data_prep.sources import (ENCODING_POLICIES, Position, SourceFile, expand_globs, kind_of, read_ahead,
                               read_chunks)
from data_prep.tokenize import TokenizerPool, default_workers
from pipeline.cli import OneLineParser
from pipeline.failpoints import fail_point
from pipeline.shards import FORMAT, FORMAT_VERSION, ShardError
from pipeline.tokenizer import TokenizerError, tokenizer_fingerprint

DEFAULT_OUT = "data/fineweb-edu-10B"
DEFAULT_SHARD_SIZE = 100_000_000  # build-nanogpt's: 100 shards for the 10B-token sample
DOCUMENT_FORMAT = "[50256] + encode_ordinary(text) per document, in source order, cut every shard_size tokens"


def _count(text: str) -> int:
    """A positive token count: 50000, 50_000 or 1e8."""
    try:
        value = float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value != int(value) or value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(value)


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineParser(prog="python -m data_prep.fineweb", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default=DEFAULT_DATASET, help="hub dataset (default %(default)s)")
    p.add_argument("--name", default=DEFAULT_NAME, help="hub config name (default %(default)s)")
    p.add_argument("--split", default=DEFAULT_SPLIT, help="hub split (default %(default)s)")
    p.add_argument("--revision", default=None, help="hub branch/tag/commit (default: latest; the manifest pins it)")
    p.add_argument("--files", nargs="+", metavar="GLOB",
                   help="local .parquet/.jsonl/.jsonl.gz/.txt files instead of the hub, in the given order "
                        "(each glob's matches sorted by name; a .txt file is one document)")
    p.add_argument("--text-column", default="text", help="parquet column / jsonl field (default %(default)s)")
    p.add_argument("--encoding-errors", choices=ENCODING_POLICIES, default="strict",
                   help="what to do with .txt/.jsonl bytes that are not UTF-8: strict = error naming the file "
                        "and byte; cp1252 = decode that file/line as Windows-1252; replace = U+FFFD "
                        "(default %(default)s)")
    p.add_argument("--out", default=None, help=f"output directory (default {DEFAULT_OUT}; required with --files)")
    p.add_argument("--prefix", default="fineweb", help="shard file prefix (default %(default)s)")
    p.add_argument("--shard-size", type=_count, default=DEFAULT_SHARD_SIZE, help="tokens per shard (default 1e8)")
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="tokenizer processes (default: the CPUs available, %(default)s; 0 = in-process)")
    p.add_argument("--max-tokens", type=_count, default=None, help="stop after N tokens (last shard partial)")
    p.add_argument("--overwrite", action="store_true", help="replace shards already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar / progress lines")
    hub = p.add_argument_group("hub reads", "transient failures (resets, timeouts, 429, 5xx) are retried with "
                                            "exponential backoff and jitter; 401/403/404 stop at once")
    defaults = RetryPolicy()
    hub.add_argument("--hub-retries", type=int, default=defaults.attempts - 1,
                     help="retries per request before giving up (default %(default)s)")
    hub.add_argument("--hub-retry-seconds", type=_seconds, default=defaults.max_seconds,
                     help="give up on a request this long after it first failed (default %(default)s)")
    hub.add_argument("--hub-backoff", type=_seconds, default=defaults.backoff,
                     help="first wait between tries, doubled per retry (default %(default)s)")
    hub.add_argument("--hub-max-backoff", type=_seconds, default=defaults.max_backoff,
                     help="longest wait between tries, unless Retry-After asks for more (default %(default)s)")
    hub.add_argument("--hub-timeout", type=_seconds, default=defaults.timeout,
                     help="seconds a request may wait for data before it is retried (default %(default)s)")
    hub.add_argument("--allow-revision-change", action="store_true",
                     help="resume even though --revision now points to another commit than the one the "
                          "manifest pinned (the rest of the documents come from the new commit)")
    args = p.parse_args(argv)
    if args.out is None:
        if args.files:
            p.error("--out is required with --files")
        args.out = DEFAULT_OUT
    if args.workers < 0:
        p.error("--workers must be >= 0")
    if args.hub_retries < 0:
        p.error("--hub-retries must be >= 0")
    if args.hub_timeout <= 0:
        p.error("--hub-timeout must be > 0")
    args.retry = RetryPolicy(attempts=args.hub_retries + 1, max_seconds=args.hub_retry_seconds,
                             backoff=args.hub_backoff, max_backoff=args.hub_max_backoff, timeout=args.hub_timeout)
    return args


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (0 <= value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


class Stopped(BaseException):
    """SIGTERM (Slurm preemption, time limit): stop like Ctrl-C, letting a shard write finish.
    A BaseException like KeyboardInterrupt, so no `except Exception` on the way (ours, the
    hub client's, `datasets`' fallbacks) can swallow it or report it as something else."""


def _stop(signum, frame):
    raise Stopped()


def main(argv=None) -> int:
    args = parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _stop) if threading.current_thread() is threading.main_thread() else None
    try:
        return run(args)
    except (DataPrepError, ShardError, TokenizerError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # e.g. no permission to create --out (disk-full is reported by the writer)
        print(f"error: {err.filename or args.out}: {err.strerror or err}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Stopped) as err:
        print(f"error: {'terminated' if isinstance(err, Stopped) else 'interrupted'}; the complete shards in "
              f"{args.out} are kept, re-run the same command to resume", file=sys.stderr)
        return 143 if isinstance(err, Stopped) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def describe_source(args) -> tuple[dict, Callable[[], dict | None]]:
    """(what the manifest records about the input, a function resolving the hub file list)."""
    common = {"text_column": args.text_column, "encoding_errors": args.encoding_errors}
    if args.files:
        files = expand_globs(args.files)
        listed = [{"path": f.path, "bytes": os.path.getsize(f.path)} for f in files]
        return {"kind": "files", "files": listed, **common}, lambda: None
    source = {"kind": "hub", "dataset": args.dataset, "name": args.name, "split": args.split,
              "revision": args.revision, **common}

    def resolve() -> dict:
        commit, files = resolve_hub_files(args.dataset, args.name, args.split, args.revision, args.retry,
                                          _note)
        return {"commit": commit, "files": [f.path for f in files]}
    return source, resolve


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def source_files(source: dict) -> list[SourceFile]:
    if source["kind"] == "files":
        return [SourceFile(f["path"], kind_of(f["path"])) for f in source["files"]]
    return [SourceFile(url, "parquet") for url in source["resolved"]["files"]]


def run(args) -> int:
    source, resolve = describe_source(args)
    fresh = {"format": FORMAT, "version": FORMAT_VERSION, "tokenizer": tokenizer_fingerprint(),
             "source": source, "document_format": DOCUMENT_FORMAT, "shard_size": args.shard_size,
             "prefix": args.prefix, "max_tokens": args.max_tokens, "complete": False, "shards": []}
    out = Path(args.out)
    with output_lock(out):
        return _run_locked(args, out, fresh, resolve)


def _run_locked(args, out: Path, fresh: dict, resolve) -> int:
    manifest = open_output(out, fresh, args.overwrite, resolve)
    shards = manifest["shards"]
    if manifest["complete"]:
        total = sum(s["tokens"] for s in shards)
        print(f"{out}: already complete ({len(shards)} shards, {total:,} tokens); nothing to do "
              "(use --overwrite to rebuild)")
        return 0
    if shards and manifest["source"]["kind"] == "hub":
        check_pinned_revision(out, manifest, args.revision, args.allow_revision_change, args.retry, _note)
    files = source_files(manifest["source"])
    start = Position(**shards[-1]["end"]) if shards else Position()
    writer = ShardWriter(out, manifest, args.shard_size, args.max_tokens)
    if shards:
        print(f"{out}: resuming after {len(shards)} complete shards ({writer.previous_tokens:,} tokens)",
              file=sys.stderr)
    with TokenizerPool(args.workers) as pool:
        progress = Progress(args.max_tokens, writer.previous_tokens, enabled=not args.no_progress)
        try:
            chunks = read_ahead(read_chunks(files, start, args.text_column, args.encoding_errors, progress.note,
                                            retry=args.retry), depth=pool.window)
            results = pool.map(chunks, [f.path for f in files]) if not writer.done else iter(())
            skip = start.tokens  # tokens of the first document already in the last complete shard
            for chunk, tokens, lengths in results:
                before = (writer.tokens, writer.documents)
                writer.add(chunk.file, chunk.rows, tokens, lengths, skip)
                skip = 0
                progress.update(writer.tokens - before[0], writer.documents - before[1], chunk.nbytes,
                                writer.next_index)
                fail_point("data_prep.chunk")
                if writer.done:
                    break
            writer.finish()
        finally:
            writer.close()
            progress.close()
    _report(out, manifest, writer, progress)
    return 0


def _report(out: Path, manifest: dict, writer: ShardWriter, progress: Progress) -> None:
    shards = manifest["shards"]
    total = sum(s["tokens"] for s in shards)
    own, child = peak_rss_mb()
    print(f"{out}: wrote {len(shards)} shards, {total:,} tokens, {sum(s['documents'] for s in shards):,} documents "
          f"(this run: {writer.tokens:,} tokens in {progress.elapsed():.1f} s, {progress.tokens_per_s():,.0f} tok/s, "
          f"{progress.mb_per_s():.1f} MB/s; peak RSS {own:.0f} MB main"
          + (f", {child:.0f} MB largest worker)" if child else ")"))
    if len(shards) == 1:
        print(f"note: only the val shard was written ({total:,} tokens < --shard-size {manifest['shard_size']:,}); "
              "training needs train shards too: use a smaller --shard-size", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
