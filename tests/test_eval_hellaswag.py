"""pipeline/hellaswag.py: loading, rendering, scoring on generated rows in the validation file's
format; the canonical hash, row count and first row on the real file (`real_data`)."""

from __future__ import annotations

import hashlib
import json

import pytest
import tiktoken
import torch
import torch.nn.functional as F

from _eval_support import tiny_config, tiny_model
from conftest import HELLASWAG_VAL, TIKTOKEN_CACHE
from _scoring_reference import reference_hellaswag
from pipeline.hellaswag import (HELLASWAG_VAL_ROWS, HELLASWAG_VAL_SHA256, HellaSwagError, evaluate_hellaswag,
                                hellaswag_sha256, load_hellaswag, predictions, score_hellaswag,
                                verify_hellaswag)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def examples():
    return load_hellaswag(HELLASWAG_VAL, limit=500)


@pytest.fixture(scope="module")
def model():
    return tiny_model(tiny_config(), seed=0)


def test_real_file_has_the_canonical_hash_row_count_and_first_row(real_data, monkeypatch):
    path = real_data / "hellaswag" / "hellaswag_val.jsonl"
    assert verify_hellaswag(path) == HELLASWAG_VAL_SHA256
    assert sum(1 for _ in open(path)) == HELLASWAG_VAL_ROWS
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_CACHE))
    enc = tiktoken.get_encoding("gpt2")
    first = load_hellaswag(path, limit=1)[0]
    # the first row, spelled out: the ending's leading space is part of its first token
    assert enc.decode(list(first.endings[3])) == " starts pulling up roofing on a roof."
    assert first.endings[3][0] == enc.encode(" starts")[0] and first.label == 3


def test_rendering_matches_an_independent_tiktoken_encoding(examples, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_CACHE))
    enc = tiktoken.get_encoding("gpt2")  # tiktoken's own loader, not pipeline.tokenizer
    rows = [json.loads(line) for line in open(HELLASWAG_VAL)][:20]
    for row, ex in zip(rows, examples):
        assert list(ex.ctx) == enc.encode(row["ctx"])
        assert [list(e) for e in ex.endings] == [enc.encode(" " + e) for e in row["endings"]]
        assert ex.label == row["label"]
        # the ending's leading space is part of its first token
        assert [enc.decode(list(e)) for e in ex.endings] == [" " + e for e in row["endings"]]


def test_limit_and_data_hash_cover_exactly_the_rows_evaluated(examples):
    assert len(examples) == 500 and examples[499].line == 500
    first = b"".join(open(HELLASWAG_VAL, "rb").readlines()[:500])
    assert hellaswag_sha256(HELLASWAG_VAL, limit=500) == hashlib.sha256(first).hexdigest()
    assert hellaswag_sha256(HELLASWAG_VAL) == hashlib.sha256(HELLASWAG_VAL.read_bytes()).hexdigest()


@pytest.mark.parametrize("mutate, message", [
    (lambda r: "{not json", "not valid JSON"),
    (lambda r: json.dumps({**r, "endings": r["endings"][:3]}), "'endings' must be a list of 4"),
    (lambda r: json.dumps({**r, "label": 4}), "'label' must be an integer 0-3"),
    (lambda r: json.dumps({**r, "label": "1"}), "'label' must be an integer 0-3"),
    (lambda r: json.dumps({k: v for k, v in r.items() if k != "ctx"}), "'ctx' must be a non-empty string"),
    (lambda r: json.dumps([r]), "expected a JSON object"),
])
def test_a_malformed_row_is_reported_with_its_line(tmp_path, mutate, message):
    lines = open(HELLASWAG_VAL).read().splitlines()[:10]
    lines[6] = mutate(json.loads(lines[6]))
    path = tmp_path / "hs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(HellaSwagError, match=rf"hs.jsonl:7: .*{message}"):
        load_hellaswag(path)
    assert len(load_hellaswag(path, limit=6)) == 6  # rows before the bad one are fine


def test_a_file_that_is_not_the_validation_set_fails_the_hash_check(tmp_path):
    path = tmp_path / "hellaswag_val.jsonl"
    path.write_bytes(HELLASWAG_VAL.read_bytes()[:-1])  # lose the final newline only
    with pytest.raises(HellaSwagError, match="is not the HellaSwag validation set"):
        verify_hellaswag(path)
    with pytest.raises(HellaSwagError, match="not found"):
        load_hellaswag(tmp_path / "missing.jsonl")


def test_score_is_summed_cross_entropy_over_ending_tokens_only(examples, model):
    """Spell the definition out position by position for two examples."""
    scores = score_hellaswag(model, examples[:2], CPU)
    model.eval()
    with torch.no_grad():
        for i, ex in enumerate(examples[:2]):
            for j, ending in enumerate(ex.endings):
                tokens = torch.tensor([list(ex.ctx) + list(ending)])
                logits = model(tokens)[0][0, :, :50257]
                total = 0.0
                for k in range(len(ending)):
                    position = len(ex.ctx) + k  # token at `position` is predicted at position - 1
                    total += -F.log_softmax(logits[position - 1], dim=-1)[tokens[0, position]].item()
                assert scores[i, j, 0].item() == pytest.approx(total, rel=1e-5)
                assert scores[i, j, 1].item() == len(ending)


def test_batched_predictions_equal_one_example_at_a_time(examples, model):
    subset = examples[:32]
    reference = reference_hellaswag(model, subset)
    for batch_size in (5, 32):
        batched = score_hellaswag(model, subset, CPU, batch_size=batch_size)
        torch.testing.assert_close(batched, reference, rtol=2e-5, atol=2e-4)
        for ref, got in zip(predictions(reference), predictions(batched)):
            assert torch.equal(ref, got), f"batch_size {batch_size}: predictions differ"


def test_batched_scoring_is_independent_of_which_examples_share_a_batch(examples, model):
    alone = score_hellaswag(model, examples[40:41], CPU)
    mixed = score_hellaswag(model, examples[:60], CPU, batch_size=60)[40:41]
    torch.testing.assert_close(mixed, alone, rtol=2e-5, atol=2e-4)


def test_random_init_model_scores_chance(examples, model):
    # 500 examples at p = 0.25: standard error 0.019, so +-0.06 is a 3-sigma band.
    result = evaluate_hellaswag(model, examples, CPU, batch_size=64)
    assert result["n"] == 500
    assert abs(result["acc_norm"] - 0.25) < 0.06
    assert abs(result["acc"] - 0.25) < 0.06


def test_an_example_longer_than_the_block_is_a_clear_error(examples):
    cfg = tiny_config()
    cfg.model.block_size = 16
    short = tiny_model(cfg, seed=0)
    with pytest.raises(HellaSwagError, match=r"line 1: context \+ ending is \d+ tokens, more than .*block_size 16"):
        evaluate_hellaswag(short, examples[:1], CPU)


def test_model_is_left_in_its_training_mode(examples, model):
    model.train()
    evaluate_hellaswag(model, examples[:2], CPU)
    assert model.training
    model.eval()



def test_bf16_autocast_scores_stay_close_to_fp32(examples, model):
    fp32 = score_hellaswag(model, examples[:8], CPU)
    bf16 = score_hellaswag(model, examples[:8], CPU, autocast_dtype=torch.bfloat16)
    torch.testing.assert_close(bf16, fp32, rtol=2e-2, atol=0.0)
