"""The training data stream: deterministic, distributed, resumable, nothing lost at shard ends.

An epoch of the train split is ONE token stream: the train shards concatenated in a
per-epoch order (shuffled with a seed when data.shuffle is on, file order otherwise).
Sequence i of the epoch is tokens [i*T, i*T + T + 1) of that stream (T inputs plus the
shifted targets; neighbours share one token), so a sequence that reaches the end of a
shard continues into the next one. build-nanogpt instead restarts at each shard and
drops its tail (~1% of tokens, a different amount per rank); here only the < T tokens
after the epoch's last whole sequence go unused, once per epoch. The price: one
sequence per shard boundary joins the end of one shard to the start of another, which
is a document boundary with no end-of-text token in between when shards were cut
mid-document -- a few sequences in 10^5, harmless.

With shuffling, the sequences that start inside each shard are also visited in a
seeded random order (seed, epoch, shard slot), which removes the periodic loss pattern
of unshuffled FineWeb-Edu while keeping reads local to one or two shards at a time.

Global position g counts sequences consumed since training began: it names epoch
g // N and sequence g % N whatever the world size. An optimizer step consumes the next
B = total_batch_size / seq_len positions; rank r takes the contiguous slice
[r*B/W, (r+1)*B/W) cut into grad_accum micro-batches. The state is the small record
{fingerprint, seed, shuffle, seq_len, position}: a resume at another world size or
micro-batch size continues at exactly the same token.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from pipeline.checkpoint import CheckpointError
from pipeline.shards import ShardError, ShardInfo, open_mask, open_shard


class StepBatch(NamedTuple):
    """One rank's data for one optimizer step, (grad_accum, micro_batch, seq_len + 1) each:
    int64 tokens, and for prompt/response data (data_prep.sft) the uint8 loss mask of those
    tokens (1 = a training target), else None."""
    tokens: torch.Tensor
    mask: torch.Tensor | None = None


class TrainLoader:
    def __init__(self, shards: list[ShardInfo], fingerprint: str, seq_len: int, micro_batch: int,
                 grad_accum: int, rank: int = 0, world_size: int = 1, seed: int = 1337, shuffle: bool = True):
        if not shards:
            raise ShardError("no train shards: the data directory holds only a val split "
                             "(data_prep writes shard 0 as val and the rest as train)")
        self.arrays = [open_shard(info) for info in shards]
        self.masks = [open_mask(info) for info in shards] if shards[0].mask_sha256 else None
        self.lengths = np.array([len(a) for a in self.arrays], dtype=np.int64)
        self.total_tokens = int(self.lengths.sum())
        if self.total_tokens < seq_len + 1:
            raise ShardError(f"{shards[0].path.parent}: the train split holds {self.total_tokens} tokens, "
                             f"fewer than one sequence of train.seq_len + 1 = {seq_len + 1}")
        self.fingerprint = fingerprint
        self.seq_len = seq_len
        self.micro_batch = micro_batch
        self.grad_accum = grad_accum
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.sequences_per_epoch = (self.total_tokens - 1) // seq_len
        self.position = 0  # global sequences consumed, all ranks together
        self._epoch_cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._chunk_cache: dict[tuple[int, int], np.ndarray] = {}

    @property
    def per_rank(self) -> int:
        return self.micro_batch * self.grad_accum

    @property
    def global_batch(self) -> int:
        return self.per_rank * self.world_size

    @property
    def epoch(self) -> int:
        return self.position // self.sequences_per_epoch

    # -- the pure mapping: global position -> tokens ------------------------------------

    def _epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(shard order, token offset of each slot in the stream, first sequence of each slot)."""
        if epoch not in self._epoch_cache:
            n = len(self.arrays)
            if self.shuffle:
                order = np.random.default_rng([self.seed, epoch]).permutation(n)
            else:
                order = np.arange(n)
            offsets = np.concatenate([[0], np.cumsum(self.lengths[order])])
            # Slot k owns the sequences whose first token lies in its shard.
            starts = np.minimum(-(-offsets // self.seq_len), self.sequences_per_epoch)
            if len(self._epoch_cache) >= 2:
                self._epoch_cache.clear()
                self._chunk_cache.clear()
            self._epoch_cache[epoch] = (order, offsets, starts)
        return self._epoch_cache[epoch]

    def _slot_permutation(self, epoch: int, slot: int, size: int) -> np.ndarray:
        key = (epoch, slot)
        if key not in self._chunk_cache:
            if len(self._chunk_cache) >= 4:
                self._chunk_cache.pop(next(iter(self._chunk_cache)))
            self._chunk_cache[key] = np.random.default_rng([self.seed, epoch, slot]).permutation(size)
        return self._chunk_cache[key]

    def sequence_index(self, g: int) -> tuple[int, int]:
        """(epoch, index of the sequence within the epoch's stream) for global position g."""
        epoch, i = divmod(g, self.sequences_per_epoch)
        if not self.shuffle:
            return epoch, i
        _, _, starts = self._epoch_plan(epoch)
        slot = int(np.searchsorted(starts, i, side="right")) - 1
        lo, hi = int(starts[slot]), int(starts[slot + 1])
        return epoch, lo + int(self._slot_permutation(epoch, slot, hi - lo)[i - lo])

    def sequence_tokens(self, g: int, arrays: list[np.ndarray] | None = None) -> np.ndarray:
        """The seq_len + 1 tokens of global position g (may span two or more shards); the
        same slice of the loss masks with arrays=self.masks."""
        arrays = self.arrays if arrays is None else arrays
        epoch, j = self.sequence_index(g)
        order, offsets, _ = self._epoch_plan(epoch)
        start, end = j * self.seq_len, j * self.seq_len + self.seq_len + 1
        slot = int(np.searchsorted(offsets, start, side="right")) - 1
        parts = []
        while start < end:
            lo = start - int(offsets[slot])
            take = min(end - start, int(offsets[slot + 1]) - start)
            parts.append(arrays[order[slot]][lo:lo + take])
            start += take
            slot += 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def rank_positions(self, step_start: int) -> range:
        """This rank's global positions within the global batch starting at step_start."""
        first = step_start + self.rank * self.per_rank
        return range(first, first + self.per_rank)

    # -- iteration and state -------------------------------------------------------------

    def batch_at(self, position: int) -> StepBatch:
        """This rank's data for the step starting at global position `position` (see StepBatch),
        with the loss mask when the shards have one. Reads only; the state does not move."""
        positions = self.rank_positions(position)
        shape = (self.grad_accum, self.micro_batch, self.seq_len + 1)
        tokens = np.stack([self.sequence_tokens(g) for g in positions]).astype(np.int64)
        mask = None
        if self.masks is not None:
            mask = torch.from_numpy(np.stack([self.sequence_tokens(g, self.masks) for g in positions])).view(shape)
        return StepBatch(torch.from_numpy(tokens).view(shape), mask)

    def next_step(self) -> torch.Tensor:
        """The tokens of the current position's batch, then advance to the next step
        (the trainer reads through train/prefetch.py, which also brings the loss mask)."""
        batch = self.batch_at(self.position)
        self.position += self.global_batch
        return batch.tokens

    def state_dict(self) -> dict:
        return {"fingerprint": self.fingerprint, "seed": self.seed, "shuffle": self.shuffle,
                "seq_len": self.seq_len, "position": self.position, "epoch": self.epoch,
                "sequences_per_epoch": self.sequences_per_epoch}

    def load_state_dict(self, state: dict) -> None:
        """Continue at the saved global position; refuse a stream that is not the same stream."""
        checks = [("fingerprint", self.fingerprint, "the train data changed since the checkpoint "
                   "(a different data.dir content); resume with the same shards or start a new run"),
                  ("seed", self.seed, "resume with the same data.seed"),
                  ("shuffle", self.shuffle, "resume with the same data.shuffle"),
                  ("seq_len", self.seq_len, "resume with the same train.seq_len")]
        for key, ours, fix in checks:
            if state.get(key) != ours:
                raise CheckpointError(f"data loader state: the checkpoint has {key} = {state.get(key)!r}, "
                                      f"this run has {ours!r}: {fix}")
        position = state.get("position")
        if not isinstance(position, int) or position < 0:
            raise CheckpointError(f"data loader state: bad position {position!r}")
        self.position = position
