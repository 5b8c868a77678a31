"""In-loop evaluation: validation loss, HellaSwag, generated samples.

The numbers come from the same code the eval stage uses (pipeline.val_loss and
pipeline.hellaswag), so an in-loop val loss at step N equals `python -m eval` on the
checkpoint of step N. Inputs are loaded once at start-up, so a bad val split or
HellaSwag file stops the run before the first step, not hours into it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.config import Config, ConfigError
from pipeline.distributed import DistEnv
from pipeline.shards import ShardSet
from pipeline.val_loss import compute_val_loss, val_mask_stream, val_token_stream


class InLoopEval:
    def __init__(self, cfg: Config, shards: ShardSet, env: DistEnv, autocast_dtype: torch.dtype | None):
        self.cfg = cfg
        self.env = env
        self.autocast_dtype = autocast_dtype
        ev = cfg.eval
        self.val_tokens: np.ndarray | None = None
        self.val_mask: np.ndarray | None = None
        self.hellaswag = None
        self.prompt: list[int] | None = None
        if ev.eval_every > 0:
            if ev.val_tokens < cfg.train.seq_len:
                raise ConfigError(f"eval.val_tokens = {ev.val_tokens}: must be >= train.seq_len = "
                                  f"{cfg.train.seq_len} (the budget is scored in whole sequences)")
            self.val_tokens = val_token_stream(shards, ev.val_tokens)  # ShardError if too small
            self.val_mask = val_mask_stream(shards, ev.val_tokens)  # prompt/response data: responses only
            if ev.hellaswag_path:
                self.hellaswag = _load_hellaswag(ev.hellaswag_path, ev.hellaswag_limit)
        if ev.sample_every > 0 and ev.num_samples > 0:
            from pipeline.tokenizer import get_tokenizer
            self.prompt = get_tokenizer().encode(ev.sample_prompt, allowed_special="all")

    def evaluate_due(self, step: int, max_steps: int) -> bool:
        every = self.cfg.eval.eval_every
        return every > 0 and (step % every == 0 or step == max_steps)

    def sample_due(self, step: int, max_steps: int) -> bool:
        every = self.cfg.eval.sample_every
        return self.prompt is not None and step > 0 and (step % every == 0 or step == max_steps)

    def evaluate(self, model: torch.nn.Module, step: int, tokens_seen: int) -> list[dict]:
        """Val loss (and HellaSwag) on every rank together; rows for rank 0 to log."""
        cfg = self.cfg
        val = compute_val_loss(model, self.val_tokens, cfg.train.seq_len, cfg.train.micro_batch_size,
                               self.env.device, self.autocast_dtype, self.env.rank, self.env.world_size,
                               mask=self.val_mask)
        rows = [{"step": step, "kind": "val", "loss": val.loss, "bpb": val.bpb, "tokens": tokens_seen}]
        if self.hellaswag is not None:
            from pipeline.hellaswag import evaluate_hellaswag
            # 4 endings per example: about a training micro-batch of rows per forward pass.
            result = evaluate_hellaswag(model, self.hellaswag, self.env.device, autocast_dtype=self.autocast_dtype,
                                        batch_size=max(1, cfg.train.micro_batch_size // 4), rank=self.env.rank,
                                        world_size=self.env.world_size)
            rows.append({"step": step, "kind": "hellaswag", "acc": result["acc"], "acc_norm": result["acc_norm"],
                         "n": result["n"], "tokens": tokens_seen})
        return rows

    def samples(self, model: torch.nn.Module, step: int) -> list[dict]:
        """A few continuations of eval.sample_prompt (rank 0 only; no collectives).

        Seeded by (train.seed, step) through generate()'s own generator, so sampling never
        touches the global RNG and cannot change the training trajectory."""
        from pipeline.tokenizer import get_tokenizer
        ev = self.cfg.eval
        block = model.config.block_size
        prompt = self.prompt[-(block - 1):]
        new = max(1, min(ev.sample_tokens, block - len(prompt)))
        idx = torch.tensor([prompt] * ev.num_samples, dtype=torch.long, device=self.env.device)
        out = model.generate(idx, max_new_tokens=new, temperature=1.0, top_k=50,
                             seed=(self.cfg.train.seed * 1_000_003 + step) % 2**63)  # Generator seeds are int64
        enc = get_tokenizer()
        rows = []
        for seq in out.tolist():
            ids = [t for t in seq if t < enc.n_vocab]
            rows.append({"step": step, "kind": "sample", "text": enc.decode(ids)})
        return rows


def _load_hellaswag(path: str, limit: int):
    if not Path(path).is_file():
        raise ConfigError(f"eval.hellaswag_path = {path!r}: no such file "
                          "(python -m data_prep.hellaswag installs data/hellaswag/hellaswag_val.jsonl)")
    from pipeline.hellaswag import HellaSwagError, load_hellaswag, verify_hellaswag
    try:
        # The whole file against the canonical set's sha256, as `python -m eval` does: a damaged
        # or truncated copy would otherwise give in-loop numbers that look real.
        verify_hellaswag(path)
    except HellaSwagError:
        raise ConfigError(f"eval.hellaswag_path = {path!r}: not the HellaSwag validation set (its sha256 differs: "
                          "a damaged, truncated or different file); re-install it with "
                          "python -m data_prep.hellaswag") from None
    try:
        return load_hellaswag(path, limit=limit)
    except (ValueError, KeyError, OSError, RuntimeError) as err:
        # load_hellaswag's own errors name the file and line; keep them one line.
        raise ConfigError(f"eval.hellaswag_path = {path!r}: {err}") from None
