"""The optimizers: AdamW as GPT-2/3 used it (the default), or Muon + AdamW (optim.name = "muon").

AdamW: weight decay on matrices only, fused kernels where supported.

Muon (Jordan et al. 2024, torch.optim.Muon) orthogonalises each update of a hidden weight
matrix (Newton-Schulz), which suits matrices that act on activations; embeddings, the
output head and gains/biases are not such matrices, so the speedrun (modded-nanogpt) and
torch's own documentation keep AdamW for them. Both halves sit behind one object with the
optimizer interface the trainer uses (param_groups, step, zero_grad, state_dict), so
checkpoints, exact resume and the non-finite guard (which skips step()) work unchanged.

The trainer sets every group's lr to schedule(step) x group["lr_scale"]: one schedule,
separate peak rates (optim.max_lr, muon_lr, embed_lr, head_lr).
"""

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


def _adamw(groups: list[dict], cfg: OptimConfig, device_type: str) -> tuple[torch.optim.AdamW, bool]:
    kwargs = dict(lr=cfg.max_lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    if cfg.fused == "false":
        return torch.optim.AdamW(groups, foreach=None, **kwargs), False
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs), True
    except (RuntimeError, TypeError) as err:
        if cfg.fused == "true":
            raise ConfigError(f"optim.fused = 'true': fused AdamW is not available on {device_type}: {err}") from None
        return torch.optim.AdamW(groups, **kwargs), False


def build_optimizer(model: nn.Module, cfg: OptimConfig, device_type: str):
    """Return (optimizer, fused). fused=auto uses the fused AdamW kernel when torch has one for the device."""
    if cfg.name == "muon":
        return build_muon(model, cfg, device_type)
    return _adamw(param_groups(model, cfg.weight_decay), cfg, device_type)


def muon_split(model: nn.Module) -> tuple[list, list, list, list]:
    """(hidden matrices, embeddings, untied head, 1-D params), each parameter exactly once.

    Hidden matrices are the 2-D weights inside the transformer blocks (attention and MLP
    projections); the token/position embeddings and the head are 2-D but are lookups or a
    classifier, not hidden maps, so they stay with AdamW.
    """
    blocks = {id(p) for p in model.transformer.h.parameters()}
    embeds = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    hidden, embed, head, vectors, seen = [], [], [], [], set()
    for p in model.parameters():  # a tied head is the embedding: it appears once, as wte
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.dim() < 2:
            vectors.append(p)
        elif id(p) in embeds:
            embed.append(p)
        elif id(p) in blocks:
            hidden.append(p)
        else:
            head.append(p)
    return hidden, embed, head, vectors


class MuonAdamW:
    """torch.optim.Muon for the hidden matrices, AdamW for the rest, as one optimizer."""

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer):
        self.muon, self.adamw = muon, adamw

    @property
    def param_groups(self) -> list[dict]:
        return self.muon.param_groups + self.adamw.param_groups  # the same dicts: writes reach them

    def step(self) -> None:
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or set(state) != {"muon", "adamw"}:
            raise ValueError("the checkpoint's optimizer state is not Muon + AdamW (optim.name differs: "
                             "resume with the checkpoint's optim.name or start a new --run-dir)")
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])


def build_muon(model: nn.Module, cfg: OptimConfig, device_type: str) -> tuple[MuonAdamW, bool]:
    hidden, embed, head, vectors = muon_split(model)
    # Muon's update has unit spectral norm whatever the gradient's scale; "original" is
    # Keller Jordan's shape adjustment sqrt(max(1, rows/cols)), the one muon_lr values from
    # the speedrun were tuned with.
    muon = torch.optim.Muon([{"params": hidden, "lr_scale": cfg.muon_lr / cfg.max_lr}], lr=cfg.muon_lr,
                            momentum=cfg.muon_momentum, weight_decay=cfg.muon_weight_decay, nesterov=True,
                            adjust_lr_fn="original")
    scale = lambda lr: (lr or cfg.max_lr) / cfg.max_lr  # noqa: E731 - 0 means "max_lr"
    groups = [{"params": embed, "weight_decay": cfg.weight_decay, "lr_scale": scale(cfg.embed_lr)},
              {"params": head, "weight_decay": cfg.weight_decay, "lr_scale": scale(cfg.head_lr)},
              {"params": vectors, "weight_decay": 0.0, "lr_scale": 1.0}]
    adamw, fused = _adamw([g for g in groups if g["params"]], cfg, device_type)
    return MuonAdamW(muon, adamw), fused
