"""The next steps' batches, prepared while the current step computes.

Step k's batch is read from the memory-mapped shards (page faults on a cold file, the
shuffled gather, the int64 copy) on a background thread during step k-1's compute; on
CUDA it is also pinned there, and its host-to-device copy is issued on a side stream one
step ahead, so the copy overlaps the previous step's kernels and the compute stream only
waits on an event. The loader's position (what a checkpoint records) moves when a batch is
handed out, never when one is prepared, so a checkpoint taken with batches in flight
resumes at the first batch not trained on. Batches are keyed by position: after a
load_state_dict anything prepared for another position is dropped, not used.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from train.loader import StepBatch, TrainLoader


def _each(batch: StepBatch, fn) -> StepBatch:
    """fn applied to the batch's tensors (the loss mask is None for pretraining data)."""
    return StepBatch(*(None if t is None else fn(t) for t in batch))


class Prefetcher:
    def __init__(self, loader: TrainLoader, device: torch.device):
        self.loader = loader
        self.device = device
        self.cuda = device.type == "cuda"
        self._lock = threading.Lock()  # the loader's epoch caches are not thread-safe
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="batch-prefetch")
        self._host: dict[int, Future] = {}    # position -> future of the (pinned) CPU batch
        self._staged: tuple[int, StepBatch, torch.cuda.Event | None] | None = None
        self._stream = torch.cuda.Stream(device) if self.cuda else None

    def _read(self, position: int) -> StepBatch:
        with self._lock:
            batch = self.loader.batch_at(position)
        return _each(batch, lambda t: t.pin_memory(self.device)) if self.cuda else batch

    def _host_batch(self, position: int) -> StepBatch:
        future = self._host.pop(position, None)
        return future.result() if future is not None else self._read(position)

    def _stage(self, position: int) -> tuple[int, StepBatch, torch.cuda.Event | None]:
        """Start moving the batch of `position` to the device (asynchronously on CUDA)."""
        host = self._host_batch(position)
        if not self.cuda:
            return position, host, None
        with torch.cuda.stream(self._stream):
            batch = _each(host, lambda t: t.to(self.device, non_blocking=True))
            event = torch.cuda.Event()
            event.record(self._stream)
        return position, batch, event

    def next_step(self) -> StepBatch:
        """The batch at the loader's position, on the device; the position advances one step."""
        loader = self.loader
        position, step = loader.position, loader.global_batch
        staged = self._staged
        if staged is None or staged[0] != position:
            self._host = {p: f for p, f in self._host.items() if p > position}
            staged = self._stage(position)
        _, batch, event = staged
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            _each(batch, lambda t: t.record_stream(current))  # allocated on the side stream, used on this one
        loader.position = position + step
        # One step ahead on the device, two ahead on the host.
        self._staged = self._stage(position + step)
        ahead = position + 2 * step
        if ahead not in self._host:
            self._host[ahead] = self._pool.submit(self._read, ahead)
        return batch

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._host.clear()
        self._staged = None
