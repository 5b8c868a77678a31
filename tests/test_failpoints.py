"""pipeline/failpoints.py: the spec syntax, conditions, hit counts, and a real kill/exit."""

from __future__ import annotations

import errno
import signal
import subprocess
import sys

import pytest

from conftest import REPO, subprocess_env
from pipeline import failpoints
from pipeline.failpoints import ENV, armed, fail_point


def test_unarmed_points_do_nothing(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert fail_point("train.nan_loss", step=1) is False


def test_return_fires_only_where_every_condition_holds(monkeypatch):
    monkeypatch.setenv(ENV, "train.nan_loss=return@step=3|4,rank=0")
    fired = [s for s in range(1, 7) if fail_point("train.nan_loss", step=s)]
    assert fired == [3, 4]
    monkeypatch.setenv("RANK", "1")
    assert not fail_point("train.nan_loss", step=3)


def test_hit_counts_passes_and_armed_restores(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    with armed("data_prep.shard_written", "raise(ENOSPC)@hit=3"):
        fail_point("data_prep.shard_written")
        fail_point("data_prep.shard_written")
        with pytest.raises(OSError) as err:
            fail_point("data_prep.shard_written")
        assert err.value.errno == errno.ENOSPC
        assert not fail_point("data_prep.shard_written")  # the 4th pass
    assert not failpoints._in_process
    assert not fail_point("data_prep.shard_written", hit=3)


def test_a_function_can_be_armed():
    seen = []
    with armed("train.after_step", lambda ctx: seen.append(ctx["step"]) or False):
        fail_point("train.after_step", step=7)
    assert seen == [7]


@pytest.mark.parametrize("spec,message", [
    ("train.nope=kill", "unknown failpoint 'train.nope'"),
    ("train.after_step", "is not POINT=ACTION"),
    ("train.after_step=explode", "unknown action 'explode'"),
    ("train.after_step=kill@step", "condition 'step' is not FIELD=VALUE"),
])
def test_a_bad_spec_names_the_mistake(monkeypatch, spec, message):
    monkeypatch.setenv(ENV, spec)
    with pytest.raises(ValueError, match=ENV) as err:
        fail_point("train.after_step", step=1)
    assert message in str(err.value)


@pytest.mark.parametrize("action,code", [("kill", -signal.SIGKILL), ("kill(SIGTERM)", -signal.SIGTERM),
                                         ("exit(7)", 7)])
def test_kill_and_exit_end_the_real_process(action, code):
    script = ("from pipeline.failpoints import fail_point\n"
              "for step in range(1, 5):\n    fail_point('train.after_step', step=step)\n"
              "    print(step, flush=True)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                          env=subprocess_env(**{ENV: f"train.after_step={action}@step=2"}))
    assert proc.returncode == code and proc.stdout.split() == ["1"]
