"""Benchmark CORE: the whole `python -m eval --tasks core` command vs a one-example-at-a-time loop.

    python bench/core.py [--rows 100] [--rounds 2] [--threads N]

The bundle is built from real text in ../shared/data (the real CORE bundle is not
downloadable here): HellaSwag as multiple choice at 0 and 10 shots, a schema task (which
HellaSwag context leads to this ending: the gold row's context vs three others'), and a
language-modeling task (a Shakespeare line's last word after the rest of it) at 0 and 5
shots. The model is issue 21's: a 4-layer, 256-wide GPT-2 with a 512-token context,
randomly initialised (speed does not depend on the weights), saved as a checkpoint.

Ours is the command in a child process, start-up included. The reference is the
published per-example loop in this process (nanochat's core_eval.evaluate_example: one
item per forward, its sequences padded with BOS, full logits at every position, mean
loss / argmax read from them), with the same prompts (eval.core.request). The two run
alternately; accuracies per task must agree. Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from _core_bundle import hellaswag_as_mc, write_bundle  # noqa: E402
from bench.eval import machine  # noqa: E402
from eval.core import load_bundle, request  # noqa: E402
from pipeline.checkpoint import save_checkpoint  # noqa: E402
from pipeline.config import from_dict  # noqa: E402
from pipeline.model import GPT  # noqa: E402
from pipeline.tokenizer import EOT  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def build_bundle(directory: Path, rows: int) -> Path:
    hs = hellaswag_as_mc(DATA / "hellaswag" / "hellaswag_val.jsonl", rows * 4)
    rng = random.Random(0)
    schema = []
    for i, row in enumerate(hs[:rows]):
        others = rng.sample([r for j, r in enumerate(hs) if j != i], 3)
        options = [o["query"] for o in others]
        gold = i % 4
        options.insert(gold, row["query"])
        schema.append({"context_options": options, "continuation": row["choices"][row["gold"]].strip(), "gold": gold})
    lines = [line.strip() for line in (DATA / "text" / "tinyshakespeare.txt").read_text().splitlines()
             if len(line.split()) >= 6]
    lm = [{"context": " ".join(line.split()[:-1]), "continuation": line.split()[-1]} for line in lines[:rows]]
    return write_bundle(directory, [
        ("hellaswag_zeroshot", "multiple_choice", 0, " ", hs[:rows], 25.0),
        ("hellaswag", "multiple_choice", 10, " ", hs[:rows], 25.0),
        ("hellaswag_schema", "schema", 0, " ", schema, 25.0),
        ("shakespeare_lm", "language_modeling", 0, " ", lm, 0.0),
        ("shakespeare_lm_5shot", "language_modeling", 5, " ", lm, 0.0)])


@torch.no_grad()
def per_example_loop(model: GPT, bundle) -> dict[str, float]:
    """nanochat's evaluate_example, item by item: full logits of the padded sequences."""
    block = model.config.block_size
    accuracy = {}
    for task in bundle.tasks:
        hits = 0
        for i, item in enumerate(task.rows):
            req = request(task, i)
            seqs, starts = [], []
            for seq, start in zip(req.seqs, req.starts):
                crop = max(0, len(seq) - block)
                seqs.append(list(seq[crop:]))
                starts.append(start - crop)
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), EOT, dtype=torch.long)
            for j, s in enumerate(seqs):
                ids[j, :len(s)] = torch.tensor(s)
            logits, _ = model(ids)
            targets = torch.roll(ids, -1, dims=1)
            losses = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1),
                                     reduction="none").view(len(seqs), width)
            predictions = logits.argmax(-1)
            if task.kind == "language_modeling":
                s, e = starts[0], len(seqs[0])
                hits += bool(torch.all(predictions[0, s - 1:e - 1] == ids[0, s:e]))
            else:
                means = [losses[j, s - 1:len(seqs[j]) - 1].mean().item() for j, s in enumerate(starts)]
                hits += means.index(min(means)) == item["gold"]
        accuracy[task.label] = hits / len(task.rows)
    return accuracy


def run_command(run_dir: Path, bundle_dir: Path, threads: int) -> tuple[dict[str, float], float]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "eval", "--checkpoint", str(run_dir), "--tasks", "core",
                    "--eval-bundle", str(bundle_dir), "--force", "--no-report", "--device", "cpu"],
                   cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    rows = [json.loads(line) for line in (run_dir / "eval" / "results.jsonl").read_text().splitlines()]
    return {r["metric"].split("/", 1)[1]: r["value"] for r in rows[-20:] if r["metric"].startswith("core_acc/")}, elapsed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=100, help="rows per task")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(DATA / "tokenizer" / "tiktoken_cache"))
    print(f"machine: {machine()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench_core_"))
    bundle_dir = build_bundle(work / "bundle", args.rows)
    bundle = load_bundle(bundle_dir)
    items = sum(len(t.rows) for t in bundle.tasks)
    cfg = from_dict({"model": {"n_layer": 4, "n_head": 4, "n_embd": 256, "block_size": 512},
                     "train": {"seq_len": 512, "device": "cpu"}}).validate()
    torch.manual_seed(0)
    model = GPT(cfg.model).eval()
    run_dir = work / "run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text(cfg.to_toml())
    save_checkpoint(run_dir, 1, {"model": model.state_dict()}, {"step": 1, "tokens_seen": 0, "config": cfg.to_dict()})
    print(f"bundle: {len(bundle.tasks)} tasks, {items} items ({', '.join(f'{t.label} {t.num_fewshot}-shot' for t in bundle.tasks)}); "
          f"model {model.num_params() / 1e6:.1f}M, 4 layers, 256 wide, context 512", flush=True)
    t_ref, t_ours = [], []
    for r in range(args.rounds):
        start = time.perf_counter()
        ref = per_example_loop(model, bundle)
        t_ref.append(time.perf_counter() - start)
        ours, elapsed = run_command(run_dir, bundle_dir, args.threads)
        t_ours.append(elapsed)
        same = all(abs(ours[k] - ref[k]) < 1e-12 for k in ref)
        print(f"  round {r + 1}: one-at-a-time loop {items / t_ref[-1]:6.2f} items/s | python -m eval --tasks core "
              f"{items / t_ours[-1]:6.2f} items/s (whole command) | per-task accuracies equal: {same}", flush=True)
        if not same:
            print(f"    loop {ref}\n    ours {ours}")
    print(f"CORE bench: loop {items / min(t_ref):.2f} items/s, command {items / min(t_ours):.2f} items/s, "
          f"ratio {min(t_ref) / min(t_ours):.2f}x (best of {args.rounds} each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
