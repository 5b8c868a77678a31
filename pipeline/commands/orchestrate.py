"""Run the stages in order as their real command lines, skipping the ones already done.

Each stage is a child process — exactly the command a user would type, printed before it
runs — so the orchestrator adds no second code path: what `pipeline run` or `pipeline
demo` does, a user (or a Slurm script) can do by hand, one stage at a time.

A stage is skipped when its output is complete:
  data   the shard manifest says complete
  train  a complete checkpoint exists at train.max_steps (or the trainer's exit.json says
         it stopped there on train.target_loss)
  eval   every complete checkpoint has each wanted metric in eval/results.jsonl (val loss,
         and HellaSwag when its file is there), and the report exists
Each stage is itself resumable (data_prep keeps complete shards, the trainer resumes from
its latest checkpoint, eval skips checkpoints it has scored), so re-running after a crash
or a preemption repeats no finished work.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline.atomic import read_jsonl
from pipeline.checkpoint import EXIT, list_checkpoints, read_exit, step_of
from pipeline.shards import MANIFEST, ShardError, read_manifest

# The package root (the directory holding pipeline/, train/, ...), put first on the
# children's PYTHONPATH so they run this very code whether or not it is pip-installed.
CODE_ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path("eval") / "results.jsonl"
TARGET_REACHED = "target loss reached"
REPORT = Path("eval") / "report.md"


# -- completion checks (pure reads; each returns a reason string when done, else None) --

def data_done(data_dir: str | Path) -> str | None:
    try:
        manifest = read_manifest(data_dir)
    except ShardError:
        return None  # data_prep will say what is wrong with it
    if not manifest or manifest.get("complete") is not True:
        return None
    shards = manifest.get("shards", [])
    tokens = sum(int(s.get("tokens", 0)) for s in shards)
    return f"{Path(data_dir) / MANIFEST} complete: {len(shards)} shards, {tokens:,} tokens"


def train_done(run_dir: str | Path, max_steps: int) -> str | None:
    found = list_checkpoints(run_dir)
    if not found:
        return None
    step = step_of(found[-1])
    if step >= max_steps:
        return f"final checkpoint {found[-1]} (train.max_steps = {max_steps})"
    # A run that stopped early on train.target_loss is finished too; the trainer's
    # exit.json says so (and names the step, so a later, longer launch is not mistaken).
    exit_info = read_exit(run_dir) or {}
    if exit_info.get("code") == 0 and exit_info.get("reason") == TARGET_REACHED and exit_info.get("step") == step:
        return f"{TARGET_REACHED} at step {step} ({found[-1]})"
    return None


def evaluated_steps(run_dir: str | Path, metric: str | None = None) -> set[int]:
    """Steps with a result in eval/results.jsonl (for one metric, or any)."""
    steps = set()
    for row in read_jsonl(Path(run_dir) / RESULTS):
        if isinstance(row.get("step"), int) and metric in (None, row.get("metric")):
            steps.add(row["step"])
    return steps


def eval_done(run_dir: str | Path, metrics: tuple[str, ...] = ("val_loss",)) -> str | None:
    """Every complete checkpoint has a result for each metric, and the report exists."""
    run_dir = Path(run_dir)
    checkpoints = {step_of(p) for p in list_checkpoints(run_dir)}
    if not checkpoints or not all(checkpoints <= evaluated_steps(run_dir, m) for m in metrics):
        return None
    if not (run_dir / REPORT).is_file():
        return None
    return f"{len(checkpoints)} checkpoints have {', '.join(metrics)}; report {run_dir / REPORT}"


# -- running stages --

def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(CODE_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *map(str, args)]


def torchrun_module(nproc: int, module: str, *args: str) -> list[str]:
    """torchrun for several processes; one process runs plainly (`python -m train` is the
    same trainer, and Ctrl-C then prints the trainer's one line rather than torchrun's traceback)."""
    if nproc == 1:
        return python_module(module, *args)
    # `python -m torch.distributed.run` is the `torchrun` script, without relying on PATH.
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", module, *map(str, args)]


def display(cmd: list[str]) -> str:
    """The command as a user would type it (python/torchrun instead of absolute paths)."""
    words = list(cmd)
    if words[:3] == [sys.executable, "-m", "torch.distributed.run"]:
        words = ["torchrun", *words[3:]]
    elif words[:1] == [sys.executable]:
        words = ["python", *words[1:]]
    return shlex.join(words)


@dataclass
class Stage:
    name: str
    commands: list[list[str]]
    done: Callable[[], str | None] = lambda: None  # reason string when the output is complete
    # Maps a failed command's exit code to the real one, given the wall time it started
    # (torchrun reports any worker failure as 1; the trainer's exit.json has the real code).
    exit_code: Callable[[int, float], int] | None = None
    seconds: float = 0.0
    outcome: str = "pending"  # pending | skipped | ran | failed


class StageFailed(RuntimeError):
    def __init__(self, stage: str, cmd: list[str], code: int):
        self.stage, self.code = stage, code
        what = "stopped after saving a checkpoint" if code == 3 else "failed"
        super().__init__(f"stage {stage} {what} (exit {code}): {display(cmd)}")


def trainer_exit_code(run_dir: str | Path) -> Callable[[int, float], int]:
    def code(returned: int, started: float) -> int:
        try:
            fresh = (Path(run_dir) / EXIT).stat().st_mtime >= started
        except OSError:
            return returned
        info = read_exit(run_dir) or {}
        return info["code"] if fresh and isinstance(info.get("code"), int) else returned
    return code


def run_child(cmd: list[str], env: dict[str, str]) -> int:
    """Run one stage command to completion and return its exit code.

    Ctrl-C reaches the child too (same process group), so we keep waiting while it stops
    cleanly — the trainer saves a checkpoint first; a second Ctrl-C stops waiting. A
    SIGTERM sent to this process only (e.g. `scancel --signal=TERM` on the batch shell)
    is passed on to the child, so the run is preempted the way the trainer expects.
    """
    proc = subprocess.Popen(cmd, env=env)
    forward = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signum))
    interrupted = False
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:
                if interrupted:
                    proc.kill()
                    proc.wait()
                    raise
                interrupted = True
                print("interrupted: waiting for the stage to stop cleanly (Ctrl-C again to kill it)",
                      file=sys.stderr, flush=True)
    finally:
        signal.signal(signal.SIGTERM, forward)


def run_stages(stages: list[Stage], out=sys.stdout, env: dict[str, str] | None = None) -> None:
    """Run each stage's commands unless done() says its output is already complete.

    Raises StageFailed with the child's exit code on the first failing command, so the
    caller can pass it on (e.g. 3 from a preempted trainer, which Slurm requeues on).
    """
    env = env or child_env()
    for i, stage in enumerate(stages, 1):
        header = f"[{i}/{len(stages)}] {stage.name}"
        reason = stage.done()
        if reason:
            stage.outcome = "skipped"
            print(f"{header}: already complete ({reason}), skipping", file=out, flush=True)
            continue
        start = time.monotonic()
        for cmd in stage.commands:
            print(f"{header}: $ {display(cmd)}", file=out, flush=True)
            started = time.time()
            code = run_child(cmd, env)
            if code != 0:
                stage.outcome = "failed"
                stage.seconds = time.monotonic() - start
                raise StageFailed(stage.name, cmd, stage.exit_code(code, started) if stage.exit_code else code)
        stage.seconds = time.monotonic() - start
        stage.outcome = "ran"
        print(f"{header}: done in {format_seconds(stage.seconds)}", file=out, flush=True)


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
