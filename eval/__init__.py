"""The eval stage: HellaSwag and validation loss on checkpoints, --watch, reports (python -m eval)."""

import argparse


class EvalError(RuntimeError):
    """A user-fixable problem in an evaluation request (bad combination of flags, no data)."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one `error: ...` line (exit 2) like every other user error."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")
