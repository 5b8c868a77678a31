"""`python -m train --plan`: what a config will do at a world size, without training.

Parameter count, batch arithmetic (the same grad_accum_steps the trainer uses, so an
impossible batch fails here with the trainer's message), steps, total tokens, checkpoint
size, and an estimate of the peak memory per GPU with the micro batch that fits a 40 GB
and an 80 GB card.

The memory model (bytes, for P allocated parameters, micro batch b, sequence T, width h,
L layers, padded vocabulary V, compute dtype of d bytes: 2 under bf16 autocast, 4 in fp32):
- fp32 weights 4P, fp32 gradients 4P, AdamW's two moments 8P; DDP's gradient buckets
  another 4P (gradient_as_bucket_view is off); under autocast, the bf16 weight copies that
  each matmul saves for its backward, 2P.
- activations saved for the backward, per layer and token: the fp32 residual stream at
  the two LayerNorm inputs (2 x 4h) and, in the compute dtype, the inputs of c_attn (h)
  and c_fc (h), q/k/v (3h), the attention output (h: flash attention keeps no T x T
  matrix, and its output is already laid out so that c_proj's input is the same memory),
  GELU's input (4h) and the MLP projection's input (4h): 8h + 14h*d. Plus ln_f's input
  (4h) and lm_head's input (h*d). With activation checkpointing, only each block's input
  (4h) plus one block being recomputed. (tests/test_train_plan.py checks this against the
  tensors autograd really saves.)
- the loss (pipeline/chunked_loss.py: the full logits never exist): the gradient w.r.t. the
  hidden states, computed in the forward and kept (b*T*h*d), an fp32 weight-shaped gradient
  of the output layer (4*V*h), and one chunk's logits at a time in the compute dtype and in
  fp32 (rows*V*(d + 4), rows = pipeline.chunked_loss.chunk_rows on CUDA). With
  model.logit_softcap the full logits exist: eager mode holds them in the compute dtype, the
  fp32 log-softmax and, at the start of the backward, two fp32 gradients (d + 12 bytes
  each); torch.compile fuses the cast, log-softmax and loss (d + 4).
- a fixed 1 GiB for the CUDA context, cuBLAS/NCCL workspaces.
A micro batch "fits" a card when the estimate is at most 90% of it: the allocator's
fragmentation and the estimate's own error need the rest. bench/gpu_check.py measures
the real peak next to this estimate on a GPU.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import torch

from pipeline.chunked_loss import chunk_rows
from pipeline.config import Config, ConfigError
from pipeline.model import GPT
from train.schedule import grad_accum_steps

GIB = 1024**3
CARDS_GB = (40, 80)  # A100 40GB, A100/H100 80GB: marketed "GB" that are GiB (40,960 / 81,920 MiB)
USABLE = 0.9
RESERVE = 1 * GIB


def param_count(cfg: Config, include_padding: bool = True) -> int:
    """GPT.num_params() of this config's model, built on the meta device (no memory, no time:
    a real 1.5B model would cost 6 GB), so every model option is counted as the model has it."""
    key = (json.dumps(dataclasses.asdict(cfg.model), sort_keys=True), include_padding)
    if key not in _COUNTS:  # memory() asks once per candidate micro batch
        with torch.device("meta"):
            _COUNTS[key] = GPT(cfg.model).num_params(include_padding=include_padding)
    return _COUNTS[key]


_COUNTS: dict[tuple[str, bool], int] = {}


def compute_bytes(cfg: Config, device: str = "cuda") -> int:
    """Bytes of the autocast compute dtype the trainer will use on `device` (see autocast_dtype)."""
    return 2 if cfg.train.dtype == "bfloat16" or (cfg.train.dtype == "auto" and device == "cuda") else 4


def memory(cfg: Config, micro_batch: int, world_size: int, device: str = "cuda") -> dict[str, int]:
    """The estimated peak bytes per GPU by part (see the module docstring); 'total' sums them."""
    m, tc = cfg.model, cfg.train
    p, d = param_count(cfg), compute_bytes(cfg, device)
    h, tokens = m.n_embd, micro_batch * tc.seq_len
    per_layer = 8 * h + 14 * h * d
    if m.activation_checkpointing:
        layers = m.n_layer * 4 * h + per_layer  # block inputs + one block being recomputed
    else:
        layers = m.n_layer * per_layer
    parts = {
        "weights": 4 * p,
        "gradients": 4 * p,
        "adamw": 8 * p,
        "ddp_buckets": 4 * p if world_size > 1 else 0,
        "weight_copies": 2 * p if d == 2 else 0,
        "activations": tokens * (layers + 4 * h + h * d),  # + ln_f's input, lm_head's input
        **_loss(cfg, tokens, d),
        "reserve": RESERVE,
    }
    parts["total"] = sum(parts.values())
    return parts


def _loss(cfg: Config, tokens: int, d: int) -> dict[str, int]:
    m, vocab = cfg.model, cfg.model.padded_vocab_size
    if m.logit_softcap > 0:  # the model's plain path through the full logits
        return {"loss_kept": 0, "loss_chunk": tokens * vocab * (d + (4 if cfg.train.compile else 12))}
    rows = min(tokens, chunk_rows(m.vocab_size, torch.device("cuda")))
    return {"loss_kept": tokens * m.n_embd * d + 4 * vocab * m.n_embd, "loss_chunk": rows * vocab * (d + 4)}


def checkpoint_bytes(cfg: Config) -> int:
    """model.pt (fp32 weights) + optimizer.pt (two fp32 moments per weight)."""
    return 12 * param_count(cfg)


def _candidates(cfg: Config, world_size: int) -> list[int]:
    """Micro batches that divide this world size's rows per step (the trainer's rule), largest first."""
    tc = cfg.train
    rows, rest = divmod(tc.total_batch_size, tc.seq_len * world_size)
    if rest or rows == 0:
        return []
    return [b for b in range(rows, 0, -1) if rows % b == 0]


def pick_micro_batch(cfg: Config, world_size: int, card_gb: int) -> int | None:
    """The largest valid micro batch whose estimate fits USABLE of a card_gb card (None: none fits)."""
    for b in _candidates(cfg, world_size):
        if memory(cfg, b, world_size)["total"] <= USABLE * card_gb * GIB:
            return b
    return None


@dataclass
class Plan:
    name: str
    world_size: int
    params: int
    micro_batch: int
    grad_accum: int
    tokens_per_step: int
    steps: int
    total_tokens: int
    checkpoint_bytes: int
    memory: dict[str, int]
    picks: dict[int, int | None]  # card GB -> micro batch
    cfg: Config


def make_plan(cfg: Config, world_size: int, name: str = "config") -> Plan:
    if world_size < 1:
        raise ConfigError(f"--plan-world-size {world_size}: must be >= 1")
    tc = cfg.train
    accum = grad_accum_steps(tc.total_batch_size, tc.micro_batch_size, tc.seq_len, world_size)
    return Plan(name=name, world_size=world_size, params=param_count(cfg, include_padding=False),
                micro_batch=tc.micro_batch_size, grad_accum=accum, tokens_per_step=tc.total_batch_size,
                steps=tc.max_steps, total_tokens=tc.total_batch_size * tc.max_steps,
                checkpoint_bytes=checkpoint_bytes(cfg), memory=memory(cfg, tc.micro_batch_size, world_size),
                picks={gb: pick_micro_batch(cfg, world_size, gb) for gb in CARDS_GB}, cfg=cfg)


def _gib(n: int) -> str:
    return f"{n / GIB:.1f}"


def _pick_text(plan: Plan, gb: int) -> str:
    b = plan.picks[gb]
    if b is None:
        return "none fits" + ("" if plan.cfg.model.activation_checkpointing else " (try activation_checkpointing)")
    accum = plan.tokens_per_step // (b * plan.cfg.train.seq_len * plan.world_size)
    return f"{b} (accum {accum}, {_gib(memory(plan.cfg, b, plan.world_size)['total'])} GiB)"


ROWS = [
    ("parameters", lambda p: f"{p.params:,}"),
    ("world size", lambda p: str(p.world_size)),
    ("micro batch x seq_len", lambda p: f"{p.micro_batch} x {p.cfg.train.seq_len}"),
    ("grad_accum", lambda p: str(p.grad_accum)),
    ("tokens/step", lambda p: f"{p.tokens_per_step:,}"),
    ("steps", lambda p: f"{p.steps:,}"),
    ("total tokens", lambda p: f"{p.total_tokens / 1e9:.2f}B"),
    ("checkpoint (model + AdamW)", lambda p: f"{p.checkpoint_bytes / 1e9:.2f} GB"),
    ("compile", lambda p: str(p.cfg.train.compile).lower()),
    ("memory/GPU at this micro batch, GiB:", lambda p: ""),
    ("  weights fp32", lambda p: _gib(p.memory["weights"])),
    ("  gradients fp32", lambda p: _gib(p.memory["gradients"])),
    ("  AdamW moments", lambda p: _gib(p.memory["adamw"])),
    ("  DDP gradient buckets", lambda p: _gib(p.memory["ddp_buckets"])),
    ("  bf16 weight copies", lambda p: _gib(p.memory["weight_copies"])),
    ("  activations", lambda p: _gib(p.memory["activations"])),
    ("  loss: kept for the backward", lambda p: _gib(p.memory["loss_kept"])),
    ("  loss: one logits chunk", lambda p: _gib(p.memory["loss_chunk"])),
    ("  CUDA context, workspaces", lambda p: _gib(p.memory["reserve"])),
    ("  total (estimate)", lambda p: _gib(p.memory["total"])),
    *[(f"micro batch for {gb} GB cards", (lambda gb: lambda p: _pick_text(p, gb))(gb)) for gb in CARDS_GB],
]


def format_plans(plans: list[Plan]) -> str:
    """One column per config, one row per figure (a Markdown table)."""
    head = ["", *[p.name for p in plans]]
    body = [[label, *[fmt(p) for p in plans]] for label, fmt in ROWS]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    dtype = "bf16 autocast" if plans and compute_bytes(plans[0].cfg) == 2 else "fp32"
    note = (f"Memory: an estimate for CUDA with {dtype} (train/plan.py); a micro batch fits a card when the "
            f"estimate is <= {USABLE:.0%} of it.")
    return "\n".join([line(head), sep, *[line(r) for r in body], "", note])
