"""Progress for a long tokenization run: a tqdm bar on a terminal, plain lines in logs.

On a TTY: one tqdm bar counting tokens (tok/s from tqdm) with documents and MB/s of text.
Otherwise (Slurm logs, pipes) a bar's carriage returns make an unreadable log, so we print
one self-contained line every `log_every` seconds instead.
"""

from __future__ import annotations

import resource
import sys
import time

from tqdm import tqdm


class Progress:
    def __init__(self, total_tokens: int | None = None, initial_tokens: int = 0, enabled: bool = True,
                 stream=None, log_every: float = 30.0):
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()
        self.tokens = self.documents = self.bytes = 0
        self.initial = initial_tokens
        self.total = total_tokens
        self.log_every = log_every
        self._next_log = self.start + log_every
        self.bar = None
        self.enabled = enabled
        if enabled and self.stream.isatty():
            self.bar = tqdm(total=total_tokens, initial=initial_tokens, unit="tok", unit_scale=True,
                            file=self.stream, dynamic_ncols=True, smoothing=0.05, desc="tokenizing")

    def update(self, tokens: int, documents: int, nbytes: int, shards: int) -> None:
        self.tokens += tokens
        self.documents += documents
        self.bytes += nbytes
        if self.bar is not None:
            self.bar.set_postfix_str(f"docs={self.documents:,} {self.mb_per_s():.1f}MB/s shards={shards}",
                                     refresh=False)
            self.bar.update(tokens)
        elif self.enabled and time.perf_counter() >= self._next_log:
            self._next_log = time.perf_counter() + self.log_every
            self.note(self.line(shards))

    def line(self, shards: int) -> str:
        done = self.initial + self.tokens
        pct = f" ({100 * done / self.total:.1f}%)" if self.total else ""
        return (f"tokenizing: {done:,} tokens{pct}, {self.documents:,} documents, {shards} shards, "
                f"{self.tokens_per_s():,.0f} tok/s, {self.mb_per_s():.1f} MB/s")

    def note(self, message: str) -> None:
        """A message that does not tear the bar."""
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def elapsed(self) -> float:
        return max(time.perf_counter() - self.start, 1e-9)

    def tokens_per_s(self) -> float:
        return self.tokens / self.elapsed()

    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.elapsed()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def peak_rss_mb() -> tuple[float, float]:
    """(this process, largest finished child) peak resident set size in MB."""
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20  # ru_maxrss: KiB on Linux, bytes on macOS
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale
    return own, children
