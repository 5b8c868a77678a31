"""`python -m pipeline status` on hand-built run directories."""

from __future__ import annotations

import json

from conftest import run_module
from pipeline.commands.status import format_status, main as status_main, run_status
from pipeline_run_fixture import make_run, make_shards


def test_status_reports_data_checkpoint_tokens_and_latest_metrics(tmp_path):
    data = make_shards(tmp_path / "data", sizes=(500, 1000, 700))
    run = tmp_path / "run"
    make_run(run, data, checkpoint_steps=(10, 20), train_steps=25, evaluated=(10,), report=True)
    s = run_status(run)
    assert s["data"] == {"dir": str(data), "state": "complete", "shards": 3, "train_shards": 2, "val_shards": 1,
                         "train_tokens": 1700, "val_tokens": 500}
    t = s["train"]
    assert t["step"] == 25 and t["max_steps"] == 30 and t["checkpoints"] == [10, 20]
    assert t["checkpoint_step"] == 20 and t["tokens_seen"] == 20 * 64 and t["tokens"] == 25 * 64
    assert abs(t["loss"] - 8.5) < 1e-9
    assert abs(t["eta_s"] - 5 * 0.1) < 1e-9  # 5 steps to go at 100 ms
    # In-loop val at step 20 is newer than eval's step 10; HellaSwag only exists in eval.
    assert s["val"]["step"] == 20 and s["val"]["source"] == "train" and abs(s["val"]["value"] - 8.5) < 1e-9
    assert s["hellaswag"] == {"step": 10, "value": 0.26, "n": 40, "source": "eval"}
    assert s["eval"] == {"checkpoints": 2, "evaluated": 1, "report": str(run / "eval" / "report.html")}
    text = format_status(s)
    assert "3 shards (1 val, 2 train), 2,200 tokens, complete" in text
    assert "step 25 / 30 (83%), 1,600 tokens seen, train loss 8.5000" in text
    assert f"{run / 'checkpoints' / 'step_000020'}, 1,280 tokens seen (kept: 10, 20)" in text
    assert "acc_norm 0.2600 (n=40) at step 10 (eval)" in text
    assert "1/2 checkpoints evaluated" in text


def test_status_prefers_eval_at_the_same_step(tmp_path):
    data = make_shards(tmp_path / "data")
    run = tmp_path / "run"
    make_run(run, data, checkpoint_steps=(10, 20), train_steps=20, evaluated=(10, 20))
    s = run_status(run)
    assert s["val"]["step"] == 20 and s["val"]["source"] == "eval" and s["val"]["n"] == 1024


def test_status_of_a_run_that_has_not_started_training(tmp_path):
    run = tmp_path / "run"
    make_run(run, tmp_path / "no-data", checkpoint_steps=(), train_steps=0)
    s = run_status(run)
    assert s["data"]["state"] == "missing"
    text = format_status(s)
    assert "not started (0 / 30 steps)" in text and "checkpoint none yet" in text
    assert "val loss   none yet" in text


def test_status_of_incomplete_data(tmp_path):
    data = make_shards(tmp_path / "data", complete=False)
    run = tmp_path / "run"
    make_run(run, data, checkpoint_steps=(), train_steps=0)
    assert run_status(run)["data"]["state"].startswith("incomplete")


def test_status_cli_json_and_errors(tmp_path, capsys):
    data = make_shards(tmp_path / "data")
    run = tmp_path / "run"
    make_run(run, data, checkpoint_steps=(10,), evaluated=(10,))
    assert status_main([str(run), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["train"]["checkpoints"] == [10]
    assert status["eval"] == {"checkpoints": 1, "evaluated": 1, "report": None}
    assert status_main([str(data)]) == 2  # a data dir, not a run dir
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "config.toml" in err


def test_python_m_pipeline_status_error_is_one_line(tmp_path):
    proc = run_module("pipeline", "status", str(tmp_path / "nope"), check=False)
    assert proc.returncode == 2
    assert proc.stderr == f"error: {tmp_path / 'nope'}: no such run directory\n"
