"""Crash-safe file writes: temp file in the same directory, fsync, rename, fsync the directory.

A reader therefore sees either the old complete file or the new complete file, never a
torn one, whatever moment a process is killed (kill -9, power loss after the fsync).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, BinaryIO


def fsync_dir(directory: str | Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call write(f) on a temp file beside path, then atomically replace path with it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise _naming(err, path) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _naming(err: OSError, path: Path) -> OSError:
    """The same error, naming the file (a failed write() reports no file name: 'disk full' where?)."""
    if err.filename is not None:
        return err
    return type(err)(err.errno, err.strerror, str(path)) if err.errno is not None else err


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def append_line(path: str | Path, line: str) -> None:
    """Append one line with a single write + fsync, so a crash never leaves half a line
    in the middle of the file (a torn last line is dropped by readers, see read_jsonl)."""
    data = (line.rstrip("\n") + "\n").encode()
    _drop_torn_tail(path)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    except OSError as err:
        raise _naming(err, Path(path)) from None
    finally:
        os.close(fd)


def _drop_torn_tail(path: str | Path) -> None:
    """Cut a partial last line left by a killed writer, so the next line starts clean.

    A last line that is complete JSON and lacks only its newline is kept (the newline is
    added): read_jsonl already counts it as a row, so dropping it here would lose a row
    that readers had seen -- e.g. a result eval then never recomputes."""
    try:
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            f.seek(max(0, size - (1 << 20)))
            tail = f.read()
            cut = tail.rfind(b"\n")
            try:
                json.loads(tail[cut + 1:])
                f.write(b"\n")
                return
            except ValueError:  # JSONDecodeError and UnicodeDecodeError
                pass
            f.truncate(size - len(tail) + cut + 1 if cut >= 0 else max(0, size - len(tail)))
    except FileNotFoundError:
        pass


class JsonlError(ValueError):
    """A JSON-lines file with a damaged line before its last one (names the file and line)."""


def read_jsonl(path: str | Path, damaged: list[int] | None = None) -> list[dict]:
    """The JSON objects of a file written by append_line (the one JSONL reader; missing = []).

    Torn-line policy: a torn final line (a crash mid-append) is dropped silently; any other
    line that is not a JSON object raises JsonlError naming path:line, or, when `damaged` is
    given (a report that draws what it can), is skipped and its line number appended there."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    lines = path.read_text(errors="replace").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        elif damaged is not None:
            damaged.append(i + 1)
        elif i < len(lines) - 1 or row is not None:
            raise JsonlError(f"{path}:{i + 1}: not a JSON object: {line[:80]!r} (fix or delete that line)")
    return rows


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
