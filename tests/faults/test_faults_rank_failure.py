"""Fault kind 5: one rank of a 2-rank job dies. `torchrun --max-restarts=1` tears the job
down and starts it again; the new attempt resumes from the last complete checkpoint and
the run finishes with exactly the per-step losses and weights of an uninterrupted run.

Rank 1 SIGKILLs itself right after step 5 (between the checkpoints of steps 3 and 6), in
the first attempt only: the failpoint `train.after_step=kill@step=5,rank=1,attempt=0`, which
reads torchrun's TORCHELASTIC_RESTART_COUNT.
"""

from __future__ import annotations

import json

import torch

from conftest import run_torchrun, subprocess_env
from faults._stages import STEPS, Job
from pipeline.atomic import read_jsonl
from pipeline.checkpoint import list_checkpoints, load_checkpoint


def losses(run) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_jsonl(run / "metrics.jsonl") if r.get("kind") == "train"}


def final_weights(run) -> dict[str, torch.Tensor]:
    return load_checkpoint(list_checkpoints(run)[-1], ("model",))[0]["model"]


def test_a_killed_rank_is_restarted_by_torchrun_and_the_run_completes_identically(tiny_config, zygote, tmp_path,
                                                                                 fault_log):
    clean = tmp_path / "clean"
    job = Job(zygote, 2, ["--config", tiny_config, "--run-dir", clean], tmp_path / "clean")
    assert job.wait() == [0, 0], job.output()[-3000:]

    run = tmp_path / "run"
    proc = run_torchrun(2, "train", "--config", tiny_config, "--run-dir", run, check=False, timeout=540,
                        env=subprocess_env(GPT2_PIPELINE_FAILPOINTS="train.after_step=kill@step=5,rank=1,attempt=0"),
                        extra_torchrun=("--max-restarts=1", "--monitor-interval=0.5"))
    launches = json.loads((run / "run.json").read_text())["launches"] if (run / "run.json").exists() else []
    same = proc.returncode == 0 and losses(run) == losses(clean) and all(
        torch.equal(a, b) for a, b in zip(final_weights(run).values(), final_weights(clean).values()))
    fault_log.record("rank failure (torchrun restart)", "rank 1 SIGKILLed after step 5 of 12, 2 ranks",
                     recovered=same and len(launches) == 2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert len(launches) == 2 and launches[1]["resumed_from"].endswith("step_000003"), launches
    assert sorted(losses(run)) == list(range(1, STEPS + 1))
    assert losses(run) == losses(clean)
    assert same
