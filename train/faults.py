"""Fault injection for the test-suite, driven by environment variables (all off by default).

Crash-safety claims are only worth what a real crash shows, so tests make the real
process misbehave instead of mocking it:
    GPT2_PIPELINE_TEST_NAN_STEPS=3,4   rank 0's loss is NaN at these (1-based) steps
    GPT2_PIPELINE_TEST_KILL_AT_STEP=N  every rank SIGKILLs itself right after step N
    GPT2_PIPELINE_TEST_STEP_SLEEP=S    sleep S seconds per step (lets a test signal mid-run)
    GPT2_PIPELINE_TEST_KILL_RANK_AT=R:N  rank R SIGKILLs itself right after step N, in torchrun's
                                       first attempt only (TORCHELASTIC_RESTART_COUNT=0): a
                                       worker failure that `torchrun --max-restarts` recovers from
(GPT2_PIPELINE_TEST_SAVE_SLEEP lives in pipeline/checkpoint.py: it stalls a save halfway.)
"""

from __future__ import annotations

import os
import signal
import time


def _steps(name: str) -> frozenset[int]:
    text = os.environ.get(name, "")
    return frozenset(int(s) for s in text.split(",") if s.strip())


def nan_loss(step: int, rank: int) -> bool:
    return rank == 0 and step in _steps("GPT2_PIPELINE_TEST_NAN_STEPS")


def after_step(step: int) -> None:
    pause = float(os.environ.get("GPT2_PIPELINE_TEST_STEP_SLEEP", "0") or 0)
    if pause > 0:
        time.sleep(pause)
    if step in _steps("GPT2_PIPELINE_TEST_KILL_AT_STEP"):
        os.kill(os.getpid(), signal.SIGKILL)
    rank, _, at = os.environ.get("GPT2_PIPELINE_TEST_KILL_RANK_AT", "").partition(":")
    if (at and int(at) == step and os.environ.get("RANK", "0") == rank
            and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"):
        os.kill(os.getpid(), signal.SIGKILL)
