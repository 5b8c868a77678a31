"""bench/gpu_check.py on CPU: the same checks as on a GPU (flash SDPA kernel, throughput rows,
SIGTERM + resume of the real trainer with an exact continuation, HellaSwag-format scoring), on
its small CPU model; short settings (10 resume steps, no compile) keep it to about a minute."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, subprocess_env

pytestmark = pytest.mark.slow


def test_gpu_check_runs_on_cpu(tmp_path):
    out = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--out", str(out), "--steps", "10", "--no-compile",
                           "--work", str(tmp_path / "work")], cwd=REPO, env=subprocess_env(CUDA_VISIBLE_DEVICES=""),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    checks = report["checks"]
    assert report["passed"] and report["device"].startswith("CPU") and set(checks) == {
        "flash", "throughput", "resume", "hellaswag"}
    assert checks["flash"]["kernel"] == "FLASH_ATTENTION"
    assert [r["micro"] for r in checks["throughput"]["rows"]] == [2, 4, 8]
    assert all(r["tok_per_s"] > 0 and r["est_peak_gib"] > 0 for r in checks["throughput"]["rows"])
    resume = checks["resume"]
    assert resume["max_abs_loss_diff"] == 0.0 and 1 <= resume["stopped_at"] < 10  # exact on CPU
    assert resume["last_loss"] < resume["first_loss"]
    assert checks["hellaswag"]["n"] == 40 and checks["hellaswag"]["ex_per_s"] > 0
    for row in ("flash", "throughput", "resume", "hellaswag"):
        assert f"\n{row}" in "\n" + proc.stdout  # the printed table has a row per check
