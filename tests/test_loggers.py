"""TensorBoard and W&B sinks (offline): the trainer's and eval's metrics read back from their files."""

from __future__ import annotations

import importlib.util
import json

import pytest

from _train_support import STEPS, losses, shared_shards, train_here, write_config
from pipeline.config import ConfigError, resolve
from pipeline.loggers import check_loggers, require_packages, scalars

pytest.importorskip("tensorboard")
pytest.importorskip("wandb")


def tensorboard_scalars(log_dir) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """6 tiny steps with all three loggers, W&B offline into a temporary directory."""
    path = tmp_path_factory.mktemp("loggers")
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_DIR", str(path / "wandb_dir"))
    mp.setenv("WANDB_SILENT", "true")
    config = write_config(path / "tiny.toml", shared_shards(tmp_path_factory))
    try:
        train_here("--config", config, "--run-dir", path / "run", "--train.loggers=jsonl,tensorboard,wandb",
                   "--eval.eval_every=3", "--eval.val_tokens=256")
        # python -m eval on the final checkpoint reports to the run's loggers too (its config.toml).
        from eval.__main__ import main as eval_main
        assert eval_main(["--checkpoint", str(path / "run"), "--tasks", "val", "--val-tokens", "256",
                          "--no-report"]) == 0
    finally:
        mp.undo()
    return path


def test_tensorboard_events_hold_the_jsonl_metrics(logged_run):
    run = logged_run / "run"
    tb = tensorboard_scalars(run / "tensorboard")
    assert tb["train/loss"] == pytest.approx(losses(run), abs=1e-6)
    assert sorted(tb["train/loss"]) == list(range(1, STEPS + 1))
    val = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = {r["step"]: r["loss"] for r in val if r["kind"] == "val"}
    assert tb["val/loss"] == pytest.approx(val, abs=1e-6) and sorted(val) == [0, 3, 6]
    # eval's number for step 6 is the trainer's in-loop val loss of step 6 (same function, same tokens)
    assert tb["eval/val_loss"] == pytest.approx({6: val[6]}, abs=1e-5)


def test_tensorboard_records_run_name_config_and_commit(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(logged_run / "run" / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    texts = {tag: acc.Tensors(tag)[0].tensor_proto.string_val[0].decode() for tag in acc.Tags()["tensors"]
             if tag.startswith(("run", "config"))}
    run_text = next(v for k, v in texts.items() if k.startswith("run"))
    assert "name: run" in run_text and '"commit"' in run_text
    assert '"n_embd": 64' in next(v for k, v in texts.items() if k.startswith("config"))


def wandb_records(path):
    """The protobuf records of an offline W&B run file (LevelDB log format: 32 KiB blocks,
    7-byte record headers, after W&B's own 7-byte file header)."""
    from wandb.proto import wandb_internal_pb2 as pb
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        room = 32768 - pos % 32768
        if room < 7:
            pos += room
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_run(run_dir) -> dict:
    """{"name", "group", "job", "config": {key: value}, "history": {step: {key: value}}}."""
    out = {"config": {}, "history": {}}
    for record in wandb_records(next(run_dir.glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out.update(name=record.run.display_name, group=record.run.run_group,
                       job=record.run.job_type)
            out["config"].update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            out["config"].update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            out["history"][items["_step"]] = items
    return out


def test_wandb_offline_run_files(logged_run):
    runs = [wandb_run(d) for d in sorted((logged_run / "wandb_dir" / "wandb").glob("offline-run-*"))]
    assert sorted(r["job"] for r in runs) == ["eval", "train"]  # one W&B run per stage launch
    train = next(r for r in runs if r["job"] == "train")
    assert train["name"] == "run-train" and train["group"] == "run"
    assert train["config"]["model"]["n_embd"] == 64
    assert train["config"]["train"]["loggers"] == ["jsonl", "tensorboard", "wandb"]
    assert len(train["config"]["git"]["commit"]) == 40
    logged = {step: row["train/loss"] for step, row in train["history"].items() if "train/loss" in row}
    assert logged == pytest.approx(losses(logged_run / "run"), abs=1e-6)
    ev = next(r for r in runs if r["job"] == "eval")
    assert ev["group"] == "run" and "eval/val_loss" in ev["history"][STEPS]


def test_unknown_logger_and_missing_package_are_one_clear_error(monkeypatch):
    with pytest.raises(ConfigError, match=r"train.loggers .*'tensorbord'"):
        resolve(None, ["--train.loggers=jsonl,tensorbord"])
    with pytest.raises(ConfigError, match="unknown logger 'mlflow'"):
        check_loggers(["mlflow"])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"includes 'wandb' but its package is not installed.*"
                                          r"pip install 'gpt2-pipeline\[wandb\]'"):
        require_packages(["jsonl", "wandb"])
    require_packages(["jsonl", "tensorboard"])  # installed: no error


def test_missing_package_stops_train_before_any_work(tmp_path, tmp_path_factory, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real(name, *a))
    from train.__main__ import main
    config = write_config(tmp_path / "tiny.toml", shared_shards(tmp_path_factory))
    assert main(["--config", str(config), "--run-dir", str(tmp_path / "run"), "--train.loggers=tensorboard"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gpt2-pipeline[tensorboard]" in err[0]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_scalars_keep_finite_numbers_only():
    row = {"step": 3, "kind": "train", "loss": 2.5, "grad_norm": None, "lr": 1e-3, "mfu": float("nan"),
           "flag": True, "text": "x"}
    assert scalars(row) == {"train/loss": 2.5, "train/lr": 1e-3}


def test_eval_progress_bar_only_on_a_terminal(monkeypatch):
    import io
    import sys

    import numpy as np
    import torch

    from eval.evaluate import Runtime
    from pipeline.config import ModelConfig
    from pipeline.model import GPT
    from pipeline.val_loss import compute_val_loss

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    rt = Runtime(torch.device("cpu"), None)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with rt.progress(5, "val loss") as bar:
        assert bar is None  # a log file gets no bar
    monkeypatch.setattr(sys, "stderr", Terminal())
    model = GPT(ModelConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=20))
    done = []
    with rt.progress(5, "val loss") as bar:
        compute_val_loss(model, np.arange(41) % 20, 8, 2, torch.device("cpu"),
                         progress=lambda n: (done.append(n), bar(n)))
    assert done == [2, 2, 1] and "val loss:" in sys.stderr.getvalue()
