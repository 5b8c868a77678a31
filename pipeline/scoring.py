"""The continuation scorer: the one piece of code that turns "how likely is this ending
after that context" into numbers, for HellaSwag and for CORE's three task types.

A request is a group of token sequences that are scored together (the four endings of a
HellaSwag row, the choices of a CORE question, the contexts of a schema item, the single
sequence of a language-modeling item); each sequence has its continuation at the end,
from `start` on. For every sequence the scorer returns the summed cross-entropy of the
continuation tokens (in nats, over the real vocabulary), their count, and whether greedy
argmax reproduces every one of them.

Fast because it only computes what is scored:
- Batched across requests (sorted by length so padding stays small).
- The tokens a request's sequences share at the start (HellaSwag's context; a CORE
  question with its few-shot examples) run through the model once: that prefix is a
  prefill whose keys/values (GPT.forward's cache) the sequences' own tokens then attend
  to, with position_ids continuing after the prefix. A sequence longer than the model's
  context is cut from the left on its own, which shifts its positions, so such a request
  is run without sharing.
- The output layer (50257 x n_embd, most of the compute of a small model) runs only at
  the positions that predict a continuation token, once per distinct position.

Batches are formed from all requests and then dealt to ranks, so each batch is computed
identically at any world size: the result with N ranks equals the result with one.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist

HEAD_ROWS = 256  # scored positions whose logits (x 50257 fp32, ~50 MB) exist at once


@dataclass(frozen=True)
class Request:
    seqs: tuple[tuple[int, ...], ...]  # token sequences, each ending with its continuation
    starts: tuple[int, ...]  # index of each sequence's first continuation token (>= 1)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The GPT inside DistributedDataParallel (.module) and torch.compile (._orig_mod)."""
    while (inner := getattr(model, "_orig_mod", None) or getattr(model, "module", None)) is not None:
        model = inner
    return model


@dataclass
class _Plan:
    """A request made to fit the model: sequences cut from the left, the shared prefix."""
    seqs: list[list[int]]
    starts: list[int]
    prefix: int  # tokens computed once for all sequences (0 = no sharing)


def _plan(req: Request, block_size: int) -> _Plan:
    seqs, starts, cut = [], [], False
    for seq, start in zip(req.seqs, req.starts):
        if not 1 <= start <= len(seq):
            raise ValueError(f"continuation start {start} outside 1..{len(seq)}")
        drop = max(0, len(seq) - block_size)
        cut |= drop > 0
        seqs.append(list(seq[drop:]))
        # Kept as is when the cut reaches into the continuation: the tokens still there are scored.
        starts.append(max(1, start - drop))
    prefix = 0
    if len(seqs) > 1 and not cut:
        shortest = min(len(s) for s in seqs)
        while prefix < shortest - 1 and all(s[prefix] == seqs[0][prefix] for s in seqs):
            prefix += 1
    return _Plan(seqs, starts, prefix)


def _batch(model, plans: list[_Plan], device: torch.device, autocast) -> tuple[torch.Tensor, list]:
    """Hidden states (after ln_f) of every needed position, plus per sequence the flat
    indices into them of the positions that predict its continuation tokens."""
    R = sum(len(p.seqs) for p in plans)
    P = max(p.prefix for p in plans)
    S = max(len(s) - p.prefix for p in plans for s in p.seqs)
    suffix = torch.zeros(R, S, dtype=torch.long)
    positions = torch.zeros(R, S, dtype=torch.long)
    group = torch.zeros(R, dtype=torch.long)
    prefix = torch.zeros(len(plans), max(P, 1), dtype=torch.long)
    prefix_seg = torch.full((len(plans), max(P, 1)), -1, dtype=torch.long)  # -1: padding
    sources, r = [], 0
    for g, plan in enumerate(plans):
        n = plan.prefix
        if n:
            prefix[g, :n] = torch.tensor(plan.seqs[0][:n])
            prefix_seg[g, :n] = 0
        for seq, start in zip(plan.seqs, plan.starts):
            rest = seq[n:]
            suffix[r, :len(rest)] = torch.tensor(rest)
            positions[r, :len(rest)] = torch.arange(n, len(seq))
            group[r] = g
            # Token t is predicted at position t - 1: in the prefix pass (row g) while t - 1 < n.
            sources.append([g * P + t - 1 if t - 1 < n else -(r * S + t - 1 - n) - 1
                            for t in range(start, len(seq))])
            r += 1
    model_in = dict(position_ids=positions.to(device))
    with autocast:
        if P:
            cache = [None] * model.config.n_layer
            hidden_p = model.hidden_states(prefix.to(device), cache, segment_ids=prefix_seg.to(device))
            index = group.to(device)
            cache = [(k.index_select(0, index), v.index_select(0, index)) for k, v in cache]
            segments = torch.cat([prefix_seg[group], torch.zeros(R, S, dtype=torch.long)], dim=1)
            hidden_s = model.hidden_states(suffix.to(device), cache, P, segment_ids=segments.to(device),
                                           **model_in)
        else:
            hidden_p = torch.zeros(0, 0, 0, device=device)
            hidden_s = model.hidden_states(suffix.to(device), **model_in)
    C = hidden_s.size(-1)
    hidden = torch.cat([hidden_p.reshape(-1, C), hidden_s.reshape(-1, C)]).float()
    offset = hidden_p.reshape(-1, C).size(0)
    # Negative entries index the suffix pass: -(i) - 1 -> offset + i.
    flat = [[i if i >= 0 else offset - i - 1 for i in row] for row in sources]
    return hidden, flat


@torch.no_grad()
def score_requests(model: torch.nn.Module, requests: list[Request], device: torch.device | str,
                   autocast_dtype: torch.dtype | None = None, batch_size: int = 32, rank: int = 0,
                   world_size: int = 1, progress: Callable[[int], None] | None = None) -> list[torch.Tensor]:
    """Per request a (len(seqs), 3) float64 tensor: [summed loss, tokens, 1.0 if greedy-exact].

    autocast_dtype applies to the transformer body; the output layer and the loss are fp32.
    Every rank must call this together when world_size > 1; all get the full result.
    `progress(n)` is called on rank 0 as batches of n requests finish.
    """
    device = torch.device(device)
    model = unwrap(model)
    vocab = model.config.vocab_size
    plans = [_plan(req, model.config.block_size) for req in requests]
    first_row = [0]
    for plan in plans:
        first_row.append(first_row[-1] + len(plan.seqs))
    out = torch.zeros(first_row[-1], 3, dtype=torch.float64, device=device)
    head = model.lm_head.weight[:vocab].float()  # the padding rows are never a token
    buf = torch.empty(HEAD_ROWS, vocab, device=device)
    autocast = (torch.autocast(device_type=device.type, dtype=autocast_dtype)
                if autocast_dtype is not None else contextlib.nullcontext())
    order = sorted(range(len(plans)), key=lambda i: sum(len(s) for s in plans[i].seqs))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    was_training = model.training
    model.eval()
    for b in range(len(batches)):
        if b % world_size == rank:
            ids = batches[b]
            hidden, flat = _batch(model, [plans[i] for i in ids], device, autocast)
            rows = [first_row[i] + j for i in ids for j in range(len(plans[i].seqs))]
            targets = [plans[i].seqs[j][plans[i].starts[j]:] for i in ids for j in range(len(plans[i].seqs))]
            out[rows] = _score_positions(hidden, flat, targets, head, buf, model.config.logit_softcap)
        if progress is not None and rank == 0:
            progress(len(batches[b]))
    model.train(was_training)
    if world_size > 1:
        dist.all_reduce(out)  # every row was filled by exactly one rank, the others hold 0
    out = out.cpu()
    return [out[first_row[i]:first_row[i + 1]] for i in range(len(plans))]


def _score_positions(hidden: torch.Tensor, flat: list[list[int]], targets: list[list[int]],
                     head: torch.Tensor, buf: torch.Tensor, softcap: float = 0.0) -> torch.Tensor:
    """(rows, 3) [summed loss, tokens, greedy-exact] from the hidden states at the sources."""
    device = hidden.device
    src = torch.tensor([i for row in flat for i in row], dtype=torch.long, device=device)
    tgt = torch.tensor([t for row in targets for t in row], dtype=torch.long, device=device)
    seq = torch.tensor([k for k, row in enumerate(flat) for _ in row], dtype=torch.long, device=device)
    # A position shared by several sequences (the context's last token predicts every
    # ending's first token) goes through the output layer once.
    unique, inverse = torch.unique(src, return_inverse=True)
    order = torch.argsort(inverse)
    lse = torch.empty(len(unique), dtype=torch.float64, device=device)
    best = torch.empty(len(unique), dtype=torch.long, device=device)
    target_logit = torch.empty(len(src), dtype=torch.float64, device=device)
    for lo in range(0, len(unique), HEAD_ROWS):
        hi = min(lo + HEAD_ROWS, len(unique))
        logits = buf[:hi - lo]
        # In place in one reused buffer: F.linear + cross_entropy would allocate two fresh
        # (rows x 50257) arrays per chunk, and on CPU their page faults cost as much as the math.
        torch.mm(hidden[unique[lo:hi]], head.t(), out=logits)
        if softcap > 0:  # the modern head's cap * tanh(logits / cap), as GPT.output_logits applies it
            logits.div_(softcap).tanh_().mul_(softcap)
        mine = order[(inverse[order] >= lo) & (inverse[order] < hi)]
        target_logit[mine] = logits[inverse[mine] - lo, tgt[mine]].double()
        top, best[lo:hi] = logits.max(dim=1)
        lse[lo:hi] = (top + logits.sub_(top[:, None]).exp_().sum(dim=1).log()).double()
    losses = lse[inverse] - target_logit
    exact = (best[inverse] == tgt).double()
    n = len(flat)
    result = torch.zeros(n, 3, dtype=torch.float64, device=device)
    result[:, 0].index_add_(0, seq, losses)
    result[:, 1].index_add_(0, seq, torch.ones_like(losses))
    # greedy-exact: no continuation token missed (min over the sequence's tokens)
    missed = torch.zeros(n, dtype=torch.float64, device=device).index_add_(0, seq, 1.0 - exact)
    result[:, 2] = (missed == 0).double()
    return result


def mean_loss_choice(scores: torch.Tensor) -> int:
    """The choice with the lowest mean continuation loss (ties: the lowest index); a
    choice with no continuation tokens is never picked."""
    mean = scores[:, 0] / scores[:, 1]
    mean = torch.where(scores[:, 1] > 0, mean, torch.full_like(mean, float("inf")))
    return int(mean.argmin())
