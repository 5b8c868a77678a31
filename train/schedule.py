"""Step arithmetic: how many micro-steps make one optimizer step, and the learning rate.

Both are pure functions of the config (and the step), so a resumed run recomputes them
instead of storing them.
"""

from __future__ import annotations

import math

from pipeline.config import ConfigError, OptimConfig


def grad_accum_steps(total_batch: int, micro_batch: int, seq_len: int, world_size: int) -> int:
    """total_batch tokens = micro_batch x seq_len x world_size x grad_accum, exactly.

    Anything else would silently change the optimizer's batch size, so a mismatch is an
    error that lists the micro-batch sizes (or total batch sizes) that do divide.
    """
    per_micro = micro_batch * seq_len * world_size
    if total_batch % per_micro == 0:
        return total_batch // per_micro
    tokens_per_row = seq_len * world_size
    head = (f"train.total_batch_size = {total_batch} is not a multiple of train.micro_batch_size x "
            f"train.seq_len x world size = {micro_batch} x {seq_len} x {world_size} = {per_micro}")
    if total_batch % tokens_per_row == 0:
        rows = total_batch // tokens_per_row
        valid = [m for m in range(1, rows + 1) if rows % m == 0]
        near = sorted(valid, key=lambda m: (abs(m - micro_batch), m))[:8]
        return _fail(f"{head}; valid train.micro_batch_size values: {', '.join(map(str, sorted(near)))}")
    lower = (total_batch // per_micro) * per_micro
    options = [t for t in (lower, lower + per_micro) if t > 0]
    return _fail(f"{head}; no micro-batch size divides it (seq_len x world size = {tokens_per_row} does not "
                 f"divide it either): use e.g. --train.total_batch_size={' or '.join(map(str, options))}")


def _fail(message: str) -> int:
    raise ConfigError(message)


def lr_at(step: int, optim: OptimConfig, max_steps: int) -> float:
    """Learning rate for the update with 0-based index `step`.

    Linear warmup from max_lr/warmup to max_lr over warmup_steps (the first update does
    not use lr 0, which would waste a step), then a half cosine from max_lr down to
    min_lr = min_lr_ratio * max_lr at max_steps, flat afterwards (GPT-3 paper, Table 2.1
    plus Appendix B, as in build-nanogpt). optim.schedule = "trapezoid" replaces the cosine
    with a flat stretch and a linear cooldown.
    """
    max_lr = optim.max_lr
    min_lr = optim.max_lr * optim.min_lr_ratio
    if step < optim.warmup_steps:
        return max_lr * (step + 1) / optim.warmup_steps
    if step >= max_steps:
        return min_lr
    if optim.schedule == "trapezoid":
        # Warmup-stable-decay as in modded-nanogpt: flat at max_lr, then linear to min_lr
        # over the last cooldown_frac of the run (ending exactly at max_steps).
        cooldown = max(1, round(optim.cooldown_frac * max_steps))
        left = max_steps - step
        if left >= cooldown:
            return max_lr
        return min_lr + (max_lr - min_lr) * left / cooldown
    progress = (step - optim.warmup_steps) / max(1, max_steps - optim.warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)
