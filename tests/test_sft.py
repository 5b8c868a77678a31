"""Fine-tuning on prompt/response pairs: data_prep.sft's shards and loss masks, the masked
loss, documents kept apart in packed sequences, exact resume and 2 ranks = 1 process."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _train_support import TINY_TOML, assert_bitwise_equal, losses, memo_dir, state, train_here, train_rows, wait_for, weights
from conftest import REPO, run_module, run_torchrun, subprocess_env
from data_prep.sft import encode_pair
from pipeline.documents import document_layout
from pipeline.config import ModelConfig
from pipeline.model import GPT
from pipeline.shards import load_shard_set, open_mask, open_shard
from pipeline.tokenizer import EOT, get_tokenizer
from train import EXIT_PREEMPTED

STEPS = 6
SFT_TOML = TINY_TOML  # the train tests' tiny model and batch, on prompt/response shards


def make_pairs(n: int, seed: int = 0) -> list[dict]:
    """Question/answer rows of varied length, some non-ASCII, one with an empty response."""
    rng = random.Random(seed)
    words = "the of a model token shard résumé naïve 東京 loss batch rank step data über".split()
    rows = []
    for i in range(n):
        q = " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
        a = " ".join(rng.choice(words) for _ in range(rng.randint(0 if i == 3 else 1, 20)))
        rows.append({"prompt": f"Question {i}: {q}?\n", "response": f"Answer: {a}".rstrip() if a else ""})
    return rows


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def prepare(tmp, rows, *extra):
    write_jsonl(tmp / "pairs.jsonl", rows)
    return run_module("data_prep.sft", "--files", tmp / "pairs.jsonl", "--out", tmp / "data", *extra, check=False)


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    def build(path):
        proc = prepare(path, make_pairs(400), "--shard-size", "3000")
        assert proc.returncode == 0, proc.stderr
        (path / "sft.toml").write_text(SFT_TOML.format(data=path / "data"))
    return memo_dir(tmp_path_factory, "sft_data", build)


# -- data_prep.sft -------------------------------------------------------------------------

def test_each_row_is_eot_prompt_response_eot_with_the_loss_on_the_response(sft_data):
    enc = get_tokenizer()
    rows = make_pairs(400)
    shards = load_shard_set(sft_data / "data").shards
    tokens = np.concatenate([open_shard(s) for s in shards])
    mask = np.concatenate([open_mask(s) for s in shards])
    expected_tokens, expected_mask = [], []
    for row in rows:
        p, r = enc.encode_ordinary(row["prompt"]), enc.encode_ordinary(row["response"])
        expected_tokens += [EOT, *p, *r, EOT]
        expected_mask += [0] * (1 + len(p)) + [1] * (len(r) + 1)
    assert tokens.tolist() == expected_tokens
    assert mask.tolist() == expected_mask
    assert sum(s.documents for s in shards) == len(rows)


def test_verify_accepts_the_shards_and_catches_a_corrupt_mask(sft_data, tmp_path):
    assert run_module("data_prep.verify", sft_data / "data").returncode == 0
    copy = tmp_path / "copy"
    shutil.copytree(sft_data / "data", copy)
    mask_file = next(copy.glob("*_train_000001.mask.npy"))
    data = bytearray(mask_file.read_bytes())
    data[-1] ^= 1
    mask_file.write_bytes(bytes(data))
    proc = run_module("data_prep.verify", copy, check=False)
    assert proc.returncode == 1 and mask_file.name in proc.stdout and "sha256" in proc.stdout


def test_a_resumed_run_writes_the_same_bytes(sft_data, tmp_path):
    """Drop the last two shards from a finished run's manifest (as if it died there): the
    re-run continues from the last listed shard's end and rewrites them byte for byte."""
    cut = tmp_path / "data"
    shutil.copytree(sft_data / "data", cut)
    manifest = json.loads((cut / "manifest.json").read_text())
    for entry in manifest["shards"][-2:]:
        (cut / entry["file"]).unlink()
    manifest["shards"] = manifest["shards"][:-2]
    manifest["complete"] = False
    (cut / "manifest.json").write_text(json.dumps(manifest))
    proc = run_module("data_prep.sft", "--files", sft_data / "pairs.jsonl", "--out", cut, "--shard-size", "3000")
    assert "wrote" in proc.stdout
    for path in sorted((sft_data / "data").glob("*.npy")):
        assert (cut / path.name).read_bytes() == path.read_bytes(), path.name
    assert json.loads((cut / "manifest.json").read_text())["shards"] == \
        json.loads((sft_data / "data" / "manifest.json").read_text())["shards"]


def test_a_row_without_the_fields_is_an_error_naming_file_and_line(tmp_path):
    rows = make_pairs(5)
    rows[2] = {"question": "q", "response": "r"}
    proc = prepare(tmp_path, rows)
    assert proc.returncode == 2
    assert f"{tmp_path / 'pairs.jsonl'}:3: no 'prompt' field" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_field_names_are_configurable(tmp_path):
    rows = [{"q": r["prompt"], "a": r["response"]} for r in make_pairs(50)]
    proc = prepare(tmp_path, rows, "--prompt-field", "q", "--response-field", "a", "--shard-size", "500")
    assert proc.returncode == 0, proc.stderr
    assert sum(s.documents for s in load_shard_set(tmp_path / "data").shards) == 50


# -- the masked loss -----------------------------------------------------------------------

def test_masked_loss_and_gradients_equal_a_hand_computed_masked_cross_entropy():
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=300, pad_vocab_to=64))
    idx = torch.randint(0, 300, (3, 20))
    targets = torch.randint(0, 300, (3, 20))
    keep = torch.rand(3, 20) < 0.4
    masked = targets.masked_fill(~keep, -1)

    _, loss = model(idx, masked)
    loss.backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    logits, _ = model(idx)
    manual = F.cross_entropy(logits[keep][:, :300], targets[keep])
    manual.backward()
    assert torch.allclose(loss, manual, atol=1e-6)
    for name, p in model.named_parameters():
        assert torch.allclose(ours[name], p.grad, atol=1e-6), name

    # Prompt tokens get no gradient: whatever the masked targets are, loss and gradients agree.
    model.zero_grad()
    other = torch.where(keep, targets, torch.randint(0, 300, (3, 20)))
    _, loss2 = model(idx, other.masked_fill(~keep, -1))
    loss2.backward()
    assert torch.equal(loss, loss2)
    for name, p in model.named_parameters():
        assert torch.equal(ours[name], p.grad), name


def test_document_layout_restarts_positions_at_each_prompt():
    enc = get_tokenizer()
    a, ma = encode_pair(enc, "Hi?", "Yes.")
    b, mb = encode_pair(enc, "Why", "Because it is.")
    tokens = torch.from_numpy(np.concatenate([a[2:], b, a]).astype(np.int64))[None]
    mask = torch.from_numpy(np.concatenate([ma[2:], mb, ma]))[None]
    segments, positions = document_layout(tokens, mask)
    n0, n1 = len(a) - 2, len(b)
    assert segments[0].tolist() == [0] * n0 + [1] * n1 + [2] * len(a)
    assert positions[0].tolist() == list(range(n0)) + list(range(n1)) + list(range(len(a)))


def test_attention_within_documents_equals_each_document_alone():
    """A packed row with segment/position ids gives each document the logits it has alone."""
    torch.manual_seed(1)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=EOT + 1)).eval()
    enc = get_tokenizer()
    docs = [encode_pair(enc, "Name a colour.", "Blue, like the sea.")[0],
            encode_pair(enc, "What is 2+2?", "4")[0]]
    packed = torch.from_numpy(np.concatenate(docs).astype(np.int64))[None]
    mask = torch.from_numpy(np.concatenate([encode_pair(enc, "Name a colour.", "Blue, like the sea.")[1],
                                            encode_pair(enc, "What is 2+2?", "4")[1]]))[None]
    segments, positions = document_layout(packed, mask)
    with torch.no_grad():
        together, _ = model(packed, segment_ids=segments, position_ids=positions)
        start = 0
        for doc in docs:
            alone, _ = model(torch.from_numpy(doc.astype(np.int64))[None])
            assert torch.allclose(together[0, start:start + len(doc)], alone[0], atol=1e-5)
            start += len(doc)


# -- training on prompt/response shards ----------------------------------------------------

@pytest.fixture(scope="module")
def sft_baseline(tmp_path_factory, sft_data):
    def build(path):
        train_here("--config", sft_data / "sft.toml", "--run-dir", path / "run")
    return memo_dir(tmp_path_factory, "sft_baseline", build) / "run"


def test_sft_training_runs_and_sigterm_resume_is_bitwise_identical(sft_data, sft_baseline, tmp_path):
    assert sorted(losses(sft_baseline)) == list(range(1, STEPS + 1))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "train", "--config", str(sft_data / "sft.toml"), "--run-dir", str(run)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(GPT2_PIPELINE_FAILPOINTS="train.after_step=sleep(0.5)"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(train_rows(run)) >= 2, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, err
    train_here("--config", sft_data / "sft.toml", "--run-dir", run)
    assert losses(run) == losses(sft_baseline)
    assert_bitwise_equal(weights(run, STEPS), weights(sft_baseline, STEPS))
    assert state(run, STEPS)["loader"] == state(sft_baseline, STEPS)["loader"]


def test_sft_two_ranks_equal_one_process(sft_data, sft_baseline, tmp_path):
    run_torchrun(2, "train", "--config", sft_data / "sft.toml", "--run-dir", tmp_path / "run")
    ours, ref = losses(tmp_path / "run"), losses(sft_baseline)
    assert ours.keys() == ref.keys()
    for step in ref:
        assert abs(ours[step] - ref[step]) < 1e-5, (step, ours[step], ref[step])
    for name, tensor in weights(sft_baseline, STEPS).items():
        assert torch.allclose(weights(tmp_path / "run", STEPS)[name], tensor, rtol=1e-4, atol=5e-5), name


# -- train.init_from -----------------------------------------------------------------------

def write_token_shards(directory, seed=0, sizes=(4000, 6000, 6000)):
    """Plain pretraining shards of random GPT-2 ids (EOT every ~100 tokens), with a manifest."""
    from pipeline.atomic import sha256_file
    from pipeline.shards import FORMAT, FORMAT_VERSION, shard_filename, write_manifest
    from pipeline.tokenizer import tokenizer_fingerprint
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    entries = []
    for index, size in enumerate(sizes):
        tokens = rng.integers(0, EOT, size, dtype=np.uint16)
        tokens[::100] = EOT
        split = "val" if index == 0 else "train"
        name = shard_filename("rand", split, index)
        np.save(directory / name, tokens)
        entries.append({"file": name, "split": split, "tokens": size, "documents": None,
                        "sha256": sha256_file(directory / name)})
    write_manifest(directory, {"format": FORMAT, "version": FORMAT_VERSION, "tokenizer": tokenizer_fingerprint(),
                               "complete": True, "source": {"files": "tests: random ids"}, "shards": entries})
    return directory


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A seeded GPT-2 built and saved by transformers itself (the independent reference)."""
    transformers = pytest.importorskip("transformers")
    path = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    torch.manual_seed(123)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=64, vocab_size=50257)
    transformers.GPT2LMHeadModel(config).save_pretrained(path)
    return path


def test_init_from_hf_first_step_loss_equals_transformers_on_the_same_batch(hf_dir, tmp_path):
    import transformers
    from train.loader import TrainLoader
    data = write_token_shards(tmp_path / "data")
    config = tmp_path / "c.toml"
    config.write_text(SFT_TOML.format(data=data))  # [model] keys equal the weights': allowed
    run = tmp_path / "run"
    train_here("--config", config, "--run-dir", run, f"--train.init_from={hf_dir}", "--train.max_steps=1",
               "--optim.warmup_steps=0")
    shards = load_shard_set(data)
    loader = TrainLoader(shards.split("train"), shards.fingerprint, seq_len=32, micro_batch=1, grad_accum=4)
    rows = loader.next_step()
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        expected = sum(hf(input_ids=r, labels=r).loss.item() for r in rows) / len(rows)
    assert abs(losses(run)[1] - expected) <= 1e-5, (losses(run)[1], expected)
    launch = json.loads((run / "run.json").read_text())
    from pipeline.atomic import sha256_file
    assert launch["init_from"]["sha256"] == sha256_file(hf_dir / "model.safetensors")
    assert launch["init_from"]["kind"] == "hf"


def test_init_from_a_config_that_contradicts_the_weights_names_the_keys(hf_dir, tmp_path):
    data = write_token_shards(tmp_path / "data")
    config = tmp_path / "c.toml"
    config.write_text(SFT_TOML.format(data=data))
    proc = run_module("train", "--config", config, "--run-dir", tmp_path / "run", f"--train.init_from={hf_dir}",
                      "--model.n_layer=3", "--model.n_embd=128", check=False)
    assert proc.returncode == 2
    assert "model.n_embd = 128 (the weights have 64)" in proc.stderr
    assert "model.n_layer = 3 (the weights have 2)" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_init_from_a_run_takes_its_weights_then_resumes_its_own_checkpoints(sft_data, sft_baseline, tmp_path):
    from pipeline.atomic import sha256_file
    from pipeline.checkpoint import latest_checkpoint
    config = tmp_path / "c.toml"
    config.write_text("[train]\ndevice = \"cpu\"\n[data]\ndir = \"%s\"\n" % (sft_data / "data"))
    run = tmp_path / "run"
    args = ["--config", config, "--run-dir", run, f"--train.init_from={sft_baseline}", "--train.seq_len=32",
            "--train.total_batch_size=64", "--train.micro_batch_size=2", "--eval.eval_every=0",
            "--eval.sample_every=0", "--optim.max_lr=1e-12", "--optim.warmup_steps=0"]
    train_here(*args, "--train.max_steps=1")
    source = latest_checkpoint(sft_baseline)
    launch = json.loads((run / "run.json").read_text())
    assert launch["init_from"] == {"kind": "checkpoint", "path": str(source), "sha256": sha256_file(source / "model.pt")}
    assert "--model" not in " ".join(launch["command"])
    before, after = torch.load(source / "model.pt", weights_only=True), weights(run, 1)
    for name in before:  # one step at lr 1e-12: the weights are the source's
        assert torch.allclose(before[name], after[name], atol=1e-9), name
    assert state(run, 1)["step"] == 1 and state(run, 1)["config"]["model"]["n_embd"] == 64
    train_here(*args, "--train.max_steps=2")  # a requeue: continues its own run, not the source's weights
    assert json.loads((run / "run.json").read_text())["resumed_from"].endswith("step_000001")
    assert sorted(losses(run)) == [1, 2]


def test_a_micro_batch_with_no_target_has_loss_zero_not_nan():
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=300, pad_vocab_to=64))
    _, loss = model(torch.randint(0, 300, (2, 8)), torch.full((2, 8), -1))
    loss.backward()
    assert loss.item() == 0.0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_val_loss_of_prompt_response_data_scores_responses_within_documents():
    """compute_val_loss with a loss mask = each document run alone, loss over its response only."""
    from pipeline.val_loss import compute_val_loss
    torch.manual_seed(2)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=128, vocab_size=EOT + 1)).eval()
    enc = get_tokenizer()
    pairs = [encode_pair(enc, r["prompt"], r["response"]) for r in make_pairs(4, seed=7)]
    tokens = np.concatenate([t for t, _ in pairs] + [[EOT]]).astype(np.uint16)
    mask = np.concatenate([m for _, m in pairs] + [[0]]).astype(np.uint8)
    result = compute_val_loss(model, tokens, len(tokens) - 1, 1, torch.device("cpu"), mask=mask)
    total, count = 0.0, 0
    with torch.no_grad():
        for doc, doc_mask in pairs:
            logits, _ = model(torch.from_numpy(doc.astype(np.int64))[None])
            keep = torch.from_numpy(doc_mask[1:] == 1)
            losses = F.cross_entropy(logits[0, :-1, :EOT + 1], torch.from_numpy(doc[1:].astype(np.int64)),
                                     reduction="none")
            total += losses[keep].sum().item()
            count += int(keep.sum())
    assert result.tokens == count == int(mask[1:].sum())
    assert abs(result.loss - total / count) < 1e-5
