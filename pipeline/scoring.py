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
SUFFIX_ROWS = 64  # sequences per pass after the shared prefill (sorted by length: little padding)


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
    indices into them of the positions that predict its continuation tokens.

    One prefill of the requests' shared prefixes (right-padded; the padding is its own
    segment, so nothing attends to it), then the sequences' own tokens in passes of
    similar length (sorted, so a short ending is not padded to the longest one), each
    attending to its request's cached prefix.
    """
    P = max(p.prefix for p in plans)
    rows = [(g, seq, start) for g, plan in enumerate(plans) for seq, start in zip(plan.seqs, plan.starts)]
    hidden_parts, cache = [], None
    prefix_seg = torch.full((len(plans), max(P, 1)), -1, dtype=torch.long)  # -1: padding
    with autocast:
        if P:
            prefix = torch.zeros(len(plans), P, dtype=torch.long)
            for g, plan in enumerate(plans):
                prefix[g, :plan.prefix] = torch.tensor(plan.seqs[0][:plan.prefix])
                prefix_seg[g, :plan.prefix] = 0
            cache = [None] * model.config.n_layer
            hidden_parts.append(model.hidden_states(prefix.to(device), cache,
                                                    segment_ids=prefix_seg.to(device)).reshape(-1, model.config.n_embd))
        offset = len(plans) * P
        order = sorted(range(len(rows)), key=lambda r: len(rows[r][1]) - plans[rows[r][0]].prefix)
        where = [0] * len(rows)  # flat index of each row's first suffix position
        for lo in range(0, len(order), SUFFIX_ROWS):
            chunk = order[lo:lo + SUFFIX_ROWS]
            S = max(len(rows[r][1]) - plans[rows[r][0]].prefix for r in chunk)
            tokens = torch.zeros(len(chunk), S, dtype=torch.long)
            positions = torch.zeros(len(chunk), S, dtype=torch.long)
            for i, r in enumerate(chunk):
                g, seq, _ = rows[r]
                n = plans[g].prefix
                tokens[i, :len(seq) - n] = torch.tensor(seq[n:])
                positions[i, :len(seq) - n] = torch.arange(n, len(seq))
                where[r] = offset + i * S
            kwargs = dict(position_ids=positions.to(device))
            if cache is not None:
                index = torch.tensor([rows[r][0] for r in chunk], device=device)
                kwargs["segment_ids"] = torch.cat([prefix_seg[index.cpu()],
                                                   torch.zeros(len(chunk), S, dtype=torch.long)], 1).to(device)
                kwargs["cache"] = [(k.index_select(0, index), v.index_select(0, index)) for k, v in cache]
                kwargs["start_pos"] = P
            hidden_parts.append(model.hidden_states(tokens.to(device), **kwargs).reshape(-1, model.config.n_embd))
            offset += len(chunk) * S
    hidden = torch.cat(hidden_parts).float()
    # Token t is predicted at position t - 1: in the prefill (row g) while t - 1 < prefix.
    flat = []
    for r, (g, seq, start) in enumerate(rows):
        n = plans[g].prefix
        flat.append([g * P + t - 1 if t - 1 < n else where[r] + t - 1 - n for t in range(start, len(seq))])
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
    # Similar prefix lengths share a batch (the prefill is padded to the longest one).
    order = sorted(range(len(plans)), key=lambda i: (plans[i].prefix, max(len(s) for s in plans[i].seqs)))
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
