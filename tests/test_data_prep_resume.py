"""kill -9 at any moment, re-run the same command: byte-identical shards AND manifest.

Crashes are real SIGKILLs: either the stage kills itself at a named point
(pipeline/failpoints.py's data_prep.* points: between a shard's temp write and its rename, between the rename
and the manifest update, ...) or the test kills the whole process group after a delay.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid

import pytest

from conftest import REPO, TEXT_FILES as PROSE, run_module, subprocess_env
from data_prep import fineweb
from data_prep_fixtures import corpus, dir_bytes, write_jsonl, write_parquet

SHARD = 20_000  # ~10 shards from a small corpus keeps the many runs below fast
TEXT_FILES = [PROSE[2], PROSE[3], PROSE[7], PROSE[0]]  # 30, 90, 90 and 6 kB: ~50k tokens


class Small:
    def __init__(self, root, docs, lengths):
        root.mkdir(parents=True, exist_ok=True)
        self.parquet = write_parquet(docs, lengths, root, n_files=2, row_group_size=16)
        half = len(docs) // 2
        self.jsonl = [write_jsonl(docs[:half], root / "a.jsonl"), write_jsonl(docs[half:], root / "b.jsonl.gz")]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    full = corpus(tmp_path_factory.getbasetemp() / "corpus")
    n = int((full.lengths.cumsum() < 10 * SHARD - SHARD // 2).sum())  # ~9.5 shards of documents
    return Small(tmp_path_factory.mktemp("small"), full.docs[:n], full.lengths[:n])


def prep_args(files, out, *extra):
    return ["--files", *map(str, files), "--out", str(out), "--shard-size", str(SHARD), "--workers", "2", *extra]


@pytest.fixture(scope="module")
def baseline(data, tmp_path_factory):
    """Uninterrupted runs to compare against, per source kind."""
    outs = {}
    for kind, files in (("parquet", data.parquet), ("jsonl", data.jsonl), ("txt", TEXT_FILES)):
        out = tmp_path_factory.mktemp(f"baseline_{kind}")
        start = time.perf_counter()
        run_module("data_prep.fineweb", *prep_args(files, out))
        outs[f"{kind}_seconds"] = time.perf_counter() - start
        outs[kind] = dir_bytes(out)
    assert n_shards(outs["parquet"]) == 10 and n_shards(outs["txt"]) >= 3
    return outs


def failpoint(point: str, action: str = "kill") -> str:
    """'shard_renamed:3' -> the GPT2_PIPELINE_FAILPOINTS spec that fires on its 3rd pass."""
    name, _, hit = point.partition(":")
    return f"data_prep.{name}={action}@hit={hit}"


def crashed_run(files, out, point: str, tag: str = "") -> subprocess.CompletedProcess:
    env = subprocess_env(GPT2_PIPELINE_FAILPOINTS=failpoint(point), DATA_PREP_TEST_TAG=tag)
    proc = run_module("data_prep.fineweb", *prep_args(files, out), check=False, env=env)
    assert proc.returncode == -signal.SIGKILL, (point, proc.returncode, proc.stderr[-2000:])
    return proc


def resume_and_compare(files, out, expected: dict[str, bytes]) -> None:
    # the same command again (in-process to save interpreter start-ups; same code path as the CLI)
    assert fineweb.main(prep_args(files, out, "--no-progress")) == 0
    assert dir_bytes(out) == expected  # every shard and the manifest, byte for byte; no temp files left


def n_shards(expected) -> int:
    return sum(name.endswith(".npy") for name in expected)


@pytest.mark.parametrize("point", ["chunk:1", "worker:1", "shard_written:1", "shard_renamed:3",
                                   "manifest_written:2", "shard_written:LAST", "shard_renamed:LAST",
                                   "manifest_written:LAST"])
def test_kill9_at_a_point_then_resume_is_byte_identical(data, baseline, tmp_path, point):
    expected = baseline["parquet"]
    point = point.replace("LAST", str(n_shards(expected)))
    if point.startswith("worker"):  # a dead worker: the main process reports it and exits 2
        env = subprocess_env(GPT2_PIPELINE_FAILPOINTS=failpoint(point))
        proc = run_module("data_prep.fineweb", *prep_args(data.parquet, tmp_path), check=False, env=env)
        assert proc.returncode == 2 and "worker process died" in proc.stderr and "Traceback" not in proc.stderr
    else:
        crashed_run(data.parquet, tmp_path, point)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["complete"] is False
    resume_and_compare(data.parquet, tmp_path, expected)


@pytest.mark.parametrize("kind,point", [("jsonl", "shard_renamed:6"), ("txt", "manifest_written:2")])
def test_resume_inside_jsonl_gz_and_inside_a_long_text_document(data, baseline, tmp_path, kind, point):
    files = data.jsonl if kind == "jsonl" else TEXT_FILES  # txt: shard 2 ends inside macbeth
    crashed_run(files, tmp_path, point)
    resume_and_compare(files, tmp_path, baseline[kind])


def test_repeated_crashes_then_resume(data, baseline, tmp_path):
    crashed_run(data.parquet, tmp_path, "manifest_written:2")
    crashed_run(data.parquet, tmp_path, "shard_written:2")  # the resumed run dies too
    crashed_run(data.parquet, tmp_path, "chunk:1")
    resume_and_compare(data.parquet, tmp_path, baseline["parquet"])


def test_kill9_of_the_process_group_after_random_delays(data, baseline, tmp_path):
    duration = baseline["parquet_seconds"]  # kill at fractions of an uninterrupted run's wall time
    rng = random.Random(1234)
    for i, fraction in enumerate((0.35, 0.6, 0.85)):
        out = tmp_path / f"kill{i}"
        proc = subprocess.Popen([sys.executable, "-m", "data_prep.fineweb", *prep_args(data.parquet, out)],
                                cwd=REPO, env=subprocess_env(), start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(duration * fraction * rng.uniform(0.9, 1.1))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        resume_and_compare(data.parquet, out, baseline["parquet"])


def _tagged_processes(tag: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if f"DATA_PREP_TEST_TAG={tag}".encode() in f.read():
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_exit_when_the_main_process_is_killed(data, tmp_path):
    tag = uuid.uuid4().hex
    crashed_run(data.parquet, tmp_path, "shard_renamed:2", tag=tag)  # kills only the main process
    deadline = time.monotonic() + 10
    while _tagged_processes(tag) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _tagged_processes(tag) == []


def test_changed_settings_are_refused_then_overwrite_rebuilds(data, baseline, tmp_path):
    crashed_run(data.parquet, tmp_path, "manifest_written:2")
    proc = run_module("data_prep.fineweb", "--files", *data.parquet, "--out", tmp_path, "--shard-size", "30000",
                      check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "shard_size was 20000, this run has 30000" in proc.stderr and "--overwrite" in proc.stderr
    run_module("data_prep.fineweb", *prep_args(data.parquet, tmp_path, "--overwrite"))
    assert dir_bytes(tmp_path) == baseline["parquet"]


def test_changed_input_file_is_refused(data, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(data.jsonl[0].read_bytes())
    out = tmp_path / "out"
    crashed_run([src], out, "manifest_written:1")
    with open(src, "ab") as f:
        f.write(b'{"text": "one more document"}\n')
    proc = run_module("data_prep.fineweb", *prep_args([src], out), check=False)
    assert proc.returncode == 2
    assert f"input file {src} changed since the previous run" in proc.stderr


@pytest.fixture
def children_get_default_sigint():
    """A shell starts background jobs (`make test &`) with SIGINT ignored, and exec keeps an
    ignored signal ignored, so the child would never see its own SIGINT. A Python handler here
    is reset to the default in the child."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("signame,code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_sigterm_and_sigint_stop_cleanly_then_resume(data, baseline, tmp_path, signame, code,
                                                     children_get_default_sigint):
    env = subprocess_env(GPT2_PIPELINE_FAILPOINTS=failpoint("chunk:2", f"kill({signame})"))
    proc = run_module("data_prep.fineweb", *prep_args(data.parquet, tmp_path), check=False, env=env)
    assert proc.returncode == code and "Traceback" not in proc.stderr
    assert "the complete shards" in proc.stderr and "re-run the same command to resume" in proc.stderr
    assert not json.loads((tmp_path / "manifest.json").read_text())["complete"]
    resume_and_compare(data.parquet, tmp_path, baseline["parquet"])
