"""Validation loss and bits-per-byte on a fixed token budget: one definition for the
trainer and the evaluator.

The budget is the first `val_tokens` targets of the val split (shards concatenated in
order), cut into sequences of seq_len. Sequences are dealt round-robin to ranks and the
summed losses all-reduced, so the number is the same at any world size and batch size.

Bits-per-byte normalises the loss by the text it stands for, so it compares across
tokenizers and vocabulary sizes: sum of per-token loss in nats / (ln 2 x UTF-8 bytes of the
target tokens), with end-of-text targets (0 bytes, no text) left out of the nats too.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.distributed as dist

from pipeline.documents import document_layout
from pipeline.shards import ShardError, ShardSet, open_mask, open_shard
from pipeline.tokenizer import token_byte_lengths


class ValResult(NamedTuple):
    loss: float  # mean next-token cross-entropy, nats
    tokens: int  # targets scored
    bpb: float  # bits per UTF-8 byte of the targets


def val_token_stream(shards: ShardSet, val_tokens: int) -> np.ndarray:
    """The first val_tokens + 1 tokens of the val split (inputs plus the shifted targets)."""
    return _first(shards, val_tokens + 1, open_shard)


def val_mask_stream(shards: ShardSet, val_tokens: int) -> np.ndarray | None:
    """The loss mask of those tokens for prompt/response shards (data_prep.sft), else None."""
    if not shards.split("val") or shards.split("val")[0].mask_sha256 is None:
        return None
    return _first(shards, val_tokens + 1, open_mask)


def _first(shards: ShardSet, needed: int, opener) -> np.ndarray:
    parts, have = [], 0
    for info in shards.split("val"):
        # sha256 checked: a flipped byte would otherwise change every reported val loss silently.
        array = opener(info, verify_hash=True)
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
                     progress: Callable[[int], None] | None = None, mask: np.ndarray | None = None) -> ValResult:
    """Mean next-token cross-entropy and bits-per-byte over the budget. progress (e.g. a
    tqdm bar's update) is called with the number of this rank's sequences done.

    With `mask` (prompt/response data) only the targets it marks count, and every token
    attends within its own document, as the trainer trains on such data."""
    n_seq = (len(tokens) - 1) // seq_len
    mine = list(range(rank, n_seq, world_size))
    nbytes = torch.tensor(token_byte_lengths(), dtype=torch.float64, device=device)
    # [sum of losses, count, sum of losses on targets with text, bytes of the targets]
    total = torch.zeros(4, dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    autocast = (torch.autocast(device_type=device.type, dtype=autocast_dtype)
                if autocast_dtype is not None else contextlib.nullcontext())
    for start in range(0, len(mine), batch_size):
        rows = mine[start:start + batch_size]
        buf = np.stack([tokens[i * seq_len: i * seq_len + seq_len + 1] for i in rows]).astype(np.int64)
        batch = torch.from_numpy(buf).to(device)
        extra, counted = {}, None
        if mask is not None:
            rows_mask = torch.from_numpy(np.stack([mask[i * seq_len: i * seq_len + seq_len + 1] for i in rows])).to(device)
            segments, positions = document_layout(batch[:, :-1], rows_mask[:, :-1])
            extra = {"segment_ids": segments, "position_ids": positions}
            counted = rows_mask[:, 1:] == 1
        with autocast:
            # One pass of hidden states and one of the chunked output layer: the (rows x
            # seq_len x vocab) logits never exist. Summed over every target, and over those
            # with text (end-of-text has no bytes, so bits-per-byte leaves its nats out too).
            hidden = model.hidden_states(batch[:, :-1], **extra)
            targets = batch[:, 1:] if counted is None else batch[:, 1:].masked_fill(~counted, -1)
            losses = model.token_losses(hidden, targets).double()
        target_bytes = nbytes[targets.clamp(min=0)] * (targets >= 0)
        total[0] += losses.sum()
        total[1] += (targets >= 0).sum()
        total[2] += (losses * (target_bytes > 0)).sum()  # a product, not an index: no device sync
        total[3] += target_bytes.sum()
        if progress is not None:
            progress(len(rows))
    model.train(was_training)
    if world_size > 1:
        dist.all_reduce(total)
    bpb = (total[2] / (math.log(2) * total[3])).item() if total[3] > 0 else float("nan")
    return ValResult((total[0] / total[1]).item(), int(total[1].item()), bpb)
