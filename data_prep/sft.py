"""Prompt/response pairs -> token shards plus parallel loss-mask shards, for fine-tuning.

    python -m data_prep.sft --files data.jsonl --out data/sft
    python -m data_prep.sft --files 'qa/*.jsonl' --prompt-field question --response-field answer --out data/qa

Each JSONL row {prompt, response} becomes one document

    [EOT] + encode_ordinary(prompt) + encode_ordinary(response) + [EOT]
    mask:  0   0 ... 0                  1 ... 1                     1

The leading end-of-text is the "beginning of text" every pretraining document starts with;
the trailing one is what the model learns to say when the response is over, so it is a
training target (mask 1) and generation can stop on it. The mask marks the tokens the loss
is taken on: the response and its end-of-text, never the prompt. A document starts exactly
where an end-of-text has mask 0, which is how the trainer tells documents apart.

Shards and manifest are the pretraining format (`{prefix}_{split}_{index:06d}.npy`, shard 0
val, manifest.json) plus `{prefix}_{split}_{index:06d}.mask.npy` (uint8) beside each shard,
its sha256 in the manifest as `mask_sha256`. Written atomically and resumable exactly like
data_prep.fineweb: re-running the same command continues after the last complete shard and
writes the same bytes. Tokenization runs in-process (prompt/response sets are small next to
a pretraining corpus).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import numpy as np

from data_prep import DataPrepError
from data_prep.fineweb import _count
from data_prep.output import open_output, output_lock
from data_prep.shard_writer import ShardWriter
from data_prep.sources import ENCODING_POLICIES, Position, expand_globs, read_jsonl_fields
from data_prep.tokenize import _encode_ordinary
from pipeline.cli import OneLineParser
from pipeline.shards import FORMAT, FORMAT_VERSION, ShardError
from pipeline.tokenizer import EOT, TokenizerError, get_tokenizer, tokenizer_fingerprint

DOCUMENT_FORMAT = ("[50256] + encode_ordinary(prompt) + encode_ordinary(response) + [50256] per row; "
                   "loss mask 1 on the response and its trailing 50256")
CHUNK_ROWS = 1024


def parse_args(argv=None):
    p = OneLineParser(prog="python -m data_prep.sft", description=__doc__.split("\n\n")[0])
    p.add_argument("--files", nargs="+", metavar="GLOB", required=True,
                   help="JSONL files (.jsonl/.jsonl.gz), one {prompt, response} object per line, in the given order")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--prompt-field", default="prompt", help="JSON field holding the prompt (default %(default)s)")
    p.add_argument("--response-field", default="response",
                   help="JSON field holding the response (default %(default)s)")
    p.add_argument("--encoding-errors", choices=ENCODING_POLICIES, default="strict",
                   help="bytes that are not UTF-8: strict (error naming the line), cp1252 or replace")
    p.add_argument("--prefix", default="sft", help="shard file prefix (default %(default)s)")
    p.add_argument("--shard-size", type=_count, default=10_000_000, help="tokens per shard (default 1e7)")
    p.add_argument("--overwrite", action="store_true", help="replace shards already in --out")
    args = p.parse_args(argv)
    if args.prompt_field == args.response_field:
        p.error("--prompt-field and --response-field must differ")
    return args


def encode_pair(enc, prompt: str, response: str) -> tuple[np.ndarray, np.ndarray]:
    """One row's (tokens uint16, loss mask uint8), laid out as in the module docstring."""
    p, r = _encode_ordinary(enc, prompt), _encode_ordinary(enc, response)
    tokens = np.concatenate([[EOT], p, r, [EOT]]).astype(np.uint16)
    mask = np.zeros(len(tokens), dtype=np.uint8)
    mask[1 + len(p):] = 1
    return tokens, mask


def read_pairs(files, start: Position, fields: tuple[str, str], encoding_errors: str) -> Iterator[tuple[int, list[int], list]]:
    """(file index, rows, [(prompt, response), ...]) chunks from `start` on, never spanning files."""
    hint = "name the fields with --prompt-field / --response-field"
    for index in range(start.file, len(files)):
        first = start.row if index == start.file else 0
        rows, pairs = [], []
        for row, values, _ in read_jsonl_fields(files[index].path, first, fields, encoding_errors, _warn, hint):
            if index == start.file and start.tokens and not rows and row != start.row:
                raise DataPrepError(f"{files[index].path}: has no row at line {start.row + 1}, where the previous "
                                    "run stopped; the input changed (use --overwrite to start over)")
            rows.append(row)
            pairs.append(values)
            if len(rows) == CHUNK_ROWS:
                yield index, rows, pairs
                rows, pairs = [], []
        if rows:
            yield index, rows, pairs


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def run(args) -> int:
    files = expand_globs(args.files)
    for f in files:
        if f.kind != "jsonl":
            raise DataPrepError(f"{f.path}: data_prep.sft reads JSONL files (one {{prompt, response}} object per line)")
    source = {"kind": "files", "files": [{"path": f.path, "bytes": Path(f.path).stat().st_size} for f in files],
              "prompt_field": args.prompt_field, "response_field": args.response_field,
              "encoding_errors": args.encoding_errors}
    fresh = {"format": FORMAT, "version": FORMAT_VERSION, "tokenizer": tokenizer_fingerprint(), "source": source,
             "document_format": DOCUMENT_FORMAT, "loss_mask": True, "shard_size": args.shard_size,
             "prefix": args.prefix, "max_tokens": None, "complete": False, "shards": []}
    out = Path(args.out)
    with output_lock(out):
        manifest = open_output(out, fresh, args.overwrite, lambda: None)
        shards = manifest["shards"]
        if manifest["complete"]:
            print(f"{out}: already complete ({len(shards)} shards); nothing to do (use --overwrite to rebuild)")
            return 0
        start = Position(**shards[-1]["end"]) if shards else Position()
        writer = ShardWriter(out, manifest, args.shard_size, None, with_mask=True)
        enc = get_tokenizer()
        try:
            skip = start.tokens
            for index, rows, pairs in read_pairs(files, start, (args.prompt_field, args.response_field),
                                                 args.encoding_errors):
                encoded = [encode_pair(enc, prompt, response) for prompt, response in pairs]
                lengths = np.array([len(t) for t, _ in encoded], dtype=np.int64)
                tokens = np.concatenate([t for t, _ in encoded])
                mask = np.concatenate([m for _, m in encoded])
                writer.add(index, rows, tokens, lengths, skip, mask=mask)
                skip = 0
            writer.finish()
        finally:
            writer.close()
    total = sum(s["tokens"] for s in manifest["shards"])
    print(f"{out}: wrote {len(manifest['shards'])} shards, {total:,} tokens, "
          f"{sum(s['documents'] for s in manifest['shards']):,} prompt/response pairs")
    if len(manifest["shards"]) == 1:
        print(f"note: only the val shard was written ({total:,} tokens < --shard-size {args.shard_size:,}); "
              "training needs train shards too: use a smaller --shard-size", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (DataPrepError, ShardError, TokenizerError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: {err.filename or args.out}: {err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: interrupted; the complete shards in {args.out} are kept, re-run the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
