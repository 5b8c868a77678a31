"""AdamW as GPT-2/3 used it: weight decay on matrices only, fused kernels where supported."""

from __future__ import annotations

import torch
import torch.nn as nn

from pipeline.config import ConfigError, OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay >=2-D tensors (matmul weights, embeddings); never biases or LayerNorm gains."""
    params = [p for p in model.parameters() if p.requires_grad]  # tied weights appear once
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig, device_type: str) -> tuple[torch.optim.AdamW, bool]:
    """Return (optimizer, fused). fused=auto uses the fused kernel when torch has one for the device."""
    groups = param_groups(model, cfg.weight_decay)
    kwargs = dict(lr=cfg.max_lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    if cfg.fused == "false":
        return torch.optim.AdamW(groups, foreach=None, **kwargs), False
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs), True
    except (RuntimeError, TypeError) as err:
        if cfg.fused == "true":
            raise ConfigError(f"optim.fused = 'true': fused AdamW is not available on {device_type}: {err}") from None
        return torch.optim.AdamW(groups, **kwargs), False
