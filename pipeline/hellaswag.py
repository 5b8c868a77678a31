"""HellaSwag, completion style: the scorer shared by eval and the trainer's in-loop hook.

The definition is build-nanogpt's / llm.c's: the context is tokenized, each of the four
endings is tokenized as " " + ending and appended to it; the model's cross-entropy is
summed over the ending tokens only. `acc` picks the ending with the lowest summed loss,
`acc_norm` the one with the lowest mean loss per ending token. GPT-2 124M scores
acc 0.2859 / acc_norm 0.2955 on the 10,042 validation rows.

Logits over the padded vocabulary rows (50257..50303) are excluded, as in llm.c: they
are never a real token, and a checkpoint converted from elsewhere may hold anything there.

Scoring is pipeline/scoring.py's continuation scorer (the same one CORE uses): an example
is one request of four sequences that share the context, so the context runs once and the
output layer only at the ending positions. tests/_scoring_reference.py holds the definition
in its plainest form (one sequence per forward, full logits); tests check both agree.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.atomic import sha256_file
from pipeline.scoring import Request, score_requests, unwrap
from pipeline.tokenizer import get_tokenizer

# sha256 of data/hellaswag_val.jsonl in rowanz/hellaswag (10,042 rows).
HELLASWAG_VAL_SHA256 = "0aa3b88843990f3f10a97b9575c94d7b71fb2205240ba04ae4884d9e9c992588"
HELLASWAG_VAL_ROWS = 10_042
DEFAULT_HELLASWAG = Path("data/hellaswag/hellaswag_val.jsonl")  # where data_prep.hellaswag installs it


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

def _check_length(model: torch.nn.Module, ex: Example) -> None:
    need = len(ex.ctx) + max(len(e) for e in ex.endings)
    if need > model.config.block_size:
        raise HellaSwagError(f"HellaSwag line {ex.line}: context + ending is {need} tokens, "
                             f"more than the model's block_size {model.config.block_size}")


def request(ex: Example) -> Request:
    """The example for the continuation scorer: four sequences sharing the context."""
    return Request(tuple(ex.ctx + e for e in ex.endings), (len(ex.ctx),) * 4)


def score_hellaswag(model: torch.nn.Module, examples: list[Example], device: torch.device | str,
                    autocast_dtype: torch.dtype | None = None, batch_size: int = 32, rank: int = 0,
                    world_size: int = 1, progress=None) -> torch.Tensor:
    """(N, 4, 2) [summed loss, ending length] per ending (pipeline/scoring.py does the work)."""
    for ex in examples:
        _check_length(unwrap(model), ex)
    scores = score_requests(model, [request(ex) for ex in examples], device, autocast_dtype, batch_size,
                            rank, world_size, progress)
    return torch.stack([s[:, :2] for s in scores]) if scores else torch.zeros(0, 4, 2, dtype=torch.float64)


def predictions(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(acc prediction, acc_norm prediction) per example; ties go to the lowest index."""
    return scores[:, :, 0].argmin(dim=1), (scores[:, :, 0] / scores[:, :, 1]).argmin(dim=1)


def evaluate_hellaswag(model: torch.nn.Module, examples: list[Example], device: torch.device | str,
                       autocast_dtype: torch.dtype | None = None, batch_size: int = 32,
                       rank: int = 0, world_size: int = 1, progress=None) -> dict:
    """{"acc", "acc_norm", "n"} over all examples, split across ranks by the scorer.

    Every rank must call this (the scores are all-reduced), and all get the same result.
    """
    if not examples:
        raise HellaSwagError("no HellaSwag examples to evaluate")
    scores = score_hellaswag(model, examples, device, autocast_dtype, batch_size, rank, world_size, progress)
    pred, pred_norm = predictions(scores)
    labels = torch.tensor([ex.label for ex in examples])
    n = len(examples)
    return {"acc": (pred == labels).sum().item() / n, "acc_norm": (pred_norm == labels).sum().item() / n, "n": n}
