"""Fault kind 1a: kill -9 sweep of `python -m data_prep.fineweb`.

The same command is SIGKILLed at 24 seeded-random moments and re-run after each: at named
points inside shard writes (pipeline/failpoints.py's data_prep.* points: temp file written but not renamed,
renamed but not in the manifest, manifest written, a chunk consumed, a tokenizer worker
starting a chunk) and after seeded-random delays (anywhere: start-up, tokenizing, fsync).
After every kill the shards the manifest already listed are untouched; when a re-run
completes, the directory is byte-identical (every shard and the manifest) to a clean run's.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from conftest import subprocess_env
from faults._stages import CORPUS_FILES, prep_argv

SEED = 1
KILLS = 24
POINTS = ["shard_written", "shard_renamed", "manifest_written", "chunk", "worker"]


def dir_bytes(out: Path) -> dict[str, bytes]:
    """Every file by name except the (empty) lock file."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file() and p.name != ".data_prep.lock"}


def listed_shards(out: Path) -> dict[str, bytes]:
    """The shards the manifest records as complete, with their bytes."""
    manifest = out / "manifest.json"
    if not manifest.exists():
        return {}
    return {s["file"]: (out / s["file"]).read_bytes() for s in json.loads(manifest.read_text())["shards"]}


def test_data_prep_killed_24_times_resumes_to_byte_identical_output(zygote, tmp_path, fault_log):
    argv_of = lambda out: prep_argv(out, "--workers", "2")  # noqa: E731
    clean = zygote.start("data_prep.fineweb", argv_of(tmp_path / "clean"), subprocess_env(), tmp_path / "clean.log")
    assert zygote.wait(clean) == 0, clean.output()
    reference = dir_bytes(tmp_path / "clean")
    n_shards = sum(name.endswith(".npy") for name in reference)
    rng = random.Random(SEED)
    kills, chain, attempt = 0, 0, 0
    while kills < KILLS:
        out = tmp_path / f"chain{chain}"
        chain_kills = []
        while True:
            attempt += 1
            before = listed_shards(out) if out.exists() else {}
            done = len(before)
            env = subprocess_env()
            if rng.random() < 0.6:  # a named point inside the stage
                point = rng.choice(POINTS)
                most = n_shards - done if point.startswith(("shard", "manifest")) else len(CORPUS_FILES)
                spec = f"data_prep.{point}=kill@hit={rng.randint(1, max(1, most))}"
                env["GPT2_PIPELINE_FAILPOINTS"] = spec
                proc = zygote.start("data_prep.fineweb", argv_of(out), env, tmp_path / f"a{attempt}.log")
                code = zygote.wait(proc, timeout=300)
                where = f"at {spec}"
            else:  # a random moment
                delay = rng.uniform(0.05, 1.5)
                proc = zygote.start("data_prep.fineweb", argv_of(out), env, tmp_path / f"a{attempt}.log")
                time.sleep(delay)
                code = zygote.kill(proc) if zygote.poll(proc) is None else zygote.wait(proc)
                where = f"after {delay * 1000:.0f} ms"
            if code == 0:
                break  # finished (the point was never reached, or the delay outlasted the run)
            # a tokenizer worker killed -> the main process stops with one error line, exit 2
            assert code in (-9, 2), f"{where}: exit {code}\n{proc.output()[-2000:]}"
            if code == 2:
                assert proc.output().strip().splitlines()[-1].startswith("error: "), proc.output()[-2000:]
            after = listed_shards(out)
            lost = {name for name, blob in before.items() if after.get(name) != blob}
            chain_kills.append((f"{where} ({len(before)} shards listed)", bool(lost)))
            assert not lost, f"{where}: complete shards changed or vanished: {sorted(lost)}"
            if len(chain_kills) > 12:
                break
        # the re-run that got through must equal the clean run, byte for byte
        final = zygote.start("data_prep.fineweb", argv_of(out), subprocess_env(), tmp_path / f"final{chain}.log")
        assert zygote.wait(final, timeout=300) == 0, final.output()[-2000:]
        identical = dir_bytes(out) == reference
        for where, lost in chain_kills:
            fault_log.record("kill -9 data_prep", where, recovered=identical, data_lost=lost)
        assert identical, f"chain {chain}: output differs from a clean run: " \
            f"{sorted(set(dir_bytes(out)) ^ set(reference))} / " \
            f"{[n for n in reference if dir_bytes(out).get(n) != reference[n]]}"
        kills += len(chain_kills)
        chain += 1
