"""A small size-limited filesystem for disk-full faults: a tmpfs mounted by the test (root only)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest


def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=60)


@contextlib.contextmanager
def tmpfs(directory: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of `size` (e.g. '2m') on directory; skip the test if that is impossible."""
    from conftest import require_system
    require_system("disk-full faults mount a size-limited tmpfs")
    directory.mkdir(parents=True, exist_ok=True)
    try:
        proc = _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory))
    except FileNotFoundError:
        pytest.skip("no mount command on this machine")
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({proc.stderr.strip() or proc.returncode}): disk-full faults need it")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], capture_output=True, timeout=60)


def resize(directory: Path, size: str) -> None:
    proc = _mount("-o", f"remount,size={size}", str(directory))
    assert proc.returncode == 0, proc.stderr


def free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def fill(directory: Path, leave: int) -> Path:
    """A filler file that leaves about `leave` bytes free (rounded to the filesystem's pages)."""
    filler = directory / "filler"
    size = max(0, free_bytes(directory) - leave)
    with open(filler, "wb") as f:
        while size > 0:
            n = min(size, 1 << 20)
            f.write(b"\0" * n)
            size -= n
    return filler
