"""`python -m eval --watch RUN_DIR`: evaluate every new complete checkpoint exactly once.

Designed to run as its own (Slurm) job beside training:
- it may start before the run directory exists and waits for it;
- only complete checkpoints are seen (list_checkpoints skips step_N.tmp/ and directories
  without COMPLETE), and results.jsonl says what is done, so a watcher killed at any
  moment and started again evaluates nothing twice and misses nothing;
- a bad checkpoint (corrupt file, pruned while being read, weights that do not fit) is
  logged and skipped; it is retried only if its COMPLETE marker changes (a re-save);
- one watcher per run: a second one exits with an error instead of racing the first;
- it stops on --stop-file, --until-step, --exit-when-done (the run's final step,
  train.max_steps, has been evaluated), --max-idle seconds without a new checkpoint, or
  SIGTERM; otherwise it polls every --interval seconds. (--exit-when-done also honours
  the trainer's RUN/exit.json: code 0 at step S means no checkpoint after S will come.)
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from eval import EvalError
from eval.evaluate import Runtime, Target, checkpoint_target, evaluate_target
from eval.tasks import Tasks
from pipeline.checkpoint import CheckpointError, config_of, list_checkpoints, read_exit, read_state
from pipeline.config import Config
from pipeline.hellaswag import HellaSwagError

LOCK = "watch.lock"


@dataclass(frozen=True)
class WatchOptions:
    interval: float = 60.0
    until_step: int | None = None
    stop_file: Path | None = None
    exit_when_done: bool = False
    max_idle: float | None = None
    force: bool = False


class Stopped(Exception):
    """SIGTERM arrived: leave the loop (every result so far is already on disk)."""


def _raise_stopped(signum, frame):  # noqa: ARG001 - signal handler signature
    raise Stopped(signal.Signals(signum).name)


def acquire_lock(run_dir: Path):
    """Hold an exclusive flock on RUN/eval/watch.lock for the process lifetime (freed on kill -9)."""
    path = run_dir / "eval" / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "?"
        handle.close()
        raise EvalError(f"{run_dir}: another eval --watch (pid {owner}) is already watching this run") from None
    except OSError as err:
        if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            handle.close()
            raise
        # Some cluster filesystems (Lustre without -o flock, old NFS) cannot lock at all, as
        # data_prep's output lock also allows: watch unlocked rather than not at all.
        print(f"warning: {path}: cannot lock ({err.strerror or err}); make sure no other eval --watch "
              "watches this run", file=sys.stderr, flush=True)
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def watch(run_dir: Path, make_tasks: Callable[[Config | None], Tasks], rt: Runtime,
          opts: WatchOptions, on_evaluated: Callable[[], None]) -> int:
    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    lock = None
    try:
        # Wait for the trainer to create the run directory rather than creating it ourselves.
        started, logged = time.monotonic(), False
        while not rt.agree(run_dir.is_dir() if rt.main else None):
            if not logged:
                rt.log(f"waiting for {run_dir} to appear")
                logged = True
            reason = _should_stop(rt, opts, run_dir, {}, None, started)
            if reason:
                rt.log(f"exiting: {reason}")
                return 0
            _sleep(opts)
        lock = acquire_lock(run_dir) if rt.main else None
        return _loop(run_dir, make_tasks, rt, opts, on_evaluated)
    except Stopped as why:
        rt.log(f"stopped by {why}; every finished result is in {run_dir / 'eval'}")
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        if lock is not None:
            lock.close()


def _loop(run_dir: Path, make_tasks, rt: Runtime, opts: WatchOptions, on_evaluated) -> int:
    tasks: Tasks | None = None
    failed: dict[str, str] = {}  # checkpoint path -> COMPLETE marker digest that failed
    settled: dict[str, int] = {}  # weights sha256 -> step, evaluated (or failed) by this watcher
    final_step: int | None = None
    last_new = time.monotonic()
    rt.log(f"watching {run_dir} every {opts.interval:g}s")
    while True:
        found = rt.agree([str(p) for p in list_checkpoints(run_dir)] if rt.main else None)
        for path in map(Path, found):
            try:
                target = checkpoint_target(path)
            except CheckpointError as err:
                if failed.get(str(path)) != "unreadable":
                    rt.log(f"warning: skipping {path}: {err}")
                failed[str(path)] = "unreadable"
                continue
            if failed.get(str(path)) == target.sha256 or target.sha256 in settled:
                continue
            if tasks is None:  # the first checkpoint tells us the run's data and budgets
                config = _config_of(path)
                tasks = make_tasks(config)
                final_step = config.train.max_steps if config else None
                rt.log(f"tasks: {tasks.describe()}")
            if _evaluate_one(target, tasks, rt, run_dir, opts, failed):
                try:
                    on_evaluated()
                except Exception as err:  # a failed plot must not stop the evaluations
                    rt.log(f"warning: report not written: {type(err).__name__}: {err}")
            settled[target.sha256] = target.step
            last_new = time.monotonic()
        reason = _should_stop(rt, opts, run_dir, settled, final_step, last_new)
        if reason:
            rt.log(f"exiting: {reason}")
            return 0
        _sleep(opts)


def _evaluate_one(target: Target, tasks: Tasks, rt: Runtime, run_dir: Path, opts: WatchOptions,
                  failed: dict[str, str]) -> bool:
    """True when new results were written. A bad checkpoint is logged, never fatal."""
    try:
        rows = evaluate_target(target, tasks, rt, run_dir, opts.force)
    except (CheckpointError, HellaSwagError, EvalError) as err:
        rt.log(f"warning: skipping {target.name}: {err}")
        failed[target.name] = target.sha256
        return False
    return bool(rows)


def _config_of(checkpoint: Path) -> Config | None:
    try:
        return config_of(read_state(checkpoint), checkpoint)
    except CheckpointError:
        return None


def _final_step(run_dir: Path, max_steps: int | None) -> tuple[int, str] | None:
    """The step after which no checkpoint will come: train.max_steps, or earlier if the
    trainer's exit.json reports a finished run (exit code 0, e.g. train.target_loss reached)."""
    final = (max_steps, "train.max_steps") if max_steps is not None else None
    info = read_exit(run_dir) or {}
    if info.get("code") == 0 and isinstance(info.get("step"), int):
        if final is None or info["step"] < final[0]:
            final = (info["step"], f"exit.json: {info.get('reason', 'finished')}")
    return final


def _should_stop(rt: Runtime, opts: WatchOptions, run_dir: Path, settled: dict[str, int],
                 final_step: int | None, last_new: float) -> str | None:
    reason = None
    if rt.main:
        if opts.stop_file is not None and opts.stop_file.exists():
            reason = f"stop file {opts.stop_file} exists"
        elif opts.until_step is not None and any(s >= opts.until_step for s in settled.values()):
            reason = f"a checkpoint at step >= {opts.until_step} is evaluated"
        elif opts.exit_when_done and (final := _final_step(run_dir, final_step)) is not None \
                and any(s >= final[0] for s in settled.values()):
            reason = f"the run's final step {final[0]} ({final[1]}) is evaluated"
        elif opts.max_idle is not None and time.monotonic() - last_new > opts.max_idle:
            reason = f"no new checkpoint for {opts.max_idle:g}s (--max-idle)"
    return rt.agree(reason)


def _sleep(opts: WatchOptions) -> None:
    deadline = time.monotonic() + opts.interval
    while time.monotonic() < deadline:
        if opts.stop_file is not None and opts.stop_file.exists():
            return
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

