"""The one argparse parser of every CLI (stages and commands), with the project's error contract.

A usage mistake (unknown flag, missing or ill-typed value) is ONE `error: ...` line on
stderr and exit 2, like every other user error, instead of argparse's usage block.
"""

from __future__ import annotations

import argparse


class UsageError(ValueError):
    """A command-line mistake, for a caller that reports it itself (raise_errors=True)."""


class OneLineParser(argparse.ArgumentParser):
    def __init__(self, *args, raise_errors: bool = False, **kwargs):
        # No prefix matching: `--a` must not quietly mean `--allow-revision-change`.
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})
        self.raise_errors = raise_errors  # the trainer records a usage error in exit.json first

    def error(self, message: str):
        text = f"{message} (see {self.prog} --help)"
        if self.raise_errors:
            raise UsageError(text)
        self.exit(2, f"error: {text}\n")
