"""Tokens-to-loss of the GPT-2 recipe vs the modern recipe (and each modern option alone).

    python bench/recipe.py                          # 10 runs of 30 steps: ~10 CPU-minutes
    python bench/recipe.py --steps 150 --eval-every 5 --val-tokens 8192   # the demo's full budget
    python bench/recipe.py --only modern,+muon --jobs 2

Trains the demo-sized GPT (configs/demo.toml: 4 layers x 128) on the demo corpus (Python's
own docs, built here as `python -m pipeline demo` does) with the real trainer
(train.trainer.Trainer): the same data order, token budget and seed for every run.

  gpt2     configs/demo.toml as it is (learned positions, LayerNorm, GELU, tied head, AdamW)
  modern   configs/modern-demo.toml (model.arch = "modern" + optim.name = "muon")
  +OPTION  the GPT-2 recipe with one modern option switched on (the ablation)

Every run is scored on the same held-out tokens every --eval-every steps. The GPT-2 run's
final val loss is the target; the figure of merit is the tokens a recipe needs to reach it
(at the first evaluation at or below it, and interpolated between evaluations), which does
not depend on the machine's speed, so runs go in parallel processes. Prints a table and
writes docs/figures/recipe-val-loss.png. Never asserts anything.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config import resolve  # noqa: E402
from pipeline.distributed import DistEnv  # noqa: E402
from pipeline.shards import load_shard_set  # noqa: E402
from pipeline.val_loss import compute_val_loss, val_token_stream  # noqa: E402
from train.signals import PreemptionFlag  # noqa: E402
from train.trainer import Trainer  # noqa: E402

GPT2, MODERN = REPO / "configs" / "demo.toml", REPO / "configs" / "modern-demo.toml"
# Muon's share of the modern recipe, on the GPT-2 model: the optimizer keys of modern-demo.toml.
MUON = ["--optim.name=muon", "--optim.muon_lr=0.05", "--optim.embed_lr=0.6", "--optim.head_lr=0.008",
        "--optim.max_lr=0.04", "--optim.beta1=0.8", "--optim.weight_decay=0", "--optim.schedule=trapezoid",
        "--optim.warmup_steps=0", "--optim.min_lr_ratio=0", "--optim.grad_clip=0"]
RECIPES: dict[str, tuple[Path, list[str]]] = {
    "gpt2": (GPT2, []),
    "modern": (MODERN, []),
    "+rope": (GPT2, ["--model.pos_emb=rope"]),
    "+sinusoidal": (GPT2, ["--model.pos_emb=sinusoidal"]),
    "+rmsnorm": (GPT2, ["--model.norm=rmsnorm"]),
    "+qk_norm": (GPT2, ["--model.qk_norm=true"]),
    "+relu2": (GPT2, ["--model.mlp=relu2"]),
    "+untied zero-init": (GPT2, ["--model.tie_embeddings=false", "--model.zero_init=true"]),
    "+softcap": (GPT2, ["--model.logit_softcap=30"]),
    "+muon": (GPT2, MUON),
}
FULL = ("gpt2", "modern")  # run the whole budget: the two curves of the plot


def build_data(work: Path) -> Path:
    """The demo's corpus and shards (pipeline/commands/demo.py's two commands)."""
    from pipeline.commands.demo import SHARD_SIZE
    corpus, shards = work / "corpus.jsonl", work / "shards"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    if not (shards / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "pipeline.commands.demo_corpus", "--out", str(corpus)],
                       check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
        subprocess.run([sys.executable, "-m", "data_prep.fineweb", "--files", str(corpus), "--text-column", "text",
                        "--out", str(shards), "--prefix", "demo", "--shard-size", str(SHARD_SIZE)],
                       check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return shards


def train(name: str, shards: Path, steps: int, every: int, val_tokens: int, work: Path) -> list[tuple]:
    """[(step, tokens, val loss)] at step 0, every `every` steps and at the end."""
    config, overrides = RECIPES[name]
    # A shorter budget shortens the warmup in proportion (demo.toml: 20 of 150 steps).
    planned = resolve(config, [*overrides, f"--data.dir={shards}"])
    warmup = round(planned.optim.warmup_steps * steps / planned.train.max_steps)
    cfg = resolve(config, [*overrides, f"--data.dir={shards}", f"--train.max_steps={steps}", "--train.device=cpu",
                           "--eval.eval_every=0", "--eval.sample_every=0", f"--train.checkpoint_every={10 ** 6}",
                           f"--train.log_every={10 ** 6}", f"--eval.val_tokens={val_tokens}",
                           f"--optim.warmup_steps={warmup}"])
    env = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    val = val_token_stream(load_shard_set(shards), cfg.eval.val_tokens)
    run_dir = work / "runs" / name.strip("+").replace(" ", "-")
    shutil.rmtree(run_dir, ignore_errors=True)  # every run starts fresh, also in a reused --work
    curve = []
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), PreemptionFlag() as flag:
        trainer = Trainer(cfg, run_dir, "none", env, flag, [])
        trainer.start()
        while True:
            if trainer.step % every == 0 or trainer.step == steps:
                loss = compute_val_loss(trainer.model, val, cfg.train.seq_len, 16, env.device)[0]
                curve.append((trainer.step, trainer.tokens_seen, loss))
            if trainer.step >= steps:
                break
            trainer.iteration()
        trainer.log.close()
    return curve


def run_all(names: list[str], args, shards: Path, work: Path) -> dict[str, dict]:
    """Each recipe in its own process (one thread each), --jobs at a time."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    pending, running, results = list(names), {}, {}
    while pending or running:
        while pending and len(running) < args.jobs:
            name = pending.pop(0)
            out = work / f"curve-{len(results) + len(running)}.json"
            cmd = [sys.executable, __file__, "--one", name, "--out", str(out), "--shards", str(shards),
                   "--work", str(work), "--steps", str(args.steps), "--eval-every", str(args.eval_every),
                   "--val-tokens", str(args.val_tokens)]
            running[name] = (subprocess.Popen(cmd, env=env, cwd=REPO), out, time.perf_counter())
        time.sleep(1)
        for name, (proc, out, t0) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            if proc.returncode != 0:  # e.g. killed for memory on a crowded machine: report the rest
                print(f"  {name:>18}: FAILED (exit {proc.returncode}); rerun it with --only {name!r}", flush=True)
                continue
            results[name] = {"curve": json.loads(out.read_text()), "seconds": time.perf_counter() - t0}
            last = results[name]["curve"][-1]
            print(f"  {name:>18}: val {last[2]:.4f} after {last[1]:,} tokens ({results[name]['seconds']:.0f} s wall)",
                  flush=True)
    return {n: results[n] for n in names if n in results}


def tokens_to(curve: list, target: float) -> tuple[int | None, float | None]:
    """(tokens at the first evaluation at or below target, the same linearly interpolated
    between that evaluation and the one before it)."""
    for i, (_, tokens, loss) in enumerate(curve):
        if loss <= target:
            if i == 0:
                return tokens, float(tokens)
            _, t0, l0 = curve[i - 1]
            return tokens, t0 + (tokens - t0) * (l0 - target) / (l0 - loss)
    return None, None


def plot(curves: dict[str, list[tuple]], target: float, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, curve in curves.items():
        style = dict(linewidth=2.2) if name in FULL else dict(linewidth=0.9, alpha=0.6, linestyle="--")
        ax.plot([t / 1000 for _, t, _ in curve], [v for *_, v in curve], label=name, **style)
    ax.axhline(target, color="gray", linewidth=0.8, linestyle=":")
    ax.text(0, target, f" GPT-2 recipe's final val loss {target:.3f}", va="bottom", fontsize=8, color="gray")
    ax.set_xlabel("training tokens (thousands)")
    ax.set_ylabel("val loss (demo corpus held-out shard)")
    ax.set_ylim(top=min(8.5, max(v for c in curves.values() for *_, v in c)))
    ax.set_title("Demo model (4x128): GPT-2 recipe vs modern recipe")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=48, help="token budget in steps of 1,024 tokens")
    parser.add_argument("--eval-every", type=int, default=4)
    parser.add_argument("--val-tokens", type=int, default=4096, help="held-out tokens per evaluation")
    parser.add_argument("--only", default="", help="comma-separated recipe names (default: all)")
    parser.add_argument("--jobs", type=int, default=3, help="recipes trained at once (one thread each)")
    parser.add_argument("--work", default="", help="directory for data and runs (default: a temporary one)")
    parser.add_argument("--plot", default=str(REPO / "docs" / "figures" / "recipe-val-loss.png"))
    parser.add_argument("--json", default="", help="also write the curves here")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: train one recipe, write its curve
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--shards", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        torch.set_num_threads(1)
        curve = train(args.one, Path(args.shards), args.steps, args.eval_every, args.val_tokens, Path(args.work))
        Path(args.out).write_text(json.dumps(curve))
        return 0
    names = [n for n in args.only.split(",") if n] or list(RECIPES)
    names = ["gpt2"] + [n for n in names if n != "gpt2"]  # the target comes from gpt2
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        parser.error(f"unknown recipe(s) {unknown}; known: {', '.join(RECIPES)}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other jobs "
          f"(load average {os.getloadavg()[0]:.1f}), torch {torch.__version__}, 1 thread per run, {args.jobs} runs "
          f"at once; budget {args.steps} steps x 1,024 tokens, val loss on {args.val_tokens:,} held-out tokens "
          f"every {args.eval_every} steps")
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        shards = build_data(work)
        results = run_all(names, args, shards, work)
    curves = {n: r["curve"] for n, r in results.items()}
    target = curves["gpt2"][-1][2]
    base, base_interp = tokens_to(curves["gpt2"], target)
    print(f"\ntarget = the GPT-2 recipe's final val loss: {target:.4f} after {base:,} tokens")
    print(f"{'recipe':>18} | {'tokens to target':>16} | {'x GPT-2':>7} | {'interpolated':>12} | {'x GPT-2':>7} | "
          f"{'final val':>9}")
    for name, curve in curves.items():
        at, interp = tokens_to(curve, target)
        cells = ([f"{at:,}", f"{at / base:.3f}", f"{interp:,.0f}", f"{interp / base_interp:.3f}"] if at is not None
                 else ["not reached", "-", "-", "-"])
        print(f"{name:>18} | {cells[0]:>16} | {cells[1]:>7} | {cells[2]:>12} | {cells[3]:>7} | {curve[-1][2]:>9.4f}")
    plot(curves, target, Path(args.plot))
    print(f"plot: {args.plot}; total {time.perf_counter() - t_start:.0f} s wall")
    if args.json:
        Path(args.json).write_text(json.dumps({"target": target, "args": vars(args), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
