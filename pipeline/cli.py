"""The one argparse parser of every CLI (stages and commands), with the project's error contract.

A usage mistake (unknown flag, missing or ill-typed value) is ONE `error: ...` line on
stderr and exit 2, like every other user error, instead of argparse's usage block.
"""

from __future__ import annotations

import argparse


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")
