"""The decisions of slurm/train.sbatch, data_prep.sbatch, eval.sbatch and submit.sh, with the
inputs a real multi-GPU cluster gives them (tests/slurm_stubs.py stands in for srun, scancel,
scontrol, sbatch and squeue). Each test names the defect of issue 18 it pins down; the real
one-node cluster tests are in tests/test_slurm.py. No root, no daemons, no torch import in the
scripts under test (a stand-in `torch` package answers), so these run in the normal suite.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, subprocess_env
from slurm_stubs import FakeSlurm

JOB = 4242
SCRIPTS = [REPO / "slurm" / name for name in ("train.sbatch", "data_prep.sbatch", "eval.sbatch", "submit.sh",
                                              "job_env.sh")]


def fake_torch(root: Path, shutdown_timeout: bool = True) -> Path:
    """A `torch` package that records its import in calls.log; its torchrun has
    --shutdown-timeout or not, like torch versions after and before pytorch/pytorch#172596."""
    pkg = root / "fake_torch" / "torch"
    (pkg / "distributed").mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "import os\n"
        "with open(os.path.join(os.environ['FAKE_SLURM_DIR'], 'calls.log'), 'a') as f:\n"
        "    f.write('python\\timport torch\\n')\n")
    (pkg / "version.py").write_text("__version__ = '2.5.1+fake'\n")
    (pkg / "distributed" / "__init__.py").write_text("")
    option = '"--shutdown-timeout",' if shutdown_timeout else ""
    (pkg / "distributed" / "run.py").write_text(f'OPTIONS = ["--max-restarts", {option}]\n')
    return pkg.parent


@pytest.fixture
def slurm(tmp_path) -> FakeSlurm:
    return FakeSlurm(tmp_path / "slurm")


def train_env(slurm: FakeSlurm, tmp_path: Path, shutdown_timeout: bool = True, **extra: str) -> dict[str, str]:
    """What a batch shell on the first node of an 8-GPU, 64-CPU allocation sees."""
    base = subprocess_env(PYTHONPATH=str(fake_torch(tmp_path, shutdown_timeout)), PROJECT_DIR=str(REPO),
                          VENV=str(tmp_path / "no-venv"), PYTHON=sys.executable)
    for key in ("OMP_NUM_THREADS", "GPUS_PER_NODE", "RDZV_PORT", "MAX_RESTARTS", "SHUTDOWN_TIMEOUT"):
        base.pop(key, None)
    values = dict(SLURM_JOB_ID=str(JOB), SLURM_JOB_NAME="gpt2-train", SLURM_JOB_NODELIST="node1",
                  SLURM_JOB_NUM_NODES="1", SLURM_CPUS_ON_NODE="64", SLURM_GPUS_ON_NODE="8",
                  SLURM_SUBMIT_DIR=str(REPO), SLURM_RESTART_COUNT="0",
                  FAKE_SLURM_ENV="OMP_NUM_THREADS PET_SHUTDOWN_TIMEOUT")
    values.update(extra)
    return slurm.env(base, **values)


def run_train(slurm: FakeSlurm, tmp_path: Path, srun: str = "exit 0", timeout: float = 120, **env: str) -> int:
    run = tmp_path / "run"
    proc = slurm.start_batch(REPO / "slurm" / "train.sbatch", "--config", "c.toml", "--run-dir", str(run),
                             env=train_env(slurm, tmp_path, FAKE_SRUN=srun, **env), cwd=tmp_path)
    return slurm.finish(proc, timeout)


def torchrun_args(slurm: FakeSlurm) -> dict[str, str]:
    (srun,) = slurm.calls("srun")
    return dict(a[2:].split("=", 1) for a in srun.args if a.startswith("--") and "=" in a)


# A training step that runs until signalled; on SIGTERM the trainer (rank 0) records CODE in
# exit.json and torchrun, itself signalled, exits 1 whatever its workers returned.
SIGNALLED_STEP = """
trap 'printf "{\\"code\\": %s, \\"reason\\": \\"r\\", \\"step\\": 16}" CODE > RUN/exit.json; exit 1' TERM
touch RUN.started
sleep 60 & wait
"""


def preempt(slurm: FakeSlurm, tmp_path: Path, code: int, **env: str) -> int:
    run = tmp_path / "run"
    run.mkdir()
    proc = slurm.start_batch(REPO / "slurm" / "train.sbatch", "--config", "c.toml", "--run-dir", str(run),
                             env=train_env(slurm, tmp_path, FAKE_SRUN=SIGNALLED_STEP.replace("CODE", str(code)).replace("RUN", str(run)),
                                           **env), cwd=tmp_path)
    slurm.wait_until(lambda: Path(f"{run}.started").exists(), what="the training step to start")
    os.kill(proc.pid, signal.SIGUSR1)  # what --signal=B:USR1@LEAD does
    return slurm.finish(proc)


# -- defect 1: a run that finished while USR1 was being handled is a success -------------------

def test_defect1_usr1_during_the_final_save_leaves_a_completed_job(slurm, tmp_path):
    rc = preempt(slurm, tmp_path, code=0)
    assert rc == 0, slurm.output()
    assert "scontrol requeue" not in slurm.names()
    assert "finished" in slurm.output()


def test_defect1_preempted_run_is_still_requeued(slurm, tmp_path):
    rc = preempt(slurm, tmp_path, code=3)
    assert rc == -signal.SIGKILL, slurm.output()  # ended by Slurm at the requeue, not by itself
    assert slurm.calls("scontrol")[-1].args == ["requeue", str(JOB)]


@pytest.mark.parametrize("code", [2, 4])
def test_defect1_deliberate_stop_is_reported_with_the_trainers_code(slurm, tmp_path, code):
    assert preempt(slurm, tmp_path, code=code) == code, slurm.output()
    assert "scontrol requeue" not in slurm.names()


# -- defect 8: requeue before anything slow (no torch import before scontrol requeue) ----------

def test_defect8_requeue_happens_before_torch_is_imported(slurm, tmp_path):
    preempt(slurm, tmp_path, code=3)
    names = slurm.names()
    assert "scontrol requeue" in names, slurm.output()
    assert "python import torch" not in names[:names.index("scontrol requeue")], names


# -- defect 3: a torchrun without --shutdown-timeout kills workers 30 s after SIGTERM ----------

def test_defect3_old_torchrun_is_refused_at_job_start(slurm, tmp_path):
    proc = slurm.start_batch(REPO / "slurm" / "train.sbatch", "--run-dir", str(tmp_path / "run"),
                             env=train_env(slurm, tmp_path, shutdown_timeout=False), cwd=tmp_path)
    assert slurm.finish(proc) == 2, slurm.output()
    assert slurm.calls("srun") == []
    out = slurm.output()
    assert "--shutdown-timeout" in out and "2.5.1+fake" in out and "SHUTDOWN_TIMEOUT=30" in out


def test_defect3_old_torchrun_runs_when_the_30s_grace_is_accepted(slurm, tmp_path):
    proc = slurm.start_batch(REPO / "slurm" / "train.sbatch", "--run-dir", str(tmp_path / "run"),
                             env=train_env(slurm, tmp_path, shutdown_timeout=False, SHUTDOWN_TIMEOUT="30",
                                           FAKE_SRUN="exit 0"), cwd=tmp_path)
    assert slurm.finish(proc) == 0, slurm.output()
    assert len(slurm.calls("srun")) == 1 and "warning" in slurm.output()


def test_defect3_new_torchrun_gets_the_shutdown_timeout(slurm, tmp_path):
    assert run_train(slurm, tmp_path) == 0, slurm.output()
    assert slurm.calls("srun")[0].env["PET_SHUTDOWN_TIMEOUT"] == "240"


# -- defect 5: workers per node follow the GPUs Slurm gave the job ----------------------------

def test_defect5_workers_default_to_the_allocated_gpus(slurm, tmp_path):
    assert run_train(slurm, tmp_path, SLURM_GPUS_ON_NODE="4") == 0, slurm.output()
    assert torchrun_args(slurm)["nproc_per_node"] == "4"


def test_defect5_more_workers_than_gpus_is_refused(slurm, tmp_path):
    assert run_train(slurm, tmp_path, SLURM_GPUS_ON_NODE="4", GPUS_PER_NODE="8") == 2, slurm.output()
    assert slurm.calls("srun") == []
    assert "GPUS_PER_NODE=8" in slurm.output() and "4 GPU" in slurm.output()


# -- defect 7: CPUs per worker and OMP_NUM_THREADS ---------------------------------------------

def test_defect7_omp_threads_are_the_cpus_per_worker(slurm, tmp_path):
    assert run_train(slurm, tmp_path) == 0, slurm.output()
    assert slurm.calls("srun")[0].env["OMP_NUM_THREADS"] == "8"  # 64 CPUs / 8 workers


def test_defect7_too_few_cpus_is_a_warning_naming_cpus_per_gpu(slurm, tmp_path):
    assert run_train(slurm, tmp_path, SLURM_CPUS_ON_NODE="2") == 0, slurm.output()
    assert slurm.calls("srun")[0].env["OMP_NUM_THREADS"] == "1"
    assert re.search(r"warning: .*2 CPU.*8 worker.*--cpus-per-gpu", slurm.output()), slurm.output()


# -- worth fixing: rendezvous port, signalling the training step only --------------------------

def test_rendezvous_port_is_free_on_the_head_node_not_derived_from_the_job_id(slurm, tmp_path):
    derived = 20000 + JOB % 10000
    holder = socket.socket()
    try:
        holder.bind(("", derived))  # another job on this node already uses the derived port
    except OSError:
        pass  # someone else holds it: the same situation
    try:
        assert run_train(slurm, tmp_path) == 0, slurm.output()
    finally:
        holder.close()
    host, port = torchrun_args(slurm)["rdzv_endpoint"].rsplit(":", 1)
    assert host == "addr-node1"  # the head node's NodeAddr: what the other nodes can reach
    assert int(port) != derived


def test_usr1_signals_only_the_training_step(slurm, tmp_path):
    preempt(slurm, tmp_path, code=3)
    assert slurm.calls("scancel")[0].args == ["--signal=TERM", f"{JOB}.0"]


def test_rendezvous_id_is_new_for_each_requeued_run(slurm, tmp_path):
    """torchrun's run id names one launch: the trainer's restart rule (a restarted worker
    repeats an exit 2/4 recorded for its launch) must not match an earlier run of the job."""
    assert run_train(slurm, tmp_path, SLURM_RESTART_COUNT="2") == 0, slurm.output()
    assert torchrun_args(slurm)["rdzv_id"] == f"{JOB}-2"


# -- worth fixing: bash < 4.4 treats "${empty[@]}" as unbound under set -u ---------------------

@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_no_bare_array_expansion_for_bash_before_4_4(script):
    text = re.sub(r'\$\{(\w+)\[@\]\+"\$\{\1\[@\]\}"\}', "", script.read_text())  # the guarded form
    bare = re.findall(r'"\$\{\w+\[@\]\}"', text)
    assert not bare, f"{script.name}: {bare} aborts under set -u in bash < 4.4 when empty; " \
                     'write ${a[@]+"${a[@]}"}'


# -- worth fixing: the data job requeues itself ------------------------------------------------

def test_data_job_requeues_itself_on_usr1(slurm, tmp_path):
    tokenizer = tmp_path / "fake_python"
    tokenizer.write_text("#!/bin/bash\ntrap 'exit 130' TERM\ntouch \"$FAKE_SLURM_DIR/started\"\n"
                         "sleep 60 & wait\n")
    tokenizer.chmod(0o755)
    env = train_env(slurm, tmp_path, PYTHON=str(tokenizer), SLURM_JOB_NAME="gpt2-data")
    proc = slurm.start_batch(REPO / "slurm" / "data_prep.sbatch", "--out", str(tmp_path / "shards"),
                             env=env, cwd=tmp_path)
    slurm.wait_until(lambda: (slurm.root / "started").exists(), what="the tokenizer to start")
    os.kill(proc.pid, signal.SIGUSR1)
    slurm.finish(proc)
    assert slurm.calls("scontrol")[-1].args == ["requeue", str(JOB)], slurm.output()
    directives = (REPO / "slurm" / "data_prep.sbatch").read_text()
    assert "#SBATCH --requeue" in directives and re.search(r"#SBATCH --signal=B:USR1@\d+", directives)


# -- submit.sh: defects 4, 5, 6; held submission ----------------------------------------------

def submit(slurm: FakeSlurm, tmp_path: Path, *overrides: str, **env: str) -> subprocess.CompletedProcess:
    config = tmp_path / "tiny.toml"
    config.write_text(f'[data]\ndir = "{tmp_path / "shards"}"\n')
    hellaswag = tmp_path / "hellaswag.jsonl"
    hellaswag.write_text("")
    base = subprocess_env(VENV=str(tmp_path / "no-venv"), PYTHON=sys.executable)
    for key in ("GPUS_PER_NODE", "PARTITION", "GPU_REQUEST", "EVAL_MODE", "DATA_PARTITION"):
        base.pop(key, None)
    values = dict(RUN_DIR=str(tmp_path / "run"), SKIP_DATA="0", HELLASWAG=str(hellaswag),
                  FAKE_SLURM_ENV="GPUS_PER_NODE")
    values.update(env)
    return subprocess.run([str(REPO / "slurm" / "submit.sh"), str(config), *overrides],
                          env=slurm.env(base, **values), cwd=tmp_path, capture_output=True, text=True, timeout=120)


def sbatch_of(slurm: FakeSlurm, script: str):
    (call,) = [c for c in slurm.calls("sbatch") if any(a.endswith(script) for a in c.args)]
    return call


def test_defect5_submit_does_not_force_8_workers_on_a_4_gpu_request(slurm, tmp_path):
    proc = submit(slurm, tmp_path, GPU_REQUEST="--gres=gpu:4")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    train = sbatch_of(slurm, "train.sbatch")
    assert "--gres=gpu:4" in train.args
    assert train.env["GPUS_PER_NODE"] == "<unset>"  # train.sbatch uses SLURM_GPUS_ON_NODE (4)
    assert "--cpus-per-gpu=8" in train.args


def test_defect5_gpus_per_node_sets_the_gpu_request(slurm, tmp_path):
    proc = submit(slurm, tmp_path, GPUS_PER_NODE="4")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    train = sbatch_of(slurm, "train.sbatch")
    assert "--gpus-per-node=4" in train.args and train.env["GPUS_PER_NODE"] == "4"


def test_defect6_data_job_does_not_inherit_the_gpu_partition(slurm, tmp_path):
    proc = submit(slurm, tmp_path, PARTITION="gpu")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not [a for a in sbatch_of(slurm, "data_prep.sbatch").args if a.startswith(("--partition", "-p"))]
    assert "--partition=gpu" in sbatch_of(slurm, "train.sbatch").args
    assert "--partition=gpu" in sbatch_of(slurm, "eval.sbatch").args
    proc = submit(FakeSlurm(tmp_path / "s2"), tmp_path, PARTITION="gpu", DATA_PARTITION="cpu")
    assert proc.returncode == 0


def test_defect4_watcher_requeues_has_max_idle_and_knows_the_training_job(slurm, tmp_path):
    proc = submit(slurm, tmp_path, EVAL_MODE="watch")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    train, watcher = sbatch_of(slurm, "train.sbatch"), sbatch_of(slurm, "eval.sbatch")
    train_id = train.args[-1].split("=")[1]
    assert "--requeue" in watcher.args and any(re.match(r"--signal=B:USR1@\d+", a) for a in watcher.args)
    assert "--max-idle" in watcher.args
    assert f"--export=ALL,TRAIN_JOB={train_id}" in watcher.args


def test_submit_holds_every_job_and_releases_them_together(slurm, tmp_path):
    proc = submit(slurm, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = [c.args[-1].split("=")[1] for c in slurm.calls("sbatch")]
    assert len(jobs) == 3 and all("--hold" in c.args for c in slurm.calls("sbatch"))
    assert [c.args for c in slurm.calls("scontrol")] == [["release", ",".join(jobs)]]


def test_submit_cancels_what_it_submitted_when_a_later_sbatch_fails(slurm, tmp_path):
    proc = submit(slurm, tmp_path, FAKE_SBATCH_FAIL="eval.sbatch")
    assert proc.returncode != 0
    submitted = [c.args[-1].split("=")[1] for c in slurm.calls("sbatch")][:2]
    assert [c.args for c in slurm.calls("scancel")] == [submitted]
    assert slurm.calls("scontrol") == []
    assert "QOS limit" in proc.stderr and "cancelled" in proc.stderr


# -- defect 4: the watcher job itself --------------------------------------------------------

def watcher(slurm: FakeSlurm, tmp_path: Path, **env: str):
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    evaluator = tmp_path / "fake_eval"
    evaluator.write_text("#!/bin/bash\ntrap 'echo eval stopped by TERM; exit 0' TERM\n"
                         "touch \"$FAKE_SLURM_DIR/started\"\nsleep 60 & wait\n")
    evaluator.chmod(0o755)
    values = dict(PYTHON=str(evaluator), SLURM_JOB_NAME="gpt2-eval", TRAIN_JOB="4241", WATCH_POLL="0.2")
    values.update(env)
    proc = slurm.start_batch(REPO / "slurm" / "eval.sbatch", "--watch", str(run), "--exit-when-done",
                             env=train_env(slurm, tmp_path, **values), cwd=tmp_path)
    slurm.wait_until(lambda: (slurm.root / "started").exists(), what="the evaluator to start")
    return proc, run


def test_defect4_watcher_requeues_itself_at_its_time_limit(slurm, tmp_path):
    proc, _ = watcher(slurm, tmp_path, FAKE_SQUEUE="RUNNING")
    os.kill(proc.pid, signal.SIGUSR1)
    slurm.finish(proc)
    assert slurm.calls("scontrol")[-1].args == ["requeue", str(JOB)], slurm.output()


def test_defect4_watcher_ends_when_the_training_job_fails(slurm, tmp_path):
    proc, run = watcher(slurm, tmp_path, FAKE_SQUEUE="FAILED")
    (run / "exit.json").write_text(json.dumps({"code": 2, "reason": "user error", "step": 0}))
    assert slurm.finish(proc, timeout=60) == 0, slurm.output()
    assert "eval stopped by TERM" in slurm.output() and "training job 4241 ended" in slurm.output()
    assert "scontrol requeue" not in slurm.names()


def test_a_bad_worker_count_is_one_error_line(slurm, tmp_path):
    assert run_train(slurm, tmp_path, GPUS_PER_NODE="eight") == 2, slurm.output()
    assert "GPUS_PER_NODE=eight: expected a positive number" in slurm.output()
    assert slurm.calls("srun") == []
