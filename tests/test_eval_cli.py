"""python -m eval on checkpoints written like the trainer writes them: results, skips, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from _eval_support import make_run, make_val_shards, results, tiny_config
from conftest import HELLASWAG_VAL, run_module
from eval.__main__ import main
from eval.evaluate import checkpoint_target
from pipeline.checkpoint import checkpoint_dir
from pipeline.hellaswag import evaluate_hellaswag, hellaswag_sha256, load_hellaswag
from pipeline.shards import load_shard_set
from pipeline.val_loss import compute_val_loss, val_token_stream

CPU = torch.device("cpu")
LIMIT = 20


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_val_shards(tmp_path_factory.mktemp("data") / "shards")


@pytest.fixture()
def run(tmp_path, data_dir):
    return make_run(tmp_path / "runs" / "tiny", tiny_config(data_dir), steps=[10, 20], metrics=False)


def evaluate(*args: str) -> int:
    return main(["--hellaswag", str(HELLASWAG_VAL), "--hellaswag-unverified", "--limit", str(LIMIT), "--no-report", *map(str, args)])


def test_latest_checkpoint_results_match_the_shared_definitions(run, data_dir):
    assert evaluate("--checkpoint", run) == 0
    rows = {r["metric"]: r for r in results(run)}
    assert set(rows) == {"hellaswag_acc", "hellaswag_acc_norm", "val_loss", "val_bpb"}
    ckpt = checkpoint_dir(run, 20)
    marker = json.loads((ckpt / "COMPLETE").read_text())
    for row in rows.values():
        assert row["step"] == 20 and row["tokens_seen"] == 20 * 512
        assert row["checkpoint"] == str(ckpt)
        assert row["checkpoint_sha256"] == marker["sha256"]["model.pt"]
    assert rows["hellaswag_acc"]["data_sha256"] == hellaswag_sha256(HELLASWAG_VAL, LIMIT)
    assert rows["hellaswag_acc"]["n"] == LIMIT

    model = checkpoint_target(ckpt).load(CPU)  # the same numbers straight from pipeline/
    direct = evaluate_hellaswag(model, load_hellaswag(HELLASWAG_VAL, LIMIT), CPU)
    assert rows["hellaswag_acc"]["value"] == direct["acc"]
    assert rows["hellaswag_acc_norm"]["value"] == direct["acc_norm"]
    cfg = tiny_config(data_dir)
    loss, n, bpb = compute_val_loss(model, val_token_stream(load_shard_set(data_dir), cfg.eval.val_tokens),
                                    cfg.train.seq_len, 16, CPU)
    assert rows["val_loss"]["value"] == pytest.approx(loss, abs=1e-6)
    assert rows["val_bpb"]["value"] == pytest.approx(bpb, abs=1e-6)
    assert rows["val_loss"]["n"] == n == cfg.eval.val_tokens


def test_done_results_are_skipped_until_forced_or_the_data_changes(run):
    assert evaluate("--checkpoint", run) == 0
    assert len(results(run)) == 4
    assert evaluate("--checkpoint", run) == 0
    assert len(results(run)) == 4  # nothing recomputed
    assert evaluate("--checkpoint", run, "--force", "--tasks", "val") == 0
    assert [r["metric"] for r in results(run)[4:]] == ["val_loss", "val_bpb"]
    assert main(["--hellaswag", str(HELLASWAG_VAL), "--hellaswag-unverified", "--limit", "10", "--no-report", "--checkpoint", str(run),
                 "--tasks", "hellaswag"]) == 0
    assert [r["n"] for r in results(run)[6:]] == [10, 10]  # other rows, other data hash


def test_all_evaluates_every_complete_checkpoint_and_writes_the_report(run):
    shutil.copytree(checkpoint_dir(run, 20), checkpoint_dir(run, 30).with_name("step_000030.tmp"))
    assert main(["--hellaswag", str(HELLASWAG_VAL), "--hellaswag-unverified", "--limit", "8", "--checkpoint", str(run), "--all",
                 "--tasks", "hellaswag"]) == 0
    assert sorted({r["step"] for r in results(run)}) == [10, 20]
    assert (run / "eval" / "report.md").is_file() and (run / "eval" / "report.html").is_file()


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _bad_cases(run: Path, data_dir: Path, tmp: Path):
    """(name, argv, expected message) for every user error the stage must explain."""
    ckpt = checkpoint_dir(run, 20)
    incomplete = checkpoint_dir(run, 40)
    shutil.copytree(ckpt, incomplete)
    (incomplete / "COMPLETE").unlink()
    corrupt = checkpoint_dir(run, 50)
    shutil.copytree(ckpt, corrupt)
    _corrupt(corrupt / "model.pt")
    tmp_ckpt = ckpt.with_name("step_000060.tmp")
    shutil.copytree(ckpt, tmp_ckpt)
    bad_rows = tmp / "hellaswag_bad.jsonl"
    lines = HELLASWAG_VAL.read_text().splitlines()[:5]
    lines[3] = lines[3].replace('"label": ', '"label": 7, "x": ')
    bad_rows.write_text("\n".join(lines) + "\n")
    foreign = make_val_shards(tmp / "foreign", n_chars=5000,
                              tokenizer={"name": "cl100k_base", "eot": 100257, "vocab_size": 100277})
    hs = ["--hellaswag", str(HELLASWAG_VAL), "--hellaswag-unverified", "--limit", "4"]
    return [
        ("missing", ["--checkpoint", str(run / "nope"), *hs], "no such checkpoint or run directory"),
        ("incomplete", ["--checkpoint", str(incomplete), *hs], "incomplete checkpoint"),
        ("in progress", ["--checkpoint", str(tmp_ckpt), *hs], "still being written"),
        ("corrupt", ["--checkpoint", str(corrupt), *hs], "sha256 does not match"),
        ("wrong hash", ["--checkpoint", str(ckpt), "--hellaswag", str(bad_rows), "--tasks", "hellaswag"],
         "is not the HellaSwag validation set"),
        ("bad row", ["--checkpoint", str(ckpt), "--hellaswag", str(bad_rows), "--hellaswag-unverified",
                     "--tasks", "hellaswag"], "hellaswag_bad.jsonl:4: 'label' must be an integer 0-3"),
        ("foreign tokenizer", ["--checkpoint", str(ckpt), "--val-data", str(foreign), "--tasks", "val"],
         "cl100k_base"),
        ("no data", ["--checkpoint", str(ckpt), "--val-data", str(tmp / "none"), "--tasks", "val"],
         "shard directory does not exist"),
    ]


def test_bad_input_is_one_clear_line_and_exit_2(run, data_dir, tmp_path, capsys):
    for name, argv, message in _bad_cases(run, data_dir, tmp_path):
        capsys.readouterr()
        assert main(["--no-report", *argv]) == 2, name
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err, f"{name}: {err}"
        assert len(err.splitlines()) == 1, f"{name}: {err}"
    assert results(run) == []


def test_cli_process_exit_code_and_single_error_line(tmp_path):
    proc = run_module("eval", "--checkpoint", tmp_path / "missing", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {tmp_path / 'missing'}: no such checkpoint or run directory"]


def test_hf_weights_score_like_transformers_itself(tmp_path):
    pytest.importorskip("pipeline.hf")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_dir = tmp_path / "hf-tiny"
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=256))
    hf.save_pretrained(hf_dir)
    out = tmp_path / "runs" / "hf"
    assert main(["--hf", str(hf_dir), "--out", str(out), "--hellaswag", str(HELLASWAG_VAL), "--hellaswag-unverified", "--limit", "24",
                 "--tasks", "hellaswag", "--no-report"]) == 0
    rows = {r["metric"]: r for r in results(out)}
    assert rows["hellaswag_acc"]["step"] is None and rows["hellaswag_acc"]["checkpoint"] == f"hf:{hf_dir}"

    # completion-style scoring written against transformers' own forward pass
    hf.eval()
    correct = correct_norm = 0
    for ex in load_hellaswag(HELLASWAG_VAL, 24):
        sums, means = [], []
        for ending in ex.endings:
            tokens = torch.tensor([list(ex.ctx) + list(ending)])
            with torch.no_grad():
                logp = hf(tokens).logits[0].log_softmax(-1)
            picked = [logp[len(ex.ctx) + k - 1, t].item() for k, t in enumerate(ending)]
            sums.append(-sum(picked))
            means.append(-sum(picked) / len(picked))
        correct += min(range(4), key=sums.__getitem__) == ex.label
        correct_norm += min(range(4), key=means.__getitem__) == ex.label
    assert rows["hellaswag_acc"]["value"] == correct / 24
    assert rows["hellaswag_acc_norm"]["value"] == correct_norm / 24
