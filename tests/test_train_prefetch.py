"""The prefetcher hands out exactly the loader's batches, and only consumed ones move its position."""

from __future__ import annotations

import torch

from _train_support import write_shards
from pipeline.shards import load_shard_set
from train.loader import TrainLoader
from train.prefetch import Prefetcher


def make(shards):
    return TrainLoader(shards.split("train"), shards.fingerprint, 32, 2, 2, 0, 1, 7, True)


def test_same_batches_as_the_loader_and_resume_mid_flight(tmp_path):
    shards = load_shard_set(write_shards(tmp_path))
    plain = make(shards)
    expected = [plain.next_step() for _ in range(40)]  # crosses an epoch boundary
    loader = make(shards)
    fetch = Prefetcher(loader, torch.device("cpu"))
    try:
        for k in range(10):
            assert torch.equal(fetch.next_step().tokens, expected[k])
            assert loader.position == (k + 1) * loader.global_batch  # prepared batches do not count
        state = loader.state_dict()
        # A checkpoint taken now resumes at batch 10, although batches 10-11 are already prepared.
        again = make(shards)
        again.load_state_dict(state)
        resumed = Prefetcher(again, torch.device("cpu"))
        assert torch.equal(resumed.next_step().tokens, expected[10])
        resumed.close()
        # Moving the position (load_state_dict of an older checkpoint) drops what was prepared.
        loader.position = 3 * loader.global_batch
        assert torch.equal(fetch.next_step().tokens, expected[3])
        for k in range(4, 40):
            assert torch.equal(fetch.next_step().tokens, expected[k])
    finally:
        fetch.close()
