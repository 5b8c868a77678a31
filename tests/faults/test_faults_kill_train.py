"""Fault kind 1b: kill -9 sweep of `python -m train`, 1 rank and 2 ranks (gloo, CPU, fp32).

The whole job is SIGKILLed at 24 seeded-random moments (12 per world size) and the same
command re-run after each: right after a step (the trainer's GPT2_PIPELINE_TEST_KILL_AT_STEP
hook), inside a checkpoint write (GPT2_PIPELINE_TEST_SAVE_SLEEP stalls the save after
model.pt; the test kills it there) and after seeded-random delays (start-up, a step, a save,
a metrics append). Each re-run must resume from the latest complete checkpoint; checkpoints
completed before a kill must survive it unchanged; the run that finally completes has
per-step losses and final weights bitwise equal to an uninterrupted run's.

Ranks are forked from the zygote with torchrun's environment (RANK, WORLD_SIZE,
MASTER_ADDR/PORT): the same code path as under torchrun, without paying a torch import per
rank per attempt. torchrun's own restart logic is test_faults_rank_failure.py's subject.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
import torch

from faults._stages import CHECKPOINT_EVERY, STEPS, Job
from pipeline.atomic import read_jsonl
from pipeline.checkpoint import COMPLETE, latest_checkpoint, list_checkpoints, load_checkpoint

SEED = 11
KILLS_PER_WORLD_SIZE = 12
CHECKPOINT_STEPS = list(range(CHECKPOINT_EVERY, STEPS + 1, CHECKPOINT_EVERY))


def train_losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_jsonl(run / "metrics.jsonl") if r.get("kind") == "train"}


def markers(run: Path) -> dict[str, str]:
    return {p.name: (p / COMPLETE).read_text() for p in list_checkpoints(run)}


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(list_checkpoints(run)[-1], ("model",))[0]["model"]


@pytest.fixture(scope="module")
def clean_runs(zygote, tiny_config, tmp_path_factory):
    """Uninterrupted runs of the same command, per world size."""
    root = tmp_path_factory.mktemp("kill-train-clean")
    runs = {}
    for nproc in (1, 2):
        run = root / f"run{nproc}"
        job = Job(zygote, nproc, ["--config", tiny_config, "--run-dir", run], root / f"clean{nproc}")
        assert job.wait() == [0] * nproc, job.output()[-3000:]
        runs[nproc] = run
    return runs


def choose_kill(rng: random.Random, resume_step: int) -> tuple[str, dict[str, str], float | int | None]:
    """(description, environment hooks, what to wait for) of one seeded-random kill."""
    later = [s for s in CHECKPOINT_STEPS if s > resume_step]
    kind = rng.choice(["after step", "inside a save", "random moment", "random moment"])
    if kind == "after step":
        step = rng.randint(resume_step + 1, STEPS)
        return f"right after step {step}", {"GPT2_PIPELINE_FAILPOINTS": f"train.after_step=kill@step={step}"}, None
    if kind == "inside a save" and later:
        step = rng.choice(later)
        return f"inside the save of step {step}", {"GPT2_PIPELINE_FAILPOINTS": f"checkpoint.file_written=sleep(60)@step={step}"}, step
    delay = rng.uniform(0.3, 3.0)
    return f"{delay * 1000:.0f} ms after launch", {}, delay


def run_sweep(nproc: int, zygote, tiny_config: Path, clean: Path, root: Path, fault_log) -> None:
    rng = random.Random(SEED + nproc)
    argv_of = lambda run: ["--config", tiny_config, "--run-dir", run]  # noqa: E731
    kills, chain, attempt = 0, 0, 0
    while kills < KILLS_PER_WORLD_SIZE:
        run = root / f"chain{chain}"
        chain_kills = []
        while len(chain_kills) < 8:
            attempt += 1
            latest = latest_checkpoint(run)
            kept = markers(run)
            resume_step = int(latest.name[5:]) if latest else 0
            where, hooks, until = choose_kill(rng, resume_step)
            partial = run / "checkpoints" / f"step_{until if isinstance(until, int) else 0:06d}.tmp" / "model.pt"
            stale = partial.stat().st_mtime_ns if partial.exists() else None
            job = Job(zygote, nproc, argv_of(run), root / f"a{attempt}", **hooks)
            if isinstance(until, int):  # stalled inside the save of step `until`: kill it there
                deadline = time.monotonic() + 120
                while None in job.poll() and time.monotonic() < deadline:
                    # this attempt's partial save, not one an earlier killed attempt left behind
                    if partial.exists() and partial.stat().st_mtime_ns != stale:
                        break
                    time.sleep(0.02)
                codes = job.kill()
            elif isinstance(until, float):
                time.sleep(until)
                codes = job.kill()
            else:
                codes = job.wait()
            log = job.output()
            if "resumed from" in log:  # the launch got far enough to say where it started from
                assert f"resumed from {latest}" in log, f"attempt {attempt}: expected to resume from {latest}:\n{log[-2000:]}"
            elif "fresh start" in log:
                assert latest is None, f"attempt {attempt}: started fresh although {latest} exists"
            if codes == [0] * nproc:
                break  # this attempt finished the run
            lost = {name for name, marker in kept.items() if markers(run).get(name) != marker}
            newest = latest_checkpoint(run)
            if newest is not None:
                load_checkpoint(newest, ("model", "optimizer"))  # complete means loadable (sha256 checked)
            chain_kills.append((f"{where} (resume step {resume_step})", bool(lost)))
            assert not lost, f"{where}: complete checkpoints lost or changed: {sorted(lost)}"
        final = Job(zygote, nproc, argv_of(run), root / f"final{chain}")
        codes = final.wait()
        same = codes == [0] * nproc and train_losses(run) == train_losses(clean) and all(
            torch.equal(a, b) for a, b in zip(weights(run).values(), weights(clean).values()))
        for where, lost in chain_kills:
            fault_log.record(f"kill -9 train ({nproc} rank{'s' if nproc > 1 else ''})", where, recovered=same,
                             data_lost=lost)
        assert codes == [0] * nproc, final.output()[-3000:]
        assert train_losses(run) == train_losses(clean), (train_losses(run), train_losses(clean))
        assert same, "final weights differ from the uninterrupted run's"
        assert sorted(train_losses(run)) == list(range(1, STEPS + 1))
        kills += len(chain_kills)
        chain += 1


@pytest.mark.parametrize("nproc", [1, 2])
def test_training_killed_at_random_moments_resumes_to_the_same_losses(nproc, zygote, tiny_config, clean_runs,
                                                                     tmp_path, fault_log):
    run_sweep(nproc, zygote, tiny_config, clean_runs[nproc], tmp_path, fault_log)
    assert json.loads((clean_runs[nproc] / "exit.json").read_text())["code"] == 0
