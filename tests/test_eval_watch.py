"""python -m eval --watch: every complete checkpoint exactly once, across kill -9 and restart."""

from __future__ import annotations

import collections
import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from _eval_support import make_run, make_val_shards, results, save_tiny_checkpoint, tiny_config
from conftest import HELLASWAG_VAL, REPO, subprocess_env
from eval.__main__ import main
from eval.watch import acquire_lock
from pipeline.checkpoint import checkpoint_dir

HS = ["--hellaswag", str(HELLASWAG_VAL), "--hellaswag-unverified", "--limit", "8"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_val_shards(tmp_path_factory.mktemp("data") / "shards", n_chars=20_000)


def _watcher(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "eval", *map(str, args)], cwd=REPO, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _assert_exactly_once(run, steps):
    rows = results(run)
    keys = collections.Counter((r["checkpoint_sha256"], r["data_sha256"], r["metric"]) for r in rows)
    assert max(keys.values()) == 1, f"evaluated twice: {keys.most_common(3)}"
    per_step = collections.Counter(r["step"] for r in rows)
    # hellaswag_acc, hellaswag_acc_norm, val_loss, val_bpb
    assert per_step == {s: 4 for s in steps}, per_step


def test_kill_9_and_restart_evaluates_nothing_twice_and_misses_nothing(tmp_path, data_dir):
    cfg = tiny_config(data_dir, max_steps=30)
    run = make_run(tmp_path / "run", cfg, steps=[10, 20])
    # Checkpoints that must never be evaluated: a save in progress, one that lost its marker.
    # Each has weights of its own, so evaluating it would add rows the test would see.
    save_tiny_checkpoint(run, cfg, 35).rename(checkpoint_dir(run, 35).with_name("step_000035.tmp"))
    (save_tiny_checkpoint(run, cfg, 25) / "COMPLETE").unlink()

    first = _watcher("--watch", run, "--interval", "0.2", "--no-report", *HS)
    try:
        _wait_for(lambda: len(results(run)) >= 1, 120, "the first result")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    killed_with = len(results(run))

    save_tiny_checkpoint(run, cfg, 30)  # the run's final step (train.max_steps = 30)
    second = _watcher("--watch", run, "--interval", "0.2", "--exit-when-done", "--no-report", *HS)
    out, _ = second.communicate(timeout=180)
    assert second.returncode == 0, out
    assert "final step 30" in out
    _assert_exactly_once(run, [10, 20, 30])
    assert killed_with < 6  # the kill interrupted the work on steps 10 and 20


def test_watch_skips_a_bad_checkpoint_and_picks_up_new_ones(tmp_path, data_dir, capsys):
    cfg = tiny_config(data_dir, max_steps=30)
    run = make_run(tmp_path / "run", cfg, steps=[10, 20])
    model_pt = checkpoint_dir(run, 10) / "model.pt"
    model_pt.write_bytes(model_pt.read_bytes()[:-100])  # truncated: its sha256 no longer matches
    timer = threading.Timer(1.5, save_tiny_checkpoint, (run, cfg, 30))  # training goes on meanwhile
    timer.start()
    try:
        rc = main(["--watch", str(run), "--interval", "0.1", "--until-step", "30", "--no-report", *HS])
    finally:
        timer.join()
    out = capsys.readouterr().out
    assert rc == 0
    assert "warning: skipping" in out and "step_000010" in out and "sha256 does not match" in out
    assert out.count("warning: skipping") == 1  # logged once, not once per poll
    rows = results(run)
    assert sorted({r["step"] for r in rows}) == [20, 30]
    _assert_exactly_once(run, [20, 30])


def test_a_second_watcher_on_the_same_run_is_refused(tmp_path, data_dir, capsys):
    run = make_run(tmp_path / "run", tiny_config(data_dir), steps=[10], metrics=False)
    holder = acquire_lock(run)
    try:
        assert main(["--watch", str(run), "--interval", "0.1", "--max-idle", "0", *HS]) == 2
        assert "another eval --watch" in capsys.readouterr().err
    finally:
        holder.close()


def test_watch_waits_for_the_run_and_stops_on_stop_file_or_idleness(tmp_path, data_dir, capsys):
    missing = tmp_path / "not-yet"
    stop = tmp_path / "STOP"
    threading.Timer(0.5, stop.touch).start()
    assert main(["--watch", str(missing), "--interval", "0.1", "--stop-file", str(stop), *HS]) == 0
    out = capsys.readouterr().out
    assert "waiting for" in out and "stop file" in out
    assert not missing.exists()  # the watcher never creates the trainer's run directory

    run = make_run(tmp_path / "run", tiny_config(data_dir), steps=[], metrics=False)
    start = time.monotonic()
    assert main(["--watch", str(run), "--interval", "0.1", "--max-idle", "0.5", *HS]) == 0
    assert 0.5 <= time.monotonic() - start < 30
    assert "--max-idle" in capsys.readouterr().out


def test_exit_when_done_honours_the_trainers_exit_record(tmp_path, data_dir, capsys):
    """A run that stopped early (train.target_loss) at step 10 of 30 is finished too."""
    run = make_run(tmp_path / "run", tiny_config(data_dir, max_steps=30), steps=[10], metrics=False)
    (run / "exit.json").write_text(json.dumps({"code": 0, "reason": "target loss reached", "step": 10}))
    assert main(["--watch", str(run), "--interval", "0.1", "--exit-when-done", "--tasks", "hellaswag", *HS]) == 0
    assert "final step 10 (exit.json: target loss reached)" in capsys.readouterr().out
    assert (run / "eval" / "report.html").is_file()  # written after the evaluation


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EOPNOTSUPP])
def test_watch_on_a_filesystem_without_flock_warns_and_still_evaluates(tmp_path, data_dir, capsys, monkeypatch,
                                                                        code):
    run = make_run(tmp_path / "run", tiny_config(data_dir), steps=[10], metrics=False)

    def no_flock(handle, operation):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(fcntl, "flock", no_flock)
    assert main(["--watch", str(run), "--interval", "0.1", "--max-idle", "0", "--tasks", "val"]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "cannot lock" in err and os.strerror(code) in err
    assert sorted({r["step"] for r in results(run)}) == [10]


def test_a_lock_error_other_than_unsupported_is_not_swallowed(tmp_path, monkeypatch):
    def broken(handle, operation):
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    monkeypatch.setattr(fcntl, "flock", broken)
    with pytest.raises(OSError, match="Input/output error"):
        acquire_lock(tmp_path / "run")
