"""A real one-node Slurm cluster on localhost, for tests of the slurm/ scripts.

Debian's `slurm-wlm` and `munge` are installed when missing (needs root and apt-get).
Everything the cluster writes (munge key and socket, slurm.conf, state, spool, logs)
lives in one temporary directory, and every daemon listens on a free port or a private
socket, so it neither needs nor disturbs a system Slurm or munged. `stop()` cancels the
cluster's jobs and stops exactly the three daemons `start()` launched.

Test-only settings, and why:
- ProctrackType=proctrack/linuxproc, TaskPlugin=task/none: no cgroups in containers.
- AuthInfo cred_expire=5: Slurm holds a requeued job for cred_expire+1 seconds (default
  120 s) before it may start again; 5 s keeps the preemption test short.
- KillWait=5: seconds between SIGTERM and SIGKILL when Slurm ends a job itself.
- SchedulerParameters sched_interval=1,bf_interval=1: a job whose begin time has passed
  (a requeued one) is otherwise started by the next periodic pass, up to 30-60 s later.
- MinJobAge=4: `sbatch --wait` polls every 2 s only while 2 < MinJobAge/2 is false,
  otherwise its sleep grows to 32 s. Slurm forgets a finished job after MinJobAge, so
  jobcomp/filetxt keeps one line per ended run (requeued runs included): runs().
"""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
COMMANDS = ("slurmctld", "slurmd", "sbatch", "scontrol", "munged")
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
            "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


class SlurmUnavailable(Exception):
    """The cluster cannot run here for a reason that is not a bug (not root, no apt-get)."""


def _which(cmd: str) -> str | None:
    return shutil.which(cmd, path=os.environ.get("PATH", "") + os.pathsep + SBIN_PATH)


def ensure_installed(log=print) -> float:
    """Install slurm-wlm + munge with apt-get when a command is missing; returns seconds spent."""
    if os.geteuid() != 0:
        raise SlurmUnavailable("Slurm daemons need root (slurmd runs jobs as their user)")
    missing = [c for c in COMMANDS if _which(c) is None]
    if not missing:
        return 0.0
    if _which("apt-get") is None:
        raise SlurmUnavailable(f"{', '.join(missing)} missing and apt-get is not available to install "
                               "slurm-wlm and munge")
    log(f"installing slurm-wlm and munge with apt-get (missing: {', '.join(missing)})")
    start = time.monotonic()
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", PATH=SBIN_PATH)
    # Package scripts would otherwise start the distribution's own munged/slurmd, daemons
    # this test did not start and must not leave behind; policy-rc.d is Debian's switch for that.
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    if own_policy:
        policy.write_text("#!/bin/sh\n# written by gpt2-pipeline tests/slurm_cluster.py during apt-get\nexit 101\n")
        policy.chmod(0o755)
    try:
        for cmd in (["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "--no-install-recommends", "slurm-wlm", "munge"]):
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    finally:
        if own_policy:
            policy.unlink(missing_ok=True)
    still = [c for c in COMMANDS if _which(c) is None]
    if still:
        raise RuntimeError(f"apt-get installed slurm-wlm and munge but {', '.join(still)} is still missing")
    return time.monotonic() - start


def _die_with_parent() -> None:
    """In the child: SIGTERM when the test process dies, even by SIGKILL, so that no
    daemon outlives a killed test run."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_hardware() -> str:
    """'CPUs=.. Boards=.. ... RealMemory=..' of this machine as slurmd itself measures it."""
    out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
    first = out.splitlines()[0].split()
    return " ".join(word for word in first if not word.startswith(("NodeName=", "UpTime=")))


# The settings every test cluster shares (one node here, two in tests/slurm_two_nodes.py);
# format fields: root, ctld_port, slurmd_port, munge_socket.
CLUSTER_SETTINGS = """\
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket},cred_expire=5
CredType=cred/munge
StateSaveLocation={root}/state
SlurmctldPidFile={root}/slurmctld.pid
SlurmctldLogFile={root}/log/slurmctld.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
JobRequeue=1
ReturnToService=2
KillWait=5
MinJobAge=4
MailProg=/bin/true
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.log
SchedulerParameters=sched_interval=1,bf_interval=1
"""

SLURM_CONF = """\
# one-node test cluster written by tests/slurm_cluster.py
ClusterName=gpt2test
SlurmctldHost={node}(127.0.0.1)
""" + CLUSTER_SETTINGS + """\
SlurmdSpoolDir={root}/spool
SlurmdPidFile={root}/slurmd.pid
SlurmdLogFile={root}/log/slurmd.log
NodeName={node} NodeAddr=127.0.0.1 {hardware} State=UNKNOWN
PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class SlurmCluster:
    root: Path
    node: str = "localhost"
    partition: str = "debug"
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    startup_s: float = 0.0

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    def env(self, base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
        """Environment in which Slurm commands (and the jobs they submit) talk to this cluster."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = env.get("PATH", "") + os.pathsep + SBIN_PATH
        env.update(extra)
        return env

    def run(self, *cmd: str, env: dict[str, str] | None = None, check: bool = True,
            timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(map(str, cmd)), env=self.env(env), cwd=cwd, capture_output=True,
                              text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{shlex.join(map(str, cmd))} exited {proc.returncode}\n"
                                 f"--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}")
        return proc

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, timeout: float = 60) -> "SlurmCluster":
        begin = time.monotonic()
        try:
            self._start_munge()
            self._write_conf()
            self._spawn("slurmctld", "-D", "-c", "-f", str(self.conf))
            self._spawn("slurmd", "-D", "-N", self.node, "-f", str(self.conf))
            self._wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - begin
        return self

    def _start_munge(self) -> None:
        # munged refuses keys or sockets that other users could touch: the key is 0400
        # and owned by munge; every directory on the socket's path must be traversable.
        self.root.chmod(0o755)
        (self.root / "log").mkdir()
        mdir = self.root / "munge"
        mdir.mkdir(mode=0o755)
        key = mdir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        shutil.chown(mdir, "munge", "munge")
        shutil.chown(key, "munge", "munge")
        self._spawn("munged", "--foreground", f"--socket={mdir / 'munge.socket'}", f"--key-file={key}",
                    f"--pid-file={mdir / 'munged.pid'}", f"--log-file={mdir / 'munged.log'}",
                    f"--seed-file={mdir / 'munged.seed'}", user="munge", group="munge", extra_groups=[])
        deadline = time.monotonic() + 20
        while not (mdir / "munge.socket").exists():
            if self.procs["munged"].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"munged did not start: {(self.root / 'log' / 'munged.stdout').read_text()}")
            time.sleep(0.05)

    def _spawn(self, name: str, *args: str, **popen) -> None:
        """Start a daemon in the foreground, so that its pid is ours to stop (and only it)."""
        with open(self.root / "log" / f"{name}.stdout", "w") as out:
            self.procs[name] = subprocess.Popen(
                [_which(name), *args], stdout=out, stderr=subprocess.STDOUT, env=self.env(),
                start_new_session=True, preexec_fn=_die_with_parent, **popen)

    def _write_conf(self) -> None:
        for sub in ("state", "spool"):
            (self.root / sub).mkdir()
        self.conf.write_text(SLURM_CONF.format(
            node=self.node, root=self.root, ctld_port=_free_port(), slurmd_port=_free_port(),
            munge_socket=self.root / "munge" / "munge.socket", hardware=_node_hardware(),
            partition=self.partition))

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited {proc.returncode} during startup:\n{self.logs()}")
            proc = self.run("sinfo", "--noheader", "--format=%T", check=False, timeout=10)
            state = proc.stdout.strip()
            if proc.returncode == 0 and state == "idle":
                return
            time.sleep(0.2)
        raise RuntimeError(f"node not idle after {timeout}s (sinfo: {state!r}):\n{self.logs()}")

    def stop(self) -> None:
        """Cancel this cluster's jobs, then stop the daemons start() launched (only those)."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--user=root", check=False, timeout=30)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                queue = self.run("squeue", "--noheader", "--format=%i", check=False, timeout=10)
                if queue.returncode != 0 or not queue.stdout.strip():
                    break
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def logs(self, tail: int = 25) -> str:
        out = []
        for path in sorted((self.root / "log").glob("*")):
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-tail:]
                out.append(f"--- {path.name} ---\n" + "\n".join(lines))
        return "\n".join(out)

    # -- jobs ---------------------------------------------------------------------------
    def sbatch(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
               timeout: float = 300) -> int:
        """Submit with `sbatch --wait` (returns when the job, requeues included, has ended); returns the job id.

        The exit status is deliberately not checked here: callers assert on job_state().
        """
        proc = self.run("sbatch", "--parsable", "--wait", *args, env=env, cwd=cwd, check=False, timeout=timeout)
        first = proc.stdout.strip().splitlines()[:1]
        if not first or not first[0].split(";")[0].isdigit():
            raise AssertionError(f"sbatch {' '.join(args)} did not submit (exit {proc.returncode}):\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return int(first[0].split(";")[0])

    def submit(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> int:
        """Submit without waiting; returns the job id."""
        proc = self.run("sbatch", "--parsable", *args, env=env, cwd=cwd)
        return int(proc.stdout.strip().split(";")[0])

    def runs(self, job_id: int) -> list[dict[str, str]]:
        """One record per ended run of the job (JobState, ExitCode, StartTime, EndTime, ProcCnt, ...).

        A run that was requeued is recorded with the state the job went back to (PENDING).
        """
        path = self.root / "jobcomp.log"
        records = [_fields(line) for line in path.read_text().splitlines()] if path.exists() else []
        return [r for r in records if r.get("JobId") == str(job_id)]

    def job_state(self, job_id: int) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, ExitCode, Restarts, ...); once Slurm has
        forgotten the job, its last runs() record."""
        proc = self.run("scontrol", "--oneliner", "show", "job", str(job_id), check=False)
        if proc.returncode == 0:
            return _fields(proc.stdout)
        ended = self.runs(job_id)
        if not ended:
            raise AssertionError(f"job {job_id}: unknown to Slurm and not in jobcomp.log: {proc.stderr.strip()}")
        return ended[-1]

    def wait_for(self, job_id: int, predicate, timeout: float, what: str) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            state = self.job_state(job_id)
            if predicate(state):
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id}: timed out after {timeout}s waiting for {what}; "
                                     f"state {state.get('JobState')}\n{self.logs()}")
            time.sleep(0.2)

    def wait_finished(self, job_id: int, timeout: float = 300) -> dict[str, str]:
        """Poll until the job has ended for good (a requeued run does not count)."""
        return self.wait_for(job_id, lambda s: s.get("JobState") in FINISHED, timeout, "the job to end")


def _fields(text: str) -> dict[str, str]:
    return dict(word.split("=", 1) for word in text.split() if "=" in word)
