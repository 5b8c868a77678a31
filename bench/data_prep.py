"""Benchmark: data_prep.fineweb throughput and memory vs raw tiktoken, measured in the same run.

    python bench/data_prep.py [TEXT_DIR] [--mb 50] [--workers N] [--repeat 3] [--format parquet]

Builds ~--mb MB of real text (the files of TEXT_DIR, default ../shared/data/text, split at
blank lines into web-page-sized documents, repeated until the size is reached), writes it as
FineWeb-schema parquet (or jsonl), then measures, alternating, best of --repeat:
  raw      tiktoken encode_ordinary on the same documents, in the same number of worker
           processes (a warm pool: workers started and tokenizer loaded before the clock
           starts; documents sent in the same ~256 KB chunks; nothing read or written);
  stage    `python -m data_prep.fineweb --files ...` end to end in a subprocess (interpreter
           start, imports, reading parquet, tokenizing, shard writes with fsync + sha256),
           and its own steady-state rate (from its summary line, start-up excluded).
Also reports peak RSS of the stage on the full input and on a quarter of it: memory must
not grow with the dataset. Prints figures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from data_prep.tokenize import default_workers  # noqa: E402
from pipeline.tokenizer import get_tokenizer  # noqa: E402

_enc = None


def build_documents(text_dir: Path, target_bytes: int) -> list[str]:
    base = []
    for path in sorted(text_dir.rglob("*.txt")):
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("cp1252", errors="replace")
        doc = []
        for para in text.split("\n\n"):  # FineWeb pages average a few KB
            doc.append(para)
            if sum(map(len, doc)) > 3000:
                base.append("\n\n".join(doc))
                doc = []
        if doc:
            base.append("\n\n".join(doc))
    docs, size, i = [], 0, 0
    while size < target_bytes:
        doc = base[i % len(base)]
        docs.append(doc)
        size += len(doc.encode())
        i += 1
    return docs


def write_inputs(docs: list[str], directory: Path, fmt: str) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    n_files = 4
    per = -(-len(docs) // n_files)
    paths = []
    for k in range(n_files):
        part = docs[k * per:(k + 1) * per]
        if fmt == "parquet":
            path = directory / f"000_{k:05d}.parquet"
            table = pa.table({"text": part, "id": [f"<urn:uuid:{k}-{i}>" for i in range(len(part))],
                              "dump": ["CC-MAIN-2021-43"] * len(part), "language": ["en"] * len(part)})
            pq.write_table(table, path, row_group_size=1000)
        else:
            import json
            path = directory / f"part_{k:05d}.jsonl"
            path.write_text("".join(json.dumps({"text": d}) + "\n" for d in part))
        paths.append(path)
    return paths


def _init():
    global _enc
    _enc = get_tokenizer()


def _count_tokens(texts: list[str]) -> int:
    return sum(len(_enc.encode_ordinary(t)) + 1 for t in texts)


def cpu_seconds() -> float:
    """CPU time of this process plus every finished (waited-for) descendant."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def raw_tiktoken(docs: list[str], workers: int) -> tuple[float, int, float]:
    chunks, current, size = [], [], 0
    for doc in docs:  # the stage's chunking: ~256 KB of text per task
        current.append(doc)
        size += len(doc)
        if size >= 1 << 18:
            chunks.append(current)
            current, size = [], 0
    if current:
        chunks.append(current)
    pool = multiprocessing.get_context("fork").Pool(workers, initializer=_init)
    pool.map(int, range(workers))  # warm: every worker started, tokenizer loaded
    start, cpu = time.perf_counter(), cpu_seconds()
    tokens = sum(pool.imap(_count_tokens, chunks))
    wall = time.perf_counter() - start
    pool.close()
    pool.join()  # reaped: the workers' CPU time is now in RUSAGE_CHILDREN
    return wall, tokens, cpu_seconds() - cpu


def run_stage(files: list[Path], out: Path, workers: int, shard_size: int) -> dict:
    cmd = [sys.executable, "-m", "data_prep.fineweb", "--files", *map(str, files), "--out", str(out),
           "--shard-size", str(shard_size), "--workers", str(workers), "--overwrite", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    start, cpu = time.perf_counter(), cpu_seconds()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    if proc.returncode != 0:
        sys.exit(f"stage failed:\n{proc.stderr}")
    summary = proc.stdout
    steady = float(re.search(r"in ([\d.]+) s", summary).group(1))
    main_rss = float(re.search(r"peak RSS (\d+) MB main", summary).group(1))
    worker_rss = float(m.group(1)) if (m := re.search(r"(\d+) MB largest worker", summary)) else 0.0
    tokens = int(re.search(r"shards, ([\d,]+) tokens", summary).group(1).replace(",", ""))
    return {"wall": wall, "steady": steady, "cpu": cpu, "tokens": tokens, "main_rss": main_rss,
            "worker_rss": worker_rss}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("text_dir", nargs="?", type=Path, default=REPO.parent / "shared" / "data" / "text")
    p.add_argument("--mb", type=float, default=50.0, help="MB of text (default %(default)s)")
    p.add_argument("--workers", type=int, default=default_workers())
    p.add_argument("--repeat", type=int, default=3, help="runs of each measurement; best is reported")
    p.add_argument("--format", choices=("parquet", "jsonl"), default="parquet")
    p.add_argument("--shard-size", type=int, default=5_000_000)
    args = p.parse_args()

    docs = build_documents(args.text_dir, int(args.mb * 1e6))
    nbytes = sum(len(d.encode()) for d in docs)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
          f"({len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'} usable), "
          f"python {platform.python_version()}; load average {os.getloadavg()[0]:.2f}")
    print(f"input: {len(docs):,} documents, {nbytes / 1e6:.1f} MB of text from {args.text_dir}, "
          f"as {args.format}; {args.workers} worker(s); best of {args.repeat}")
    with tempfile.TemporaryDirectory(prefix="bench_data_prep_") as tmp:
        tmp = Path(tmp)
        files = write_inputs(docs, tmp / "in", args.format)
        quarter = write_inputs(docs[:len(docs) // 4], tmp / "in_quarter", args.format)
        raws, stages = [], []
        for _ in range(args.repeat):  # alternate so both see the same background load
            raws.append(raw_tiktoken(docs, args.workers))
            stages.append(run_stage(files, tmp / "out", args.workers, args.shard_size))
        small = run_stage(quarter, tmp / "out_quarter", args.workers, args.shard_size)
    raw_s, tokens, _ = min(raws)
    raw_cpu = min(r[2] for r in raws)
    best = min(stages, key=lambda s: s["wall"])
    steady = min(s["steady"] for s in stages)
    stage_cpu = min(s["cpu"] for s in stages)
    assert best["tokens"] == tokens, (best["tokens"], tokens)  # same documents, same token count
    rows = [("raw tiktoken encode_ordinary (warm pool)", raw_s),
            ("data_prep.fineweb end to end (incl. start-up)", best["wall"]),
            ("data_prep.fineweb steady state (its own timer)", steady)]
    print(f"{'wall clock':50s} {'seconds':>8s} {'tokens/s':>12s} {'MB/s':>7s} {'vs raw':>7s}")
    for name, seconds in rows:
        print(f"{name:50s} {seconds:8.2f} {tokens / seconds:12,.0f} {nbytes / 1e6 / seconds:7.1f} "
              f"{raw_s / seconds:7.1%}")
    # CPU seconds are what a busy shared machine cannot distort: the stage's total CPU
    # (main + workers, start-up included) against the raw workers' CPU for the same tokens.
    print(f"{'CPU time (all processes)':50s} {'cpu s':>8s} {'tok/cpu-s':>12s}")
    for name, seconds in (("raw tiktoken encode_ordinary", raw_cpu), ("data_prep.fineweb end to end", stage_cpu)):
        print(f"{name:50s} {seconds:8.2f} {tokens / seconds:12,.0f}")
    print(f"CPU efficiency vs raw: {raw_cpu / stage_cpu:.1%}")
    print(f"tokens: {tokens:,}")
    print(f"peak RSS, full input ({nbytes / 1e6:.0f} MB): main {best['main_rss']:.0f} MB, "
          f"largest worker {best['worker_rss']:.0f} MB")
    print(f"peak RSS, quarter input ({nbytes / 4e6:.0f} MB): main {small['main_rss']:.0f} MB, "
          f"largest worker {small['worker_rss']:.0f} MB")


if __name__ == "__main__":
    main()
