"""Fault kind 6: signals during evaluation and watching, and torn results lines.

- `python -m eval --watch` is SIGKILLed (and SIGTERMed) at seeded-random moments while it
  evaluates, and started again each time: in the end every (checkpoint, data, metric)
  result is in results.jsonl exactly once; after every signal the file holds only whole
  lines and everything it held before.
- An append killed half-way (a real SIGKILL after part of the line reached the file):
  readers ignore the torn tail, the next append repairs it, the interrupted result is
  computed again exactly once.
- A damaged line in the middle of results.jsonl / metrics.jsonl: a one-line error naming
  the file and line, not a traceback.
"""

from __future__ import annotations

import collections
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import HELLASWAG_VAL, REPO, subprocess_env
from faults._inject import call_main, describe, is_clean_error
from pipeline.checkpoint import list_checkpoints

SEED = 6
HS = ["--hellaswag", str(HELLASWAG_VAL), "--hellaswag-unverified", "--limit", "24"]  # generated rows
METRICS = ("hellaswag_acc", "hellaswag_acc_norm", "val_loss", "val_bpb")


def results_file(run: Path) -> Path:
    return run / "eval" / "results.jsonl"


def whole_lines(run: Path) -> list[dict]:
    """Rows of results.jsonl, asserting it holds only whole JSON lines."""
    path = results_file(run)
    if not path.exists():
        return []
    blob = path.read_bytes()
    assert blob == b"" or blob.endswith(b"\n"), f"torn last line: {blob[-120:]!r}"
    return [json.loads(line) for line in blob.decode().splitlines()]


def keys(rows: list[dict]) -> collections.Counter:
    return collections.Counter((r["checkpoint_sha256"], r["data_sha256"], r["metric"]) for r in rows)


@pytest.fixture()
def run(tiny_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy, ignore=shutil.ignore_patterns("eval"))
    return copy


@pytest.fixture()
def busy_run(tiny_config, tmp_path):
    """A run with a checkpoint at every one of its 12 steps: 48 results to compute, so that
    8 signals land mid-evaluation however fast the machine is."""
    from train.__main__ import main
    run = tmp_path / "busy"
    code, _, err = call_main(main, ["--config", tiny_config, "--run-dir", run, "--train.checkpoint_every=1"])
    assert code == 0, describe(code, err)
    return run


def test_watcher_killed_at_random_moments_evaluates_everything_exactly_once(busy_run, zygote, tmp_path, fault_log):
    run = busy_run
    rng = random.Random(SEED)
    steps = [int(p.name[5:]) for p in list_checkpoints(run)]
    expected = len(steps) * len(METRICS)
    argv = ["--watch", run, "--interval", "0.1", "--exit-when-done", "--no-report", *HS]
    signals = [signal.SIGKILL] * 6 + [signal.SIGTERM] * 2
    rng.shuffle(signals)
    injected = []
    for attempt, sig in enumerate(signals):
        before = results_file(run).read_bytes() if results_file(run).exists() else b""
        have = len(whole_lines(run))
        # The signal goes out as soon as `target` rows are on disk (a third of the time after a
        # short extra delay): with 4 rows per checkpoint, often between a checkpoint's HellaSwag
        # rows and its val rows, i.e. in the middle of evaluating it.
        target = min(have + rng.randint(1, 3), expected - 1)
        delay = rng.choice([0.0, 0.0, rng.uniform(0, 0.15)])
        watcher = zygote.start("eval.__main__", argv, subprocess_env(), tmp_path / f"watch{attempt}.log")
        deadline = time.monotonic() + 120
        while len(whole_lines(run)) < target and zygote.poll(watcher) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
        code = zygote.kill(watcher, sig)
        after = results_file(run).read_bytes() if results_file(run).exists() else b""
        rows = whole_lines(run)  # asserts: no torn line
        assert after.startswith(before), "results written before the signal were changed"
        assert max(keys(rows).values(), default=1) == 1, f"evaluated twice: {keys(rows).most_common(2)}"
        if sig == signal.SIGTERM:
            assert code == 0, f"SIGTERM: exit {code}\n{watcher.output()[-2000:]}"
        moment = "mid-checkpoint" if len(rows) % len(METRICS) else "between checkpoints"
        injected.append((signal.Signals(sig).name, f"attempt {attempt}: after {len(rows)} rows, {moment} (exit {code})"))

    final = zygote.start("eval.__main__", argv, subprocess_env(), tmp_path / "final.log")
    code = zygote.wait(final, timeout=300)
    rows = whole_lines(run)
    counts = keys(rows)
    complete = code == 0 and len(counts) == expected and max(counts.values()) == 1
    for name, where in injected:
        fault_log.record(f"{name} eval --watch", where, recovered=complete)
    assert code == 0, final.output()[-3000:]
    assert len(injected) == len(signals) and len(rows) == expected
    assert max(counts.values()) == 1, counts.most_common(3)
    assert sorted(collections.Counter(r["step"] for r in rows).items()) == [(s, len(METRICS)) for s in steps]


TORN_WRITER = """
import os, signal, sys
import pipeline.atomic as atomic
path, line, cut = sys.argv[1], sys.argv[2], int(sys.argv[3])
real_write = os.write
def torn_write(fd, data):  # part of the line reaches the file, then the process dies
    real_write(fd, data[:cut])
    os.kill(os.getpid(), signal.SIGKILL)
os.write = torn_write
atomic.append_line(path, line)
"""


@pytest.mark.parametrize("where", ["first byte", "middle", "all but the newline"])
def test_an_append_killed_half_way_is_repaired_and_redone_exactly_once(where, run, tmp_path, fault_log):
    from eval.__main__ import main as eval_main
    from pipeline.atomic import read_jsonl
    ckpt = list_checkpoints(run)[0]
    argv = ["--checkpoint", ckpt, "--tasks", "hellaswag", "--hellaswag", HELLASWAG_VAL, "--hellaswag-unverified", "--limit", "4", "--no-report"]
    code, _, err = call_main(eval_main, argv)
    assert code == 0, describe(code, err)
    path = results_file(run)
    lines = path.read_text().splitlines(keepends=True)
    victim = lines[-1].rstrip("\n")
    path.write_text("".join(lines[:-1]))
    data = victim + "\n"
    cut = {"first byte": 1, "middle": len(data) // 2, "all but the newline": len(data) - 1}[where]
    proc = subprocess.run([sys.executable, "-c", TORN_WRITER, str(path), victim, str(cut)], cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert path.read_text() == "".join(lines[:-1]) + data[:cut]  # the torn state a crash leaves

    readable = read_jsonl(path)  # what eval and the report see
    # The next run appends (val loss is new), which repairs the tail, and redoes what is missing.
    code, _, err = call_main(eval_main, [a if a != "hellaswag" else "hellaswag,val" for a in argv])
    rows = whole_lines(run)
    counts = keys(rows)
    recovered = code == 0 and len(counts) == 4 and max(counts.values()) == 1  # 2 HellaSwag + val loss + bpb
    lost = len(rows) < len(readable)
    fault_log.record("kill -9 during results append", f"cut after {cut} of {len(data)} bytes ({where})",
                     recovered=recovered, data_lost=lost)
    assert readable[0] == json.loads(lines[0]) and len(readable) in (1, 2)
    assert recovered and not lost, f"{describe(code, err)}\n{path.read_text()}"


@pytest.mark.parametrize("which", ["results.jsonl", "metrics.jsonl"])
def test_a_damaged_line_inside_a_jsonl_file_is_a_one_line_error(which, run, tiny_config, fault_log):
    from eval.__main__ import main as eval_main
    from train.__main__ import main as train_main
    ckpt = list_checkpoints(run)[-1]
    argv = ["--checkpoint", ckpt, "--tasks", "hellaswag", "--hellaswag", HELLASWAG_VAL, "--hellaswag-unverified", "--limit", "3", "--no-report"]
    assert call_main(eval_main, argv)[0] == 0
    path = results_file(run) if which == "results.jsonl" else run / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lines.insert(1, '{"step": 3, "kind": "tr\x00\x00\n')
    path.write_text("".join(lines))
    before = path.read_bytes()
    if which == "results.jsonl":  # eval reads it to know what is done
        code, _, err = call_main(eval_main, [*argv[:-2], "2", "--no-report"])
    else:  # the trainer trims it when it resumes
        code, _, err = call_main(train_main, ["--config", tiny_config, "--run-dir", run, "--train.max_steps=13"])
    clean = is_clean_error(code, err, f"{which}:2") and path.read_bytes() == before
    fault_log.record("corrupt jsonl line", which, clean_error=clean)
    assert clean, describe(code, err)
