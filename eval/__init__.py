"""The eval stage: HellaSwag and validation loss on checkpoints, --watch, reports (python -m eval)."""


class EvalError(RuntimeError):
    """A user-fixable problem in an evaluation request (bad combination of flags, no data)."""
