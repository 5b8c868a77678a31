"""What the trainer reports: metrics.jsonl rows, one console line per step, a progress bar.

Only rank 0 writes. Rows go through pipeline.atomic.append_line (one fsynced write per
row), so a crash never leaves half a row in metrics.jsonl. The writes happen on a
background thread: an fsync can take tens of milliseconds on a cluster file system, which
must not stall the training step; the trainer flushes the queue before each checkpoint,
so every row up to a checkpoint's step is on disk with it. The tqdm bar is drawn only
when stderr is a terminal; in a batch log (Slurm, CI) each step is a plain line that
carries the progress and ETA itself, instead of thousands of carriage-return redraws.
"""

from __future__ import annotations

import json
import math
import queue
import sys
import threading
import time
from pathlib import Path

import torch
from tqdm import tqdm

from pipeline.atomic import append_line

# Dense bf16 tensor-core peaks from the vendors' data sheets, in TFLOP/s. Matched in
# order against torch.cuda.get_device_name(); the more specific names come first
# ("H100 PCIe" before "H100", "A100" before "A10", "L40S" before "L4").
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
    ("RTX 3090", 71.0),
]


def peak_flops(device: torch.device, configured_tflops: float = 0.0) -> float | None:
    """Peak FLOP/s of one device for MFU: train.peak_tflops if set, else the table, else None."""
    if configured_tflops > 0:
        return configured_tflops * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in PEAK_BF16_TFLOPS:
            if key in name:
                return tflops * 1e12
    return None


def mfu(flops_per_token: float, tokens_per_s: float, peak: float | None, world_size: int) -> float | None:
    """Model FLOPs utilisation: achieved training FLOP/s over the peak of all devices."""
    if peak is None or tokens_per_s <= 0:
        return None
    return flops_per_token * tokens_per_s / (peak * world_size)


def finite_or_none(x: float) -> float | None:
    """JSON has no NaN/inf: a non-finite value is written as null."""
    return x if math.isfinite(x) else None


def _fmt_tokens(x: float) -> str:
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def _fmt_duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def step_line(row: dict, max_steps: int, eta_s: float | None) -> str:
    """The console line of one train row."""
    loss = "nan (skipped)" if row["loss"] is None else f"{row['loss']:.4f}"
    norm = "nan" if row["grad_norm"] is None else f"{row['grad_norm']:.3f}"
    parts = [f"step {row['step']:>6d}/{max_steps}", f"loss {loss}", f"lr {row['lr']:.3e}", f"norm {norm}",
             f"{row['dt_ms']:.1f} ms", f"{_fmt_tokens(row['tok_per_s'])} tok/s"]
    if row.get("mfu") is not None:
        parts.append(f"mfu {100 * row['mfu']:.1f}%")
    if eta_s is not None:
        parts.append(f"eta {_fmt_duration(eta_s)}")
    return " | ".join(parts)


class MetricsLog:
    """metrics.jsonl + console on rank 0; a no-op object on the other ranks."""

    def __init__(self, path: Path, enabled: bool, start_step: int, max_steps: int, sinks=None):
        self.path = Path(path)
        self.sinks = sinks  # pipeline.loggers.Loggers (TensorBoard, W&B) or None
        self.enabled = enabled
        self.max_steps = max_steps
        self._t0 = time.perf_counter()
        self._start_step = start_step
        self.bar = None
        if enabled and sys.stderr.isatty():
            self.bar = tqdm(total=max_steps, initial=start_step, unit="step", dynamic_ncols=True,
                            file=sys.stderr)
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._error: OSError | None = None
        self._writer = None
        if enabled:
            self._writer = threading.Thread(target=self._write_loop, name="metrics-writer", daemon=True)
            self._writer.start()

    def _write_loop(self) -> None:
        while True:
            line = self._queue.get()
            try:
                if line is None:
                    return
                if self._error is None:
                    append_line(self.path, line)
            except OSError as err:
                self._error = err
            finally:
                self._queue.task_done()

    def row(self, row: dict) -> None:
        if self.enabled:
            self._queue.put(json.dumps(row))
            if self.sinks is not None:
                self.sinks.row(row)

    def flush(self) -> None:
        """Return once every row so far is on disk (raises the writer's I/O error, if any)."""
        if self._writer is not None:
            self._queue.join()
            if self._error is not None:
                raise OSError(f"cannot append to {self.path}: {self._error}")

    def train(self, row: dict) -> None:
        if not self.enabled:
            return
        self.row(row)
        done = row["step"] - self._start_step
        remaining = self.max_steps - row["step"]
        eta = (time.perf_counter() - self._t0) / done * remaining if done > 0 else None
        self.print(step_line(row, self.max_steps, eta if self.bar is None else None))
        if self.bar is not None:
            self.bar.update(row["step"] - self.bar.n)

    def print(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.sinks is not None:
            self.sinks.close()  # idempotent
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
            self._writer = None
            if self._error is not None:
                raise OSError(f"cannot append to {self.path}: {self._error}")
