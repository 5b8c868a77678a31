"""Failpoints: named places where a test makes the real process misbehave (etcd/TiKV style).

Crash-safety claims are only worth what a real crash shows, so instead of mocking, a test
arms a point and the stage itself dies, stalls or fails right there. One environment
variable arms points in a subprocess; in-process tests use `armed(...)`:

    GPT2_PIPELINE_FAILPOINTS="data_prep.shard_renamed=kill@hit=3;train.after_step=sleep(0.5)"

    entry  := POINT "=" ACTION ["(" ARG ")"] ["@" COND ("," COND)*]     entries joined by ";"
    COND   := FIELD "=" VALUE ("|" VALUE)*      all conditions must hold for the action to run

FIELDs: `hit` (1-based count of passes through this point in this process), `rank` and
`attempt` (RANK and TORCHELASTIC_RESTART_COUNT, both 0 when unset), and whatever the call
site passes (`step` for the train and checkpoint points). ACTIONs:
    kill[(SIGNAME)]   signal this process (default SIGKILL: nothing cleans up, like kill -9)
    exit[(CODE)]      os._exit(CODE), default 1
    sleep(SECONDS)    stall here (lets a test signal or kill the process mid-operation)
    raise[(ERRNO)]    raise OSError(ERRNO), default EIO (e.g. raise(ENOSPC) for a full disk)
    return            fail_point() returns True; the call site decides what failing means
Unarmed, a point costs one environment lookup.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import signal
import time
from collections.abc import Callable, Iterator

ENV = "GPT2_PIPELINE_FAILPOINTS"

POINTS = {
    "train.nan_loss": "the loss of step `step` (1-based) becomes NaN when the action is `return`",
    "train.after_step": "after step `step` is complete (and checkpointed, if due)",
    "checkpoint.file_written": "inside the save of step `step`: after each tensor file, before the marker",
    "data_prep.chunk": "the main process consumed a tokenized chunk",
    "data_prep.worker": "a tokenizer worker starts a chunk (kill: that worker dies)",
    "data_prep.shard_written": "a shard's temp file is complete, not yet renamed",
    "data_prep.shard_renamed": "a shard is in place, the manifest not yet updated",
    "data_prep.manifest_written": "the manifest records the new shard",
}

Action = Callable[[dict], bool]
_hits: collections.Counter = collections.Counter()
_from_env: tuple[str, dict[str, list[Action]]] = ("", {})
_in_process: dict[str, list[Action]] = {}


def fail_point(name: str, **context) -> bool:
    """Run the armed action of `name` if its conditions hold; True only for `return`."""
    spec = os.environ.get(ENV)
    if not spec and not _in_process:
        return False
    _hits[name] += 1
    context = {"hit": _hits[name], "rank": int(os.environ.get("RANK", "0")),
               "attempt": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")), **context}
    for action in _env_points(spec or "").get(name, []) + _in_process.get(name, []):
        if action(context):
            return True
    return False


@contextlib.contextmanager
def armed(name: str, action: str | Callable[[dict], bool]) -> Iterator[None]:
    """Arm `name` in this process for the duration of the block (action as in the env syntax,
    or a function of the context); hit counts start from zero."""
    _check_name(name)
    _hits.pop(name, None)
    _in_process.setdefault(name, []).append(action if callable(action) else parse_action(action))
    try:
        yield
    finally:
        _in_process[name].pop()
        if not _in_process[name]:
            del _in_process[name]


def _env_points(spec: str) -> dict[str, list[Action]]:
    global _from_env
    if spec != _from_env[0]:
        _from_env = (spec, parse(spec))
    return _from_env[1]


def parse(spec: str) -> dict[str, list[Action]]:
    points: dict[str, list[Action]] = {}
    for entry in filter(None, (e.strip() for e in spec.split(";"))):
        name, sep, action = entry.partition("=")
        if not sep:
            raise ValueError(f"{ENV}: {entry!r} is not POINT=ACTION")
        _check_name(name.strip())
        points.setdefault(name.strip(), []).append(parse_action(action))
    return points


def parse_action(text: str) -> Action:
    """'kill(SIGTERM)@hit=2,rank=1' -> a function of the point's context."""
    what, _, when = text.strip().partition("@")
    kind, _, arg = what.partition("(")
    kind, arg = kind.strip(), arg.rstrip(") ").strip()
    conditions = {}
    for cond in filter(None, (c.strip() for c in when.split(","))):
        field, sep, values = cond.partition("=")
        if not sep:
            raise ValueError(f"{ENV}: condition {cond!r} is not FIELD=VALUE[|VALUE...]")
        conditions[field.strip()] = {v.strip() for v in values.split("|")}
    try:
        run = _ACTIONS[kind](arg)
    except KeyError:
        raise ValueError(f"{ENV}: unknown action {kind!r} (use one of {', '.join(_ACTIONS)})") from None

    def action(context: dict) -> bool:
        if all(str(context.get(f)) in vals for f, vals in conditions.items()):
            return run()
        return False
    return action


def _check_name(name: str) -> None:
    if name not in POINTS:
        raise ValueError(f"{ENV}: unknown failpoint {name!r} (known: {', '.join(POINTS)})")


def _kill(arg: str) -> Callable[[], bool]:
    sig = getattr(signal, arg or "SIGKILL")
    return lambda: os.kill(os.getpid(), sig) or False


def _exit(arg: str) -> Callable[[], bool]:
    return lambda: os._exit(int(arg or 1))


def _sleep(arg: str) -> Callable[[], bool]:
    seconds = float(arg)
    return lambda: time.sleep(seconds) or False


def _raise(arg: str) -> Callable[[], bool]:
    code = getattr(errno, arg or "EIO")

    def run() -> bool:
        raise OSError(code, os.strerror(code))
    return run


_ACTIONS: dict[str, Callable[[str], Callable[[], bool]]] = {
    "kill": _kill, "exit": _exit, "sleep": _sleep, "raise": _raise, "return": lambda _arg: lambda: True}
