"""slurm/train.sbatch on two Slurm nodes (issue 13 item 3): two slurmd daemons as separate
hosts, node1 and node2, each in its own network/UTS/mount namespace on this machine
(tests/slurm_two_nodes.py). One job with --nodes=2 runs one torchrun per node that meet at
node1's address; SIGUSR1 to the batch shell mid-run checkpoints, requeues and resumes on
both nodes again; the per-step losses equal those of the same world size (2 workers) on one
node. Root and CI=true or GPT2_PIPELINE_TEST_SYSTEM=1 only, as the one-node Slurm tests;
~2-5 min on a loaded 2-core machine (three torchrun launches, each importing torch per process).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from conftest import REPO, require_system, run_module
from pipeline.checkpoint import list_checkpoints, step_of
from slurm_cluster import SlurmUnavailable, ensure_installed
from slurm_two_nodes import NODES, TwoNodeCluster
from test_slurm import (DATA_ARGS, MAX_STEPS, _job_id_by_name, _wait_for_step, assert_completed, job_env,
                        train_losses, write_config)

pytestmark = [pytest.mark.slow, pytest.mark.system]


@pytest.fixture(scope="module")
def cluster():
    require_system("the two-node Slurm test installs slurm-wlm and munge and creates network namespaces")
    try:
        ensure_installed()
    except SlurmUnavailable as why:
        pytest.skip(f"no Slurm test cluster: {why}")
    missing = [tool for tool in ("unshare", "nsenter", "ip") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"two Slurm nodes on one machine need {', '.join(missing)} (util-linux, iproute2)")
    root = Path(tempfile.mkdtemp(prefix="gpt2-slurm2-"))
    c = TwoNodeCluster(root)
    try:
        c.start()
        print(f"\ntwo-node slurm cluster: start {c.startup_s:.1f}s, {root}")
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("two-node") / "shards"
    run_module("data_prep.fineweb", "--out", out, *DATA_ARGS, timeout=600)
    return out


def test_two_nodes_rendezvous_requeue_on_usr1_and_match_one_node(cluster, shards, tmp_path):
    config = write_config(tmp_path / "tiny.toml", shards)
    reference, ref_log = tmp_path / "reference", tmp_path / "reference.out"
    job = cluster.sbatch("--nodes=1", f"--output={ref_log}", "--cpus-per-task=2", "slurm/train.sbatch",
                         "--config", str(config), "--run-dir", str(reference),
                         env=job_env(cluster, GPUS_PER_NODE="2"), cwd=REPO, timeout=900)
    assert_completed(cluster, job, ref_log)

    run, log = tmp_path / "two-nodes", tmp_path / "two-nodes.out"
    name = f"two-nodes-{uuid.uuid4().hex[:8]}"
    env = job_env(cluster, GPUS_PER_NODE="1", GPT2_PIPELINE_FAILPOINTS="train.after_step=sleep(0.3)")
    waiter = subprocess.Popen(
        cluster.command("sbatch", "--wait", "--nodes=2", f"--job-name={name}", f"--output={log}", "--cpus-per-task=1",
                        "slurm/train.sbatch", "--config", str(config), "--run-dir", str(run), cwd=REPO),
        env=cluster.env(env), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        job = _job_id_by_name(cluster, name)
        _wait_for_step(run, 3, timeout=400)
        cluster.run("scancel", "--signal=USR1", "--batch", str(job))  # what --signal=B:USR1@360 does
        out, _ = waiter.communicate(timeout=900)
    finally:
        if waiter.poll() is None:
            waiter.kill()
    runs = assert_completed(cluster, job, log)
    assert [r["JobState"] for r in runs] == ["PENDING", "COMPLETED"]  # requeued once, then done
    assert all(r["NodeList"] == "node[1-2]" for r in runs), runs

    text = log.read_text()
    # Rendezvous: one torchrun per node, meeting at node1's address (its NodeAddr), in both runs.
    assert len(re.findall(rf"2 node\(s\) x 1 worker\(s\), .*rendezvous {re.escape(NODES['node1'])}:\d+", text)) == 2
    for node in NODES:  # each node's slurmd launched the training step of each run
        slurmd_log = (cluster.root / "log" / f"slurmd-{node}.log").read_text()
        assert slurmd_log.count(f"launch task StepId={job}.0 ") == 2, slurmd_log[-3000:]
    stopped = int(re.search(r"trainer stopped at step (\d+) \(exit record: 3\); requeueing", text)[1])
    assert 3 <= stopped < MAX_STEPS
    assert [step_of(p) for p in list_checkpoints(run)] == [stopped, MAX_STEPS]
    launches = json.loads((run / "run.json").read_text())["launches"]
    assert [(x["world_size"], x["host"]) for x in launches] == [(2, "node1"), (2, "node1")]
    assert launches[1]["resumed_from"].endswith(f"step_{stopped:06d}")
    # The same world size on one node or two: the same trajectory, bit for bit.
    assert train_losses(run) == train_losses(reference)
    assert json.loads((run / "exit.json").read_text())["code"] == 0
