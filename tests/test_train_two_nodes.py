"""Two nodes through torchrun's c10d rendezvous, on this machine: two `torchrun --nnodes=2
--nproc_per_node=1` launches (node ranks 0 and 1, local addresses 127.0.0.1 and 127.0.0.2,
the rendezvous store hosted by node 0) train the same losses as one process with the same
global batch, and a run whose node 1 is killed resumes to the same result.

(The Slurm two-node test lives in tests/test_slurm.py.) Slow: four Python processes start
twice on a 2-core machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _train_support import STEPS, baseline_1p, losses, weights
from conftest import REPO, subprocess_env
from pipeline.checkpoint import latest_checkpoint

pytestmark = pytest.mark.slow

ADDRESSES = ("127.0.0.1", "127.0.0.2")  # the whole 127/8 is loopback on Linux: two "hosts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """pid's children, grandchildren, ... (torchrun starts its workers in their own sessions)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_node(node: subprocess.Popen) -> None:
    for pid in [node.pid, *descendants(node.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    node.wait()


def launch(node_rank: int, port: int, config, run, *extra: str, **env) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
           f"--node_rank={node_rank}", "--rdzv_backend=c10d", f"--rdzv_endpoint={ADDRESSES[0]}:{port}",
           "--rdzv_id=two-nodes", f"--rdzv_conf=is_host={int(node_rank == 0)}",
           f"--local_addr={ADDRESSES[node_rank]}", "--max_restarts=0",
           "-m", "train", "--config", str(config), "--run-dir", str(run), *extra]
    # GLOO_SOCKET_IFNAME: gloo's peers meet on the loopback device, as a cluster's would on its fabric.
    return subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(GLOO_SOCKET_IFNAME="lo", **env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def two_nodes(config, run, timeout=300, **env) -> list[subprocess.CompletedProcess]:
    port = free_port()
    nodes = [launch(r, port, config, run, **env) for r in (0, 1)]
    done = []
    for node in nodes:
        out, err = node.communicate(timeout=timeout)
        done.append(subprocess.CompletedProcess(node.args, node.returncode, out, err))
    return done


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    return baseline_1p(tmp_path_factory)  # 1 process: micro 1 x accum 4 = 128 tokens per step


@pytest.fixture(scope="module")
def config(baseline):
    return baseline.parent / "tiny.toml"


def assert_same_run(run, baseline):
    got, want = losses(run), losses(baseline)
    assert list(got) == list(range(1, STEPS + 1))
    for step in got:
        assert abs(got[step] - want[step]) < 1e-5, (step, got[step], want[step])
    a, b = weights(run, STEPS), weights(baseline, STEPS)
    for name in a:  # summation order differs (see test_train_ddp.assert_close_weights)
        assert torch.allclose(a[name], b[name], rtol=1e-4, atol=5e-5), name


def test_two_nodes_train_like_one_process(config, baseline, tmp_path):
    run = tmp_path / "run"
    nodes = two_nodes(config, run)
    for node in nodes:
        assert node.returncode == 0, node.stderr[-3000:]
    assert "1 micro x 32 seq x 2 ranks x 2 accum" in nodes[0].stdout  # one world of two ranks
    assert_same_run(run, baseline)


def test_a_run_whose_node_is_killed_resumes_on_two_nodes(config, baseline, tmp_path):
    run = tmp_path / "run"
    port = free_port()
    # dist_timeout_s 20: node 0 notices the dead node at its next collective, or after 20 s at most
    slow_steps = "train.after_step=sleep(1.5)"
    nodes = [launch(r, port, config, run, "--train.dist_timeout_s=20", GPT2_PIPELINE_FAILPOINTS=slow_steps)
             for r in (0, 1)]
    try:
        deadline = time.monotonic() + 240
        while len(losses(run) if (run / "metrics.jsonl").exists() else {}) < 4:
            assert all(n.poll() is None for n in nodes), nodes[0].communicate()[1][-3000:]
            assert time.monotonic() < deadline, "timed out waiting for step 4"
            time.sleep(0.1)
        kill_node(nodes[1])  # node 1 is gone: its agent and its worker
        _, err = nodes[0].communicate(timeout=180)  # node 0 notices the dead peer and fails
        assert nodes[0].returncode != 0, err[-3000:]
    finally:
        for node in nodes:
            if node.poll() is None:
                kill_node(node)
    assert latest_checkpoint(run).name == "step_000003"
    assert not (run / "exit.json").exists() or '"code": 0' not in (run / "exit.json").read_text()
    nodes = two_nodes(config, run)  # the same command on both nodes: --resume auto
    for node in nodes:
        assert node.returncode == 0, node.stderr[-3000:]
    assert "step_000003 at step 3" in nodes[0].stdout
    assert_same_run(run, baseline)
