"""Small tools the fault tests share: damage a file, call a stage's main() and judge its error."""

from __future__ import annotations

import contextlib
import io
import os
import random
import signal
from pathlib import Path
from typing import Callable

import torch


def flip_byte(path: Path, offset: int, mask: int = 0xFF) -> None:
    """XOR one byte in place (a bit rot / bad sector stand-in)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ mask]))


def truncate(path: Path, size: int) -> None:
    os.truncate(path, size)


def random_offsets(path: Path, count: int, seed: int, start: int = 0) -> list[int]:
    """count distinct byte offsets of path (>= start), the same for the same seed."""
    size = path.stat().st_size
    rng = random.Random(seed)
    return sorted(rng.sample(range(start, size), min(count, size - start)))


class StartedRun(Exception):
    """main() was still running after the time an input error takes to report."""


def _too_slow(signum, frame):  # noqa: ARG001 - signal handler signature
    raise StartedRun("still running: the input was accepted and work started")


def call_main(main: Callable[[list[str]], int], argv: list[str], timeout: float = 60.0) -> tuple[int, str, str]:
    """Run a stage's main(argv) in this process: (exit code, stdout, stderr). SystemExit from
    argparse counts as its code; any other exception propagates (a traceback is a failure),
    and so does StartedRun when main() is not done after `timeout` seconds (SIGALRM)."""
    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    previous = signal.signal(signal.SIGALRM, _too_slow)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in argv])
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        torch.set_num_threads(threads)
    return code, out.getvalue(), err.getvalue()


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def is_clean_error(code: int, stderr: str, *names: str) -> bool:
    """Exit 2, exactly one `error: ...` line on stderr, naming every one of `names`, no traceback."""
    lines = error_lines(stderr)
    return (code == 2 and len(lines) == 1 and lines[0].startswith("error: ")
            and "Traceback" not in stderr and all(str(n) in lines[0] for n in names))


def describe(code: int, stderr: str) -> str:
    return f"exit {code}, stderr:\n{stderr[-3000:]}"
