"""The trainer end to end in this process (tiny model, real text shards): learning, run files,
in-loop eval, pruning, early stop, non-finite steps."""

from __future__ import annotations

import json
import tomllib

import pytest

from _train_support import (TINY_TOML, assert_bitwise_equal, ckpt_dir, losses, shared_shards, state, train_rows,
                            weights, write_config)
from pipeline.atomic import read_jsonl
from pipeline.checkpoint import list_checkpoints
from pipeline.failpoints import armed
from train import EXIT_NONFINITE, EXIT_OK
from train.__main__ import main


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    data = shared_shards(tmp_path_factory)
    # One micro-batch per step: these tests are about the run, not accumulation (faster).
    text = TINY_TOML.replace("micro_batch_size = 1", "micro_batch_size = 4")
    return write_config(tmp_path_factory.mktemp("cfg") / "tiny.toml", data, text)


def test_loss_falls_on_real_text_and_the_run_dir_is_complete(config, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["--config", str(config), "--run-dir", str(run), "--train.max_steps=20", "--optim.max_lr=1e-2",
                 "--eval.eval_every=10", "--eval.sample_every=20", "--eval.num_samples=2", "--eval.sample_tokens=8",
                 "--train.checkpoint_every=100"])
    assert code == EXIT_OK
    out = capsys.readouterr().out
    rows = read_jsonl(run / "metrics.jsonl")
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 21))
    first, last = train[0]["loss"], sum(r["loss"] for r in train[-5:]) / 5
    assert first > 10.5 and last < first - 2.5, (first, last)  # ln(50257) = 10.8 at init
    for r in train:
        assert {"step", "kind", "loss", "lr", "grad_norm", "tokens", "dt_ms", "tok_per_s", "mfu"} <= r.keys()
        assert r["tokens"] == 128 * r["step"] and r["mfu"] is None  # CPU: no known peak
    val = [r for r in rows if r["kind"] == "val"]
    assert [r["step"] for r in val] == [0, 10, 20]
    assert val[0]["loss"] > 10.5 and val[-1]["loss"] < val[0]["loss"] - 2.5
    assert val[-1]["tokens"] == 20 * 128
    samples = [r for r in rows if r["kind"] == "sample"]
    assert len(samples) == 2 and all(r["step"] == 20 and isinstance(r["text"], str) for r in samples)
    # The console: one line per step with loss, lr, norm, ms, tok/s.
    lines = [line for line in out.splitlines() if line.startswith("step ") and "| loss" in line]
    assert len(lines) == 20 and "tok/s" in lines[0] and "lr " in lines[0] and "norm " in lines[0]
    assert "fused AdamW" in out
    # Run files: resolved config, launch record, exit status, a final checkpoint.
    resolved = tomllib.loads((run / "config.toml").read_text())
    assert resolved["train"]["max_steps"] == 20 and resolved["optim"]["max_lr"] == 1e-2
    launch = json.loads((run / "run.json").read_text())
    assert launch["world_size"] == 1 and launch["torch"] and launch["device"].startswith("cpu")
    assert "--train.max_steps=20" in launch["command"] and len(launch["launches"]) == 1
    assert json.loads((run / "exit.json").read_text())["code"] == 0
    st = state(run, 20)
    assert st["step"] == 20 and st["tokens_seen"] == 20 * 128 and st["loader"]["position"] == 20 * 4
    assert st["config"]["train"]["max_steps"] == 20 and len(st["rng"]) == 1
    # Running the same command again finds the finished checkpoint and does nothing.
    assert main(["--config", str(config), "--run-dir", str(run), "--train.max_steps=20"]) == EXIT_OK
    assert "nothing to do" in capsys.readouterr().out


def test_checkpoints_are_pruned_to_keep_last_plus_keep_every(config, tmp_path):
    run = tmp_path / "run"
    assert main(["--config", str(config), "--run-dir", str(run), "--train.checkpoint_every=2",
                 "--train.keep_last=1", "--train.keep_every=4", "--train.max_steps=6"]) == EXIT_OK
    assert [p.name for p in list_checkpoints(run)] == ["step_000004", "step_000006"]


def test_target_loss_stops_early_with_a_checkpoint(config, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["--config", str(config), "--run-dir", str(run), "--train.target_loss=10.6",
                 "--train.max_steps=50"]) == EXIT_OK
    rows = train_rows(run)
    assert rows[-1]["loss"] <= 10.6 and all(r["loss"] > 10.6 for r in rows[:-1]) and len(rows) < 50
    assert list_checkpoints(run)[-1].name == f"step_{rows[-1]['step']:06d}"
    assert json.loads((run / "exit.json").read_text())["reason"] == "target loss reached"


def test_a_non_finite_step_is_skipped_on_every_rank_and_training_goes_on(config, tmp_path, monkeypatch):
    run = tmp_path / "run"
    with armed("train.nan_loss", "return@step=3|4"):
        assert main(["--config", str(config), "--run-dir", str(run), "--train.checkpoint_every=2",
                     "--train.max_steps=6"]) == EXIT_OK
    by_step = losses(run)
    assert by_step[3] is None and by_step[4] is None
    assert all(by_step[s] is not None for s in (1, 2, 5, 6))
    # Steps 3 and 4 made no update: the weights after step 4 are those after step 2.
    assert_bitwise_equal(weights(run, 2), weights(run, 4))
    with pytest.raises(AssertionError):
        assert_bitwise_equal(weights(run, 4), weights(run, 6))


def test_too_many_non_finite_steps_stop_with_exit_4_keeping_the_last_good_checkpoint(config, tmp_path,
                                                                                        monkeypatch, capsys):
    run = tmp_path / "run"
    with armed("train.nan_loss", "return@step=" + "|".join(map(str, range(3, 20)))):
        code = main(["--config", str(config), "--run-dir", str(run), "--train.checkpoint_every=2",
                     "--train.max_bad_steps=3", "--train.max_steps=20"])
    assert code == EXIT_NONFINITE
    err = capsys.readouterr().err
    assert "error: 3 non-finite steps in a row (steps 3..5" in err and "step_000004" in err
    assert [p.name for p in list_checkpoints(run)] == ["step_000002", "step_000004"]
    assert_bitwise_equal(weights(run, 2), weights(run, 4))  # the kept checkpoint holds good weights
    record = json.loads((run / "exit.json").read_text())
    assert {k: record[k] for k in ("code", "reason", "step")} == {"code": 4, "reason": "non-finite loss", "step": 5}
    assert max(r["step"] for r in train_rows(run)) == 5


def test_in_loop_hellaswag_uses_the_shared_scorer(config, tmp_path, hellaswag_pinned_to_generated):
    pytest.importorskip("pipeline.hellaswag", reason="pipeline/hellaswag.py (eval helper) is not in this branch yet")
    from conftest import HELLASWAG_VAL
    run = tmp_path / "run"
    assert main(["--config", str(config), "--run-dir", str(run), "--train.max_steps=2", "--eval.eval_every=2",
                 f"--eval.hellaswag_path={HELLASWAG_VAL}", "--eval.hellaswag_limit=8"]) == EXIT_OK
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "hellaswag"]
    assert [r["step"] for r in rows] == [0, 2] and all(r["n"] == 8 and 0 <= r["acc_norm"] <= 1 for r in rows)


def test_checkpoint_directory_layout(config, tmp_path):
    run = tmp_path / "run"
    assert main(["--config", str(config), "--run-dir", str(run), "--train.max_steps=1"]) == EXIT_OK
    files = sorted(p.name for p in ckpt_dir(run, 1).iterdir())
    assert files == ["COMPLETE", "model.pt", "optimizer.pt", "train_state.json"]
    assert not any(p.name.endswith(".tmp") for p in (run / "checkpoints").iterdir())



@pytest.fixture(scope="module")
def plain3(config, tmp_path_factory):
    run = tmp_path_factory.mktemp("plain3") / "run"
    assert main(["--config", str(config), "--run-dir", str(run), "--train.max_steps=3"]) == EXIT_OK
    return run


def test_activation_checkpointing_changes_memory_not_results(config, plain3, tmp_path):
    recompute = tmp_path / "recompute"
    assert main(["--config", str(config), "--run-dir", str(recompute), "--train.max_steps=3",
                 "--model.activation_checkpointing=true"]) == EXIT_OK
    assert losses(plain3) == losses(recompute)
    assert_bitwise_equal(weights(plain3, 3), weights(recompute, 3))


def test_bf16_autocast_is_allowed_on_cpu(config, plain3, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["--config", str(config), "--run-dir", str(run), "--train.max_steps=3",
                 "--train.dtype=bfloat16"]) == EXIT_OK
    assert "autocast torch.bfloat16" in capsys.readouterr().out
    bf16, fp32 = losses(run), losses(plain3)
    assert all(v is not None for v in bf16.values()) and bf16[3] < bf16[1]
    assert bf16 != fp32  # autocast really ran in bf16...
    assert abs(fp32[1] - bf16[1]) < 0.05  # ...and computed the same function
