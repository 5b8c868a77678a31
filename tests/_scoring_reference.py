"""The continuation-scoring definition in its plainest form, for equality tests: one
sequence per model.forward (full logits, fp32), the loss and argmax read position by position."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.scoring import Request


@torch.no_grad()
def reference_scores(model: torch.nn.Module, requests: list[Request]) -> list[torch.Tensor]:
    """Per request (len(seqs), 3): [summed loss, tokens, 1.0 if greedy-exact], left-cut to block_size."""
    was_training = model.training
    model.eval()
    vocab, block = model.config.vocab_size, model.config.block_size
    out = []
    for req in requests:
        rows = []
        for seq, start in zip(req.seqs, req.starts):
            drop = max(0, len(seq) - block)
            seq, start = list(seq[drop:]), max(1, start - drop)
            logits = model(torch.tensor([seq]))[0][0, :, :vocab].float()
            target = torch.tensor(seq[start:])
            pred = logits[start - 1:len(seq) - 1]
            loss = F.cross_entropy(pred, target, reduction="sum").item() if len(target) else 0.0
            exact = float(bool((pred.argmax(-1) == target).all()))
            rows.append([loss, float(len(target)), exact])
        out.append(torch.tensor(rows, dtype=torch.float64))
    model.train(was_training)
    return out


def reference_hellaswag(model: torch.nn.Module, examples) -> torch.Tensor:
    """(N, 4, 2) [summed loss, ending length], one ending per forward."""
    reqs = [Request(tuple(ex.ctx + e for e in ex.endings), (len(ex.ctx),) * 4) for ex in examples]
    return torch.stack([s[:, :2] for s in reference_scores(model, reqs)])
