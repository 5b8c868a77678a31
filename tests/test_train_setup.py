"""Small pieces of the trainer's setup: device choice, one-process collectives, the stop flag,
leftovers of interrupted saves, console lines in a non-TTY log."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from pipeline.checkpoint import checkpoint_dir, latest_checkpoint, remove_partial_checkpoints, save_checkpoint
from pipeline.config import ConfigError
from pipeline.distributed import any_rank, gather_to_main, init_distributed, pick_device
from train.metrics import MetricsLog
from train.resume import capture_rng, restore_rng
from train.rundir import trim_metrics
from train.signals import PreemptionFlag


def test_device_auto_detection_and_explicit_devices():
    mps = torch.backends.mps.is_available()
    expected = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    assert pick_device("auto").type == expected
    assert pick_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="train.device = 'cuda'"):
            pick_device("cuda")


def test_one_process_needs_no_process_group(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    env = init_distributed("cpu")
    assert (env.rank, env.world_size, env.is_main, env.distributed) == (0, 1, True, False)
    assert any_rank(True, env) and not any_rank(False, env)
    assert gather_to_main({"a": 1}, env) == [{"a": 1}]
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE"):
        init_distributed("cpu")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT])
def test_stop_signals_only_set_a_flag(sig):
    with PreemptionFlag() as flag:
        assert not flag.requested
        os.kill(os.getpid(), sig)  # delivered before the next bytecode: no exception, no exit
        assert flag.requested and flag.signal_name == sig.name
    assert signal.getsignal(sig) is not flag._handle


def test_rng_states_round_trip_through_json():
    state = json.loads(json.dumps(capture_rng(torch.device("cpu"))))
    import random
    import numpy as np
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng(state, torch.device("cpu"))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_leftovers_of_interrupted_saves_are_never_loaded_and_get_removed(tmp_path):
    save_checkpoint(tmp_path, 2, {"model": {"w": torch.ones(2)}}, {"step": 2})
    partial = checkpoint_dir(tmp_path, 4).with_name("step_000004.tmp")
    partial.mkdir()
    (partial / "model.pt").write_bytes(b"half a file")
    old = checkpoint_dir(tmp_path, 3).with_name("step_000003.old")
    old.mkdir()
    assert latest_checkpoint(tmp_path).name == "step_000002"
    assert sorted(p.name for p in remove_partial_checkpoints(tmp_path)) == ["step_000003.old", "step_000004.tmp"]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_000002"]


def test_console_lines_in_a_batch_log(tmp_path, capsys):
    log = MetricsLog(tmp_path / "metrics.jsonl", enabled=True, start_step=0, max_steps=10)
    assert log.bar is None  # pytest's stderr is not a terminal: plain lines, no redraws
    row = {"step": 1, "kind": "train", "loss": 3.25, "lr": 6e-4, "grad_norm": 0.5, "tokens": 524288,
           "dt_ms": 250.0, "tok_per_s": 2_097_152.0, "mfu": 0.42}
    log.train(row)
    log.train({**row, "step": 2, "loss": None, "grad_norm": None})
    log.close()  # rows are written by a background thread; close() drains it
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("step      1/10 | loss 3.2500 | lr 6.000e-04 | norm 0.500 | 250.0 ms | 2.10M tok/s")
    assert "mfu 42.0%" in out[0] and "eta" in out[0] and "nan (skipped)" in out[1]
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    MetricsLog(tmp_path / "other.jsonl", enabled=False, start_step=0, max_steps=10).train(row)
    assert not (tmp_path / "other.jsonl").exists()  # ranks other than 0 write nothing


def test_resuming_drops_the_metrics_rows_of_the_abandoned_steps(tmp_path):
    rows = [{"step": s, "kind": k} for s in range(0, 7) for k in ("train", "val")]
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 7, "kin'  # torn by a kill
    (tmp_path / "metrics.jsonl").write_text(text)
    assert trim_metrics(tmp_path, 4) == 4
    kept = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert kept == rows[:10]
    assert trim_metrics(tmp_path, -1) == 10 and (tmp_path / "metrics.jsonl").read_text() == ""
