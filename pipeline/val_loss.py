"""Validation loss on a fixed token budget: one definition for the trainer and the evaluator.

The budget is the first `val_tokens` targets of the val split (shards concatenated in
order), cut into sequences of seq_len. Sequences are dealt round-robin to ranks and the
summed losses all-reduced, so the number is the same at any world size and batch size.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from pipeline.shards import ShardError, ShardSet, open_shard


def val_token_stream(shards: ShardSet, val_tokens: int) -> np.ndarray:
    """The first val_tokens + 1 tokens of the val split (inputs plus the shifted targets)."""
    needed = val_tokens + 1
    parts, have = [], 0
    for info in shards.split("val"):
        # sha256 checked: a flipped byte would otherwise change every reported val loss silently.
        array = open_shard(info, verify_hash=True)
        take = min(len(array), needed - have)
        parts.append(np.asarray(array[:take]))
        have += take
        if have >= needed:
            break
    if have < needed:
        raise ShardError(f"{shards.directory}: the val split holds {have} tokens, fewer than the "
                         f"eval budget eval.val_tokens + 1 = {needed}; lower eval.val_tokens")
    return np.concatenate(parts)


@torch.no_grad()
def compute_val_loss(model: torch.nn.Module, tokens: np.ndarray, seq_len: int, batch_size: int,
                     device: torch.device, autocast_dtype: torch.dtype | None = None,
                     rank: int = 0, world_size: int = 1,
                     progress: Callable[[int], None] | None = None) -> tuple[float, int]:
    """Mean next-token cross-entropy over the budget; returns (loss, tokens scored).
    progress (e.g. a tqdm bar's update) is called with the number of this rank's sequences done."""
    n_seq = (len(tokens) - 1) // seq_len
    mine = list(range(rank, n_seq, world_size))
    total = torch.zeros(2, dtype=torch.float64, device=device)  # [sum of losses, count]
    was_training = model.training
    model.eval()
    autocast = (torch.autocast(device_type=device.type, dtype=autocast_dtype)
                if autocast_dtype is not None else contextlib.nullcontext())
    for start in range(0, len(mine), batch_size):
        rows = mine[start:start + batch_size]
        buf = np.stack([tokens[i * seq_len: i * seq_len + seq_len + 1] for i in rows]).astype(np.int64)
        batch = torch.from_numpy(buf).to(device)
        with autocast:
            # The model's chunked loss: the (rows x seq_len x vocab) logits never exist.
            # Every target is a real token, so mean x count is the sum.
            _, loss = model(batch[:, :-1], batch[:, 1:])
        total[0] += loss.double() * batch[:, 1:].numel()
        total[1] += batch[:, 1:].numel()
        if progress is not None:
            progress(len(rows))
    model.train(was_training)
    if world_size > 1:
        dist.all_reduce(total)
    return (total[0] / total[1]).item(), int(total[1].item())
