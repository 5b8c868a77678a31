"""Re-check a shard directory against its manifest, file by file.

    python -m data_prep.verify data/fineweb-edu-10B

For each shard listed in manifest.json: the file exists, its size is exactly the .npy header
plus 2 bytes per token, the header says 1-D uint16 with the listed length, the sha256 matches,
every token id is a GPT-2 id, the number of end-of-text tokens equals the listed document count,
and names/splits/sizes follow the format (shard 0 val, all but the last exactly shard_size).
Also flags an incomplete run, a foreign tokenizer and stray shard or temp files. A directory of
build-nanogpt shards without a manifest gets the format checks only. Exit 0 when everything
is fine, 1 when anything is not (each problem printed with its file), 2 on a usage error.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from data_prep.output import TEMP_FILE_RE
from data_prep.shard_writer import npy_header
from pipeline.atomic import sha256_file
from pipeline.cli import OneLineParser
from pipeline.shards import (MANIFEST, SHARD_RE, ShardError, ShardInfo, mask_filename, open_mask, open_shard,
                             read_manifest, shard_filename)
from pipeline.tokenizer import EOT, VOCAB_SIZE, tokenizer_fingerprint


def check_shard(directory: Path, entry: dict, index: int, manifest: dict) -> list[str]:
    """Problems with one manifest shard entry (empty when it is fine)."""
    problems = []
    name, tokens = entry.get("file"), entry.get("tokens")
    split = "val" if index == 0 else "train"
    if name != shard_filename(manifest.get("prefix", "?"), split, index) or entry.get("split") != split:
        problems.append(f"entry {index} should be {shard_filename(manifest.get('prefix', '?'), split, index)} "
                        f"(split {split}), manifest says {name} (split {entry.get('split')})")
    if not isinstance(tokens, int) or tokens < 1:
        return problems + [f"token count {tokens!r} is not a positive integer"]
    last = index == len(manifest["shards"]) - 1
    size_rule = tokens <= manifest.get("shard_size", 0) if last else tokens == manifest.get("shard_size")
    if not size_rule:
        problems.append(f"{tokens:,} tokens, but shard_size is {manifest.get('shard_size')!r} "
                        f"({'at most' if last else 'exactly'} that is expected)")
    path = directory / name
    if not path.is_file():
        return problems + ["file is missing"]
    expected_size = len(npy_header(tokens)) + 2 * tokens
    size = path.stat().st_size
    if size != expected_size:
        problems.append(f"file has {size:,} bytes, expected {expected_size:,} (truncated or padded)")
    try:
        array = open_shard(ShardInfo(path, split, tokens))
    except ShardError as err:
        return problems + [str(err).removeprefix(f"{path}: ")]
    if sha256_file(path) != entry.get("sha256"):
        problems.append("sha256 does not match the manifest (the file is corrupt or was changed)")
    mask = None
    if "mask_sha256" in entry:  # prompt/response data: a document starts at an EOT the loss skips
        info = ShardInfo(path, split, tokens, mask_sha256=entry["mask_sha256"])
        try:
            mask = open_mask(info, verify_hash=True)
        except ShardError as err:
            problems.append(str(err))
    largest, documents = 0, 0
    for start in range(0, len(array), 1 << 24):  # blockwise: no shard-sized temporaries
        block = array[start:start + (1 << 24)]
        largest = max(largest, int(block.max()))
        starts = block == EOT
        if mask is not None:
            starts &= mask[start:start + (1 << 24)] == 0
        documents += int(np.count_nonzero(starts))
    if largest >= VOCAB_SIZE:
        problems.append(f"holds token id {largest}, GPT-2 ids are < {VOCAB_SIZE}")
    if entry.get("documents") is not None and documents != entry["documents"]:
        problems.append(f"{documents:,} documents start here (end-of-text tokens), manifest says {entry['documents']:,}")
    return problems


def verify(directory: Path, out=None) -> int:
    """Print one line per file; return the number of problems."""
    out = out or sys.stdout
    try:
        manifest = read_manifest(directory)
    except ShardError as err:
        print(f"FAIL  {MANIFEST}: {str(err).removeprefix(str(directory / MANIFEST) + ': ')}", file=out)
        return 1
    if manifest is None:
        return _verify_without_manifest(directory, out)
    problems = 0
    header = []
    if manifest.get("tokenizer") != tokenizer_fingerprint():
        header.append(f"written with tokenizer {manifest.get('tokenizer')!r}, not this pipeline's GPT-2")
    if not manifest.get("complete"):
        header.append("incomplete: data_prep has not finished (re-run the same data_prep.fineweb command)")
    shards = manifest.get("shards")
    if not isinstance(shards, list) or (manifest.get("complete") and not shards):
        header.append("lists no shards")
        shards = []
    for message in header:
        print(f"FAIL  {MANIFEST}: {message}", file=out)
    problems += len(header)
    for index, entry in enumerate(shards):
        found = check_shard(directory, entry, index, manifest)
        problems += len(found)
        name = entry.get("file", f"entry {index}")
        if found:
            print(f"FAIL  {name}: " + "; ".join(found), file=out)
        else:
            print(f"ok    {name}  {entry['tokens']:,} tokens, {entry.get('documents', 0):,} documents", file=out)
    listed = {s.get("file") for s in shards}
    listed |= {mask_filename(s["file"]) for s in shards if "mask_sha256" in s}
    for path in sorted(directory.iterdir()):
        stray = SHARD_RE.match(path.name.replace(".mask.npy", ".npy")) and path.name not in listed
        if stray or TEMP_FILE_RE.match(path.name):
            print(f"FAIL  {path.name}: not listed in {MANIFEST} (left by an interrupted run, or foreign)", file=out)
            problems += 1
    total = sum(s.get("tokens", 0) for s in shards if isinstance(s.get("tokens"), int))
    print(f"{directory}: {len(shards)} shards, {total:,} tokens, "
          + ("all ok" if problems == 0 else f"{problems} problem(s)"), file=out)
    return problems


def _verify_without_manifest(directory: Path, out) -> int:
    paths = sorted((p for p in directory.glob("*.npy") if SHARD_RE.match(p.name)), key=lambda p: p.name)
    if not paths:
        print(f"FAIL  {directory}: no {MANIFEST} and no shard files", file=out)
        return 1
    problems = 0
    for path in paths:
        try:
            n = len(open_shard(ShardInfo(path, "?", -1)))
            print(f"ok    {path.name}  {n:,} tokens (format only: no {MANIFEST} to check against)", file=out)
        except ShardError as err:
            print(f"FAIL  {path.name}: {str(err).removeprefix(f'{path}: ')}", file=out)
            problems += 1
    print(f"{directory}: {len(paths)} shard files without a manifest, "
          + ("format ok" if problems == 0 else f"{problems} problem(s)"), file=out)
    return problems


def main(argv=None) -> int:
    p = OneLineParser(prog="python -m data_prep.verify", description=__doc__.split("\n\n")[0])
    p.add_argument("directory", type=Path, help="shard directory (holding manifest.json)")
    args = p.parse_args(argv)
    if not args.directory.is_dir():
        print(f"error: {args.directory}: not a directory", file=sys.stderr)
        return 2
    return 1 if verify(args.directory) else 0


if __name__ == "__main__":
    sys.exit(main())
