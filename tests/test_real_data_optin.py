"""The test-data contract itself: real data opts in (skip with a reason, CI=true fails without
it), `make test-data` downloads verified files or says in one line why it cannot, and the
generated stand-ins look like the real files."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

import download_real_data as download
from conftest import CP1252_FILES, CRLF_TEXT, EMPTY_TEXT, HELLASWAG_VAL, LONG_TEXT, REAL_SKIP, REPO, subprocess_env
from data_prep import hellaswag as hellaswag_prep
from pipeline.hellaswag import load_hellaswag


def _pytest(*args: str, **env: str) -> subprocess.CompletedProcess:
    environ = subprocess_env(**env)
    environ.pop("PYTEST_ADDOPTS", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=REPO,
                          env=environ, capture_output=True, text=True, timeout=300)


def test_without_real_data_a_real_data_test_is_skipped_with_how_to_provide_it(tmp_path):
    missing = tmp_path / "no-such-dir"
    proc = _pytest("tests/test_data_prep_hellaswag.py", "-k", "pinned_constants", "-rs",
                   GPT2_PIPELINE_TEST_DATA=str(missing), CI="")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    skip = [line for line in proc.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skip) == 1 and f"{REAL_SKIP} {missing} is missing" in skip[0]
    assert "GPT2_PIPELINE_TEST_DATA" in skip[0] and "make test-data" in skip[0]
    assert "real-data tests skipped: 1 " in proc.stdout


def test_with_ci_true_missing_real_data_stops_the_session_naming_the_directory(tmp_path):
    missing = tmp_path / "no-such-dir"
    proc = _pytest("tests/test_foundation_config.py", GPT2_PIPELINE_TEST_DATA=str(missing), CI="true")
    assert proc.returncode != 0
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if str(missing) in line]
    assert len(errors) == 1 and errors[0].startswith("ERROR: CI=true but the real test data is not there: ")


def test_a_directory_without_the_expected_files_names_the_first_missing_one(tmp_path):
    (tmp_path / "hellaswag").mkdir()
    proc = _pytest("tests/test_data_prep_hellaswag.py", "-k", "pinned_constants", "-rs",
                   GPT2_PIPELINE_TEST_DATA=str(tmp_path), CI="")
    assert f"{tmp_path / 'hellaswag' / 'hellaswag_val.jsonl'} is missing" in proc.stdout


class FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_download_offline_is_one_error_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    def offline(url, timeout):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert download.main(["--out", str(tmp_path / "real")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: cannot download HellaSwag from {hellaswag_prep.URL}")
    assert "Temporary failure in name resolution" in err
    assert err.rstrip().endswith(f"--from PATH/hellaswag_val.jsonl --out {tmp_path / 'real' / 'hellaswag'}")
    assert not any(p.is_file() for p in (tmp_path / "real").rglob("*"))


def test_download_installs_verified_files_in_the_real_data_layout(tmp_path, monkeypatch, capsys):
    """Served the generated stand-ins, with the pinned hashes patched to theirs."""
    served = {hellaswag_prep.URL: HELLASWAG_VAL.read_bytes(), download.TINYSHAKESPEARE_URL: LONG_TEXT.read_bytes()}
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: FakeResponse(served[url]))
    monkeypatch.setattr(hellaswag_prep, "SHA256", hashlib.sha256(served[hellaswag_prep.URL]).hexdigest())
    monkeypatch.setattr(download, "TINYSHAKESPEARE_SHA256", hashlib.sha256(LONG_TEXT.read_bytes()).hexdigest())
    out = tmp_path / "real"
    assert download.main(["--out", str(out)]) == 0
    assert (out / "hellaswag" / "hellaswag_val.jsonl").read_bytes() == served[hellaswag_prep.URL]
    assert (out / "text" / "tinyshakespeare.txt").read_bytes() == served[download.TINYSHAKESPEARE_URL]
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["hellaswag_val.jsonl", "tinyshakespeare.txt"]
    capsys.readouterr()
    assert download.main(["--out", str(out)]) == 0
    assert capsys.readouterr().out.count("nothing to do") == 2


def test_download_with_the_wrong_bytes_is_refused_and_not_installed(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: FakeResponse(b"<html>rate limited</html>"))
    target = tmp_path / "text" / "tinyshakespeare.txt"
    with pytest.raises(download.DataPrepError, match="is not the expected 86c4e6aa"):
        download.fetch(download.TINYSHAKESPEARE_URL, download.TINYSHAKESPEARE_SHA256, target, 5)
    assert list(target.parent.iterdir()) == []


def test_generated_stand_ins_have_the_awkward_cases_and_the_real_format():
    for path in CP1252_FILES:
        with pytest.raises(UnicodeDecodeError):
            path.read_bytes().decode("utf-8")
    assert b"\r\n" in CRLF_TEXT.read_bytes() and EMPTY_TEXT.read_bytes() == b""
    assert LONG_TEXT.stat().st_size > 1_000_000 and b"\n\n" in LONG_TEXT.read_bytes()
    rows = [json.loads(line) for line in HELLASWAG_VAL.read_text(encoding="utf-8").splitlines()]
    real_keys = {"ind", "activity_label", "ctx_a", "ctx_b", "ctx", "split", "split_type", "label", "endings",
                 "source_id"}
    assert all(set(row) == real_keys and row["split"] == "val" for row in rows)
    assert {row["label"] for row in rows} == {0, 1, 2, 3}
    assert {row["source_id"].split("~")[0] for row in rows} == {"activitynet", "wikihow"}
    assert len(load_hellaswag(HELLASWAG_VAL)) == len(rows)  # every row passes the loader's checks
