"""Network faults for `python -m data_prep.fineweb` reading from the hub, injected by the
loopback hub (tests/fake_hub.py), which the stage finds only through HF_ENDPOINT.

Transient faults (a reset connection, 500/502/503/429 for a while, a body cut mid-way, a read
stalled past --hub-timeout, a short read) must be absorbed by the retries: the run finishes
by itself with shards byte-identical to an undisturbed run (`recovered`). Permanent ones (a
file gone, 403, a truncated or corrupt parquet file, a bad revision/config, a transient fault
that outlasts the retry budget) must stop with one `error:` line, exit 2 and no traceback,
keep every shard already listed, and after the hub is repaired the same command finishes
byte-identical (`clean_error`, then `recovered` by the re-run). Retry waits and timeouts are
cut to fractions of a second with the --hub-* flags, so the whole file takes seconds of work
per run (runs are forked from a zygote that has `datasets` imported).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fake_hub import SHA, FakeHub
from hub_fixtures import fineweb_edu_repo, hub_env, shard_bytes

from faults._zygote import Zygote

PARQUET = "sample/10BT/"
LATE_FILE = "sample/10BT/002_00000.parquet"  # the last file: shards exist before it is read
FAST = ["--hub-backoff", "0.05", "--hub-max-backoff", "0.3", "--hub-timeout", "1", "--hub-retries", "8",
        "--hub-retry-seconds", "30"]
ARGS = ["--dataset", "HuggingFaceFW/fineweb-edu", "--name", "sample-10BT", "--shard-size", "3000",
        "--workers", "0", "--no-progress"]


@pytest.fixture(scope="module")
def hub():
    with FakeHub(fineweb_edu_repo()) as server:
        yield server


@pytest.fixture(scope="module")
def hub_zygote(hub, tmp_path_factory):
    env = hub_env(hub.url, tmp_path_factory.mktemp("hf-home"), HF_HUB_ETAG_TIMEOUT="2",
                  ZYGOTE_PRELOAD="datasets,huggingface_hub,data_prep.hub,data_prep.hub_file,pyarrow.parquet")
    with Zygote(env=env) as z:
        z.env = env
        yield z


def run(zygote, out: Path, *extra: str, timeout: float = 120) -> tuple[int, str]:
    log = out.parent / f"{out.name}.log"
    log.unlink(missing_ok=True)
    r = zygote.start("data_prep.fineweb", [*ARGS, "--out", out, *FAST, *extra], env=zygote.env, log=log)
    code = zygote.wait(r, timeout=timeout)
    if code is None:
        zygote.kill(r)
    return code, r.output()


@pytest.fixture(scope="module")
def clean(hub, hub_zygote, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("hub-clean") / "out"
    code, output = run(hub_zygote, out)
    assert code == 0, output[-3000:]
    shards = shard_bytes(out)
    assert len(shards) > 5
    return shards


@pytest.fixture(scope="module")
def counts(hub, hub_zygote, clean, tmp_path_factory) -> dict[str, int]:
    """Requests of an undisturbed run with a warm cache: all of them, and the parquet GETs."""
    before = len(hub.requests())
    code, output = run(hub_zygote, tmp_path_factory.mktemp("hub-count") / "out")
    assert code == 0, output[-3000:]
    log = hub.requests()[before:]
    return {"all": len(log), "parquet GET": sum(1 for m, path, _ in log if m == "GET" and PARQUET in path)}


@pytest.fixture
def fresh(hub):
    """Undo whatever a test did to the hub."""
    files, sha = dict(hub.files), hub.sha
    hub.clear()
    yield hub
    hub.clear()
    hub.files, hub.sha = files, sha
    hub.old_shas.clear()


def one_clean_error(code: int, output: str) -> bool:
    lines = output.strip().splitlines()
    return code == 2 and "Traceback" not in output and bool(lines) and lines[-1].startswith("error: ")


def listed(out: Path) -> dict[str, bytes]:
    manifest = json.loads((out / "manifest.json").read_text())
    return {s["file"]: (out / s["file"]).read_bytes() for s in manifest["shards"]}


# (kind, fault arguments for FakeHub.inject): each must be absorbed within one run.
TRANSIENT = [
    # `after` as a fraction: of the requests (or of the matching parquet GETs) of an undisturbed
    # run with a warm cache, counted by the `counts` fixture, so the faults spread over the run.
    *[("hub: connection reset", dict(kind="reset", match="", after=f)) for f in (0, .1, .25, .4, .55, .7, .85, .95)],
    ("hub: connection reset", dict(kind="reset", match=".parquet", times=3)),
    *[("hub: HTTP 500 for a while", dict(kind="status", status=500, match=m, times=3))
      for m in ("/revision/", "/tree/", "000_00000.parquet", LATE_FILE)],
    ("hub: HTTP 502/503 for a while", dict(kind="status", status=502, match="/api/", times=2)),
    ("hub: HTTP 502/503 for a while", dict(kind="status", status=503, match=PARQUET, for_seconds=1.5, times=None)),
    *[("hub: HTTP 429 + Retry-After", dict(kind="status", status=429, match=m, headers={"Retry-After": "1"},
                                            times=2)) for m in ("/api/datasets/", LATE_FILE)],
    *[("hub: body cut mid-way", dict(kind="cut", match=PARQUET, after=f, method="GET", times=t))
      for f, t in ((0, 1), (.34, 2), (.67, 1))],
    ("hub: body cut mid-way", dict(kind="cut", match=LATE_FILE, method="GET", times=1)),
    *[("hub: read stalled past timeout", dict(kind="stall", match=m, seconds=2.5, after=n))
      for m, n in ((PARQUET, 1), (LATE_FILE, 1), ("/tree/", 0))],
]


@pytest.mark.parametrize("kind,fault", TRANSIENT, ids=[f"{k.split(': ')[1]}-{i}" for i, (k, _) in enumerate(TRANSIENT)])
def test_transient_fault_recovers_by_itself(kind, fault, fresh, hub_zygote, clean, counts, tmp_path, fault_log):
    fault = dict(fault)
    if isinstance(fault.get("after"), float):
        fault["after"] = int(fault["after"] * counts["all" if not fault["match"] else "parquet GET"])
    injected = fresh.inject(fault.pop("kind"), fault.pop("match"), **fault)
    code, output = run(hub_zygote, tmp_path / "out")
    identical = code == 0 and shard_bytes(tmp_path / "out") == clean
    fault_log.record(kind, f"{injected.kind} {injected.match or '*'} after {injected.after}",
                     recovered=identical and injected.applied > 0)
    assert injected.applied > 0, "the fault never fired"
    assert code == 0, output[-3000:]
    assert identical, output[-3000:]


def _truncated(data: bytes) -> bytes:
    return data[:len(data) // 2]


def _corrupt_footer(data: bytes) -> bytes:
    footer = int.from_bytes(data[-8:-4], "little")
    start = len(data) - 8 - footer
    return data[:start] + bytes(b ^ 0x5A for b in data[start:start + 64]) + data[start + 64:]


# (kind, how to damage the hub, what the error must name): permanent until repaired.
PERMANENT = [
    ("hub: file gone (404)", lambda hub: hub.inject("status", LATE_FILE, status=404, times=None,
                                                    headers={"X-Error-Code": "EntryNotFound"}), LATE_FILE),
    ("hub: access denied (403)", lambda hub: hub.inject("status", LATE_FILE, status=403, times=None), "403"),
    ("hub: truncated parquet file", lambda hub: hub.files.update({LATE_FILE: _truncated(hub.files[LATE_FILE])}),
     LATE_FILE),
    ("hub: corrupt parquet file", lambda hub: hub.files.update({LATE_FILE: _corrupt_footer(hub.files[LATE_FILE])}),
     LATE_FILE),
    ("hub: 5xx outlasting the retry budget", lambda hub: hub.inject("status", LATE_FILE, status=503, times=None),
     "re-run the same command"),
    ("hub: resets outlasting the retry budget", lambda hub: hub.inject("reset", LATE_FILE, times=None),
     "re-run the same command"),
]


@pytest.mark.parametrize("kind,damage,names", PERMANENT, ids=[k.split(": ")[1] for k, _, _ in PERMANENT])
def test_permanent_fault_is_one_error_and_rerun_is_identical(kind, damage, names, fresh, hub_zygote, clean,
                                                             tmp_path, fault_log):
    out = tmp_path / "out"
    files = dict(fresh.files)
    damage(fresh)
    code, output = run(hub_zygote, out, "--hub-retries", "3")
    clean_error = one_clean_error(code, output) and names in output.strip().splitlines()[-1]
    kept = listed(out) if (out / "manifest.json").exists() else {}
    lost = any(clean.get(name) != data for name, data in kept.items())
    fresh.clear()
    fresh.files = files
    code2, output2 = run(hub_zygote, out)
    recovered = code2 == 0 and shard_bytes(out) == clean
    fault_log.record(kind, names, clean_error=clean_error and recovered, data_lost=lost)
    assert clean_error, output[-3000:]
    assert kept, "the fault hit before any shard was written: it tests nothing about keeping shards"
    assert not lost
    assert recovered, output2[-3000:]


BAD_REQUESTS = [
    ("hub: unknown revision", ["--revision", "no-such-branch"], "no revision 'no-such-branch'"),
    ("hub: unknown dataset", ["--dataset", "HuggingFaceFW/no-such-dataset"], "does not exist"),
    ("hub: config not parquet", ["--name", "notes"], "only parquet"),
    ("hub: unknown config", ["--name", "sample-999BT"], "sample-999BT"),
]


@pytest.mark.parametrize("kind,extra,names", BAD_REQUESTS, ids=[k.split(": ")[1] for k, _, _ in BAD_REQUESTS])
def test_bad_hub_request_is_one_error_at_once(kind, extra, names, fresh, hub_zygote, tmp_path, fault_log):
    code, output = run(hub_zygote, tmp_path / "out", *extra)
    clean_error = one_clean_error(code, output) and names in output.strip().splitlines()[-1]
    fault_log.record(kind, " ".join(extra), clean_error=clean_error and "retry " not in output)
    assert clean_error, output[-3000:]
    assert "retry " not in output, "a permanent failure was retried"


def test_resume_refuses_a_moved_revision_unless_told(fresh, hub_zygote, clean, tmp_path, fault_log):
    out = tmp_path / "out"
    fresh.inject("status", LATE_FILE, status=503, times=None)
    code, _ = run(hub_zygote, out, "--hub-retries", "1")
    assert code == 2 and listed(out)
    fresh.clear()
    fresh.old_shas.add(SHA)
    fresh.sha = "f" * 40  # someone pushed to main since the first run
    code, output = run(hub_zygote, out)
    refused = one_clean_error(code, output) and SHA in output and "--allow-revision-change" in output
    code_pinned, output_pinned = run(hub_zygote, out, "--revision", SHA)  # finish from the pinned commit
    manifest = json.loads((out / "manifest.json").read_text())
    finished = code_pinned == 0 and shard_bytes(out) == clean and manifest["source"]["resolved"]["commit"] == SHA
    fault_log.record("hub: revision moved before resume", "main -> new commit", clean_error=refused and finished)
    assert refused, output[-3000:]
    assert finished, output_pinned[-3000:]


def test_allow_revision_change_continues_from_the_new_commit(fresh, hub_zygote, clean, tmp_path):
    out = tmp_path / "out"
    fresh.inject("status", LATE_FILE, status=503, times=None)
    assert run(hub_zygote, out, "--hub-retries", "1")[0] == 2
    before = listed(out)
    fresh.clear()
    fresh.old_shas.add(SHA)
    fresh.sha = "e" * 40
    code, output = run(hub_zygote, out, "--allow-revision-change")
    assert code == 0, output[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    resolved = manifest["source"]["resolved"]
    assert resolved["commit"] == "e" * 40 and resolved["previous"] == [{"commit": SHA, "shards": len(before)}]
    assert all("@" + "e" * 40 + "/" in f for f in resolved["files"])
    assert {k: v for k, v in shard_bytes(out).items() if k in before} == before
    assert shard_bytes(out) == clean  # same bytes at both commits here, so the same shards
