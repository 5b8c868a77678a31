"""data_prep from the hub, for real: the unchanged stage against a loopback hub (tests/fake_hub.py)
that it finds only through HF_ENDPOINT; plus the retry policy's rules as pure functions.

The end-to-end test starts `python -m data_prep.fineweb` as a subprocess (importing `datasets`
costs ~5 s of CPU; ~20 s wall on the busy 2-core dev box). The fault cases (resets, 5xx/429,
cut bodies, stalls, corrupt files, revision pinning) are in tests/faults/test_faults_hub.py.
"""

from __future__ import annotations

import json
import random
import signal

import pytest

from fake_hub import SHA, FakeHub
from hub_fixtures import fineweb_edu_repo, hub_env, run_stage, shard_bytes, write_local

HUB_ARGS = ["--dataset", "HuggingFaceFW/fineweb-edu", "--name", "sample-10BT", "--shard-size", "3000",
            "--workers", "0", "--no-progress"]


@pytest.mark.slow  # a real `python -m data_prep.fineweb` subprocess: ~5 s CPU importing datasets, ~20-40 s wall here
def test_hub_end_to_end_is_byte_identical_to_local_files(tmp_path):
    files = fineweb_edu_repo()
    with FakeHub(files) as hub:
        proc = run_stage([*HUB_ARGS, "--out", tmp_path / "hub"], hub_env(hub.url, tmp_path / "hf"), timeout=300)
        log = hub.requests()
    assert proc.returncode == 0, proc.stderr[-3000:]
    from data_prep.fineweb import main
    local = write_local(files, tmp_path / "dl")
    assert main(["--files", str(tmp_path / "dl/sample/10BT/*.parquet"), "--out", str(tmp_path / "local"),
                 "--shard-size", "3000", "--workers", "0", "--no-progress"]) == 0
    hub_shards, local_shards = shard_bytes(tmp_path / "hub"), shard_bytes(tmp_path / "local")
    assert len(hub_shards) > 5 and hub_shards == local_shards
    manifest = json.loads((tmp_path / "hub/manifest.json").read_text())
    assert manifest["complete"] and manifest["source"]["resolved"]["commit"] == SHA
    assert [f.rsplit("/", 1)[1] for f in manifest["source"]["resolved"]["files"]] == [p.name for p in local]
    # Only endpoints the fake documents were called; parquet bytes only as ranged reads (206).
    unknown = [r for r in log if r[2] in (401, 404) and not r[1].endswith((".py", ".yaml", ".json"))]
    assert not unknown, unknown
    parquet = [r for r in log if r[1].endswith(".parquet")]
    assert parquet and all(r[2] == (200 if r[0] == "HEAD" else 206) for r in parquet), parquet


def test_stopped_is_not_swallowed_by_except_exception(monkeypatch):
    """Review item: Stopped(Exception) was caught by hub.py's `except Exception` during
    resolution, so a SIGTERM there became 'cannot resolve hub dataset'."""
    from huggingface_hub import HfApi

    from data_prep.fineweb import Stopped
    from data_prep.hub import resolve_hub_files

    def terminated(*args, **kwargs):
        raise Stopped()
    monkeypatch.setattr(HfApi, "dataset_info", terminated)
    with pytest.raises(Stopped):
        resolve_hub_files("HuggingFaceFW/fineweb-edu", "sample-10BT", "train", None)


@pytest.mark.slow  # a subprocess, as above
def test_sigterm_during_hub_resolution_exits_143(tmp_path):
    import subprocess
    import sys
    import time

    from conftest import REPO
    with FakeHub(fineweb_edu_repo(n_files=1)) as hub:
        hub.inject("stall", "/api/datasets/", seconds=60)
        proc = subprocess.Popen([sys.executable, "-m", "data_prep.fineweb", *HUB_ARGS, "--out", tmp_path / "o",
                                 "--hub-timeout", "120"], cwd=REPO, env=hub_env(hub.url, tmp_path / "hf"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not hub.arrived("/api/datasets/") and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("error: terminated"), err[-2000:]


def test_offline_advice_names_hf_download():
    from data_prep.hub import offline_advice
    advice = offline_advice("HuggingFaceFW/fineweb-edu", "sample-10BT")
    assert "hf download HuggingFaceFW/fineweb-edu --repo-type dataset --include 'sample/10BT/*' --local-dir DIR" \
        in advice and "huggingface-cli" not in advice and "--files 'DIR/sample/10BT/*.parquet'" in advice


# ----------------------------------------------------------------------------- the retry rules

class _Response:
    def __init__(self, status, headers=None):
        self.status_code, self.headers = status, headers or {}


class _HTTPError(Exception):
    def __init__(self, status, headers=None):
        super().__init__(f"HTTP {status}")
        self.response = _Response(status, headers)


def _attempts(errors):
    """A call that raises the given errors in turn, then returns 'ok'; and its call count."""
    calls = []

    def call():
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return "ok"
    return call, calls


def test_transient_failures_retry_with_growing_jittered_backoff():
    from data_prep.retry import RetryPolicy, with_retries
    waits, lines = [], []
    errors = [ConnectionResetError("reset"), TimeoutError("read timeout"), _HTTPError(503), _HTTPError(500)]
    call, calls = _attempts(errors)
    policy = RetryPolicy(attempts=10, backoff=1.0, max_backoff=3.0, max_seconds=100)
    assert with_retries(call, "thing", policy, lines.append, sleep=waits.append, rng=random.Random(0)) == "ok"
    assert len(calls) == 5 and len(lines) == 4 and all(line.startswith("retry ") for line in lines)
    caps = [1.0, 2.0, 3.0, 3.0]
    assert all(cap / 2 <= w <= cap for w, cap in zip(waits, caps)), waits


def test_retry_after_is_honoured():
    from data_prep.retry import RetryPolicy, with_retries
    waits = []
    call, _ = _attempts([_HTTPError(429, {"Retry-After": "7"})])
    with_retries(call, "x", RetryPolicy(backoff=0.01, max_seconds=100), lambda _: None, sleep=waits.append)
    assert waits == [7.0]


@pytest.mark.parametrize("status", [401, 403, 404, 400])
def test_permanent_failures_are_not_retried(status):
    from data_prep.retry import RetryPolicy, with_retries
    call, calls = _attempts([_HTTPError(status)])
    with pytest.raises(_HTTPError):
        with_retries(call, "x", RetryPolicy(), lambda _: None, sleep=lambda _: None)
    assert len(calls) == 1


def test_retries_are_bounded_by_count_and_time():
    from data_prep.retry import RetriesExhausted, RetryPolicy, with_retries
    call, calls = _attempts([_HTTPError(502)] * 50)
    with pytest.raises(RetriesExhausted, match="still failing after 4 tries"):
        with_retries(call, "x", RetryPolicy(attempts=4, backoff=0.0), lambda _: None, sleep=lambda _: None)
    assert len(calls) == 4
    call, calls = _attempts([_HTTPError(502)] * 50)
    with pytest.raises(RetriesExhausted):  # the next wait would pass max_seconds: give up now
        with_retries(call, "x", RetryPolicy(attempts=50, backoff=10.0, max_seconds=15), lambda _: None,
                     sleep=lambda _: None, rng=random.Random(1))
    assert len(calls) < 5


def test_transport_errors_of_the_hub_client_are_transient():
    """Review item: httpx's RemoteProtocolError/ConnectError/ReadTimeout are not OSError and
    escaped the reader as tracebacks; they are what a reset, a refused or a stalled read raise."""
    import httpx2

    from data_prep.retry import is_transient
    for err in (httpx2.RemoteProtocolError("cut"), httpx2.ConnectError("refused"), httpx2.ReadTimeout("slow")):
        assert not isinstance(err, OSError) and is_transient(err)
    assert not is_transient(ValueError("BuilderConfig 'x' not found"))


def test_stale_datasets_cache_key_error_is_retried_then_one_clear_error(monkeypatch):
    """Review item: after a failed hub request `datasets` falls back to a cached copy of the
    dataset's module and fails with KeyError: 'config_name'. That is retried like the hub
    failure behind it and ends as one DataPrepError that names the stale cache, never a KeyError.
    (Simulated here: the loopback hub did not reproduce the fallback with datasets 5.2.)"""
    import datasets
    from huggingface_hub import HfApi

    from data_prep import DataPrepError
    from data_prep.hub import resolve_hub_files
    from data_prep.retry import RetryPolicy

    class Info:
        sha = SHA
    calls = []

    def stale(*args, **kwargs):
        calls.append(kwargs.get("revision"))
        try:
            raise ConnectionError("hub unreachable")
        except ConnectionError:
            pass
        raise KeyError("config_name")
    monkeypatch.setattr(HfApi, "dataset_info", lambda *a, **k: Info())
    monkeypatch.setattr(datasets, "load_dataset_builder", stale)
    lines = []
    with pytest.raises(DataPrepError, match="stale `datasets` cache") as err:
        resolve_hub_files("HuggingFaceFW/fineweb-edu", "sample-10BT", "train", None,
                          RetryPolicy(attempts=3, backoff=0.0), lines.append)
    assert calls == [SHA] * 3 and len(lines) == 2 and "\n" not in str(err.value)
