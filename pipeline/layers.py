"""The layers of the opt-in modern model options (model.arch = "modern" or one key at a time).

Each is what the nanoGPT speedrun (KellerJordan/modded-nanogpt) and today's open models use
in place of a GPT-2 part; pipeline/model.py picks between them and GPT-2's by ModelConfig:

  pos_emb = "rope"        rotary position embeddings (Su et al. 2021) on queries and keys:
                          attention then depends on relative positions only, nothing is learned
  pos_emb = "sinusoidal"  the fixed sin/cos table of the original Transformer (Vaswani et al.
                          2017) added to the token embedding, instead of GPT-2's learned table
  norm = "rmsnorm"        RMSNorm (Zhang & Sennrich 2019): LayerNorm without the mean and bias
  qk_norm = true          RMSNorm of each head's queries and keys (Dehghani et al. 2023):
                          bounded attention logits whatever the weights' growth
  mlp = "relu2"           ReLU(x)^2 (So et al. 2021, Primer) instead of GELU
  logit_softcap = c       c * tanh(logits / c) (Gemma 2): bounded output logits
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def make_norm(kind: str, dim: int, bias: bool) -> nn.Module:
    if kind == "rmsnorm":
        return nn.RMSNorm(dim, eps=1e-6)
    return nn.LayerNorm(dim, bias=bias)


def head_norm(x: torch.Tensor) -> torch.Tensor:
    """QK-norm: RMS-normalise each head vector, no learned gain (as in the speedrun)."""
    return F.rms_norm(x, (x.size(-1),), eps=1e-6)


class ReLU2(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


class Rotary(nn.Module):
    """cos/sin tables of rotary embeddings for any positions (so a KV-cache step, a packed
    row or a custom position_ids tensor all rotate by their own position)."""

    def __init__(self, head_dim: int, base: float):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head size, got {head_dim}")
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        # Not a parameter and not saved: it is a function of the config, and a checkpoint
        # must not carry a stale copy if the formula's precision ever changes.
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (T,) or (B, T) -> cos, sin of shape (1 or B, 1, T, head_dim / 2)."""
        angles = positions.float()[..., None] * self.inv_freq
        if angles.dim() == 2:
            angles = angles[None]
        return angles.cos()[:, None], angles.sin()[:, None]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, n_head, T, head_dim) by position: pairs (x_i, x_{i+d/2}) as in GPT-NeoX/Llama."""
    half = x.size(-1) // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.type_as(x)


def sinusoidal(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """The Transformer paper's table: PE(p, 2i) = sin(p / 10000^(2i/d)), PE(p, 2i+1) = cos(...).
    positions (T,) or (B, T) -> (T, dim) or (B, T, dim), computed, not stored."""
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device)
                     * (-math.log(10000.0) / dim))
    angles = positions.float()[..., None] * freq
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)[..., :dim]


def softcap(logits: torch.Tensor, cap: float) -> torch.Tensor:
    """cap * tanh(logits / cap), in fp32 (bf16 tanh would round the small logits away)."""
    return cap * torch.tanh(logits.float() / cap)
