"""HellaSwag, completion style: the scorer shared by eval and the trainer's in-loop hook.

The definition is build-nanogpt's / llm.c's: the context is tokenized, each of the four
endings is tokenized as " " + ending and appended to it; the model's cross-entropy is
summed over the ending tokens only. `acc` picks the ending with the lowest summed loss,
`acc_norm` the one with the lowest mean loss per ending token. GPT-2 124M scores
acc 0.2859 / acc_norm 0.2955 on the 10,042 validation rows.

Logits over the padded vocabulary rows (50257..50303) are excluded, as in llm.c: they
are never a real token, and a checkpoint converted from elsewhere may hold anything there.

`score_reference` is the definition in its plainest form (one example per forward through
model.forward, fp32). `score_batched` computes the same numbers fast: many examples per
forward, grouped by length, each example packed as ONE row "context, ending 0, ..., ending 3"
with an attention mask that lets each ending see the context and itself only, so the
context is run once instead of four times and the lm_head is applied only where a loss is
taken. Tests check that both give the same predictions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from pipeline.atomic import sha256_file
from pipeline.tokenizer import get_tokenizer

# sha256 of data/hellaswag_val.jsonl in rowanz/hellaswag (10,042 rows).
HELLASWAG_VAL_SHA256 = "0aa3b88843990f3f10a97b9575c94d7b71fb2205240ba04ae4884d9e9c992588"
HELLASWAG_VAL_ROWS = 10_042
DEFAULT_HELLASWAG = Path("data/hellaswag/hellaswag_val.jsonl")  # where data_prep.hellaswag installs it
LOSS_CHUNK = 1024  # targets whose logits (x 50257, fp32: ~200 MB) are materialised at once


class HellaSwagError(ValueError):
    """The HellaSwag file is missing, not the canonical one, or has a malformed row."""


@dataclass(frozen=True)
class Example:
    ctx: tuple[int, ...]  # context tokens
    endings: tuple[tuple[int, ...], ...]  # four endings, each tokenized as " " + ending
    label: int  # index of the correct ending
    line: int  # 1-based line in the source file (for error messages)


# ----------------------------------------------------------------------------- loading

def render_example(ctx: str, endings: list[str], label: int, line: int = 0) -> Example:
    enc = get_tokenizer()
    return Example(tuple(enc.encode_ordinary(ctx)),
                   tuple(tuple(enc.encode_ordinary(" " + e)) for e in endings), label, line)


def _check_row(row: object, where: str) -> tuple[str, list[str], int]:
    if not isinstance(row, dict):
        raise HellaSwagError(f"{where}: expected a JSON object, got {type(row).__name__}")
    ctx, endings, label = row.get("ctx"), row.get("endings"), row.get("label")
    if not isinstance(ctx, str) or not ctx.strip():
        raise HellaSwagError(f"{where}: 'ctx' must be a non-empty string, got {ctx!r}")
    if (not isinstance(endings, list) or len(endings) != 4
            or not all(isinstance(e, str) and e.strip() for e in endings)):
        raise HellaSwagError(f"{where}: 'endings' must be a list of 4 non-empty strings, got {endings!r}")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < 4:
        raise HellaSwagError(f"{where}: 'label' must be an integer 0-3, got {label!r}")
    return ctx, endings, label


def _rows(path: Path, limit: int):
    """Yield (line number, raw bytes) of the first `limit` non-blank lines (0 = all)."""
    if not path.is_file():
        raise HellaSwagError(f"{path}: HellaSwag file not found "
                             f"(install it with: python -m data_prep.hellaswag --out {DEFAULT_HELLASWAG.parent})")
    taken = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if limit and taken >= limit:
                return
            if raw.strip():
                taken += 1
                yield number, raw


def load_hellaswag(path: str | Path, limit: int = 0) -> list[Example]:
    """Read and tokenize the first `limit` rows (0 = all); a malformed row names its line."""
    path = Path(path)
    examples = []
    for number, raw in _rows(path, limit):
        where = f"{path}:{number}"
        try:
            row = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise HellaSwagError(f"{where}: not valid JSON ({err})") from None
        examples.append(render_example(*_check_row(row, where), line=number))
    if not examples:
        raise HellaSwagError(f"{path}: holds no HellaSwag rows")
    return examples


def hellaswag_sha256(path: str | Path, limit: int = 0) -> str:
    """sha256 of exactly the bytes evaluated: the whole file, or its first `limit` rows."""
    path = Path(path)
    if not limit:
        if not path.is_file():
            raise HellaSwagError(f"{path}: HellaSwag file not found")
        return sha256_file(path)
    h = hashlib.sha256()
    for _, raw in _rows(path, limit):
        h.update(raw)
    return h.hexdigest()


def verify_hellaswag(path: str | Path, expected: str = HELLASWAG_VAL_SHA256) -> str:
    """Check the whole file against the canonical validation set; returns its sha256."""
    digest = hellaswag_sha256(path)
    if digest != expected:
        raise HellaSwagError(f"{path}: sha256 {digest} is not the HellaSwag validation set's ({expected}); "
                             "re-install it with python -m data_prep.hellaswag, or pass "
                             "--hellaswag-unverified to score a file of your own")
    return digest


# ----------------------------------------------------------------------------- scoring

def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The GPT inside DistributedDataParallel (.module) and torch.compile (._orig_mod)."""
    while (inner := getattr(model, "_orig_mod", None) or getattr(model, "module", None)) is not None:
        model = inner
    return model


def _check_length(model: torch.nn.Module, ex: Example) -> None:
    need = len(ex.ctx) + max(len(e) for e in ex.endings)
    if need > model.config.block_size:
        raise HellaSwagError(f"HellaSwag line {ex.line}: context + ending is {need} tokens, "
                             f"more than the model's block_size {model.config.block_size}")


@torch.no_grad()
def score_reference(model: torch.nn.Module, examples: list[Example], device: torch.device) -> torch.Tensor:
    """(N, 4, 2) [summed loss, ending length] per ending: one example per forward, fp32."""
    model = _unwrap(model)
    vocab = model.config.vocab_size
    out = torch.zeros(len(examples), 4, 2, dtype=torch.float64)
    was_training = model.training
    model.eval()
    for i, ex in enumerate(examples):
        _check_length(model, ex)
        rows = [list(ex.ctx) + list(e) for e in ex.endings]
        width = max(len(r) for r in rows)
        tokens = torch.zeros(4, width, dtype=torch.long)
        mask = torch.zeros(4, width, dtype=torch.bool)  # True on ending tokens
        for j, row in enumerate(rows):
            tokens[j, :len(row)] = torch.tensor(row)
            mask[j, len(ex.ctx):len(row)] = True
        logits, _ = model(tokens.to(device))
        logits = logits[:, :-1, :vocab].float().cpu()
        losses = F.cross_entropy(logits.reshape(-1, vocab), tokens[:, 1:].reshape(-1), reduction="none")
        losses = losses.view(4, width - 1) * mask[:, 1:]
        out[i, :, 0] = losses.sum(dim=1).double()
        out[i, :, 1] = mask[:, 1:].sum(dim=1).double()
    model.train(was_training)
    return out


def _pack(examples: list[Example]):
    """One row per example: context then the four endings, padded to the longest row.

    Returns tokens, logical positions and segment ids (0 context, 1-4 ending, -1 padding)
    of shape (B, L), plus for every ending token: the flat index of the position whose
    logits predict it, the token itself, and its slot (example * 4 + ending).
    """
    width = max(len(ex.ctx) + sum(len(e) for e in ex.endings) for ex in examples)
    tokens = torch.zeros(len(examples), width, dtype=torch.long)
    positions = torch.zeros(len(examples), width, dtype=torch.long)
    segments = torch.full((len(examples), width), -1, dtype=torch.long)
    sources, targets, slots = [], [], []
    for b, ex in enumerate(examples):
        c = len(ex.ctx)
        tokens[b, :c] = torch.tensor(ex.ctx)
        positions[b, :c] = torch.arange(c)
        segments[b, :c] = 0
        start = c
        for j, ending in enumerate(ex.endings):
            n = len(ending)
            tokens[b, start:start + n] = torch.tensor(ending)
            positions[b, start:start + n] = torch.arange(c, c + n)  # every ending follows the context
            segments[b, start:start + n] = j + 1
            # Token k of the ending is predicted by the ending's token k-1, the first one by
            # the last context token.
            sources += [b * width + c - 1] + [b * width + start + k for k in range(n - 1)]
            targets += ending
            slots += [b * 4 + j] * n
            start += n
    return tokens, positions, segments, torch.tensor(sources), torch.tensor(targets), torch.tensor(slots)


def _packed_hidden(model: torch.nn.Module, tokens: torch.Tensor, positions: torch.Tensor,
                   segments: torch.Tensor) -> torch.Tensor:
    """GPT.forward up to ln_f, with logical positions and an ending-sees-context-and-itself mask.

    Mirrors pipeline/model.py (pre-LN blocks, tied head); the equality test against
    score_reference (which calls model.forward) keeps the two in step.
    """
    B, L = tokens.shape
    causal = torch.ones(L, L, dtype=torch.bool, device=tokens.device).tril()
    seg_q, seg_k = segments[:, :, None], segments[:, None, :]
    mask = (causal & ((seg_k == 0) | (seg_k == seg_q)))[:, None]  # (B, 1, L, L)
    t = model.transformer
    x = t.wte(tokens) + t.wpe(positions)
    for block in t.h:
        attn = block.attn
        h = block.ln_1(x)
        q, k, v = attn.c_attn(h).split(h.size(-1), dim=2)
        q, k, v = (z.view(B, L, attn.n_head, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + attn.c_proj(y.transpose(1, 2).reshape(B, L, -1))
        x = x + block.mlp(block.ln_2(x))
    return t.ln_f(x)


def _cross_entropy_into(hidden: torch.Tensor, head_t: torch.Tensor, targets: torch.Tensor,
                        buf: torch.Tensor) -> torch.Tensor:
    """-log softmax(hidden @ head_t)[target] per row, computed in place in buf.

    The logits of every target are (rows x 50257): F.linear + F.cross_entropy would
    allocate two such arrays per chunk, and on CPU the page faults of those fresh
    allocations cost as much as the arithmetic.
    """
    torch.mm(hidden, head_t, out=buf)
    target_logit = buf.gather(1, targets[:, None]).squeeze(1)
    top = buf.amax(dim=1, keepdim=True)
    buf.sub_(top).exp_()
    return top.squeeze(1) + buf.sum(dim=1).log() - target_logit


@torch.no_grad()
def score_batched(model: torch.nn.Module, examples: list[Example], device: torch.device,
                  autocast_dtype: torch.dtype | None = None, batch_size: int = 32) -> torch.Tensor:
    """Same result as score_reference, many examples per forward pass.

    autocast_dtype applies to the transformer body; the head and the loss are in fp32.
    """
    model = _unwrap(model)
    vocab = model.config.vocab_size
    for ex in examples:
        _check_length(model, ex)
    head_t = model.lm_head.weight[:vocab].float().t()  # the padding rows are never a token
    buf = torch.empty(LOSS_CHUNK, vocab, device=device)
    out = torch.zeros(len(examples), 4, 2, dtype=torch.float64)
    # Sorting by packed length keeps similar lengths together, so padding stays small.
    order = sorted(range(len(examples)),
                   key=lambda i: len(examples[i].ctx) + sum(map(len, examples[i].endings)))
    autocast = (torch.autocast(device_type=device.type, dtype=autocast_dtype)
                if autocast_dtype is not None else contextlib.nullcontext())
    was_training = model.training
    model.eval()
    for start in range(0, len(order), batch_size):
        ids = order[start:start + batch_size]
        tokens, positions, segments, sources, targets, slots = _pack([examples[i] for i in ids])
        with autocast:
            hidden = _packed_hidden(model, tokens.to(device), positions.to(device), segments.to(device))
        hidden = hidden.flatten(0, 1).float()
        sums = torch.zeros(len(ids) * 4, dtype=torch.float64, device=device)
        sources, targets, slots = sources.to(device), targets.to(device), slots.to(device)
        for lo in range(0, len(targets), LOSS_CHUNK):
            part = slice(lo, lo + LOSS_CHUNK)
            rows = hidden[sources[part]]
            losses = _cross_entropy_into(rows, head_t, targets[part], buf[:len(rows)])
            sums.index_add_(0, slots[part], losses.double())
        lengths = torch.bincount(slots.cpu(), minlength=len(ids) * 4).double()
        out[ids] = torch.stack([sums.cpu(), lengths], dim=1).view(len(ids), 4, 2)
    model.train(was_training)
    return out


def predictions(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(acc prediction, acc_norm prediction) per example; ties go to the lowest index."""
    return scores[:, :, 0].argmin(dim=1), (scores[:, :, 0] / scores[:, :, 1]).argmin(dim=1)


def evaluate_hellaswag(model: torch.nn.Module, examples: list[Example], device: torch.device | str,
                       autocast_dtype: torch.dtype | None = None, batch_size: int = 32,
                       rank: int = 0, world_size: int = 1) -> dict:
    """{"acc", "acc_norm", "n"} over all examples; rank r scores examples r, r+W, r+2W, ...

    Every rank must call this (the counts are all-reduced), and all get the same result.
    """
    if not examples:
        raise HellaSwagError("no HellaSwag examples to evaluate")
    device = torch.device(device)
    mine = examples[rank::world_size]
    counts = torch.zeros(3, dtype=torch.float64, device=device)  # [correct, correct_norm, n]
    if mine:
        scores = score_batched(model, mine, device, autocast_dtype, batch_size)
        pred, pred_norm = predictions(scores)
        labels = torch.tensor([ex.label for ex in mine])
        counts += torch.tensor([(pred == labels).sum().item(), (pred_norm == labels).sum().item(),
                                len(mine)], dtype=torch.float64, device=device)
    if world_size > 1:
        dist.all_reduce(counts)
    correct, correct_norm, n = counts.tolist()
    return {"acc": correct / n, "acc_norm": correct_norm / n, "n": int(n)}
