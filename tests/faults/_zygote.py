"""A zygote: one child Python that imports the stages once, then forks a fresh process per
stage run, so the kill sweeps can start (and SIGKILL) a hundred runs without paying the
~4 s torch import for each.

    with Zygote() as z:
        run = z.start("train.__main__", argv, env={"RANK": "0", ...}, log=path)
        os.killpg(run.pid, signal.SIGKILL)   # the run and everything it started
        code = z.wait(run)                   # -9

Each forked run is its own process group (so data_prep's tokenizer workers die with it),
gets exactly the environment it is given (built with tests/conftest.py's subprocess_env),
writes stdout and stderr to its log file, runs `module.main(argv)` single-threaded and
exits with its return value -- what `python -m module argv` does, minus the interpreter
start. The zygote itself never runs a torch op and has no threads, so forking it is safe.

Protocol: one JSON request per line on the zygote's stdin, one JSON reply per line on its
stdout: {"op": "start", module, argv, env, log} -> {"pid"}; {"op": "wait", pid, timeout}
-> {"code": exit code, negative for a signal; null while running}.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PRELOAD = ("torch", "torch._dynamo", "train.__main__", "data_prep.fineweb", "eval.__main__")


# ----------------------------------------------------------------------------- server side

def _child(request: dict, reply_fd: int) -> None:
    """In the forked process: become the stage run. Never returns."""
    code = 1
    try:
        os.setpgid(0, 0)
        os.close(reply_fd)  # the zygote's pipes are not the run's business
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.environ.clear()
        os.environ.update(request["env"])
        fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        sys.stdout.reconfigure(line_buffering=True)  # what reaches the log survives a SIGKILL
        import importlib

        import torch
        torch.set_num_threads(1)
        code = importlib.import_module(request["module"]).main(request["argv"])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 2
    except BaseException:  # noqa: BLE001 - report it like the interpreter would, then exit 1
        import traceback
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)


def _exit_code(status: int) -> int:
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def serve() -> None:
    import importlib
    for module in PRELOAD + tuple(filter(None, os.environ.get("ZYGOTE_PRELOAD", "").split(","))):
        importlib.import_module(module)
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    finished: dict[int, int] = {}
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "start":
            pid = os.fork()
            if pid == 0:
                _child(request, reply.fileno())
            try:  # in both processes, so the group exists before the pid is handed out (no race)
                os.setpgid(pid, pid)
            except OSError:  # the child got there first, or is already gone
                pass
            reply.write(json.dumps({"pid": pid}) + "\n")
        elif request["op"] == "wait":
            pid, deadline = request["pid"], time.monotonic() + request["timeout"]
            while pid not in finished:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    finished[pid] = _exit_code(status)
                elif time.monotonic() >= deadline:
                    break
                else:
                    time.sleep(0.01)
            reply.write(json.dumps({"code": finished.get(pid)}) + "\n")


# ----------------------------------------------------------------------------- client side

@dataclass(frozen=True)
class Run:
    pid: int
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Zygote:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        """env: the zygote's own environment (default subprocess_env()); what libraries read at
        import (e.g. HF_ENDPOINT) is fixed here for every run it forks. ZYGOTE_PRELOAD in it
        names extra modules to import (comma-separated)."""
        from conftest import REPO, subprocess_env
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve())], cwd=REPO,
                                     env=env or subprocess_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)
        self.running: set[int] = set()

    def _ask(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the zygote died (exit {self.proc.wait()})")
        return json.loads(line)

    def start(self, module: str, argv: list, env: dict[str, str], log: Path) -> Run:
        pid = self._ask({"op": "start", "module": module, "argv": [str(a) for a in argv], "env": env,
                         "log": str(log)})["pid"]
        self.running.add(pid)
        return Run(pid, Path(log))

    def poll(self, run: Run) -> int | None:
        return self.wait(run, timeout=0.0)

    def wait(self, run: Run, timeout: float = 300.0) -> int | None:
        code = self._ask({"op": "wait", "pid": run.pid, "timeout": timeout})["code"]
        if code is not None:
            self.running.discard(run.pid)
        return code

    def kill(self, run: Run, sig: int = 9) -> int:
        """Signal the run's whole process group and reap it; returns its exit code."""
        try:
            os.killpg(run.pid, sig)
        except ProcessLookupError:
            pass
        code = self.wait(run, timeout=60.0)
        if code is None:
            try:
                status = Path(f"/proc/{run.pid}/status").read_text()
                wchan = Path(f"/proc/{run.pid}/wchan").read_text()
            except OSError as err:
                status, wchan = str(err), ""
            raise RuntimeError(f"pid {run.pid} survived signal {sig}: {status[:400]} wchan={wchan}\n"
                               f"{run.output()[-2000:]}")
        return code

    def close(self) -> None:
        for pid in list(self.running):  # runs a failed test left behind
            try:
                os.killpg(pid, 9)
            except ProcessLookupError:
                pass
        self.proc.stdin.close()
        self.proc.wait(timeout=60)

    def __enter__(self) -> "Zygote":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


if __name__ == "__main__":
    serve()
