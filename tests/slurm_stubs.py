"""Stand-in Slurm commands, to test the decisions of slurm/*.sbatch and slurm/submit.sh
without a cluster: the real scripts run with the same inputs (SLURM_* variables, exit codes,
exit.json, signals) and the stubs record what the scripts asked Slurm to do.

What one node of the real test cluster (tests/slurm_cluster.py) cannot show -- 8 GPUs, a
second job on the node, a failed sbatch in the middle of a chain, a signal arriving during
the final save -- is set up here exactly. Each stub appends one line per call to
`calls.log`: the command name and its arguments separated by tabs, then `env:` entries
for the variables listed in FAKE_SLURM_ENV.

    srun      runs $FAKE_SRUN (a bash snippet) in the background, records its pid as the
              "step", and waits for it; its exit status is srun's
    scancel   --signal=SIG [--batch] TARGET: SIG to the step (TARGET JOB or JOB.0), or with
              --batch to the batch shell; plain scancel JOB: TERM to both
    scontrol  `show hostnames` (a comma list), `show node` (NodeAddr=addr-NAME), `requeue`
              and `release` are recorded; requeue then ends the batch shell as Slurm would
    sbatch    prints the next job id; fails when the script's name is in FAKE_SBATCH_FAIL
    squeue    prints $FAKE_SQUEUE
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

_HEADER = """#!/bin/bash
log() {
    local line=$1; shift
    for a in "$@"; do line+=$'\\t'"$a"; done
    for v in ${FAKE_SLURM_ENV:-}; do line+=$'\\t'"env:$v=${!v-<unset>}"; done
    echo "$line" >> "$FAKE_SLURM_DIR/calls.log"
}
"""

STUBS = {
    "srun": """
log srun "$@"
bash -c "${FAKE_SRUN:-exit 0}" &
echo $! > "$FAKE_SLURM_DIR/step.pid"
trap 'kill -TERM $! 2>/dev/null' TERM
while kill -0 $! 2>/dev/null; do wait $!; done
wait $!
""",
    "scancel": """
log scancel "$@"
sig=""; batch=0; target=""
for a in "$@"; do
    case $a in
        --signal=*) sig=${a#--signal=} ;;
        --batch|-b) batch=1 ;;
        -*) ;;
        *) target=$a ;;
    esac
done
if [[ -z $sig ]]; then
    kill -TERM "$(cat "$FAKE_SLURM_DIR/batch.pid")" 2>/dev/null
    sig=TERM
fi
if [[ $batch == 1 ]]; then
    kill -"$sig" "$(cat "$FAKE_SLURM_DIR/batch.pid")"
elif [[ -f $FAKE_SLURM_DIR/step.pid ]]; then
    kill -"$sig" "$(cat "$FAKE_SLURM_DIR/step.pid")" 2>/dev/null
fi
exit 0
""",
    "scontrol": """
log scontrol "$@"
case "$1 ${2:-}" in
    "show hostnames") tr ',' '\\n' <<< "$3" ;;
    "show node") echo "NodeName=$3 NodeAddr=addr-$3 State=ALLOCATED" ;;
    "requeue "*)
        # Slurm ends the job's processes, the batch shell included, and queues it again.
        kill -KILL "$(cat "$FAKE_SLURM_DIR/batch.pid")" 2>/dev/null ;;
esac
exit 0
""",
    "sbatch": """
n=$(( $(cat "$FAKE_SLURM_DIR/jobid" 2>/dev/null || echo 100) + 1 ))
echo $n > "$FAKE_SLURM_DIR/jobid"
log sbatch "$@" "jobid=$n"
for a in "$@"; do
    for f in ${FAKE_SBATCH_FAIL:-}; do
        if [[ $a == *"$f" ]]; then echo "sbatch: error: Batch job submission failed: QOS limit" >&2; exit 1; fi
    done
done
echo "$n"
""",
    "squeue": """
log squeue "$@"
printf '%s' "${FAKE_SQUEUE:-}"
""",
}


@dataclass
class Call:
    name: str
    args: list[str]
    env: dict[str, str]


@dataclass
class FakeSlurm:
    """A directory of stub commands; `env()` puts them first on PATH."""
    root: Path

    def __post_init__(self) -> None:
        (self.root / "bin").mkdir(parents=True, exist_ok=True)
        for name, body in STUBS.items():
            path = self.root / "bin" / name
            path.write_text(_HEADER + body)
            path.chmod(0o755)

    def env(self, base: dict[str, str], **extra: str) -> dict[str, str]:
        env = dict(base)
        for key in [k for k in env if k.startswith(("SLURM_", "SBATCH_", "PET_"))]:
            del env[key]  # this test runs the script, not the surrounding environment
        env["PATH"] = f"{self.root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["FAKE_SLURM_DIR"] = str(self.root)
        env.update(extra)
        return env

    def calls(self, name: str | None = None) -> list[Call]:
        path = self.root / "calls.log"
        out = []
        for line in path.read_text().splitlines() if path.exists() else []:
            words = line.split("\t")
            env = dict(w[4:].split("=", 1) for w in words[1:] if w.startswith("env:"))
            call = Call(words[0], [w for w in words[1:] if not w.startswith("env:")], env)
            if name is None or call.name == name:
                out.append(call)
        return out

    def names(self) -> list[str]:
        """The sequence of calls as 'name first-arg' (e.g. 'scontrol requeue')."""
        return [f"{c.name} {c.args[0] if c.args else ''}".strip() for c in self.calls()]

    def start_batch(self, script: Path, *args: str, env: dict[str, str], cwd: Path) -> subprocess.Popen:
        """Run SCRIPT as Slurm runs a batch script (its own session, output to slurm.out)."""
        out = open(self.root / "slurm.out", "w")
        proc = subprocess.Popen(["bash", str(script), *args], env=env, cwd=cwd, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        (self.root / "batch.pid").write_text(str(proc.pid))
        return proc

    def finish(self, proc: subprocess.Popen, timeout: float = 120) -> int:
        """Wait for the batch shell, then end whatever it left behind (its session)."""
        try:
            return proc.wait(timeout=timeout)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()

    def output(self) -> str:
        path = self.root / "slurm.out"
        return path.read_text() if path.exists() else ""

    def wait_until(self, predicate, timeout: float = 120, what: str = "the condition") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{self.output()}")
            time.sleep(0.05)
