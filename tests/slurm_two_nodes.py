"""A two-node Slurm cluster on one machine: two slurmd daemons as separate hosts.

Each node is a process holding its own network, UTS and mount namespaces (`unshare`):
hostname node1 / node2, a veth pair between them with addresses in 10.231.7.0/24 that
exist only inside those namespaces, and a private /etc/hosts (bind-mounted inside the node's
mount namespace) naming both nodes, so gloo and torchrun resolve `node1`/`node2` as on a
real cluster. slurmctld runs on node1; munged runs on the host and is reached through its
socket file (a path, not a network address, so every namespace sees it). Slurm client
commands (sbatch, squeue, ...) run inside node1. Traffic never leaves the two namespaces,
and when the holder processes end, the namespaces and the veth pair go with them.

The rest -- munge key, slurm.conf, spool, logs, stopping only what was started -- is
tests/slurm_cluster.py's SlurmCluster.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from slurm_cluster import CLUSTER_SETTINGS, SBIN_PATH, SlurmCluster, _die_with_parent, _free_port, _node_hardware, _which

SUBNET = "10.231.7"
NODES = {"node1": f"{SUBNET}.1", "node2": f"{SUBNET}.2"}

TWO_NODE_CONF = """\
# two-node test cluster written by tests/slurm_two_nodes.py (see tests/slurm_cluster.py for the settings)
ClusterName=gpt2two
SlurmctldHost=node1({addr1})
""" + CLUSTER_SETTINGS + """\
SlurmdSpoolDir={root}/spool/%n
SlurmdPidFile={root}/slurmd-%n.pid
SlurmdLogFile={root}/log/slurmd-%n.log
NodeName=node1 NodeAddr={addr1} {hardware} State=UNKNOWN
NodeName=node2 NodeAddr={addr2} {hardware} State=UNKNOWN
PartitionName={partition} Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class TwoNodeCluster(SlurmCluster):
    node: str = "node1"
    holders: dict[str, subprocess.Popen] = field(default_factory=dict)

    def _enter(self, node: str, cwd: Path | str | None = None) -> list[str]:
        # Entering a mount namespace resets the working directory to its root: --wd keeps ours.
        return ["nsenter", "-t", str(self.holders[node].pid), "--net", "--uts", "--mount",
                f"--wd={cwd or os.getcwd()}", "--"]

    def command(self, *cmd: str, cwd: Path | str | None = None) -> list[str]:
        """CMD as run on node1 in cwd, for callers that start it themselves (a background sbatch --wait)."""
        return [*self._enter("node1", cwd), *cmd]

    def run(self, *cmd: str, env: dict[str, str] | None = None, check: bool = True,
            timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess:
        """A Slurm command on node1 (the controller is only reachable inside the namespaces)."""
        if not self.holders:
            raise AssertionError("the two-node cluster is not running")
        return super().run(*self._enter("node1", cwd), *cmd, env=env, check=check, timeout=timeout, cwd=cwd)

    def start(self, timeout: float = 90) -> "TwoNodeCluster":
        begin = time.monotonic()
        try:
            self._start_munge()
            self._start_nodes()
            self._write_conf()
            self._spawn_in("node1", "slurmctld", "-D", "-c", "-f", str(self.conf))
            for node in NODES:
                self._spawn_in(node, f"slurmd-{node}", "-D", "-N", node, "-f", str(self.conf))
            self._wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - begin
        return self

    def _start_nodes(self) -> None:
        hosts = self.root / "hosts"
        hosts.write_text("127.0.0.1 localhost\n" + "".join(f"{addr} {name}\n" for name, addr in NODES.items()))
        for name in NODES:
            script = f"hostname {name} && mount --bind {hosts} /etc/hosts && ip link set lo up && exec sleep infinity"
            log = open(self.root / "log" / f"holder-{name}.stdout", "w")
            self.holders[name] = subprocess.Popen(
                ["unshare", "--net", "--uts", "--mount", "--", "sh", "-c", script], stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)
            log.close()
        # The veth pair is created on the host without addresses and moved into the namespaces
        # at once; its addresses exist only there.
        tag = f"g{os.getpid() % 100000}"
        ends = {"node1": f"{tag}a", "node2": f"{tag}b"}
        time.sleep(0.5)  # the holders have unshared (sleep is exec'd only after that)
        for proc in self.holders.values():
            if proc.poll() is not None:
                raise RuntimeError(f"unshare exited {proc.returncode}: {self.logs()}")
        subprocess.run(["ip", "link", "add", ends["node1"], "type", "veth", "peer", "name", ends["node2"]], check=True)
        for name, addr in NODES.items():
            subprocess.run(["ip", "link", "set", ends[name], "netns", str(self.holders[name].pid)], check=True)
            for cmd in (["ip", "addr", "add", f"{addr}/24", "dev", ends[name]], ["ip", "link", "set", ends[name], "up"]):
                subprocess.run([*self._enter(name, self.root), *cmd], check=True)

    def _spawn_in(self, node: str, name: str, *args: str) -> None:
        program = name.split("-")[0]
        with open(self.root / "log" / f"{name}.stdout", "w") as out:
            self.procs[name] = subprocess.Popen(
                [*self._enter(node, self.root), _which(program), *args], stdout=out, stderr=subprocess.STDOUT,
                env=self.env(), start_new_session=True, preexec_fn=_die_with_parent)

    def _write_conf(self) -> None:
        for sub in ("state", "spool", "spool/node1", "spool/node2"):
            (self.root / sub).mkdir()
        self.conf.write_text(TWO_NODE_CONF.format(
            root=self.root, ctld_port=_free_port(), slurmd_port=_free_port(), addr1=NODES["node1"],
            addr2=NODES["node2"], munge_socket=self.root / "munge" / "munge.socket", hardware=_node_hardware(),
            partition=self.partition))

    def stop(self) -> None:
        """Cancel jobs, stop the daemons start() launched, then end the node namespaces."""
        if self.holders and "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            super().stop()  # scancel and squeue inside node1
        for name in [n for n in self.procs if n.startswith("slurmd-")] + ["slurmctld", "munged"]:
            proc = self.procs.pop(name, None)
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        for proc in self.holders.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)
        self.holders.clear()


__all__ = ["NODES", "SBIN_PATH", "TwoNodeCluster"]
