"""Where the documents of a packed row begin: segment and position ids for attention
within documents (fine-tuning data; see data_prep/sft.py and docs/finetune.md)."""

from __future__ import annotations

import torch

from pipeline.tokenizer import EOT


def document_layout(tokens: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(segment ids, position ids), both (B, T), for attention within documents.

    A document starts at each end-of-text token -- with a loss mask, only at one the loss
    skips (data_prep.sft ends every response with an end-of-text that IS a target). The
    first tokens of a row continue a document that began before it; they form segment 0.
    Positions count from each document's start, so a packed document sees the same
    positions as it would alone."""
    starts = tokens == EOT
    if mask is not None:
        starts &= mask == 0
    segments = starts.long().cumsum(1)
    index = torch.arange(tokens.size(1), device=tokens.device).expand_as(tokens)
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(1).values
    return segments, index - first
