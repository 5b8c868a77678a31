"""The slurm/ scripts, run by a real one-node Slurm cluster started on this machine.

The jobs are the real scripts on real text (the generated test corpus, tests/generated_data.py): data prep, training
with 2 local gloo workers under torchrun, evaluation, the submit.sh chain, and preemption
the way Slurm does it (SIGUSR1 to the batch shell) ending in a requeued run that resumes
and reproduces the uninterrupted run's per-step losses exactly.
Needs root (slurmd); installs slurm-wlm and munge with apt-get when missing.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from conftest import HELLASWAG_VAL, REPO, TEXT_DIR, require_system, subprocess_env
from pipeline.atomic import read_jsonl
from pipeline.checkpoint import list_checkpoints, step_of
from pipeline.shards import load_shard_set
from slurm_cluster import SlurmCluster, SlurmUnavailable, ensure_installed

MAX_STEPS = 16
CHAIN_STEPS = 6
WORKERS = 2  # torchrun workers per node: gloo on CPU
# A fresh tokenization of the same files gives byte-identical shards (data_prep's contract),
# so every run below trains on the same tokens.
TEXT_GLOB = str(TEXT_DIR / "prose" / "0*.txt")  # 10 files, ~0.5 MB
DATA_ARGS = ["--files", TEXT_GLOB, "--encoding-errors", "cp1252", "--shard-size", "20000", "--no-progress"]

TINY_TOML = """\
[model]
n_layer = 2
n_head = 2
n_embd = 64
block_size = 128

[data]
dir = "{data}"

[optim]
max_lr = 3e-3
warmup_steps = 2

[train]
total_batch_size = 128  # 2 sequences x 32 tokens x 2 workers: no gradient accumulation
micro_batch_size = 2
seq_len = 32
max_steps = {max_steps}
device = "cpu"
dtype = "float32"
checkpoint_every = 1000  # only the final and the preemption checkpoint
keep_last = 10

[eval]
eval_every = 0
sample_every = 0
val_tokens = 2048
"""


@pytest.fixture(scope="module")
def cluster():
    require_system("the Slurm tests install slurm-wlm and munge and start their daemons")
    try:
        installed_s = ensure_installed()
    except SlurmUnavailable as why:
        pytest.skip(f"no Slurm test cluster: {why}")
    root = Path(tempfile.mkdtemp(prefix="gpt2-slurm-"))  # under /tmp: munged must reach its socket
    c = SlurmCluster(root)
    try:
        c.start()
        print(f"\nslurm test cluster: install {installed_s:.1f}s, start {c.startup_s:.1f}s, {root}")
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("slurm-work")


def job_env(cluster: SlurmCluster, **extra: str) -> dict[str, str]:
    """What a user's shell would hold: this checkout, this Python, the test cluster."""
    return cluster.env(subprocess_env(PROJECT_DIR=str(REPO), VENV=sys.prefix, PYTHON=sys.executable, **extra))


def write_config(path: Path, data: Path) -> Path:
    path.write_text(TINY_TOML.format(data=data, max_steps=MAX_STEPS))
    return path


def train_losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"]


def assert_completed(cluster: SlurmCluster, job_id: int, log: Path) -> list[dict[str, str]]:
    """The job's last run completed with exit code 0; returns the records of all its runs."""
    runs = cluster.runs(job_id)
    last = runs[-1] if runs else {"JobState": "(not ended)", "ExitCode": "?"}
    assert (last["JobState"], last["ExitCode"]) == ("COMPLETED", "0:0"), \
        f"job {job_id}: {last['JobState']} {last['ExitCode']}\n--- {log} ---\n" \
        f"{log.read_text() if log.exists() else '(no log)'}\n{cluster.logs()}"
    return runs


def test_trivial_job_runs_and_reports_its_exit_code(cluster, work):
    out = work / "trivial-%j.out"
    ok = cluster.sbatch(f"--output={out}", "--wrap", "srun --ntasks=1 echo step on $(hostname); echo batch done")
    log = Path(str(out).replace("%j", str(ok)))
    assert_completed(cluster, ok, log)
    assert log.read_text().splitlines() == [f"step on {socket.gethostname()}", "batch done"]

    bad = cluster.sbatch(f"--output={work / 'fail-%j.out'}", "--wrap", "exit 7")
    assert [(r["JobState"], r["ExitCode"]) for r in cluster.runs(bad)] == [("FAILED", "7:0")]


@pytest.fixture(scope="module")
def shards(cluster, work) -> Path:
    out = work / "shards"
    log = work / "data.out"
    job = cluster.sbatch(f"--output={log}", "slurm/data_prep.sbatch", "--out", str(out), *DATA_ARGS,
                         env=job_env(cluster), cwd=REPO)
    assert_completed(cluster, job, log)
    return out


def test_data_prep_job_writes_a_complete_shard_set_with_every_cpu(cluster, shards, work):
    shard_set = load_shard_set(shards)
    assert shard_set.split("val") and len(shard_set.split("train")) >= 3
    log = (work / "data.out").read_text()
    cpus = cluster.runs(int(re.search(r"gpt2-data (\d+):", log)[1]))[-1]["ProcCnt"]
    assert f"--workers {cpus} " in log  # --exclusive: the whole node, one tokenizer per CPU


@pytest.fixture(scope="module")
def reference_run(cluster, shards, work) -> Path:
    """An uninterrupted training job: the trajectory the preempted one must reproduce."""
    run = work / "runs" / "reference"
    log = work / "train-reference.out"
    config = write_config(work / "tiny.toml", shards)
    job = cluster.sbatch(f"--output={log}", f"--cpus-per-task={WORKERS}", "slurm/train.sbatch",
                         "--config", str(config), "--run-dir", str(run),
                         env=job_env(cluster, GPUS_PER_NODE=str(WORKERS)), cwd=REPO)
    assert_completed(cluster, job, log)
    return run


def test_train_job_runs_torchrun_workers_to_max_steps(reference_run, work):
    losses = train_losses(reference_run)
    assert [s for s, _ in losses] == list(range(1, MAX_STEPS + 1))
    assert json.loads((reference_run / "exit.json").read_text())["code"] == 0
    assert json.loads((reference_run / "run.json").read_text())["world_size"] == WORKERS
    assert [step_of(p) for p in list_checkpoints(reference_run)] == [MAX_STEPS]
    log = (work / "train-reference.out").read_text()
    # One thread per worker (2 CPUs, 2 workers); the rendezvous at the head node's NodeAddr.
    assert f"1 node(s) x {WORKERS} worker(s), 1 thread(s) each, rendezvous 127.0.0.1:" in log
    assert "training finished" in log


def test_eval_job_scores_the_checkpoint_and_writes_the_report(cluster, reference_run, shards, work):
    log = work / "eval.out"
    job = cluster.sbatch(f"--output={log}", "slurm/eval.sbatch", "--checkpoint", str(reference_run),
                         "--hellaswag", str(HELLASWAG_VAL), "--hellaswag-unverified", "--limit", "8", "--val-data", str(shards),
                         env=job_env(cluster), cwd=REPO)
    assert_completed(cluster, job, log)
    rows = read_jsonl(reference_run / "eval" / "results.jsonl")
    assert {r["step"] for r in rows} == {MAX_STEPS}
    assert {"val_loss", "hellaswag_acc", "hellaswag_acc_norm"} <= {r["metric"] for r in rows}
    assert (reference_run / "eval" / "report.md").stat().st_size > 0


def test_submit_chain_runs_data_train_eval_in_order_and_ends_with_a_report(cluster, shards, work):
    run, data = work / "runs" / "chain", work / "chain-shards"
    config = write_config(work / "chain.toml", data)
    env = job_env(cluster, RUN_DIR=str(run), DATA_DIR=str(data), DATA_ARGS=" ".join(DATA_ARGS),
                  GPUS_PER_NODE=str(WORKERS), CPUS_PER_GPU="1", GPU_REQUEST="", EVAL_GPU_REQUEST="",
                  HELLASWAG=str(HELLASWAG_VAL), EVAL_ARGS="--limit 8 --hellaswag-unverified", EVAL_CPUS="1")
    del env["PROJECT_DIR"]  # run from another directory: submit.sh must find the checkout itself
    # Overrides after the config reach the trainer (and a shorter run keeps the test quick).
    proc = subprocess.run([str(REPO / "slurm" / "submit.sh"), str(config), f"--train.max_steps={CHAIN_STEPS}"],
                          env=env, cwd=work, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ids = dict(re.findall(r"(\w+)=(\d+)", proc.stdout.splitlines()[-1]))
    jobs = {name: int(ids[name]) for name in ("data", "train", "eval")}

    cluster.wait_finished(jobs["eval"], timeout=240)
    states = {name: assert_completed(cluster, job, next((run / "slurm").glob(f"*-{job}.out"), run / "slurm"))[-1]
              for name, job in jobs.items()}
    # afterok: each job started only after the one before it had ended.
    assert states["data"]["EndTime"] <= states["train"]["StartTime"]
    assert states["train"]["EndTime"] <= states["eval"]["StartTime"]
    assert load_shard_set(data).fingerprint == load_shard_set(shards).fingerprint
    assert [s for s, _ in train_losses(run)] == list(range(1, CHAIN_STEPS + 1))
    assert (run / "eval" / "report.md").stat().st_size > 0
    assert {r["step"] for r in read_jsonl(run / "eval" / "results.jsonl")} == {CHAIN_STEPS}


def test_submit_rejects_a_bad_config_before_submitting_anything(tmp_path):
    config = write_config(tmp_path / "c.toml", tmp_path / "shards")
    env = subprocess_env(VENV=sys.prefix, PYTHON=sys.executable)
    proc = subprocess.run([str(REPO / "slurm" / "submit.sh"), str(config), "--train.max_step=3"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "train.max_step" in proc.stderr
    assert "job" not in proc.stdout


def test_preempted_training_checkpoints_requeues_and_resumes_to_the_same_losses(cluster, reference_run, shards, work):
    """USR1 to the batch shell mid-run -> checkpoint, requeue, resume: the run ends at the same
    step with the same per-step losses as the uninterrupted one, and an eval --watch job
    beside it evaluates both runs' checkpoints and exits when the final one is done."""
    run = work / "runs" / "preempted"
    log, watch_log = work / "train-preempted.out", work / "watch.out"
    name = f"preempt-{uuid.uuid4().hex[:8]}"
    # Slow steps down so the signal lands mid-run; they are just as deterministic.
    env = job_env(cluster, GPUS_PER_NODE=str(WORKERS), GPT2_PIPELINE_FAILPOINTS="train.after_step=sleep(0.3)")
    # One CPU each (the 2 workers share it) so that the watcher fits beside training.
    waiter = subprocess.Popen(
        ["sbatch", "--wait", f"--job-name={name}", f"--output={log}", "--cpus-per-task=1",
         "slurm/train.sbatch", "--config", str(write_config(work / "preempt.toml", shards)), "--run-dir", str(run)],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        job = _job_id_by_name(cluster, name)
        watcher = cluster.submit(f"--output={watch_log}", f"--dependency=after:{job}", "--cpus-per-task=1",
                                 "slurm/eval.sbatch", "--watch", str(run), "--exit-when-done", "--interval", "1",
                                 "--hellaswag", str(HELLASWAG_VAL), "--hellaswag-unverified", "--limit", "8", "--val-data", str(shards),
                                 env=job_env(cluster), cwd=REPO)
        _wait_for_step(run, 3, timeout=120)
        cluster.run("scancel", "--signal=USR1", "--batch", str(job))  # what --signal=B:USR1@300 does
        _poll(lambda: cluster.runs(job), 90, f"job {job} to end its first run")
        assert waiter.poll() is None, "sbatch --wait returned at the requeue, before the job was done"
        out, _ = waiter.communicate(timeout=240)
        assert waiter.returncode == 0, out
    finally:
        if waiter.poll() is None:
            waiter.kill()
    runs = assert_completed(cluster, job, log)
    assert [r["JobState"] for r in runs] == ["PENDING", "COMPLETED"]  # requeued once, then done

    text = log.read_text()
    stopped = int(re.search(r"trainer stopped at step (\d+) \(exit record: 3\); requeueing", text)[1])
    assert 3 <= stopped < MAX_STEPS
    assert "got SIGUSR1" in text and "restart 0," in text and "restart 1," in text, text
    # The resumed run started from the preemption checkpoint, not from scratch: no step
    # was trained twice, and the checkpoint it wrote is still there.
    assert [step_of(p) for p in list_checkpoints(run)] == [stopped, MAX_STEPS]
    assert train_losses(run) == train_losses(reference_run)
    assert json.loads((run / "exit.json").read_text())["code"] == 0

    cluster.wait_finished(watcher, timeout=120)
    assert_completed(cluster, watcher, watch_log)
    assert {r["step"] for r in read_jsonl(run / "eval" / "results.jsonl")} == {stopped, MAX_STEPS}


def test_usr1_during_the_final_step_ends_completed_not_failed(cluster, shards, work):
    """Issue 18 defect 1: USR1 arrives while the trainer finishes its last step. The trainer
    records exit 0 in exit.json, torchrun (itself signalled) may exit 1; the job is COMPLETED
    (a FAILED one would make --kill-on-invalid-dep cancel the afterok eval of a finished run)."""
    run, log = work / "runs" / "usr1-at-end", work / "train-usr1-at-end.out"
    name = f"usr1-end-{uuid.uuid4().hex[:8]}"
    # The last step stalls after its checkpoint: the signal lands in the trainer's final moments.
    env = job_env(cluster, GPUS_PER_NODE=str(WORKERS),
                  GPT2_PIPELINE_FAILPOINTS=f"train.after_step=sleep(5)@step={MAX_STEPS}")
    waiter = subprocess.Popen(
        ["sbatch", "--wait", f"--job-name={name}", f"--output={log}", f"--cpus-per-task={WORKERS}",
         "slurm/train.sbatch", "--config", str(write_config(work / "usr1-end.toml", shards)), "--run-dir", str(run)],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        job = _job_id_by_name(cluster, name)
        _wait_for_step(run, MAX_STEPS, timeout=300)
        cluster.run("scancel", "--signal=USR1", "--batch", str(job))
        out, _ = waiter.communicate(timeout=240)
    finally:
        if waiter.poll() is None:
            waiter.kill()
    runs = assert_completed(cluster, job, log)
    assert [r["JobState"] for r in runs] == ["COMPLETED"]  # not requeued, not FAILED
    text = log.read_text()
    assert "got SIGUSR1" in text and "training finished (SIGUSR1 arrived as it ended; the step exited" in text, text
    assert json.loads((run / "exit.json").read_text())["code"] == 0


def _poll(probe, timeout: float, what: str):
    """probe() until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _job_id_by_name(cluster: SlurmCluster, name: str) -> int:
    ids = _poll(lambda: cluster.run("squeue", "--noheader", f"--name={name}", "--format=%i").stdout.split(),
                30, f"a job named {name} in squeue")
    return int(ids[0])


def _wait_for_step(run: Path, step: int, timeout: float) -> None:
    def reached():
        rows = read_jsonl(run / "metrics.jsonl") if (run / "metrics.jsonl").exists() else []
        return any(r["kind"] == "train" and r["step"] >= step for r in rows)
    _poll(reached, timeout, f"{run} to log train step {step}")
