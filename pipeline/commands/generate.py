"""`python -m pipeline generate`: sample text from a checkpoint or from OpenAI's GPT-2 weights.

    python -m pipeline generate --checkpoint runs/demo --prompt "The Python interpreter"
    python -m pipeline generate --hf gpt2 --prompt "Hello, I'm a language model," --num-samples 4

--checkpoint takes a checkpoint directory or a run directory (its latest complete
checkpoint). --hf takes a Hugging Face model name or a local directory of GPT-2 weights.
Sampling is reproducible: the same --seed gives the same text on the same device.
"""

from __future__ import annotations

import argparse
import math
import sys

import torch

from pipeline.checkpoint import CheckpointError, resolve_checkpoint
from pipeline.checkpoint import load_model as load_checkpoint_model
from pipeline.cli import OneLineParser
from pipeline.config import ConfigError
from pipeline.distributed import pick_device
from pipeline.hf import HFError, load_hf_gpt2
from pipeline.model import GPT
from pipeline.tokenizer import EOT, TokenizerError, get_tokenizer


def load_model(checkpoint: str, device: torch.device | str = "cpu") -> tuple[GPT, dict]:
    """The GPT stored in a checkpoint (or a run's latest one) and its train_state."""
    path = resolve_checkpoint(checkpoint)
    model, state = load_checkpoint_model(path)
    return model.to(device).eval(), {**state, "path": str(path)}


def generate_texts(model: GPT, prompt: str, num_samples: int = 1, max_new_tokens: int = 64,
                   temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                   seed: int | None = None) -> list[str]:
    """num_samples continuations of prompt (the prompt included), one batched generate call."""
    enc = get_tokenizer()
    # An empty prompt starts from <|endoftext|>, the token every training document begins with.
    ids = enc.encode_ordinary(prompt) if prompt else [EOT]
    block = model.config.block_size
    if len(ids) >= block:
        raise ValueError(f"the prompt is {len(ids)} tokens; this model's context is {block}")
    max_new_tokens = min(max_new_tokens, block - len(ids))
    device = next(model.parameters()).device
    idx = torch.tensor([ids] * num_samples, dtype=torch.long, device=device)
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    texts = []
    for row in out.tolist():
        new = row[len(ids):]
        if EOT in new:  # the model ended the document: what follows belongs to another one
            new = new[:new.index(EOT)]
        texts.append(prompt + enc.decode(new))
    return texts


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m pipeline generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="checkpoint directory, or a run directory (latest checkpoint)")
    source.add_argument("--hf", metavar="NAME_OR_DIR", help="Hugging Face GPT-2 name (gpt2, gpt2-medium, ...) or local dir")
    p.add_argument("--prompt", default="", help="text to continue (empty: start a new document)")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=50, help="keep the k most likely tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0 = off)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    return p


def check_args(args: argparse.Namespace) -> None:
    if args.num_samples < 1:
        raise ValueError(f"--num-samples {args.num_samples}: must be >= 1")
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens {args.max_new_tokens}: must be >= 1")
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise ValueError(f"--temperature {args.temperature}: must be a finite number >= 0")
    if args.top_k < 0:
        raise ValueError(f"--top-k {args.top_k}: must be >= 0 (0 = off)")
    if not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p {args.top_p}: must be in (0, 1]")
    if not -2**63 <= args.seed < 2**63:  # torch.Generator seeds are 64-bit
        raise ValueError(f"--seed {args.seed}: must fit in a signed 64-bit integer")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
        device = pick_device(args.device, key="--device")
        if args.hf:
            model, where = load_hf_gpt2(args.hf).to(device).eval(), f"HF {args.hf}"
        else:
            model, state = load_model(args.checkpoint, device)
            where = f"{state['path']} (step {state.get('step')})"
        texts = generate_texts(model, args.prompt, args.num_samples, args.max_new_tokens, args.temperature,
                               args.top_k or None, args.top_p, args.seed)
    except (CheckpointError, ConfigError, HFError, TokenizerError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"# {where}, seed {args.seed}, temperature {args.temperature}, top-k {args.top_k}, top-p {args.top_p}")
    for i, text in enumerate(texts, 1):
        print(f"--- sample {i} ---")
        print(text)
    return 0
