"""`python -m pipeline demo` end to end in a fresh directory, shortened by overrides only.

Everything runs as a user runs it (corpus -> data_prep -> train -> eval -> report
-> samples); only the number of steps and the evaluation budgets are cut so the test
takes about a minute. A second run must find every stage complete and change nothing.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import HELLASWAG_VAL, run_module
from pipeline.atomic import read_jsonl
from pipeline.checkpoint import list_checkpoints, load_checkpoint, step_of
from pipeline.shards import load_shard_set, open_shard

SHORT = ["--train.max_steps=16", "--train.checkpoint_every=8", "--train.log_every=2", "--eval.eval_every=8",
         "--eval.val_tokens=1024", "--eval.sample_every=8"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo")
    args = ["demo", "--work-dir", str(work), "--hellaswag", str(HELLASWAG_VAL), "--hellaswag-unverified",
            "--hellaswag-limit", "8", *SHORT]  # generated rows, not the canonical set
    first = run_module("pipeline", *args, timeout=900)
    return work, args, first


def test_demo_leaves_shards_of_the_corpus(demo):
    work = demo[0]
    corpus = [json.loads(line) for line in (work / "data/demo/corpus.jsonl").read_text().splitlines()]
    shards = load_shard_set(work / "data/demo/shards")  # require_complete: the manifest says complete
    val, train = shards.split("val"), shards.split("train")
    assert len(val) == 1 and len(train) >= 5
    assert sum(s.documents for s in shards.shards) == len(corpus)
    tokens = np.concatenate([np.asarray(open_shard(s, verify_hash=True)) for s in shards.shards])
    assert len(tokens) > 300_000 and (tokens == 50256).sum() == len(corpus)  # [EOT] before each document


def test_demo_trains_with_falling_loss_and_checkpoints(demo):
    run = demo[0] / "runs/demo"
    assert [step_of(p) for p in list_checkpoints(run)] == [8, 16]
    _, state = load_checkpoint(list_checkpoints(run)[-1], names=("model",))
    assert state["step"] == 16 and state["tokens_seen"] == 16 * state["config"]["train"]["total_batch_size"]
    assert state["config"]["model"]["n_layer"] == 4  # configs/demo.toml, not the 124M defaults
    rows = read_jsonl(run / "metrics.jsonl")
    train = [r["loss"] for r in rows if r["kind"] == "train"]
    val = [r["loss"] for r in rows if r["kind"] == "val"]
    assert len(train) == 8 and train[-1] < train[0] - 0.5
    assert len(val) == 3 and val[-1] < val[0] - 0.5  # steps 0, 8, 16
    assert any(r["kind"] == "sample" and r["text"] for r in rows)


def test_demo_evaluates_every_checkpoint_and_writes_the_report(demo):
    run = demo[0] / "runs/demo"
    results = read_jsonl(run / "eval/results.jsonl")
    for metric in ("val_loss", "hellaswag_acc_norm"):
        assert sorted(r["step"] for r in results if r["metric"] == metric) == [8, 16], metric
    assert all(r["n"] == 8 for r in results if r["metric"].startswith("hellaswag"))
    # eval's val loss on a checkpoint is the trainer's in-loop number at that step (same definition)
    in_loop = {r["step"]: r["loss"] for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "val"}
    for r in results:
        if r["metric"] == "val_loss":
            assert r["value"] == pytest.approx(in_loop[r["step"]], abs=1e-4)
    report = (run / "eval/report.md").read_text()
    assert "val loss" in report and (run / "eval/report.html").is_file()
    plots = sorted((run / "eval/plots").glob("*.png"))
    assert plots and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000 for p in plots)


def test_demo_prints_samples_report_and_next_steps(demo):
    work, _, first = demo
    out = first.stdout
    for stage in ("corpus", "data", "train", "eval"):
        assert f"/4] {stage}: $ " in out and f"/4] {stage}: done in" in out
    assert "train: $ python -m train --config" in out
    assert out.count("  > 'The Python interpreter") + out.count("  > 'A dictionary is") == 2
    assert f"report:   {work / 'runs/demo/eval/report.html'}" in out
    assert "torchrun --standalone --nproc_per_node=8 -m train --config configs/gpt2-124m.toml" in out


def test_second_demo_run_reuses_everything(demo):
    work, args, _ = demo
    run = work / "runs/demo"
    before = {p: p.stat().st_mtime_ns for p in [*run.rglob("*"), *(work / "data").rglob("*")] if p.is_file()
              and p.parent.name != "plots" and p.name not in ("report.md", "report.html")}
    second = run_module("pipeline", *args, "--no-samples", timeout=300)
    for stage in ("corpus", "data", "train", "eval"):
        assert f"{stage}: already complete" in second.stdout, second.stdout
    after = {p: p.stat().st_mtime_ns for p in before}
    assert after == before  # nothing recomputed or rewritten
