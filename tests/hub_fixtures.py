"""Generated FineWeb-Edu-schema parquet files laid out like the hub repo, for the loopback hub.

    files = fineweb_edu_repo()          # {"README.md": ..., "sample/10BT/000_00000.parquet": ..., ...}

The README's YAML card declares the configs the way the real dataset card does (`default`
over data/*/*, `sample-10BT` over sample/10BT/*), so `datasets` resolves them from the card.
Texts are generated (no shared data): words, punctuation, non-ASCII, emoji, CRLF, a literal
<|endoftext|>, an empty document; several small row groups per file.
"""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from conftest import REPO, subprocess_env

CARD = """---
license: odc-by
configs:
- config_name: default
  data_files:
  - split: train
    path: data/*/*
- config_name: sample-10BT
  data_files:
  - split: train
    path: sample/10BT/*
- config_name: notes
  data_files:
  - split: train
    path: notes/*
---
# FineWeb-Edu (loopback test copy)
"""

SCHEMA = pa.schema([
    ("text", pa.string()), ("id", pa.string()), ("dump", pa.string()), ("url", pa.string()),
    ("file_path", pa.string()), ("language", pa.string()), ("language_score", pa.float64()),
    ("token_count", pa.int64()), ("score", pa.float64()), ("int_score", pa.int64()),
])
WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which "
         "photosynthesis mitochondria équation naïve café 日本語 данные ∑x² 🙂 \t tab\r\nCRLF").split(" ")


def documents(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for i in range(count):
        if i == 3:
            docs.append("")
        elif i == 5:
            docs.append("quoting <|endoftext|> literally stays ordinary text")
        else:
            docs.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 400))))
    return docs


def parquet_bytes(docs: list[str], seed: int, row_group_size: int = 16) -> bytes:
    rng = random.Random(seed)
    n = len(docs)
    table = pa.table({
        "text": docs,
        "id": [f"<urn:uuid:{rng.getrandbits(128):032x}>" for _ in docs],
        "dump": ["CC-MAIN-2024-10"] * n,
        "url": [f"https://example.org/{seed}/{i}" for i in range(n)],
        "file_path": ["s3://commoncrawl/crawl-data/CC-MAIN-2024-10/segments/x.warc.gz"] * n,
        "language": ["en"] * n,
        "language_score": [round(rng.uniform(0.65, 1.0), 4) for _ in docs],
        "token_count": [len(d.split()) for d in docs],
        "score": [round(rng.uniform(2.5, 5.0), 4) for _ in docs],
        "int_score": [rng.randint(3, 5) for _ in docs],
    }, schema=SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=row_group_size)
    return buf.getvalue()


def fineweb_edu_repo(n_files: int = 3, docs_per_file: int = 60) -> dict[str, bytes]:
    files = {"README.md": CARD.encode(), "notes/readme.txt": b"not parquet\n"}
    for k in range(n_files):
        files[f"sample/10BT/{k:03d}_00000.parquet"] = parquet_bytes(documents(k, docs_per_file), k)
    files["data/CC-MAIN-2024-10/000_00000.parquet"] = parquet_bytes(documents(99, 8), 99)
    return files


def write_local(files: dict[str, bytes], root: Path, prefix: str = "sample/10BT/") -> list[Path]:
    """The config's parquet files on disk, as `hf download ... --local-dir root` would leave them."""
    paths = []
    for name, data in sorted(files.items()):
        if name.startswith(prefix):
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            paths.append(path)
    return paths


def hub_env(hub_url: str, home: Path, **extra: str) -> dict[str, str]:
    """The child's environment: HF_ENDPOINT names the loopback hub; a private HF_HOME in tmp."""
    env = subprocess_env(HF_ENDPOINT=hub_url, HF_HOME=str(home), HF_UPDATE_DOWNLOAD_COUNTS="0",
                         HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_OFFLINE="0", HF_DATASETS_OFFLINE="0",
                         TOKENIZERS_PARALLELISM="false", **extra)
    for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_DATASETS_CACHE", "HF_HUB_CACHE", "HF_MODULES_CACHE"):
        env.pop(key, None)
    return env


def run_stage(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "data_prep.fineweb", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.npy"))}

