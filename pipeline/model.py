"""GPT-2, exactly: learned positions, pre-LayerNorm blocks, tied lm_head.

With ModelConfig's modern options (all off by default) the same classes build the
speedrun-style model instead: rotary or sinusoidal positions, RMSNorm, QK-norm, ReLU^2,
an untied zero-initialised head, zero-initialised residual projections, logit soft-capping;
the layers themselves live in pipeline/layers.py.

The model knows nothing about distributed training, files or devices; the trainer,
the evaluator and the HF interop (pipeline/hf.py) wrap it.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from pipeline.chunked_loss import linear_cross_entropy, token_losses
from pipeline.config import ModelConfig
from pipeline.layers import ReLU2, Rotary, apply_rotary, head_norm, make_norm, sinusoidal, softcap

# A per-layer (key, value) cache, each of shape (B, n_head, T_so_far, head_dim).
KVCache = list[tuple[torch.Tensor, torch.Tensor] | None]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qk_norm = cfg.qk_norm
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.c_proj.residual_scaled = True

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                mask: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if self.qk_norm:
            q, k = head_norm(q), head_norm(k)
        if rope is not None:  # rotate by position before caching: cached keys keep their own
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if cache is not None:
            past = cache[layer]
            if past is not None:
                k = torch.cat([past[0], k], dim=2)
                v = torch.cat([past[1], v], dim=2)
            cache[layer] = (k, v)
        if mask is not None:  # built once per forward by GPT.attention_mask
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            # Plainly causal (training's fast path), or one new token after a cache that
            # attends to everything before it.
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        # GPT-2 used GELU's tanh approximation; the attribute keeps its name for old pickles' sake.
        self.gelu = ReLU2() if cfg.mlp == "relu2" else nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.c_proj.residual_scaled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = make_norm(cfg.norm, cfg.n_embd, cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = make_norm(cfg.norm, cfg.n_embd, cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                mask: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer, mask, rope)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        modules = dict(wte=nn.Embedding(cfg.padded_vocab_size, cfg.n_embd))
        if cfg.pos_emb == "learned":
            modules["wpe"] = nn.Embedding(cfg.block_size, cfg.n_embd)
        modules["h"] = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        modules["ln_f"] = make_norm(cfg.norm, cfg.n_embd, cfg.bias)
        self.transformer = nn.ModuleDict(modules)
        self.rotary = Rotary(cfg.n_embd // cfg.n_head, cfg.rope_base) if cfg.pos_emb == "rope" else None
        self.lm_head = nn.Linear(cfg.n_embd, cfg.padded_vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight  # weight tying
        self.apply(self._init_weights)
        if cfg.zero_init:
            # The speedrun's muP-like start: every block begins as the identity map and the
            # output as the uniform distribution; Muon's updates do not depend on the weights'
            # scale, so they leave zero at once. Never the head when it is the embedding.
            zeroed = [m for m in self.modules() if getattr(m, "residual_scaled", False)]
            zeroed += [] if cfg.tie_embeddings else [self.lm_head]
            for module in zeroed:
                nn.init.zeros_(module.weight)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "residual_scaled", False):
                # GPT-2 paper: scale residual projections by 1/sqrt(number of residual adds).
                std *= (2 * self.config.n_layer) ** -0.5
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, include_padding: bool = False) -> int:
        """Parameter count as published (tied embedding counted once, vocab 50257)."""
        n = sum(p.numel() for p in self.parameters())
        if not include_padding:
            copies = 1 if self.config.tie_embeddings else 2  # wte and an untied lm_head
            n -= copies * (self.config.padded_vocab_size - self.config.vocab_size) * self.config.n_embd
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6N + 12 L H Q T."""
        c = self.config
        n = self.num_params(include_padding=True)
        if "wpe" in self.transformer:  # a lookup, not a matmul
            n -= self.transformer.wpe.weight.numel()
        return 6 * n + 12 * c.n_layer * c.n_embd * seq_len

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None, start_pos: int = 0, *,
                      position_ids: torch.Tensor | None = None,
                      segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The final hidden states (after ln_f), (B, T, n_embd): apply the output layer
        only where a prediction is needed (see forward for the arguments)."""
        B, T = idx.shape
        if position_ids is None:
            if start_pos + T > self.config.block_size:
                raise ValueError(f"sequence length {start_pos + T} exceeds block_size {self.config.block_size}")
            position_ids = torch.arange(start_pos, start_pos + T, dtype=torch.long, device=idx.device)
        elif position_ids.shape != idx.shape:
            raise ValueError(f"position_ids has shape {tuple(position_ids.shape)}, expected {tuple(idx.shape)}")
        elif T and int(position_ids.max()) >= self.config.block_size:
            raise ValueError(f"position {int(position_ids.max())} exceeds block_size {self.config.block_size}")
        past = cache[0][0].size(2) if cache is not None and cache[0] is not None else 0
        mask = self.attention_mask(T, past, segment_ids, idx.device)
        x, rope = self.embed(idx, position_ids)
        for i, block in enumerate(self.transformer.h):
            if self.config.activation_checkpointing and self.training and cache is None:
                x = checkpoint(block, x, None, i, mask, rope, use_reentrant=False)
            else:
                x = block(x, cache, i, mask, rope)
        return self.transformer.ln_f(x)

    @staticmethod
    def attention_mask(T: int, past: int, segment_ids: torch.Tensor | None,
                       device: torch.device) -> torch.Tensor | None:
        """Boolean (B or 1, 1, T, past + T) mask, or None for the plain causal fast path.

        Query i (at sequence position past + i) sees key j when j <= past + i and, with
        segment_ids, when both lie in the same segment. With a cache, segment_ids covers
        the whole sequence so far (B, past + T): the keys' segments are not in the cache.
        Every token sees itself, so no row is empty (an empty row would be nan).
        """
        if segment_ids is None and (past == 0 or T == 1):
            return None
        seen = torch.arange(past + T, device=device)[None, :] <= torch.arange(past, past + T, device=device)[:, None]
        if segment_ids is None:
            return seen[None, None]
        if segment_ids.dim() != 2 or segment_ids.size(1) != past + T:
            raise ValueError(f"segment_ids has shape {tuple(segment_ids.shape)}, expected (B, {past + T}) "
                             "(with a cache: the segments of the cached tokens too)")
        same = segment_ids[:, past:, None] == segment_ids[:, None, :]
        return (seen & same)[:, None]

    def loss_from_hidden(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the output layer over hidden states (targets -1 ignored),
        computed in chunks so the full logits never exist (pipeline/chunked_loss.py), the
        soft-cap (model.logit_softcap) applied inside each chunk."""
        return linear_cross_entropy(hidden, self.lm_head.weight, targets, self.config.vocab_size,
                                    softcap=self.config.logit_softcap)

    def token_losses(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-token cross-entropy (fp32, 0 where a target is -1), chunked, without gradients."""
        return token_losses(hidden, self.lm_head.weight, targets, self.config.vocab_size,
                            softcap=self.config.logit_softcap)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None, start_pos: int = 0, *,
                position_ids: torch.Tensor | None = None, segment_ids: torch.Tensor | None = None):
        """Return (logits over the padded vocab, None) without targets, (None, mean
        cross-entropy) with them: the loss is computed in token chunks from the hidden
        states (pipeline/chunked_loss.py) and the full logits never exist.

        Logits of the padding ids (>= vocab_size) are the dtype's minimum, so a softmax
        over the padded vocab equals one over the real vocab. targets equal to -1 are ignored.
        `cache`/`start_pos` are for generate() and prefix reuse: new tokens attend to the
        cached ones. position_ids (B, T) replace the positions start_pos + arange(T) (packed
        or shared-prefix rows); segment_ids (B, T) let a token attend only to earlier tokens
        of its own segment (several documents in one row).
        """
        x = self.hidden_states(idx, cache, start_pos, position_ids=position_ids, segment_ids=segment_ids)
        if targets is not None:
            return None, self.loss_from_hidden(x, targets)
        return self.output_logits(x), None

    def output_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Hidden states -> logits over the padded vocab: the head, the soft-cap if set, the
        padding columns masked. Anything that scores from hidden_states() goes through here."""
        logits = self.lm_head(x)
        if self.config.logit_softcap > 0:
            logits = softcap(logits, self.config.logit_softcap)
        if self.config.padded_vocab_size > self.config.vocab_size:
            # The padding columns are not tokens. Without this they would take probability
            # mass in every softmax: the loss would not be the 50257-way cross-entropy, and
            # imported HF weights (zero pad rows -> logit 0, far above GPT-2's typical
            # logits) would look badly broken. The in-place write is cheap and autograd-safe
            # (the matmul does not save its output); finfo.min rather than -inf keeps
            # downstream arithmetic such as p * log p free of nan.
            logits[..., self.config.vocab_size:] = torch.finfo(logits.dtype).min
        return logits

    def embed(self, idx: torch.Tensor, pos: torch.Tensor):
        """(token + absolute position embedding, rotary cos/sin or None) for positions pos."""
        x = self.transformer.wte(idx)
        if self.config.pos_emb == "learned":
            return x + self.transformer.wpe(pos), None
        if self.config.pos_emb == "sinusoidal":
            return x + sinusoidal(pos, self.config.n_embd).to(x.dtype), None
        return x, self.rotary(pos)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 use_cache: bool = True) -> torch.Tensor:
        """Sample max_new_tokens after idx (B, T). temperature 0 = greedy.

        With the KV cache each new token costs one position of compute, so generation is
        linear in length; use_cache=False recomputes the whole prefix (reference path).
        """
        if idx.size(1) + max_new_tokens > self.config.block_size:
            raise ValueError(f"prompt ({idx.size(1)}) + max_new_tokens ({max_new_tokens}) "
                             f"exceeds block_size {self.config.block_size}")
        was_training = self.training
        self.eval()
        gen = None
        if seed is not None:
            gen = torch.Generator(device=idx.device).manual_seed(seed)
        cache: KVCache | None = [None] * self.config.n_layer if use_cache else None
        out = idx
        step_input, start = idx, 0
        for _ in range(max_new_tokens):
            if use_cache:
                logits, _ = self(step_input, cache=cache, start_pos=start)
                start += step_input.size(1)
            else:
                logits, _ = self(out)
            logits = logits[:, -1, : self.config.vocab_size].float()
            nxt = sample_next(logits, temperature, top_k, top_p, gen)
            out = torch.cat([out, nxt], dim=1)
            step_input = nxt
        self.train(was_training)
        return out


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None,
                top_p: float | None, gen: torch.Generator | None) -> torch.Tensor:
    """One token per row from (B, V) logits; greedy when temperature == 0."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the tokens before it already cover top_p (always keep the first).
        drop = cumulative - sorted_logits.softmax(-1) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, -math.inf)
        logits = torch.full_like(logits, -math.inf).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=gen)
