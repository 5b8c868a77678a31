"""The trainer against a minimal build-nanogpt-style loop, same model, same data, one run.

    python bench/train_vs_reference.py                 # the 30M GPT of issue 14, fp32 eager, CPU
    python bench/train.py --vs-reference               # the same
    python bench/train_vs_reference.py --steps 10 --layers 2 --embd 128   # quicker

Two worker processes (so each has its own peak RSS) are driven step by step, alternately:
  * reference: the loop written the way build-nanogpt's train.py step works -- a
    DataLoaderLite slice of one token tensor, full logits = lm_head(hidden states) over the
    padded vocab, F.cross_entropy, clip_grad_norm_, the cosine LR, plain AdamW (build-nanogpt
    fuses only on CUDA), a loss .item() and a print every step;
  * trainer: train.trainer.Trainer.iteration() (prefetched batch, chunked lm_head + loss,
    clip, the per-step all-reduce, AdamW as configured, metrics.jsonl + console line).
Both start from the same seed (identical weights) and read the same unshuffled token
stream, so their losses agree (to the padded-vocab difference: build-nanogpt's softmax also
covers the 47 padding columns). It prints tokens/s of both, the median of the per-pair
ratios, peak RSS of both, the losses, and then the pieces of each step timed alone in each
worker (not alternated). Never asserts on time.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config import resolve  # noqa: E402
from pipeline.distributed import DistEnv  # noqa: E402
from pipeline.model import GPT  # noqa: E402
from pipeline.shards import shard_filename  # noqa: E402
from pipeline.tokenizer import EOT, get_tokenizer  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "text"
REPLY = "@@"  # reply lines start with this; anything else a worker prints is ignored


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def write_text_shards(directory: Path, text: Path, tokens: int) -> None:
    """Real GPT-2 tokens (a text file, or every *.txt of a directory) as val + train shards."""
    files = sorted(text.glob("*.txt")) if text.is_dir() else [text]
    enc = get_tokenizer()
    ids: list[int] = []
    for f in files:
        ids += [EOT] + enc.encode_ordinary(f.read_text(encoding="utf-8", errors="replace"))
        if len(ids) > tokens:
            break
    arr = np.array((ids * (tokens // len(ids) + 1))[:tokens], dtype=np.uint16)
    np.save(directory / shard_filename("bench", "val", 0), arr[:4096])
    np.save(directory / shard_filename("bench", "train", 1), arr[4096:])


def config_overrides(args, data_dir: Path) -> list[str]:
    return [f"--model.n_layer={args.layers}", f"--model.n_head={args.heads}", f"--model.n_embd={args.embd}",
            f"--model.block_size={args.seq}", f"--train.micro_batch_size={args.micro}",
            f"--train.seq_len={args.seq}", f"--train.total_batch_size={args.micro * args.seq * args.accum}",
            "--train.device=cpu", "--train.dtype=float32", "--train.compile=false", f"--data.dir={data_dir}",
            "--data.shuffle=false", "--train.max_steps=100000", "--optim.warmup_steps=10",
            "--train.checkpoint_every=1000000", "--eval.eval_every=0", "--eval.sample_every=0",
            *args.trainer_arg]


# -- the reference loop (build-nanogpt's train step) ---------------------------------------

class Reference:
    def __init__(self, cfg):
        self.cfg = cfg
        tc, oc = cfg.train, cfg.optim
        self.B, self.T, self.accum = tc.micro_batch_size, tc.seq_len, tc.total_batch_size // (
            tc.micro_batch_size * tc.seq_len)
        torch.manual_seed(tc.seed)  # the trainer's seed: the same initial weights
        self.model = GPT(cfg.model)
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": oc.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        # build-nanogpt: fused = fused_available and device_type == "cuda" -> plain AdamW on CPU.
        self.optimizer = torch.optim.AdamW(groups, lr=oc.max_lr, betas=(oc.beta1, oc.beta2), eps=oc.eps)
        shard = sorted(Path(cfg.data.dir).glob("*_train_*.npy"))[0]
        self.tokens = torch.tensor(np.load(shard).astype(np.int32), dtype=torch.long)
        self.pos = 0
        self.step_index = 0

    def next_batch(self):
        B, T = self.B, self.T
        buf = self.tokens[self.pos: self.pos + B * T + 1]
        x, y = buf[:-1].view(B, T), buf[1:].view(B, T)
        self.pos += B * T
        if self.pos + B * T + 1 > len(self.tokens):
            self.pos = 0
        return x, y

    def loss(self, x, y):
        logits = self.model.lm_head(self.model.hidden_states(x))  # build-nanogpt: no padding mask
        return F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))

    def lr(self, it: int) -> float:
        oc, max_steps = self.cfg.optim, self.cfg.train.max_steps
        max_lr, min_lr = oc.max_lr, oc.max_lr * oc.min_lr_ratio
        if it < oc.warmup_steps:
            return max_lr * (it + 1) / oc.warmup_steps
        ratio = (it - oc.warmup_steps) / (max_steps - oc.warmup_steps)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)

    def step(self) -> float:
        t0 = time.time()
        self.optimizer.zero_grad()
        loss_accum = 0.0
        for _ in range(self.accum):
            x, y = self.next_batch()
            loss = self.loss(x, y) / self.accum
            loss_accum += loss.detach()
            loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        lr = self.lr(self.step_index)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        dt = time.time() - t0
        print(f"step {self.step_index:4d} | loss: {loss_accum.item():.6f} | lr {lr:.4e} | norm: {norm:.4f} | "
              f"dt: {dt * 1000:.2f}ms | tok/sec: {self.B * self.T * self.accum / dt:.2f}")
        self.step_index += 1
        return float(loss_accum)

    def pieces(self) -> dict[str, float]:
        t = [time.perf_counter()]
        x, y = self.next_batch()
        t.append(time.perf_counter())
        loss = self.loss(x, y)
        t.append(time.perf_counter())
        loss.backward()
        t.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        t.append(time.perf_counter())
        self.optimizer.step()
        self.optimizer.zero_grad()
        t.append(time.perf_counter())
        loss.item()
        return dict(zip(["data", "forward + loss", "backward", "clip", "AdamW step + zero_grad"],
                        (1000 * (b - a) for a, b in zip(t, t[1:]))))


# -- the trainer ---------------------------------------------------------------------------

class TrainerSide:
    def __init__(self, cfg, run_dir: Path):
        from train.signals import PreemptionFlag
        from train.trainer import Trainer
        self.flag = PreemptionFlag().__enter__()
        env = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
        self.t = Trainer(cfg, run_dir, "none", env, self.flag, [])
        self.t.start()
        self.losses: list[float] = []
        inner = self.t._train_step

        def capture(*a):
            out = inner(*a)
            self.losses.append(out[0])
            return out
        self.t._train_step = capture

    def step(self) -> float:
        self.t.iteration()
        return self.losses[-1]

    def pieces(self) -> dict[str, float]:
        t, tr = [time.perf_counter()], self.t
        batch = tr.batches.next_step().tokens
        t.append(time.perf_counter())
        _, loss = tr.train_model(batch[0, :, :-1], batch[0, :, 1:])
        t.append(time.perf_counter())
        loss.backward()
        t.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(tr.model.parameters(), 1.0)
        t.append(time.perf_counter())
        tr.optimizer.step()
        tr.optimizer.zero_grad(set_to_none=True)
        t.append(time.perf_counter())
        row = {"step": tr.step, "kind": "train", "loss": loss.item(), "lr": 6e-4, "grad_norm": 0.3,
               "tokens": 1, "dt_ms": 1.0, "tok_per_s": 1.0, "mfu": None}
        tr.log.train(row)
        t.append(time.perf_counter())
        names = ["data (prefetched)", "forward + loss", "backward", "clip",
                 f"AdamW step + zero_grad (fused {tr.fused})", "metrics row + console line"]
        return dict(zip(names, (1000 * (b - a) for a, b in zip(t, t[1:]))))


def worker(kind: str, cfg_args: list[str], run_dir: Path) -> None:
    out = sys.stdout
    reply = lambda obj: print(REPLY + json.dumps(obj), file=out, flush=True)  # noqa: E731
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        cfg = resolve(None, cfg_args)
        side = Reference(cfg) if kind == "reference" else TrainerSide(cfg, run_dir)
        reply({"ready": True, "rss_mb": peak_rss_mb(), "threads": torch.get_num_threads()})
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "step":
                t = time.perf_counter()
                loss = side.step()
                reply({"ms": 1000 * (time.perf_counter() - t), "loss": loss})
            elif cmd == "pieces":
                reply(side.pieces())
            elif cmd == "quit":
                if kind != "reference":
                    side.t.log.close()
                    side.t.batches.close()
                reply({"peak_rss_mb": peak_rss_mb()})
                return


class Worker:
    def __init__(self, kind: str, cfg_args: list[str], run_dir: Path):
        self.kind = kind
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", kind, "--run-dir", str(run_dir),
                                      "--", *cfg_args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self.read()

    def read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY):])
        raise RuntimeError(f"the {self.kind} worker exited (code {self.proc.wait()})")

    def ask(self, cmd: str) -> dict:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.read()


def main() -> None:
    if "--worker" in sys.argv:
        i = sys.argv.index("--worker")
        run_dir = Path(sys.argv[sys.argv.index("--run-dir") + 1])
        worker(sys.argv[i + 1], sys.argv[sys.argv.index("--") + 1:], run_dir)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--embd", type=int, default=384)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20, help="timed step pairs (after --warmup)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--pieces", type=int, default=5, help="per-piece timings per side (median reported)")
    ap.add_argument("--text", default=str(DATA / "tinyshakespeare.txt" if (DATA / "tinyshakespeare.txt").exists()
                                          else DATA / "gutenberg"), help="a text file or a directory of *.txt")
    ap.add_argument("--trainer-arg", action="append", default=[],
                    help="extra trainer config override, e.g. --trainer-arg=--optim.fused=false")
    ap.add_argument("--raw", action="store_true", help="also print every step time")
    args = ap.parse_args()

    tokens_per_step = args.micro * args.seq * args.accum
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "data").mkdir()
        write_text_shards(tmp / "data", Path(args.text), (args.warmup + args.steps + args.pieces + 8)
                          * tokens_per_step + 8192)
        cfg_args = config_overrides(args, tmp / "data")
        n_params = GPT(resolve(None, cfg_args).model).num_params()
        sides = {"reference": Worker("reference", cfg_args, tmp / "ref"),
                 "trainer": Worker("trainer", cfg_args, tmp / "run")}
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
              f"{torch.__version__}, {sides['trainer'].info['threads']} threads per worker")
        print(f"model: {args.layers} layers, {args.heads} heads, {args.embd} wide, {n_params:,} params, fp32 eager; "
              f"{tokens_per_step:,} tokens/step = {args.micro} x {args.seq} x {args.accum} accum; "
              f"{args.steps} alternated step pairs after {args.warmup} warmup; text {args.text}")
        times = {k: [] for k in sides}
        losses = {k: [] for k in sides}
        for i in range(args.warmup + args.steps):
            order = list(sides) if i % 2 == 0 else list(reversed(sides))  # neither always goes first
            for k in order:
                r = sides[k].ask("step")
                losses[k].append(r["loss"])
                if i >= args.warmup:
                    times[k].append(r["ms"])
        pieces = {k: [w.ask("pieces") for _ in range(args.pieces)] for k, w in sides.items()}
        done = {k: w.ask("quit") for k, w in sides.items()}
        for w in sides.values():
            w.proc.wait()

    ratio = statistics.median(r / t for r, t in zip(times["reference"], times["trainer"]))
    print(f"{'side':10s} {'median ms':>10s} {'tok/s':>8s} {'peak RSS MB':>12s} {'RSS at start MB':>16s}")
    for k in sides:
        ms = statistics.median(times[k])
        print(f"{k:10s} {ms:10.1f} {tokens_per_step / (ms / 1000):8.0f} {done[k]['peak_rss_mb']:12.0f} "
              f"{sides[k].info['rss_mb']:16.0f}")
    print(f"trainer / reference tok/s: {ratio:.3f} (median of per-pair ratios; ratio of medians "
          f"{statistics.median(times['reference']) / statistics.median(times['trainer']):.3f}); "
          f"peak RSS trainer / reference: {done['trainer']['peak_rss_mb'] / done['reference']['peak_rss_mb']:.3f}")
    last = len(losses["trainer"]) - 1
    print(f"loss at step {last}: reference {losses['reference'][last]:.4f}, trainer {losses['trainer'][last]:.4f} "
          f"(step 0: {losses['reference'][0]:.4f} vs {losses['trainer'][0]:.4f})")
    if args.raw:
        for k in sides:
            print(f"  {k} ms: {' '.join(f'{x:.0f}' for x in times[k])}")
    for k in sides:
        med = {name: statistics.median(p[name] for p in pieces[k]) for name in pieces[k][0]}
        print(f"{k} pieces (median of {args.pieces}, one micro-batch, not alternated): "
              + ", ".join(f"{n} {v:.1f} ms" for n, v in med.items()) + f" = {sum(med.values()):.1f} ms")


if __name__ == "__main__":
    main()
