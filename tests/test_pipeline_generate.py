"""`python -m pipeline generate`: a checkpoint's model rebuilt exactly, sampling reproducible."""

from __future__ import annotations

import pytest
import torch

from pipeline.checkpoint import CheckpointError
from pipeline.commands.generate import generate_texts, load_model, main as generate_main
from pipeline.hf import export_hf
from pipeline.tokenizer import get_tokenizer
from pipeline_run_fixture import make_run, make_shards


@pytest.fixture()
def run(tmp_path):
    data = make_shards(tmp_path / "data")
    cfg, model = make_run(tmp_path / "run", data, checkpoint_steps=(10, 20))
    return tmp_path / "run", cfg, model


def test_load_model_rebuilds_the_checkpointed_weights(run):
    run_dir, cfg, saved = run
    model, state = load_model(str(run_dir))  # a run dir means its latest checkpoint
    assert state["step"] == 20 and state["path"].endswith("step_000020")
    assert model.config == cfg.model
    for name, tensor in saved.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_generation_is_reproducible_and_continues_the_prompt(run):
    model, _ = load_model(str(run[0]))
    a = generate_texts(model, "Hello there", num_samples=3, max_new_tokens=8, temperature=1.0, top_k=50, seed=7)
    b = generate_texts(model, "Hello there", num_samples=3, max_new_tokens=8, temperature=1.0, top_k=50, seed=7)
    c = generate_texts(model, "Hello there", num_samples=3, max_new_tokens=8, temperature=1.0, top_k=50, seed=8)
    assert a == b and a != c
    assert all(t.startswith("Hello there") for t in a)
    assert len(set(a)) > 1  # the rows are different samples, not one sample repeated


def test_greedy_matches_argmax_of_the_model(run):
    model, _ = load_model(str(run[0]))
    enc = get_tokenizer()
    ids = enc.encode_ordinary("The answer")
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids]))
    first = int(logits[0, -1, :50257].argmax())
    text = generate_texts(model, "The answer", max_new_tokens=1, temperature=0.0)[0]
    assert text == "The answer" + enc.decode([first])


def test_max_new_tokens_is_capped_by_the_context(run):
    model, _ = load_model(str(run[0]))  # block_size 32
    text = generate_texts(model, "x", max_new_tokens=1000, temperature=0.0)[0]
    assert len(get_tokenizer().encode_ordinary(text)) <= 32
    with pytest.raises(ValueError, match="context is 32"):
        generate_texts(model, "word " * 40, max_new_tokens=1)


def test_cli_prints_samples_and_rejects_bad_input(run, tmp_path, capsys):
    run_dir = run[0]
    ckpt = run_dir / "checkpoints" / "step_000010"
    assert generate_main(["--checkpoint", str(ckpt), "--prompt", "Once", "--num-samples", "2",
                          "--max-new-tokens", "5", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "step_000010 (step 10), seed 3" in out
    assert out.count("--- sample") == 2
    assert generate_main(["--checkpoint", str(tmp_path / "missing"), "--prompt", "x"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert generate_main(["--checkpoint", str(ckpt), "--top-p", "1.5"]) == 2
    assert "--top-p" in capsys.readouterr().err


def test_corrupt_checkpoint_is_refused(run):
    ckpt = run[0] / "checkpoints" / "step_000020"
    with open(ckpt / "model.pt", "r+b") as f:
        f.seek(100)
        f.write(b"corrupt!")
    with pytest.raises(CheckpointError, match="sha256"):
        load_model(str(ckpt))


def test_hf_weights_sample_the_same_text_as_the_checkpoint(run, tmp_path, capsys):
    run_dir, _, model = run
    export_hf(model, tmp_path / "hf")  # the checkpointed weights in Hugging Face's GPT-2 layout
    args = ["--prompt", "Once upon", "--num-samples", "2", "--max-new-tokens", "6", "--seed", "5"]
    assert generate_main(["--hf", str(tmp_path / "hf"), *args]) == 0
    from_hf = capsys.readouterr().out.split("\n", 1)[1]
    assert generate_main(["--checkpoint", str(run_dir), *args]) == 0
    from_checkpoint = capsys.readouterr().out.split("\n", 1)[1]
    assert from_hf == from_checkpoint and from_hf.count("Once upon") == 2
    assert generate_main(["--hf", str(tmp_path / "not-there"), "--prompt", "x"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
