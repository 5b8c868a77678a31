"""Fault kind 3: the disk fills up. data_prep and the trainer write onto a small tmpfs
(mounted by the test, as root) until it is full: a one-line error, the shards/checkpoints
completed before are intact and loadable, and the same command re-run after space is
freed (a filler file deleted, or the filesystem remounted bigger) completes correctly:
byte-identical shards, a training run whose losses equal a clean run's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from faults._inject import call_main, describe, error_lines
from faults._stages import prep_argv
from faults._tmpfs import fill, resize, tmpfs
from pipeline.shards import ShardInfo, open_shard

KIB = 1024


def dir_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file() and p.name != ".data_prep.lock"}


@pytest.mark.parametrize("leave_kib,free_by", [(0, "delete filler"), (24, "remount bigger"), (70, "delete filler"),
                                               (100, "remount bigger")])
def test_data_prep_on_a_full_disk_errors_keeps_its_shards_and_resumes(leave_kib, free_by, tiny_shards, tmp_path,
                                                                      fault_log):
    from data_prep.fineweb import main
    reference = dir_bytes(tiny_shards)  # the same command on a roomy disk
    with tmpfs(tmp_path / "disk", "2m") as disk:
        filler = fill(disk, leave_kib * KIB)
        out = disk / "shards"
        argv = prep_argv(out, "--workers", "0")
        code, _, err = call_main(main, argv)
        lines = error_lines(err)
        clean = code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err \
            and ("disk full" in lines[0] or "No space left" in lines[0]) and str(disk) in lines[0]
        # what the manifest lists as complete is intact (sha256 checked) and equal to the clean run's
        kept = []
        if (out / "manifest.json").exists():
            for entry in json.loads((out / "manifest.json").read_text())["shards"]:
                open_shard(ShardInfo(out / entry["file"], entry["split"], entry["tokens"], sha256=entry["sha256"]),
                           verify_hash=True)
                kept.append(entry["file"])
        intact = all((out / name).read_bytes() == reference[name] for name in kept)

        if free_by == "delete filler":
            filler.unlink()
        else:
            resize(disk, "4m")
        rerun, _, rerr = call_main(main, argv)
        identical = rerun == 0 and dir_bytes(out) == reference
        fault_log.record("disk full: data_prep", f"{leave_kib} KiB free, {len(kept)} shards kept, then {free_by}",
                         recovered=clean and identical, clean_error=clean, data_lost=not intact)
        assert clean, describe(code, err)
        assert intact
        assert identical, describe(rerun, rerr)


def train_losses(run: Path) -> dict[int, float]:
    from pipeline.atomic import read_jsonl
    return {r["step"]: r["loss"] for r in read_jsonl(run / "metrics.jsonl") if r.get("kind") == "train"}


# free space left on a 96 MiB tmpfs; one tiny-model checkpoint (weights + AdamW state) is ~19.6 MB,
# and the run keeps the last 2 (plus the one being written)
CHECKPOINT_CASES = [(26 * 1024, "delete filler"),  # the step-3 checkpoint fits, the step-6 one does not
                    (8 * 1024, "remount bigger"),  # full inside the first checkpoint
                    (4, "delete filler")]  # full from the start: run.json, metrics.jsonl


@pytest.mark.parametrize("leave_kib,free_by", CHECKPOINT_CASES)
def test_training_on_a_full_disk_errors_keeps_its_checkpoints_and_resumes(leave_kib, free_by, tiny_config, tiny_run,
                                                                          tmp_path, fault_log):
    from pipeline.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
    from train.__main__ import main
    with tmpfs(tmp_path / "disk", "96m") as disk:
        filler = fill(disk, leave_kib * KIB)
        run = disk / "run"
        argv = ["--config", tiny_config, "--run-dir", run, "--train.keep_last=2"]
        code, _, err = call_main(main, argv)
        lines = error_lines(err)
        clean = code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err \
            and "No space left" in lines[0] and str(run) in lines[0]
        kept = list_checkpoints(run)
        for ckpt in kept:  # complete checkpoints load, every file's sha256 checked
            load_checkpoint(ckpt, ("model", "optimizer"))
        last = latest_checkpoint(run)

        if free_by == "delete filler":
            filler.unlink()
        else:
            resize(disk, "160m")
        rerun, out, rerr = call_main(main, argv)
        resumed = last is None or f"resumed from {last}" in out
        same = rerun == 0 and resumed and train_losses(run) == train_losses(tiny_run)
        fault_log.record("disk full: checkpoint save", f"{leave_kib} KiB free, {len(kept)} checkpoints kept, "
                         f"then {free_by}", recovered=clean and same, clean_error=clean)
        assert clean, describe(code, err)
        assert same, describe(rerun, rerr) + out[-2000:]
