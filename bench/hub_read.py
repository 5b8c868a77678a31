"""Benchmark: reading FineWeb-Edu parquet from a hub, text column only, against the loopback hub.

    python bench/hub_read.py [--files 3] [--docs 6000] [--repeat 3]

Serves generated FineWeb-Edu-schema parquet files (tests/hub_fixtures.py; row groups of 1,000
documents, as datatrove writes them) from the loopback hub (tests/fake_hub.py) on 127.0.0.1,
then reads every document's text, alternating the two readers, best of --repeat:
  fsspec  the previous reader: fsspec `hf://` file (huggingface_hub's HfFileSystem) with
          8 MiB read-ahead blocks, pyarrow iter_batches over the text column;
  text-only  data_prep's reader (data_prep/sources.py + hub_file.py) with MIN_REQUEST = 0: one
          HTTP range request per read pyarrow makes (footer, then the text column's chunks);
  ranged  the same with the default MIN_REQUEST (8 MiB): fewer, larger requests.
Reports wall seconds, MB/s of text, the bytes the hub sent and the parquet requests (deterministic; the wall
clock is not, on a shared machine). Loopback has no latency or bandwidth limit, so the byte
count is the figure that carries over to the real hub. Prints figures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=3)
    p.add_argument("--docs", type=int, default=6000, help="documents per file")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()

    from fake_hub import FakeHub
    from hub_fixtures import CARD, documents, parquet_bytes
    files = {"README.md": CARD.encode()}
    for k in range(args.files):
        files[f"sample/10BT/{k:03d}_00000.parquet"] = parquet_bytes(documents(k, args.docs), k, row_group_size=1000)
    total = sum(len(v) for k, v in files.items() if k.endswith(".parquet"))

    with FakeHub(files) as hub, tempfile.TemporaryDirectory() as home:
        os.environ.update(HF_ENDPOINT=hub.url, HF_HOME=home, HF_UPDATE_DOWNLOAD_COUNTS="0")
        import fsspec
        import pyarrow.parquet as pq

        from data_prep import hub_file
        from data_prep.retry import RetryPolicy
        from data_prep.sources import read_documents, SourceFile
        urls = [f"hf://datasets/{hub.repo_id}@{hub.sha}/{name}" for name in sorted(files) if name.endswith(".parquet")]

        def fsspec_reader() -> int:
            text = 0
            for url in urls:
                with fsspec.open(url, "rb", block_size=8 << 20) as f:
                    for batch in pq.ParquetFile(f).iter_batches(batch_size=2048, columns=["text"], use_threads=False):
                        text += sum(len(t.encode()) for t in batch.column(0).to_pylist())
            return text

        def ranged(min_request: int):
            def reader() -> int:
                hub_file.MIN_REQUEST = min_request
                return sum(size for url in urls
                           for _, _, size in read_documents(SourceFile(url, "parquet"), 0, "text", "strict", print,
                                                            RetryPolicy()))
            return reader

        best = {}
        for _ in range(args.repeat):
            for name, reader in (("fsspec", fsspec_reader), ("text-only", ranged(0)),
                                 ("ranged", ranged(hub_file.MIN_REQUEST))):
                sent, gets, start = hub.bytes_sent, len(hub.requests(".parquet")), time.perf_counter()
                text = reader()
                seconds = time.perf_counter() - start
                row = (seconds, text, hub.bytes_sent - sent, len(hub.requests(".parquet")) - gets)
                best[name] = min(best.get(name, row), row)
    print(f"machine: {platform.node()} {os.cpu_count()} CPUs (shared with other jobs: wall times are noisy); "
          f"{args.files} files, {args.docs} documents each, {total / 1e6:.1f} MB of parquet")
    print(f"{'reader':<10} {'seconds':>8} {'text MB/s':>10} {'hub sent MB':>12} {'vs file size':>13} {'GETs':>6}")
    for name, (seconds, text, sent, gets) in best.items():
        print(f"{name:<10} {seconds:8.2f} {text / 1e6 / seconds:10.1f} {sent / 1e6:12.2f} {sent / total:12.0%} "
              f"{gets:6d}")
    for name in ("text-only", "ranged"):
        print(f"{name} reader: {best['fsspec'][0] / best[name][0]:.2f}x the fsspec reader's speed "
              f"(best of {args.repeat}, alternated)")


if __name__ == "__main__":
    main()
