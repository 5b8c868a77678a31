"""Benchmark the eval stage: HellaSwag examples/s (batched vs one at a time) and val tokens/s.

    python bench/eval.py [--models tiny,gpt2] [--examples 64] [--batch-size 32] [--threads N]

Both HellaSwag paths score the same real validation rows with the same randomly
initialised model in fp32 (speed does not depend on the weights); the one-at-a-time
path is pipeline.hellaswag.score_reference (build-nanogpt's loop: one example = 4 rows
per forward, full logits), the batched path is what `python -m eval` runs. Predictions
of the two are compared and reported. Nothing here asserts on time.
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
from pipeline.hellaswag import load_hellaswag, predictions, score_batched, score_reference  # noqa: E402
from pipeline.model import GPT  # noqa: E402
from pipeline.tokenizer import get_tokenizer  # noqa: E402
from pipeline.val_loss import compute_val_loss  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MODELS = {
    "tiny": ModelConfig(n_layer=4, n_head=4, n_embd=128, block_size=512),
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


def bench_hellaswag(name: str, model: GPT, examples, batch_size: int) -> None:
    device = torch.device("cpu")
    score_batched(model, examples[:2], device)  # warm-up (allocator, kernels)
    ref, t_ref = timed(lambda: score_reference(model, examples, device))
    got, t_bat = timed(lambda: score_batched(model, examples, device, batch_size=batch_size))
    same = all(torch.equal(a, b) for a, b in zip(predictions(ref), predictions(got)))
    diff = (ref[:, :, 0] - got[:, :, 0]).abs().max().item()
    n = len(examples)
    print(f"  hellaswag {name:5s} one-at-a-time {n / t_ref:8.2f} ex/s | batched (bs={batch_size}) "
          f"{n / t_bat:8.2f} ex/s | speedup {t_ref / t_bat:5.2f}x | predictions identical: {same} "
          f"(max |loss diff| {diff:.1e})", flush=True)


def bench_val(name: str, model: GPT, tokens: np.ndarray, seq_len: int, batch_size: int) -> None:
    device = torch.device("cpu")
    compute_val_loss(model, tokens[: seq_len * 2 + 1], seq_len, 2, device)  # warm-up
    (loss, n), t = timed(lambda: compute_val_loss(model, tokens, seq_len, batch_size, device))
    # Reference: the bare forward pass over the same sequences (no loss), the ceiling.
    n_seq = (len(tokens) - 1) // seq_len
    batches = [torch.from_numpy(tokens[i * seq_len:(i + batch_size) * seq_len].astype(np.int64)).view(-1, seq_len)
               for i in range(0, n_seq, batch_size)]
    with torch.no_grad():
        _, t_fwd = timed(lambda: [model(b) for b in batches])
    print(f"  val loss  {name:5s} {n:,} tokens at seq_len {seq_len}, batch {batch_size}: "
          f"{n / t:,.0f} tokens/s (loss {loss:.3f}) | bare forward pass {n_seq * seq_len / t_fwd:,.0f} tokens/s",
          flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="tiny,gpt2")
    p.add_argument("--examples", type=int, default=64, help="HellaSwag rows per model (gpt2: a quarter)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--val-tokens", type=int, default=16_384)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(DATA / "tokenizer" / "tiktoken_cache"))
    print(f"machine: {machine()}")
    examples = load_hellaswag(DATA / "hellaswag" / "hellaswag_val.jsonl", limit=args.examples)
    text = (DATA / "text" / "tinyshakespeare.txt").read_text()
    tokens = np.array(get_tokenizer().encode_ordinary(text[: 8 * args.val_tokens]), dtype=np.uint16)
    for name in args.models.split(","):
        torch.manual_seed(0)
        cfg = MODELS[name]
        model = GPT(cfg).eval()
        print(f"model {name}: {model.num_params() / 1e6:.1f}M parameters "
              f"({cfg.n_layer} layers, {cfg.n_embd} wide)", flush=True)
        subset = examples if name == "tiny" else examples[: max(4, len(examples) // 4)]
        bench_hellaswag(name, model, subset, args.batch_size)
        seq_len = min(1024, cfg.block_size)
        budget = args.val_tokens if name == "tiny" else args.val_tokens // 4
        bench_val(name, model, tokens[: budget // seq_len * seq_len + 1], seq_len, 4)
    return 0


if __name__ == "__main__":
    sys.exit(main())
