"""Trainer throughput and overhead, with references measured in the same run.

    python bench/train.py                       # small GPT on CPU, eager and torch.compile
    python bench/train.py --no-compile --steps 10
    python bench/train.py --preset gpt2 --micro 16 --seq 1024 --accum 2 --device cuda   # on a GPU
    python bench/train.py --vs-reference [ARGS]  # = bench/train_vs_reference.py: vs a build-nanogpt loop

For eager and compiled models, in one process, it alternates step by step between
  * one full trainer iteration (train.trainer.Trainer on real text shards: loader, LR
    schedule, micro-steps, clipping, the per-step all-reduce, logging to metrics.jsonl and
    the console), and
  * one bare step: forward/backward per micro-batch + optimizer step on a fixed batch of
    the same shape, same model and optimizer, nothing else,
so that both see the same machine load (on a shared machine the step time drifts by
several times; unpaired runs cannot resolve a few percent). It prints the median of the
paired ratios, tokens/s, MFU against a matmul peak measured here (fp32 on CPU, bf16 on
CUDA) and, on a known GPU, against the data-sheet peak; and the trainer-only pieces
timed alone. Never asserts on time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config import MODEL_PRESETS, resolve  # noqa: E402
from pipeline.distributed import DistEnv, pick_device  # noqa: E402
from pipeline.shards import shard_filename  # noqa: E402
from pipeline.tokenizer import EOT, get_tokenizer  # noqa: E402
from train.metrics import MetricsLog, peak_flops  # noqa: E402
from train.schedule import lr_at  # noqa: E402
from train.signals import PreemptionFlag  # noqa: E402
from train.trainer import Trainer  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return 1000 * (time.perf_counter() - t)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, reps: int = 5) -> float:
    """Achieved FLOP/s of a large square matmul (best of reps): the practical ceiling here."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    return 2 * n ** 3 / (min(timed(lambda: a @ b, device) for _ in range(reps)) / 1000)


def write_text_shards(directory: Path, text_path: Path, tokens: int) -> None:
    """Real GPT-2 tokens of a text file as build-nanogpt style shards (val + train)."""
    enc = get_tokenizer()
    ids = [EOT] + enc.encode_ordinary(text_path.read_text(encoding="utf-8", errors="replace"))
    arr = np.array((ids * (tokens // len(ids) + 1))[:tokens], dtype=np.uint16)
    np.save(directory / shard_filename("bench", "val", 0), arr[:4096])
    np.save(directory / shard_filename("bench", "train", 1), arr[4096:])


def bare_step(trainer: Trainer, batch: torch.Tensor) -> None:
    """The minimal step on the trainer's own (possibly compiled) model and optimizer."""
    autocast = (torch.autocast(trainer.device.type, dtype=trainer.dtype) if trainer.dtype is not None
                else contextlib.nullcontext())
    for micro in range(trainer.grad_accum):
        with autocast:
            _, loss = trainer.train_model(batch[micro, :, :-1], batch[micro, :, 1:])
        (loss / trainer.grad_accum).backward()
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    loss.item()  # the trainer reads its loss every step too


def paired(cfg, device: torch.device, run_dir: Path, warmup: int, steps: int) -> tuple[list[float], list[float]]:
    """(bare ms, trainer ms) per step, alternating the two step by step."""
    env = DistEnv(rank=0, local_rank=0, world_size=1, device=device)
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), PreemptionFlag() as flag:
        trainer = Trainer(cfg, run_dir, "none", env, flag, [])
        batch = trainer.loader.next_step().to(device)
        trainer.start()
        bare, full = [], []
        for i in range(warmup + steps):
            t_full = timed(trainer.iteration, device)
            t_bare = timed(lambda: bare_step(trainer, batch), device)
            if i >= warmup:
                full.append(t_full)
                bare.append(t_bare)
        trainer.log.close()
        trainer.batches.close()
    return bare, full


def trainer_only_work(trainer_cfg, device: torch.device, tmp: Path) -> dict[str, float]:
    """ms per step of the pieces the trainer adds, each timed alone (fastest of 30)."""
    env = DistEnv(rank=0, local_rank=0, world_size=1, device=device)
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), PreemptionFlag() as flag:
        trainer = Trainer(trainer_cfg, tmp / "pieces", "none", env, flag, [])
        batch = trainer.loader.next_step().to(device)
        _, loss = trainer.model(batch[0, :, :-1], batch[0, :, 1:])
        loss.backward()
        log = MetricsLog(tmp / "pieces" / "timing.jsonl", enabled=True, start_step=0, max_steps=10 ** 6)
        row = {"step": 1, "kind": "train", "loss": 3.0, "lr": 6e-4, "grad_norm": 0.3, "tokens": 1,
               "dt_ms": 1.0, "tok_per_s": 1.0, "mfu": None}
        params = list(trainer.model.parameters())
        pieces = {
            # The read itself runs on the prefetch thread during the previous step; the step
            # only takes the prepared batch.
            "loader read (off the step, prefetched)": lambda: trainer.loader.batch_at(trainer.loader.position),
            "prefetched batch handed over": trainer.batches.next_step,
            "grad clip": lambda: torch.nn.utils.clip_grad_norm_(params, 1.0),
            "flags all-reduce + lr": lambda: (torch.stack([loss.detach()] * 3).tolist(),
                                              lr_at(100, trainer_cfg.optim, 1000)),
            "metrics row + console line": lambda: log.train(row),
        }
        costs = {name: min(timed(fn, device) for _ in range(30)) for name, fn in pieces.items()}
        log.close()
        trainer.log.close()
        trainer.batches.close()
    return costs


def main() -> None:
    if "--vs-reference" in sys.argv:
        rest = [a for a in sys.argv[1:] if a != "--vs-reference"]
        script = REPO / "bench" / "train_vs_reference.py"
        os.execv(sys.executable, [sys.executable, str(script), *rest])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="", help="model preset, e.g. gpt2 (default: a small 4-layer GPT)")
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--accum", type=int, default=2)
    ap.add_argument("--steps", type=int, default=16, help="timed step pairs (after --warmup)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--compile-only", action="store_true")
    ap.add_argument("--raw", action="store_true", help="also print every timed step (ms)")
    ap.add_argument("--text", default=str(REPO.parent / "shared" / "data" / "text" / "tinyshakespeare.txt"))
    args = ap.parse_args()

    device = pick_device(args.device)
    model_keys = MODEL_PRESETS[args.preset] if args.preset else dict(n_layer=4, n_head=4, n_embd=128)
    tokens_per_step = args.micro * args.seq * args.accum
    peak_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = 8192 if device.type == "cuda" else 2048
    measured_peak = matmul_peak(device, peak_dtype, n)
    sheet_peak = peak_flops(device)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "data").mkdir()
        write_text_shards(tmp / "data", Path(args.text), (args.warmup + args.steps + 40) * tokens_per_step)
        overrides = [f"--model.{k}={v}" for k, v in model_keys.items()] + [
            f"--model.block_size={1024 if args.preset else max(args.seq, 64)}",
            f"--train.micro_batch_size={args.micro}", f"--train.seq_len={args.seq}",
            f"--train.total_batch_size={tokens_per_step}", f"--train.device={device.type}",
            f"--data.dir={tmp / 'data'}", "--train.max_steps=100000", "--optim.warmup_steps=2",
            "--train.checkpoint_every=1000000", "--eval.eval_every=0", "--eval.sample_every=0"]
        base = resolve(None, overrides)
        from pipeline.model import GPT
        model = GPT(base.model)
        flops_per_token = model.flops_per_token(args.seq)
        print(f"machine: {device} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        print(f"matmul peak measured here ({peak_dtype}, {n}^3): {measured_peak / 1e9:.1f} GFLOP/s"
              + (f"; data-sheet bf16 peak {sheet_peak / 1e12:.0f} TFLOP/s" if sheet_peak else ""))
        print(f"model: {model_keys}, {model.num_params():,} params, {flops_per_token / 1e6:.1f} MFLOP/token; "
              f"batch {tokens_per_step} tokens/step = {args.micro} micro x {args.seq} seq x {args.accum} accum; "
              f"{args.steps} timed step pairs after {args.warmup} warmup")
        print(f"{'mode':8s} {'bare ms':>9s} {'trainer ms':>11s} {'overhead':>9s} {'paired':>8s} {'tok/s':>8s} "
              f"{'MFU(measured)':>14s}" + (f" {'MFU(sheet)':>11s}" if sheet_peak else "")
              + "   (medians; overhead = ratio of the medians, paired = median of per-pair ratios)")
        modes = [False] if args.no_compile else [True] if args.compile_only else [False, True]
        for compiled in modes:
            cfg = resolve(None, overrides + [f"--train.compile={str(compiled).lower()}"])
            bare, full = paired(cfg, device, tmp / f"run_{compiled}", args.warmup, args.steps)
            ratio = statistics.median(f / b for f, b in zip(full, bare))
            b, f = statistics.median(bare), statistics.median(full)
            tok_s = tokens_per_step / (f / 1000)
            line = (f"{'compile' if compiled else 'eager':8s} {b:9.1f} {f:11.1f} {100 * (f / b - 1):+8.2f}% "
                    f"{100 * (ratio - 1):+7.2f}% {tok_s:8.0f} {100 * flops_per_token * tok_s / measured_peak:13.1f}%")
            if sheet_peak:
                line += f" {100 * flops_per_token * tok_s / sheet_peak:10.1f}%"
            print(line, flush=True)
            if args.raw:
                print(f"  bare    ms: {' '.join(f'{x:.0f}' for x in bare)}")
                print(f"  trainer ms: {' '.join(f'{x:.0f}' for x in full)}")
        costs = trainer_only_work(base, device, tmp)
        print("trainer-only pieces, each timed alone (fastest of 30): "
              + ", ".join(f"{k} {v:.2f} ms" for k, v in costs.items())
              + f" = {sum(v for k, v in costs.items() if 'off the step' not in k):.2f} ms per step "
              "(the loader read excluded: it overlaps the previous step)")


if __name__ == "__main__":
    main()
