"""Preemption: a signal only sets a flag; the training loop decides when to stop.

Slurm (and torchrun, when it is itself signalled) send SIGTERM some time before SIGKILL;
`sbatch --signal=USR1@120` sends SIGUSR1; Ctrl-C sends SIGINT; a closed terminal SIGHUP. Doing work inside a signal
handler (saving, collectives) is unsafe, so the handler records the signal, and the loop
all-reduces the flag after every step so that all ranks stop after the same step, write
one checkpoint and exit with train.EXIT_PREEMPTED. A second Ctrl-C aborts at once.
"""

from __future__ import annotations

import signal
import sys
import threading

# SIGHUP and SIGQUIT too: torchrun forwards them to the workers like SIGTERM (its agent handles
# SIGTERM, SIGINT, SIGHUP, SIGQUIT), and their default actions (exit; core dump) would lose the step.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP, signal.SIGQUIT)


class PreemptionFlag:
    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, frame) -> None:
        first = self.signal_name is None
        self.signal_name = signal.Signals(signum).name
        if first:
            print(f"received {self.signal_name}: finishing this step, then saving a checkpoint",
                  file=sys.stderr, flush=True)
        if signum == signal.SIGINT:
            # The next Ctrl-C behaves as usual: whoever presses it twice wants out now.
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def install(self) -> "PreemptionFlag":
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be set from the main thread
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __enter__(self) -> "PreemptionFlag":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()
