"""The orchestrator: stage-completion checks on hand-built outputs, skipping, failure codes."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import threading
import time

import pytest

from conftest import run_module
from pipeline.commands.orchestrate import (Stage, StageFailed, child_env, data_done, display, eval_done, run_child,
                                  run_stages, torchrun_module, train_done, trainer_exit_code)
from pipeline.commands.run import main as run_main
from pipeline.shards import MANIFEST
from pipeline_run_fixture import make_run, make_shards, write_eval_result


def test_data_done_only_when_manifest_says_complete(tmp_path):
    assert data_done(tmp_path / "missing") is None
    make_shards(tmp_path / "partial", complete=False)
    assert data_done(tmp_path / "partial") is None
    make_shards(tmp_path / "full", sizes=(100, 200, 300))
    reason = data_done(tmp_path / "full")
    assert reason is not None and "3 shards" in reason and "600 tokens" in reason
    (tmp_path / "full" / MANIFEST).write_text("{not json")
    assert data_done(tmp_path / "full") is None  # corrupt: let data_prep report it


def test_train_done_needs_a_complete_checkpoint_at_max_steps(tmp_path):
    data = make_shards(tmp_path / "data")
    run = tmp_path / "run"
    make_run(run, data, checkpoint_steps=(10, 20))
    assert train_done(run, 30) is None
    assert train_done(run, 20) is not None
    # A checkpoint directory without its COMPLETE marker (a save that was killed) does not count.
    (run / "checkpoints" / "step_000030").mkdir()
    assert train_done(run, 30) is None


def test_train_done_after_an_early_stop_on_target_loss(tmp_path):
    run = tmp_path / "run"
    make_run(run, make_shards(tmp_path / "data"), checkpoint_steps=(10, 20))
    exit_file = run / "exit.json"
    exit_file.write_text(json.dumps({"code": 0, "reason": "target loss reached", "step": 20}))
    assert "target loss reached at step 20" in train_done(run, 30)
    exit_file.write_text(json.dumps({"code": 3, "reason": "preempted", "step": 20}))
    assert train_done(run, 30) is None
    exit_file.write_text(json.dumps({"code": 0, "reason": "target loss reached", "step": 10}))
    assert train_done(run, 30) is None  # stale: not about the latest checkpoint


def test_eval_done_needs_every_checkpoint_and_the_report(tmp_path):
    data = make_shards(tmp_path / "data")
    run = tmp_path / "run"
    make_run(run, data, checkpoint_steps=(10, 20), evaluated=(10,), report=True)
    assert eval_done(run) is None  # step 20 not evaluated
    write_eval_result(run, 20, 1280, "val_loss", 8.0, 1024)
    assert eval_done(run) is not None
    # HellaSwag added later: the checkpoints still need it (val loss alone is not enough then).
    assert eval_done(run, ("val_loss", "hellaswag_acc_norm")) is None
    write_eval_result(run, 20, 1280, "hellaswag_acc_norm", 0.3, 40)
    assert eval_done(run, ("val_loss", "hellaswag_acc_norm")) is not None
    (run / "eval" / "report.md").unlink()
    assert eval_done(run) is None
    assert eval_done(tmp_path / "no-run") is None


def test_run_stages_skips_complete_stages_and_runs_the_rest(tmp_path):
    marker = tmp_path / "ran.txt"
    touch = [sys.executable, "-c", f"open({str(marker)!r}, 'a').write('x')"]
    stages = [Stage("done-already", [touch], done=lambda: "output exists"), Stage("todo", [touch, touch])]
    out = io.StringIO()
    run_stages(stages, out=out)
    assert marker.read_text() == "xx"  # the skipped stage's command never ran
    assert [s.outcome for s in stages] == ["skipped", "ran"]
    assert "already complete (output exists)" in out.getvalue()


def test_run_stages_stops_at_a_failing_stage_with_its_exit_code(tmp_path):
    marker = tmp_path / "after.txt"
    stages = [Stage("train", [[sys.executable, "-c", "raise SystemExit(3)"]]),
              Stage("eval", [[sys.executable, "-c", f"open({str(marker)!r}, 'w')"]])]
    with pytest.raises(StageFailed) as err:
        run_stages(stages, out=io.StringIO())
    assert err.value.code == 3 and err.value.stage == "train"
    assert not marker.exists()
    assert stages[1].outcome == "pending"


def test_the_trainers_exit_json_gives_the_real_exit_code(tmp_path):
    # torchrun exits 1 whatever its worker returned; the trainer's exit.json says 3 (preempted).
    exit_file = tmp_path / "exit.json"
    write_then_fail = [sys.executable, "-c",
                       f"import json; json.dump({{'code': 3, 'reason': 'preempted', 'step': 5}}, "
                       f"open({str(exit_file)!r}, 'w')); raise SystemExit(1)"]
    stage = Stage("train", [write_then_fail], exit_code=trainer_exit_code(tmp_path))
    with pytest.raises(StageFailed) as err:
        run_stages([stage], out=io.StringIO())
    assert err.value.code == 3 and "stopped after saving a checkpoint" in str(err.value)
    # An exit.json left by an earlier launch says nothing about this one.
    stage = Stage("train", [[sys.executable, "-c", "raise SystemExit(1)"]], exit_code=trainer_exit_code(tmp_path))
    os.utime(exit_file, (time.time() - 60, time.time() - 60))
    with pytest.raises(StageFailed) as err:
        run_stages([stage], out=io.StringIO())
    assert err.value.code == 1


def test_sigterm_to_the_orchestrator_reaches_the_stage(tmp_path):
    ready = tmp_path / "ready"
    child = (f"import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(3)); "
             f"open({str(ready)!r}, 'w').close(); time.sleep(60); sys.exit(0)")

    def preempt():
        deadline = time.time() + 30
        while not ready.exists() and time.time() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)  # only this process: the forwarding must do the rest

    threading.Thread(target=preempt, daemon=True).start()
    started = time.time()
    assert run_child([sys.executable, "-c", child], child_env()) == 3
    assert time.time() - started < 30
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored


def test_display_shows_commands_as_a_user_types_them():
    assert display(torchrun_module(8, "train", "--config", "a b.toml")) == \
        "torchrun --standalone --nproc_per_node=8 -m train --config 'a b.toml'"
    assert display([sys.executable, "-m", "eval", "--all"]) == "python -m eval --all"
    assert display(torchrun_module(1, "train", "--run-dir", "r")) == "python -m train --run-dir r"


def test_pipeline_run_dry_run_shows_what_is_complete(tmp_path, capsys):
    data = make_shards(tmp_path / "data")
    run = tmp_path / "run"
    make_run(run, data, checkpoint_steps=(10, 20, 30))
    config = tmp_path / "cfg.toml"
    config.write_text((run / "config.toml").read_text())
    code = run_main(["--config", str(config), "--run-dir", str(run), "--dry-run", "--nproc-per-node", "2",
                     "--data-args", "--files 'x/*.parquet'", "--train.log_every=5", "--train.micro_batch_size=1"])
    out = capsys.readouterr().out
    assert code == 0  # (micro batch 1: the run's batch of 64 tokens must also divide over 2 ranks)
    lines = out.splitlines()
    assert lines[0].startswith("[1/3] data: complete")
    assert f"python -m data_prep.fineweb --out {data} --files 'x/*.parquet'" in out
    assert lines[2].startswith("[2/3] train: complete")  # step 30 = train.max_steps
    assert "torchrun --standalone --nproc_per_node=2 -m train" in out and "--train.log_every=5" in out
    assert "[3/3] eval: to run" in out


def test_pipeline_run_installs_the_hellaswag_file_the_config_needs(tmp_path, capsys):
    config = tmp_path / "c.toml"
    hs = tmp_path / "hs" / "hellaswag_val.jsonl"
    config.write_text(f'[data]\ndir = "{tmp_path / "data"}"\n[eval]\nhellaswag_path = "{hs}"\n')
    assert run_main(["--config", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "[2/4] hellaswag: to run" in out and f"python -m data_prep.hellaswag --out {hs.parent}" in out
    assert f"--hellaswag {hs}" in out.split("[4/4] eval")[1].splitlines()[1]  # eval scores the same file
    hs.parent.mkdir()
    hs.write_text("{}\n")
    assert run_main(["--config", str(config), "--dry-run"]) == 0
    assert "[2/4] hellaswag: complete" in capsys.readouterr().out


def test_pipeline_run_user_errors_are_one_line(tmp_path, capsys):
    assert run_main(["--config", str(tmp_path / "nope.toml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope.toml" in err and len(err.splitlines()) == 1
    config = tmp_path / "c.toml"
    config.write_text("[train]\nmax_steps = 10\n")
    assert run_main(["--config", str(config), "--train.max_stepz=5"]) == 2
    assert "train.max_stepz" in capsys.readouterr().err


def test_python_m_pipeline_dispatch(tmp_path):
    proc = run_module("pipeline", "frobnicate", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown command 'frobnicate'")
    proc = run_module("pipeline", "run", "--config", str(tmp_path / "nope.toml"), check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
