"""Benchmark the eval stage: HellaSwag examples/s (ours vs build-nanogpt's loop) and val tokens/s.

    python bench/eval.py [--models tiny,30m,gpt2] [--examples 200] [--rounds 2] [--threads N]

Both HellaSwag paths score the same real validation rows with the same randomly
initialised model in fp32 (speed does not depend on the weights), alternately in one
run (--rounds times each, best time kept). The reference is `nanogpt_loop` below, written
the way build-nanogpt's hellaswag.py evaluates: one example per forward, its 4 rows
padded to the longest, full logits at every position, F.cross_entropy, masked sums. Ours
is what `python -m eval` runs (pipeline.hellaswag.score_hellaswag). Their acc and acc_norm
counts are compared and reported. Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import ModelConfig, model_preset  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from pipeline.hellaswag import load_hellaswag, predictions, score_hellaswag  # noqa: E402
from pipeline.model import GPT  # noqa: E402
from pipeline.tokenizer import get_tokenizer  # noqa: E402
from pipeline.val_loss import compute_val_loss  # noqa: E402
from bench.train import matmul_peak  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MODELS = {
    "tiny": ModelConfig(n_layer=4, n_head=4, n_embd=128, block_size=512),
    "30m": ModelConfig(n_layer=6, n_head=6, n_embd=384, block_size=1024),  # issue 14's comparison model
    "gpt2": model_preset("gpt2"),
}


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}; torch {torch.__version__}; {torch.get_num_threads()} threads; load avg {os.getloadavg()[0]:.1f}"


@torch.no_grad()
def nanogpt_loop(model: GPT, examples) -> tuple[torch.Tensor, torch.Tensor]:
    """build-nanogpt's per-example HellaSwag loop; returns (pred, pred_norm) per example."""
    preds, preds_norm = [], []
    for ex in examples:
        rows = [list(ex.ctx) + list(e) for e in ex.endings]
        max_len = max(len(r) for r in rows)
        tokens = torch.zeros(4, max_len, dtype=torch.long)
        mask = torch.zeros(4, max_len, dtype=torch.long)
        for i, row in enumerate(rows):
            tokens[i, :len(row)] = torch.tensor(row)
            mask[i, len(ex.ctx):len(row)] = 1
        logits, _ = model(tokens)
        shift_logits = logits[..., :-1, :].contiguous()
        shift_tokens = tokens[..., 1:].contiguous()
        losses = F.cross_entropy(shift_logits.view(-1, shift_logits.size(-1)), shift_tokens.view(-1),
                                 reduction="none").view(tokens.size(0), -1)
        shift_mask = mask[..., 1:].contiguous()
        masked = losses * shift_mask
        sum_loss = masked.sum(dim=1)
        avg_loss = sum_loss / shift_mask.sum(dim=1)
        preds.append(sum_loss.argmin().item())
        preds_norm.append(avg_loss.argmin().item())
    return torch.tensor(preds), torch.tensor(preds_norm)


def macs_per_example(cfg: ModelConfig, examples) -> tuple[float, float]:
    """Multiply-accumulates per example of (the per-example loop, ours), counted from the
    token counts: per position the body's weight matmuls (12 L C^2) and attention (2 L C
    per attended key); the output layer (V C) at every position of the loop's padded rows,
    and at ours' distinct scored positions only (the context's last position is shared).
    Ours' padding of endings to their pass's longest is left out (sorted, it is small)."""
    L, C, V = cfg.n_layer, cfg.n_embd, cfg.vocab_size
    body = lambda n_pos, keys: 12 * L * C * C * n_pos + 2 * L * C * keys  # noqa: E731
    loop = ours = 0.0
    for ex in examples:
        n, lengths = len(ex.ctx), [len(e) for e in ex.endings]
        T = n + max(lengths)
        loop += 4 * (body(T, T * (T + 1) / 2) + V * C * T)
        ours += body(n, n * (n + 1) / 2) + sum(body(e, e * n + e * (e + 1) / 2) for e in lengths)
        ours += V * C * (1 + sum(e - 1 for e in lengths))
    return loop / len(examples), ours / len(examples)


def bench_hellaswag(name: str, model: GPT, examples, batch_size: int, rounds: int, peak: float) -> None:
    device = torch.device("cpu")
    score_hellaswag(model, examples[:2], device)  # warm-up (allocator, kernels)
    nanogpt_loop(model, examples[:2])
    labels = torch.tensor([ex.label for ex in examples])
    t_ref, t_ours = [], []
    for r in range(rounds):  # alternate, so load changes on a shared machine hit both sides
        ref, t = timed(lambda: nanogpt_loop(model, examples))
        t_ref.append(t)
        scores, t = timed(lambda: score_hellaswag(model, examples, device, batch_size=batch_size))
        t_ours.append(t)
        ours = predictions(scores)
        counts = [[int((p == labels).sum()) for p in side] for side in (ref, ours)]
        print(f"  round {r + 1}: build-nanogpt loop {len(examples) / t_ref[-1]:7.2f} ex/s | ours "
              f"{len(examples) / t_ours[-1]:7.2f} ex/s | (acc, acc_norm) correct: loop {counts[0]} "
              f"ours {counts[1]} | same predictions: "
              f"{all(torch.equal(a, b) for a, b in zip(ref, ours))}", flush=True)
    n = len(examples)
    print(f"  hellaswag {name:5s} {n} rows: build-nanogpt loop {n / min(t_ref):8.2f} ex/s | ours (bs={batch_size}) "
          f"{n / min(t_ours):8.2f} ex/s | ratio {min(t_ref) / min(t_ours):5.2f}x (best of {rounds} each)", flush=True)
    # Where the ratio can go: ours is compute-bound, so its ceiling is the ratio of the
    # work each side does times how close each runs to the machine's matmul peak.
    loop_macs, our_macs = macs_per_example(model.config, examples)
    for side, macs, t in (("build-nanogpt loop", loop_macs, min(t_ref)), ("ours", our_macs, min(t_ours))):
        rate = 2 * macs * n / t
        print(f"    {side:18s} {macs / 1e9:6.2f} GMAC/example, {rate / 1e9:6.1f} GFLOP/s = "
              f"{100 * rate / peak:4.0f}% of the fp32 matmul peak", flush=True)
    print(f"    work ratio {loop_macs / our_macs:.2f}x: at the loop's FLOP/s ours would be "
          f"{loop_macs / our_macs:.2f}x, at the full matmul peak {peak / (2 * our_macs) / (n / min(t_ref)):.2f}x", flush=True)


def bench_val(name: str, model: GPT, tokens: np.ndarray, seq_len: int, batch_size: int) -> None:
    device = torch.device("cpu")
    compute_val_loss(model, tokens[: seq_len * 2 + 1], seq_len, 2, device)  # warm-up
    (loss, n, bpb), t = timed(lambda: compute_val_loss(model, tokens, seq_len, batch_size, device))
    # Reference: the bare forward pass over the same sequences (no loss), the ceiling.
    n_seq = (len(tokens) - 1) // seq_len
    batches = [torch.from_numpy(tokens[i * seq_len:(i + batch_size) * seq_len].astype(np.int64)).view(-1, seq_len)
               for i in range(0, n_seq, batch_size)]
    with torch.no_grad():
        _, t_fwd = timed(lambda: [model(b) for b in batches])
    print(f"  val loss  {name:5s} {n:,} tokens at seq_len {seq_len}, batch {batch_size}: "
          f"{n / t:,.0f} tokens/s (loss {loss:.3f}, {bpb:.3f} bits/byte) | bare forward pass {n_seq * seq_len / t_fwd:,.0f} tokens/s",
          flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="tiny,30m,gpt2")
    p.add_argument("--examples", type=int, default=200, help="HellaSwag rows per model (gpt2: a quarter)")
    p.add_argument("--rounds", type=int, default=2, help="alternating timed runs of each HellaSwag side")
    p.add_argument("--no-val", action="store_true", help="HellaSwag only")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--val-tokens", type=int, default=16_384)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(DATA / "tokenizer" / "tiktoken_cache"))
    print(f"machine: {machine()}")
    peak = matmul_peak(torch.device("cpu"), torch.float32, 2048, reps=3)
    print(f"fp32 matmul peak measured here (2048^3): {peak / 1e9:.1f} GFLOP/s")
    examples = load_hellaswag(DATA / "hellaswag" / "hellaswag_val.jsonl", limit=args.examples)
    text = (DATA / "text" / "tinyshakespeare.txt").read_text()
    tokens = np.array(get_tokenizer().encode_ordinary(text[: 8 * args.val_tokens]), dtype=np.uint16)
    for name in args.models.split(","):
        torch.manual_seed(0)
        cfg = MODELS[name]
        model = GPT(cfg).eval()
        print(f"model {name}: {model.num_params() / 1e6:.1f}M parameters "
              f"({cfg.n_layer} layers, {cfg.n_embd} wide)", flush=True)
        subset = examples if name != "gpt2" else examples[: max(4, len(examples) // 4)]
        bench_hellaswag(name, model, subset, args.batch_size, args.rounds, peak)
        if args.no_val:
            continue
        seq_len = min(1024, cfg.block_size)
        budget = args.val_tokens if name == "tiny" else args.val_tokens // 4
        bench_val(name, model, tokens[: budget // seq_len * seq_len + 1], seq_len, 4)
    return 0


if __name__ == "__main__":
    sys.exit(main())
