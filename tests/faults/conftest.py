"""The fault ledger: every injected fault is recorded with its outcome, and the session
ends with a table of faults per kind (printed by pytest_terminal_summary).

A test injects a fault, observes what happened, records it, THEN asserts:

    fault_log.record("corrupt checkpoint", "model.pt byte 1234 flipped",
                     clean_error=True)            # detected, one error line naming the file
    fault_log.record("kill -9 data_prep", "shard_written:3", recovered=True)

Each fault is exactly one of: recovered (the re-run completed with output identical to a
clean run), clean_error (refused with one `error:` line naming the file/key, nothing
started), harmless (accepted, and every byte the reader used is what it was before the
fault: e.g. a flipped bit in a manifest's record of the input file names), or none of
these (a failure the test then reports). data_lost marks a fault after which
data that existed before it (complete shards, checkpoints, results) was gone or changed.
The table is also written as JSON to $FAULTS_SUMMARY when that variable names a file.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

COLUMNS = ("injected", "recovered", "clean_error", "harmless", "data_lost", "unhandled")


@dataclass(frozen=True)
class Fault:
    kind: str
    where: str
    recovered: bool
    clean_error: bool
    harmless: bool
    data_lost: bool

    @property
    def unhandled(self) -> bool:
        return not (self.recovered or self.clean_error or self.harmless) or self.data_lost


class FaultLog:
    def __init__(self) -> None:
        self.faults: list[Fault] = []

    def record(self, kind: str, where: str, *, recovered: bool = False, clean_error: bool = False,
               harmless: bool = False, data_lost: bool = False) -> Fault:
        fault = Fault(kind, where, bool(recovered), bool(clean_error), bool(harmless), bool(data_lost))
        self.faults.append(fault)
        return fault

    def table(self) -> dict[str, dict[str, int]]:
        rows: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COLUMNS, 0))
        for f in self.faults:
            row = rows[f.kind]
            row["injected"] += 1
            row["recovered"] += f.recovered
            row["clean_error"] += f.clean_error and not f.recovered
            row["harmless"] += f.harmless and not (f.recovered or f.clean_error)
            row["data_lost"] += f.data_lost
            row["unhandled"] += f.unhandled
        return dict(rows)

    def render(self) -> list[str]:
        rows = self.table()
        if not rows:
            return []
        width = max(len("kind"), *map(len, rows))
        total = {c: sum(r[c] for r in rows.values()) for c in COLUMNS}
        line = lambda name, r: f"{name:<{width}}  " + "  ".join(f"{r[c]:>{len(c)}}" for c in COLUMNS)  # noqa: E731
        header = f"{'kind':<{width}}  " + "  ".join(COLUMNS)
        return [header, "-" * len(header), *(line(k, rows[k]) for k in sorted(rows)), "-" * len(header),
                line("total", total)]


LEDGER = FaultLog()


@pytest.fixture(scope="session")
def fault_log() -> FaultLog:
    return LEDGER


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    """The fault corpus sharded once per session by data_prep (read-only for tests: copy to damage)."""
    from faults._stages import build_shards
    return build_shards(tmp_path_factory.mktemp("faults-data") / "shards")


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory, tiny_shards) -> Path:
    from faults._stages import tiny_config_text
    path = tmp_path_factory.mktemp("faults-config") / "tiny.toml"
    path.write_text(tiny_config_text(tiny_shards))
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_config) -> Path:
    """A finished tiny training run (checkpoints every 3 steps), trained in this process.
    Read-only for tests: copy it to damage it."""
    from faults._inject import call_main, describe
    from train.__main__ import main
    run = tmp_path_factory.mktemp("faults-run") / "run"
    code, _, err = call_main(main, ["--config", tiny_config, "--run-dir", run], timeout=600)
    assert code == 0, describe(code, err)
    return run


@pytest.fixture(scope="package")
def zygote():
    """Forks stage runs from one pre-imported interpreter (see _zygote.py); gone after this package."""
    from faults._zygote import Zygote
    with Zygote() as z:
        yield z


def pytest_sessionfinish(session):
    """An xdist worker hands its part of the ledger to the controller (see pytest_testnodedown)."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["faults"] = [asdict(f) for f in LEDGER.faults]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):  # noqa: ARG001 - hook signature
    """On the xdist controller (tests/conftest.py registers this module there): merge each worker's faults."""
    LEDGER.faults.extend(Fault(**f) for f in getattr(node, "workeroutput", {}).get("faults", []))


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001 - hook signature
    lines = LEDGER.render()
    if not lines:
        return
    terminalreporter.section("fault injection summary")
    for text in lines:
        terminalreporter.write_line(text)
    path = os.environ.get("FAULTS_SUMMARY")
    if path:
        with open(path, "w") as f:
            json.dump({"table": LEDGER.table(), "faults": [asdict(x) for x in LEDGER.faults]}, f, indent=2)
