"""CORE from a generated eval bundle (all three task types, several delimiters and shot
counts, non-ASCII text): the published rules, the batched scorer against one forward per
sequence, left-cuts at the context limit, 2 ranks = 1 rank, and the python -m eval command."""

from __future__ import annotations

import json
import random

import pytest
import torch

from _core_bundle import TASKS, make_bundle, oracle_model, uniform_model
from _eval_support import make_run, results, tiny_config
from _scoring_reference import reference_scores
from conftest import run_torchrun
from eval import EvalError
from eval.__main__ import main
from eval.core import correct, evaluate_core, fewshot_indices, load_bundle, render, request
from pipeline.config import ModelConfig
from pipeline.model import GPT
from pipeline.scoring import score_requests

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return load_bundle(make_bundle(tmp_path_factory.mktemp("bundle")))


def all_requests(bundle):
    return [request(t, i) for t in bundle.tasks for i in range(len(t.rows))]


def test_a_model_that_knows_the_answers_scores_1_and_a_uniform_one_the_baseline(bundle):
    oracle = oracle_model(all_requests(bundle))
    known = evaluate_core(oracle, bundle, CPU, batch_size=5)
    for label, r in known["tasks"].items():
        assert r["acc"] == 1.0 and r["centered"] == pytest.approx(1.0), label
    assert known["core"] == pytest.approx(1.0)
    uniform = evaluate_core(uniform_model(), bundle, CPU, batch_size=5)
    for task in bundle.tasks:
        r = uniform["tasks"][task.label]
        assert r["acc"] == pytest.approx(task.baseline), task.label
        assert r["centered"] == pytest.approx(0.0, abs=1e-12)
    assert {r["type"] for r in known["tasks"].values()} == {"multiple_choice", "schema", "language_modeling"}


@pytest.mark.parametrize("block_size", [512, 40])  # 40: many sequences are cut from the left
def test_batched_scores_and_decisions_equal_one_forward_per_sequence(bundle, block_size):
    torch.manual_seed(block_size)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=block_size)).eval()
    reqs = all_requests(bundle)
    if block_size == 40:
        assert sum(len(s) > 40 for r in reqs for s in r.seqs) > 10
    want = reference_scores(model, reqs)
    got = score_requests(model, reqs, CPU, batch_size=7)
    items = [(t, i) for t in bundle.tasks for i in range(len(t.rows))]
    for (task, i), w, g in zip(items, want, got):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-4)
        assert correct(task, i, g) == correct(task, i, w), (task.label, i)


def test_fewshot_draws_are_deterministic_and_exclude_the_item(bundle):
    for n, k in [(12, 5), (10, 2), (6, 5)]:
        for i in range(n):
            draw = fewshot_indices(n, i, k)
            assert draw == fewshot_indices(n, i, k) and i not in draw and len(set(draw)) == k
            # the published draw: Random(1234 + i).sample(every other row, k)
            assert draw == random.Random(1234 + i).sample([j for j in range(n) if j != i], k)
    task = next(t for t in bundle.tasks if t.label == "mc_five")
    prompts = render(task, 3)
    shots = [task.rows[j] for j in fewshot_indices(len(task.rows), 3, 5)]
    head = "".join(f"{s['query']}: {s['choices'][s['gold']]}\n\n" for s in shots)
    assert prompts == [f"{head}{task.rows[3]['query']}: {c}" for c in task.rows[3]["choices"]]


def test_rows_are_shuffled_with_the_published_seed_and_cut(tmp_path):
    directory = make_bundle(tmp_path / "b")
    raw = [json.loads(line) for line in open(directory / "eval_data" / "sub" / "mc_zero.jsonl", encoding="utf-8")]
    random.Random(1337).shuffle(raw)
    cut = load_bundle(directory, max_per_task=6)
    assert cut.tasks[0].rows == raw[:6]
    assert cut.sha256 != load_bundle(directory).sha256


def test_language_modeling_prompt_trims_the_context(bundle):
    task = next(t for t in bundle.tasks if t.label == "lm_one")
    without, full = render(task, 0)
    assert not without.endswith(" ") and full.startswith(without)
    req = request(task, 0)
    assert len(req.seqs) == 1 and req.seqs[0][0] == 50256  # BOS first


def test_left_cut_shifts_positions_and_scores_what_remains():
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=16)).eval()
    from pipeline.scoring import Request
    long = tuple(range(100, 130))  # 30 tokens: cut to the last 16
    req = Request((long, long[:10] + (7, 8, 9)), (25, 10))
    got = score_requests(model, [req], CPU)[0]
    assert got[:, 1].tolist() == [5.0, 3.0]
    logits = model(torch.tensor([long[-16:]]))[0][0, :, :50257]
    direct = torch.nn.functional.cross_entropy(logits[10:15], torch.tensor(long[-5:]), reduction="sum")
    assert got[0, 0].item() == pytest.approx(direct.item(), rel=1e-5)


@pytest.mark.parametrize("edit, message", [
    (lambda d: (d / "core.yaml").write_text("nope: 1\n"), "icl_tasks"),
    (lambda d: (d / "eval_meta_data.csv").write_text("Eval Task,Random baseline\n"), "no random baseline"),
    (lambda d: (d / "eval_data" / "sub" / "mc_zero.jsonl").write_text('{"query": "x"}\n'), "mc_zero.jsonl:1"),
    (lambda d: (d / "eval_data" / "sub" / "lm_one.jsonl").unlink(), "lm_one.jsonl: not found"),
])
def test_a_broken_bundle_is_one_clear_error(tmp_path, edit, message):
    directory = make_bundle(tmp_path / "b")
    edit(directory)
    with pytest.raises(EvalError, match=message):
        load_bundle(directory)


def test_python_m_eval_core_writes_results_and_two_ranks_equal_one(tmp_path, capsys):
    directory = make_bundle(tmp_path / "bundle")
    single = make_run(tmp_path / "single", tiny_config(), steps=[10], metrics=False)
    args = ["--tasks", "core", "--eval-bundle", str(directory), "--max-per-task", "9", "--core-batch-size", "4",
            "--no-report"]
    assert main(["--checkpoint", str(single), *args]) == 0
    one = {r["metric"]: r for r in results(single)}
    assert set(one) == {"core"} | {f"core_{w}/{t[0]}" for t in TASKS for w in ("acc", "centered")}
    centered = [one[f"core_centered/{t[0]}"]["value"] for t in TASKS]
    assert one["core"]["value"] == pytest.approx(sum(centered) / len(centered))
    assert one["core_acc/mc_zero"]["n"] == 9

    double = tmp_path / "double"
    import shutil
    shutil.copytree(single, double)
    (double / "eval" / "results.jsonl").unlink()
    run_torchrun(2, "eval", "--checkpoint", double, *args, timeout=300)
    two = {r["metric"]: r for r in results(double)}
    assert {m: r["value"] for m, r in two.items()} == {m: r["value"] for m, r in one.items()}
    assert all(r["world_size"] == 2 for r in two.values())

    assert main(["--checkpoint", str(single), "--tasks", "core", "--no-report"]) == 2
    assert "--eval-bundle" in capsys.readouterr().err


@pytest.mark.parametrize("shots", [0, 10])
def test_real_hellaswag_as_core_multiple_choice(real_data, tmp_path, shots):
    """The real HellaSwag val file (opt-in: GPT2_PIPELINE_TEST_DATA) converted to CORE's
    multiple-choice format: 0-shot sequences are
    build-nanogpt's tokens after a BOS; 10-shot prompts are cut from the left at the
    context limit; the batched scorer decides as one forward per sequence does."""
    from _core_bundle import hellaswag_as_mc, write_bundle
    from pipeline.hellaswag import load_hellaswag
    path = real_data / "hellaswag" / "hellaswag_val.jsonl"
    rows = hellaswag_as_mc(path, 16)
    directory = write_bundle(tmp_path / "hs", [(f"hellaswag_{shots}", "multiple_choice", shots, " ", rows, 25.0)])
    task = load_bundle(directory).tasks[0]
    reqs = [request(task, i) for i in range(len(task.rows))]
    if shots == 0:
        by_ctx = {tuple(ex.ctx): ex for ex in load_hellaswag(path, 16)}
        for req in reqs:
            ex = [e for e in by_ctx.values() if tuple(req.seqs[0][1:1 + len(e.ctx)]) == e.ctx][0]
            assert [list(s) for s in req.seqs] == [[50256] + list(ex.ctx) + list(e) for e in ex.endings]
    torch.manual_seed(shots)
    block = 512 if shots == 0 else 256
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=block)).eval()
    if shots == 10:
        assert any(len(s) > block for r in reqs for s in r.seqs)  # some are cut from the left
    want = reference_scores(model, reqs)
    got = score_requests(model, reqs, CPU, batch_size=8)
    for i, (w, g) in enumerate(zip(want, got)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-4)
        assert correct(task, i, g) == correct(task, i, w)
