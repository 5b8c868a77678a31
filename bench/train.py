"""Trainer throughput and overhead, with references measured in the same run.

    python bench/train.py                       # small GPT on CPU, eager and torch.compile
    python bench/train.py --no-compile --steps 6
    python bench/train.py --preset gpt2 --micro 16 --seq 1024 --accum 2 --device cuda   # on a GPU

Prints, for eager and compiled models:
  * a bare loop: forward/backward per micro-batch + optimizer step on one fixed batch,
    nothing else (no loader, clipping, LR schedule, all-reduce, logging);
  * the full trainer (train.run, in this process) on real text shards with the same model
    and batch shape, timed by its own per-step dt_ms (the loop's period, excluding eval and
    checkpoint saves);
  * tokens/s, and MFU against the matmul peak measured here (fp32 on CPU, bf16 on CUDA)
    and, on a known GPU, against the data-sheet peak.
Runs alternate bare/trainer and report medians, so drift in machine load hits both.
Never asserts on time.
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

from pipeline.atomic import read_jsonl  # noqa: E402
from pipeline.config import MODEL_PRESETS, resolve  # noqa: E402
from pipeline.distributed import pick_device  # noqa: E402
from pipeline.model import GPT  # noqa: E402
from pipeline.optimizer import build_optimizer  # noqa: E402
from pipeline.shards import load_shard_set, shard_filename  # noqa: E402
from pipeline.tokenizer import EOT, get_tokenizer  # noqa: E402
from train.loader import TrainLoader  # noqa: E402
from train.metrics import peak_flops  # noqa: E402
from train.run import run as run_trainer  # noqa: E402
from train.trainer import autocast_dtype  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, reps: int = 5) -> float:
    """Achieved FLOP/s of a large square matmul: the practical ceiling for this device."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / min(times)


def write_text_shards(directory: Path, text_path: Path, tokens: int) -> None:
    """Real GPT-2 tokens of a text file as build-nanogpt style shards (val + train)."""
    enc = get_tokenizer()
    ids = [EOT] + enc.encode_ordinary(text_path.read_text(encoding="utf-8", errors="replace"))
    arr = np.array((ids * (tokens // len(ids) + 1))[:tokens], dtype=np.uint16)
    np.save(directory / shard_filename("bench", "val", 0), arr[:4096])
    np.save(directory / shard_filename("bench", "train", 1), arr[4096:])


def bare_loop(cfg, device: torch.device, steps: int, compile_model: bool) -> list[float]:
    """ms per optimizer step of the minimal loop on one fixed batch."""
    tc = cfg.train
    accum = tc.total_batch_size // (tc.micro_batch_size * tc.seq_len)
    torch.manual_seed(tc.seed)
    model = GPT(cfg.model).to(device)
    optimizer, _ = build_optimizer(model, cfg.optim, device.type)
    fwd = torch.compile(model) if compile_model else model
    dtype = autocast_dtype(tc.dtype, device)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    # The trainer's first batch (real text): token statistics change the embedding backward's cost.
    shards = load_shard_set(cfg.data.dir)
    loader = TrainLoader(shards.split("train"), shards.fingerprint, tc.seq_len, tc.micro_batch_size, accum,
                         seed=cfg.data.seed, shuffle=cfg.data.shuffle)
    batch = loader.next_step().to(device)
    times = []
    for _ in range(steps):
        sync(device)
        t = time.perf_counter()
        for micro in range(accum):
            with autocast:
                _, loss = fwd(batch[micro, :, :-1], batch[micro, :, 1:])
            (loss / accum).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # the trainer reads its loss every step too
        times.append(1000 * (time.perf_counter() - t))
    return times


def trainer_loop(cfg, run_dir: Path) -> list[float]:
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        code = run_trainer(cfg, run_dir, "none", [])
    assert code == 0, f"trainer exited {code}"
    return [r["dt_ms"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="", help="model preset, e.g. gpt2 (default: a small 4-layer GPT)")
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--accum", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per run (after --warmup)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3, help="alternating bare/trainer repetitions")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--text", default=str(REPO.parent / "shared" / "data" / "text" / "tinyshakespeare.txt"))
    args = ap.parse_args()

    device = pick_device(args.device)
    model_keys = MODEL_PRESETS[args.preset] if args.preset else dict(n_layer=4, n_head=4, n_embd=128)
    overrides = [f"--model.{k}={v}" for k, v in model_keys.items()] + [
        f"--model.block_size={max(args.seq, 64)}" if not args.preset else "--model.block_size=1024",
        f"--train.micro_batch_size={args.micro}", f"--train.seq_len={args.seq}",
        f"--train.total_batch_size={args.micro * args.seq * args.accum}", f"--train.device={device.type}",
        "--train.checkpoint_every=1000000", "--eval.eval_every=0", "--eval.sample_every=0", "--optim.warmup_steps=2"]
    tokens_per_step = args.micro * args.seq * args.accum
    peak_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    measured_peak = matmul_peak(device, peak_dtype, 8192 if device.type == "cuda" else 2048)
    sheet_peak = peak_flops(device)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "data").mkdir()
        write_text_shards(tmp / "data", Path(args.text), tokens=(args.warmup + args.steps) * tokens_per_step * 2
                          + 10 * args.seq + 4096)
        base = resolve(None, overrides + [f"--data.dir={tmp / 'data'}",
                                          f"--train.max_steps={args.warmup + args.steps}"])
        flops_per_token = GPT(base.model).flops_per_token(args.seq)
        print(f"machine: {device} ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads")
        print(f"matmul peak measured here ({peak_dtype}, {'8192' if device.type == 'cuda' else '2048'}^3): "
              f"{measured_peak / 1e9:.1f} GFLOP/s" + (f"; data-sheet bf16 peak {sheet_peak / 1e12:.0f} TFLOP/s"
                                                       if sheet_peak else ""))
        print(f"model: {model_keys}, {GPT(base.model).num_params():,} params, {flops_per_token / 1e6:.1f} "
              f"MFLOP/token; batch {tokens_per_step} tokens/step = {args.micro} micro x {args.seq} seq x "
              f"{args.accum} accum; {args.steps} timed steps after {args.warmup} warmup, {args.reps} reps")
        modes = [False] if args.no_compile else [False, True]
        print(f"{'mode':8s} {'bare ms/step':>13s} {'trainer ms/step':>16s} {'overhead':>9s} {'tok/s':>9s} "
              f"{'MFU(measured)':>14s}" + (f" {'MFU(sheet)':>11s}" if sheet_peak else ""))
        for compiled in modes:
            cfg = resolve(None, overrides + [f"--data.dir={tmp / 'data'}", f"--train.compile={str(compiled).lower()}",
                                             f"--train.max_steps={args.warmup + args.steps}"])
            bare, full = [], []
            for rep in range(args.reps):
                bare += bare_loop(cfg, device, args.warmup + args.steps, compiled)[args.warmup:]
                full += trainer_loop(cfg, tmp / f"run_{compiled}_{rep}")[args.warmup:]
            b, f = statistics.median(bare), statistics.median(full)
            tok_s = tokens_per_step / (f / 1000)
            line = (f"{'compile' if compiled else 'eager':8s} {b:13.1f} {f:16.1f} {100 * (f / b - 1):+8.1f}% "
                    f"{tok_s:9.0f} {100 * flops_per_token * tok_s / measured_peak:13.1f}%")
            if sheet_peak:
                line += f" {100 * flops_per_token * tok_s / sheet_peak:10.1f}%"
            print(line, flush=True)


if __name__ == "__main__":
    main()
