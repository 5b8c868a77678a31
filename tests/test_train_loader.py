"""The train data stream: coverage, no tokens lost at shard ends, world-size independence, resume."""

from __future__ import annotations

import numpy as np
import pytest

from _train_support import write_shards
from pipeline.checkpoint import CheckpointError
from pipeline.shards import ShardError, load_shard_set
from train.loader import TrainLoader

SEQ = 32


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return load_shard_set(write_shards(tmp_path_factory.mktemp("loader_shards")))


def make(shards, micro=2, accum=2, rank=0, world=1, shuffle=True, seed=7, seq=SEQ):
    return TrainLoader(shards.split("train"), shards.fingerprint, seq, micro, accum, rank, world, seed, shuffle)


def train_stream(shards) -> np.ndarray:
    return np.concatenate([np.load(s.path) for s in shards.split("train")])


def test_unshuffled_epoch_is_the_concatenated_train_split(shards):
    """Sequences tile the train split end to end across shard boundaries: no token dropped
    at a shard end (build-nanogpt would lose each shard's tail), only < seq_len at epoch end."""
    loader = make(shards, shuffle=False)
    stream = train_stream(shards)
    n = loader.sequences_per_epoch
    assert n == (len(stream) - 1) // SEQ
    rebuilt = np.concatenate([loader.sequence_tokens(g)[:-1] for g in range(n)])
    assert np.array_equal(rebuilt, stream[:n * SEQ])
    assert len(stream) - n * SEQ - 1 < SEQ
    for g in range(n):  # each sequence's last token is the next one's first (shifted targets)
        seq = loader.sequence_tokens(g)
        assert len(seq) == SEQ + 1 and np.array_equal(seq, stream[g * SEQ: g * SEQ + SEQ + 1])


def test_shuffled_epoch_visits_every_sequence_once_in_a_new_order_each_epoch(shards):
    loader = make(shards)
    n = loader.sequences_per_epoch
    epoch0 = [loader.sequence_index(g) for g in range(n)]
    epoch1 = [loader.sequence_index(g) for g in range(n, 2 * n)]
    assert {e for e, _ in epoch0} == {0} and {e for e, _ in epoch1} == {1}
    assert sorted(i for _, i in epoch0) == list(range(n))
    assert sorted(i for _, i in epoch1) == list(range(n))
    order0, order1 = [i for _, i in epoch0], [i for _, i in epoch1]
    assert order0 != list(range(n)) and order0 != order1
    # Same seed, fresh object: the same order (determinism); another seed: another order.
    again = make(shards)
    assert [again.sequence_index(g)[1] for g in range(n)] == order0
    other = make(shards, seed=8)
    assert [other.sequence_index(g)[1] for g in range(n)] != order0
    # Ordered by index, the epoch's sequences tile the shards concatenated in the epoch's
    # (shuffled) shard order: every token is still used, only the order changed.
    arrays = [np.load(s.path) for s in shards.split("train")]
    order = loader._epoch_plan(0)[0]
    assert sorted(order) == list(range(len(arrays))) and list(order) != sorted(order)
    stream = np.concatenate([arrays[k] for k in order])
    by_index = {i: g for g, (_, i) in enumerate(epoch0)}
    rebuilt = np.concatenate([loader.sequence_tokens(by_index[i])[:-1] for i in range(n)])
    assert np.array_equal(rebuilt, stream[:n * SEQ])


@pytest.mark.parametrize("world,micro", [(1, 8), (2, 4), (4, 2), (4, 1)])
def test_global_batches_do_not_depend_on_world_size_or_micro_batch(shards, world, micro):
    """Same global batch (8 sequences) at any world size: the union over ranks of a step's
    rows is the same set of sequences, and the ranks' rows are disjoint."""
    global_batch = 8
    accum = global_batch // (world * micro)
    ref = make(shards, micro=8, accum=1)
    loaders = [make(shards, micro=micro, accum=accum, rank=r, world=world) for r in range(world)]
    for _ in range(3):
        expected = ref.next_step().reshape(-1, SEQ + 1).numpy()
        parts = [ld.next_step().reshape(-1, SEQ + 1).numpy() for ld in loaders]
        got = np.concatenate(parts)  # rank-contiguous slices, in rank order
        assert np.array_equal(got, expected)
        assert all(ld.position == ref.position for ld in loaders)


def test_batches_straddle_epochs_and_the_shape_is_accum_micro_seq(shards):
    loader = make(shards, micro=2, accum=3)
    n = loader.sequences_per_epoch
    loader.position = n - 2  # two sequences left in epoch 0
    batch = loader.next_step()
    assert tuple(batch.shape) == (3, 2, SEQ + 1)
    assert loader.epoch == 1 and loader.position == n + 4
    expected = [loader.sequence_tokens(g) for g in range(n - 2, n + 4)]
    assert np.array_equal(batch.reshape(-1, SEQ + 1).numpy(), np.stack(expected))


def test_state_dict_resumes_at_the_same_global_position_at_another_world_size(shards):
    first = make(shards, micro=2, accum=2, world=2, rank=1)
    for _ in range(5):
        first.next_step()
    state = first.state_dict()
    assert state["position"] == 5 * 8 and set(state) >= {"fingerprint", "seed", "epoch", "position"}
    straight = make(shards, micro=8, accum=1)
    for _ in range(5):
        straight.next_step()
    resumed = make(shards, micro=4, accum=2)  # one process, another micro-batch
    resumed.load_state_dict(state)
    for _ in range(3):
        assert np.array_equal(resumed.next_step().reshape(-1, SEQ + 1), straight.next_step().reshape(-1, SEQ + 1))


@pytest.mark.parametrize("key,value,needle", [("fingerprint", "0" * 16, "train data changed"),
                                              ("seed", 99, "data.seed"), ("shuffle", False, "data.shuffle"),
                                              ("seq_len", 64, "train.seq_len")])
def test_state_from_another_stream_is_refused(shards, key, value, needle):
    state = make(shards).state_dict()
    state[key] = value
    with pytest.raises(CheckpointError, match=needle):
        make(shards).load_state_dict(state)


def test_too_little_train_data_is_a_clear_error(tmp_path):
    small = load_shard_set(write_shards(tmp_path / "d", train_sizes=(20,), val_tokens=100))
    with pytest.raises(ShardError, match="fewer than one sequence"):
        make(small)
    with pytest.raises(ShardError, match="no train shards"):
        TrainLoader([], small.fingerprint, SEQ, 1, 1)
