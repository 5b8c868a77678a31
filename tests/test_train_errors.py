"""Every input a user can get wrong ends in ONE `error:` line naming the thing, and exit 2."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from _train_support import TINY_TOML, ckpt_dir, shared_shards, write_config, write_shards
from pipeline.shards import MANIFEST
from train import EXIT_OK, EXIT_USER_ERROR
from train.__main__ import main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return shared_shards(tmp_path_factory)


@pytest.fixture(scope="module")
def config(tmp_path_factory, data):
    text = TINY_TOML.replace("micro_batch_size = 1", "micro_batch_size = 4")
    return write_config(tmp_path_factory.mktemp("cfg") / "tiny.toml", data, text)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, config):
    """A run with a checkpoint at step 1, to resume from."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(["--config", str(config), "--run-dir", str(run), "--train.max_steps=1"]) == EXIT_OK
    return run


def fails(capsys, *argv: str) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == EXIT_USER_ERROR, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_missing_data_dir(capsys, config, tmp_path):
    line = fails(capsys, "--config", config, "--run-dir", tmp_path / "r", f"--data.dir={tmp_path / 'nope'}")
    assert "nope" in line and "does not exist" in line


def test_empty_data_dir(capsys, config, tmp_path):
    (tmp_path / "empty").mkdir()
    line = fails(capsys, "--config", config, "--run-dir", tmp_path / "r", f"--data.dir={tmp_path / 'empty'}")
    assert "empty" in line and "no shards" in line


def test_only_a_val_split(capsys, config, tmp_path):
    data = write_shards(tmp_path / "d", train_sizes=())
    line = fails(capsys, "--config", config, "--run-dir", tmp_path / "r", f"--data.dir={data}")
    assert "no train shards" in line


def test_shards_of_another_tokenizer(capsys, config, data, tmp_path):
    foreign = tmp_path / "foreign"
    shutil.copytree(data, foreign)
    manifest = json.loads((foreign / MANIFEST).read_text())
    manifest["tokenizer"] = {"name": "cl100k_base"}
    (foreign / MANIFEST).write_text(json.dumps(manifest))
    line = fails(capsys, "--config", config, "--run-dir", tmp_path / "r", f"--data.dir={foreign}")
    assert "cl100k_base" in line and MANIFEST in line


def test_a_truncated_shard(capsys, config, data, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(data, broken)
    shard = sorted(broken.glob("*_train_*.npy"))[0]
    shard.write_bytes(shard.read_bytes()[:-1000])
    line = fails(capsys, "--config", config, "--run-dir", tmp_path / "r", f"--data.dir={broken}")
    assert shard.name in line


def test_val_split_smaller_than_the_eval_budget(capsys, config, tmp_path):
    line = fails(capsys, "--config", config, "--run-dir", tmp_path / "r", "--eval.eval_every=5",
                 "--eval.val_tokens=100000")
    assert "eval.val_tokens" in line and "val split holds 8000 tokens" in line


def test_impossible_batch_arithmetic(capsys, config, tmp_path):
    line = fails(capsys, "--config", config, "--run-dir", tmp_path / "r", "--train.micro_batch_size=3")
    assert "train.total_batch_size = 128" in line and "valid train.micro_batch_size values: 1, 2, 4" in line


def test_bad_override_and_bad_arguments(capsys, config, tmp_path):
    assert "optim.max_lrr" in fails(capsys, "--config", config, "--run-dir", tmp_path / "r", "--optim.max_lrr=1")
    assert "train.max_steps" in fails(capsys, "--config", config, "--run-dir", tmp_path / "r", "--train.max_steps=x")
    assert "--run-dir" in fails(capsys, "--config", config)
    assert "not found" in fails(capsys, "--config", tmp_path / "missing.toml", "--run-dir", tmp_path / "r")


def test_hellaswag_file_missing(capsys, config, tmp_path):
    line = fails(capsys, "--config", config, "--run-dir", tmp_path / "r", "--eval.eval_every=5",
                 f"--eval.hellaswag_path={tmp_path / 'hs.jsonl'}")
    assert "hs.jsonl" in line and "no such file" in line


def test_corrupt_checkpoint(capsys, config, finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    model = ckpt_dir(run, 1) / "model.pt"
    blob = bytearray(model.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    model.write_bytes(bytes(blob))
    line = fails(capsys, "--config", config, "--run-dir", run, "--train.max_steps=2")
    assert "model.pt" in line and "sha256" in line


def test_resume_with_another_model_shape(capsys, config, finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    line = fails(capsys, "--config", config, "--run-dir", run, "--train.max_steps=2", "--model.n_layer=3")
    assert "model.n_layer = 2 in the checkpoint, 3 now" in line


def test_resume_with_another_data_stream(capsys, config, finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    line = fails(capsys, "--config", config, "--run-dir", run, "--train.max_steps=2", "--data.seed=5")
    assert "data.seed" in line


def test_resume_none_refuses_to_overwrite_and_a_missing_resume_path(capsys, config, finished, tmp_path):
    assert "already has checkpoints" in fails(capsys, "--config", config, "--run-dir", finished, "--resume", "none")
    line = fails(capsys, "--config", config, "--run-dir", tmp_path / "r", "--resume", tmp_path / "nothing")
    assert "nothing" in line


def test_resume_from_another_runs_checkpoint_path(config, finished, tmp_path):
    """--resume PATH starts a new run directory from another run's checkpoint; the optimizer
    state comes from the checkpoint, its hyperparameters from this run's config."""
    run = tmp_path / "branch"
    assert main(["--config", str(config), "--run-dir", str(run), "--resume", str(ckpt_dir(finished, 1)),
                 "--train.max_steps=2", "--optim.weight_decay=0.05", "--optim.beta2=0.99"]) == EXIT_OK
    state = json.loads((ckpt_dir(run, 2) / "train_state.json").read_text())
    assert state["step"] == 2 and state["loader"]["position"] == 2 * 4 and state["tokens_seen"] == 2 * 128
    groups = torch.load(ckpt_dir(run, 2) / "optimizer.pt", weights_only=True)["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0] and all(g["betas"][1] == 0.99 for g in groups)
    before = torch.load(ckpt_dir(finished, 1) / "optimizer.pt", weights_only=True)["state"]
    after = torch.load(ckpt_dir(run, 2) / "optimizer.pt", weights_only=True)["state"]
    assert all(after[i]["step"] == before[i]["step"] + 1 for i in before)  # moments carried over
