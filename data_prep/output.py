"""The output directory: start fresh, resume the same run, or refuse someone else's shards.

A directory belongs to a run once it holds our manifest.json, written (with no shards and
complete=false) before the first shard. Re-running with the same settings continues from the
last shard the manifest lists: shard files it does not list (a kill between rename and
manifest update) and temp files of killed writers are removed, since they will be rewritten.
Different settings, or .npy files with no manifest, are an error unless --overwrite.
"""

from __future__ import annotations

import contextlib
import errno
import json
import re
import sys
from pathlib import Path
from typing import Callable, Iterator

from data_prep import DataPrepError
from data_prep.shard_writer import npy_header
from pipeline.shards import MASK_DTYPE
from pipeline.shards import MANIFEST, SHARD_RE, ShardError, mask_filename, read_manifest, write_manifest

# What must match for a directory to be the same run (everything that changes the bytes).
SETTINGS = ("tokenizer", "source", "shard_size", "prefix", "max_tokens", "document_format", "loss_mask")
LOCK_FILE = ".data_prep.lock"  # held while a run writes; empty, harmless when left behind
TEMP_FILE_RE = re.compile(r"^\..+\.tmp\.\d+$")  # pipeline.atomic's temp names


def _is_output(name: str) -> bool:
    """A token shard or a loss mask beside one (the files this command writes besides the manifest)."""
    return bool(SHARD_RE.match(name) or SHARD_RE.match(name.replace(".mask.npy", ".npy")))
_FIX = "use --overwrite to replace them, or choose another --out"


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Create `out` and hold an exclusive lock on it for the run, so two runs never interleave
    shards in one directory. A POSIX record lock: owned by this process only (forked workers
    do not inherit it) and released by the kernel when the process dies, even by kill -9."""
    if out.exists() and not out.is_dir():
        raise DataPrepError(f"{out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK_FILE, "a+b") as handle:
        try:
            import fcntl
        except ImportError:  # Windows: no locking
            yield
            return
        try:
            fcntl.lockf(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EACCES, errno.EAGAIN):
                raise DataPrepError(f"{out}: another data_prep.fineweb run is writing this directory; "
                                    "wait for it to finish (or stop it), or choose another --out") from None
            # Some cluster filesystems (Lustre without -o flock, old NFS) cannot lock at all.
            print(f"warning: {out}: cannot lock the output directory ({err.strerror}); make sure no other "
                  "run writes to it", file=sys.stderr)
        yield


def open_output(out: Path, fresh: dict, overwrite: bool, resolve: Callable[[], dict | None]) -> dict:
    """The manifest to continue from: the previous run's if it matches `fresh`'s settings, else
    `fresh` (its source completed by resolve(), called only when starting over) once written.
    Call with output_lock(out) held."""
    if overwrite:
        remove_outputs(out)
    try:
        old = read_manifest(out)
    except ShardError as err:
        raise DataPrepError(f"{err}; {_FIX}") from None
    if old is None:
        foreign = sorted(p.name for p in out.glob("*.npy"))
        if foreign:
            raise DataPrepError(f"{out}: holds .npy files ({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}) "
                                f"but no {MANIFEST}, so they were not written by this command; {_FIX}")
        _remove_temp_files(out)
        resolved = resolve()
        if resolved is not None:
            fresh["source"]["resolved"] = resolved
        write_manifest(out, fresh)
        return fresh
    problem = settings_difference(old, fresh)
    if problem:
        raise DataPrepError(f"{out}: holds shards of a different run ({problem}); {_FIX}")
    _check_listed_shards(out, old)
    _remove_unlisted(out, old)
    return old


def settings_difference(old: dict, new: dict) -> str | None:
    """The first setting that differs, in words (None when the run is the same)."""
    for key in SETTINGS:
        before, after = old.get(key), new.get(key)
        if key == "source" and isinstance(before, dict) and isinstance(after, dict):
            # `resolved` is filled in on the first run; a hub revision is compared by the commit
            # it resolves to (data_prep.hub.check_pinned_revision), not by how it was spelled.
            before = {k: v for k, v in before.items() if k not in ("resolved", "revision")}
            after = {k: v for k, v in after.items() if k != "revision"}
        if before == after:
            continue
        if key == "source" and isinstance(before, dict) and isinstance(after, dict):
            changed = _changed_file(before.get("files"), after.get("files"))
            if changed:
                return changed
        if key == "tokenizer":
            return f"tokenizer {_short(before)}, this pipeline uses {_short(after)}"
        return f"{key} was {_short(before)}, this run has {_short(after)}"
    return None


def _changed_file(before, after) -> str | None:
    if not isinstance(before, list) or not isinstance(after, list):
        return None
    if [f.get("path") for f in before] != [f.get("path") for f in after]:
        return None
    for old, new in zip(before, after):
        if old != new:
            return (f"input file {new.get('path')} changed since the previous run "
                    f"({old.get('bytes')} bytes then, {new.get('bytes')} now)")
    return None


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 160 else text[:157] + "..."


def _check_listed_shards(out: Path, manifest: dict) -> None:
    for shard in manifest.get("shards", []):
        files = [(out / shard["file"], len(npy_header(shard["tokens"])) + 2 * shard["tokens"])]
        if "mask_sha256" in shard:
            files.append((out / mask_filename(shard["file"]), len(npy_header(shard["tokens"], MASK_DTYPE)) + shard["tokens"]))
        for path, expected in files:
            size = path.stat().st_size if path.is_file() else None
            if size != expected:
                state = "is missing" if size is None else f"has {size} bytes, expected {expected}"
                raise DataPrepError(f"{path}: listed in {MANIFEST} but {state}; check the directory with "
                                    f"`python -m data_prep.verify {out}`, or {_FIX}")


def _remove_unlisted(out: Path, manifest: dict) -> None:
    listed = {s["file"] for s in manifest.get("shards", [])}
    listed |= {mask_filename(name) for name in listed}
    for path in out.iterdir():
        if (_is_output(path.name) and path.name not in listed) or TEMP_FILE_RE.match(path.name):
            path.unlink()


def _remove_temp_files(out: Path) -> None:
    for path in out.iterdir():
        if TEMP_FILE_RE.match(path.name):
            path.unlink()


def remove_outputs(out: Path) -> None:
    """--overwrite: remove what this command writes (manifest, shards, temp files), nothing else."""
    for path in out.iterdir():
        if path.name == MANIFEST or _is_output(path.name) or TEMP_FILE_RE.match(path.name):
            path.unlink()
