"""The stages as the fault tests run them: a real-text corpus sharded by data_prep, a tiny
GPT config for the trainer, and the commands (argv) of each stage.

Everything is small enough that one clean run of a stage takes a second or two on one
CPU core, so a fault kind can be injected dozens of times within the suite's budget.
"""

from __future__ import annotations

import socket
from pathlib import Path

from conftest import TEXT_FILES, subprocess_env

# 19 of the generated prose files under 40 kB: real-English documents, ~76k GPT-2 tokens, all UTF-8.
CORPUS_FILES = [path for path in TEXT_FILES if path.stat().st_size < 40_000][:19]
SHARD_SIZE = 6_000  # ~11 shards: many shard boundaries and manifest updates per run

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=64)
STEPS = 12  # max_steps of the tiny run
CHECKPOINT_EVERY = 3


def prep_argv(out: Path, *extra: str) -> list[str]:
    """`python -m data_prep.fineweb` arguments for the fault corpus."""
    return ["--files", *map(str, CORPUS_FILES), "--out", str(out), "--shard-size", str(SHARD_SIZE),
            "--no-progress", *extra]


def build_shards(out: Path) -> Path:
    """Shard the corpus in this process (no tokenizer workers): the data every other stage reads."""
    from data_prep.fineweb import main
    assert main(prep_argv(out, "--workers", "0")) == 0
    return out


def tiny_config_text(data_dir: Path, **train: object) -> str:
    """A complete TOML config (every section present) for a 2-layer, 32-wide GPT on CPU in fp32.

    One step = 128 tokens = 4 sequences of 32; with 1 rank that is micro-batch 2 x 2
    accumulation steps, with 2 ranks micro-batch 2 x 1."""
    settings = dict(total_batch_size=128, micro_batch_size=2, seq_len=32, max_steps=STEPS, device="cpu",
                    dtype="float32", checkpoint_every=CHECKPOINT_EVERY, keep_last=100, log_every=1)
    settings.update(train)

    def table(values: dict) -> str:
        return "\n".join(f"{k} = {_literal(v)}" for k, v in values.items())

    return (f"[model]\n{table(TINY)}\n\n[data]\ndir = {_literal(str(data_dir))}\n\n"
            f"[optim]\nmax_lr = 3e-3\nwarmup_steps = 2\n\n[train]\n{table(settings)}\n\n"
            f"[eval]\neval_every = 0\nsample_every = 0\nval_tokens = 256\n")


def _literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Job:
    """`torchrun --nproc_per_node=N -m train ARGV` as N ranks forked from the zygote."""

    def __init__(self, zygote, nproc: int, argv: list, logs: Path, **env: str):
        self.zygote = zygote
        port = str(free_port())
        self.ranks = []
        for rank in range(nproc):
            rank_env = subprocess_env(**env)
            if nproc > 1:
                rank_env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc),
                                LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
            self.ranks.append(zygote.start("train.__main__", argv, rank_env, Path(f"{logs}.rank{rank}.log")))

    def poll(self) -> list[int | None]:
        return [self.zygote.poll(r) for r in self.ranks]

    def wait(self, timeout: float = 300) -> list[int | None]:
        return [self.zygote.wait(r, timeout) for r in self.ranks]

    def kill(self) -> list[int]:
        return [self.zygote.kill(r) for r in self.ranks]

    def output(self) -> str:
        return self.ranks[0].output()
