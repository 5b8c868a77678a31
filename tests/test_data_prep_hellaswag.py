"""python -m data_prep.hellaswag: verified, atomic install from a local copy or the canonical URL.

The install and download logic runs on generated rows with the pinned hash patched to theirs;
the pinned constants and a real install (a subprocess) check the real file (`real_data`)."""

from __future__ import annotations

import hashlib
import io
import urllib.error
import urllib.request

import pytest

from conftest import HELLASWAG_VAL, run_module
from data_prep import hellaswag

EXPECTED = "0aa3b88843990f3f10a97b9575c94d7b71fb2205240ba04ae4884d9e9c992588"


@pytest.fixture
def generated_is_canonical(monkeypatch):
    """Pin the generated rows' hash in place of the canonical one (in this process only)."""
    monkeypatch.setattr(hellaswag, "SHA256", hashlib.sha256(HELLASWAG_VAL.read_bytes()).hexdigest())
    return hellaswag.SHA256


def test_pinned_constants(real_data):
    real = real_data / "hellaswag" / "hellaswag_val.jsonl"
    assert hellaswag.URL == "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
    assert hellaswag.SHA256 == EXPECTED == hashlib.sha256(real.read_bytes()).hexdigest()


def test_install_the_real_file_from_a_local_copy(tmp_path, real_data):
    real = real_data / "hellaswag" / "hellaswag_val.jsonl"
    proc = run_module("data_prep.hellaswag", "--out", tmp_path, "--from", real)
    assert (tmp_path / "hellaswag_val.jsonl").read_bytes() == real.read_bytes() and "installed" in proc.stdout


def test_install_from_local_copy_then_noop(tmp_path, capsys, generated_is_canonical):
    out = tmp_path / "hs"
    assert hellaswag.main(["--out", str(out), "--from", str(HELLASWAG_VAL)]) == 0
    target = out / "hellaswag_val.jsonl"
    assert target.read_bytes() == HELLASWAG_VAL.read_bytes() and "installed" in capsys.readouterr().out
    before = target.stat().st_mtime_ns
    assert hellaswag.main(["--out", str(out), "--from", str(HELLASWAG_VAL)]) == 0
    assert "nothing to do" in capsys.readouterr().out and target.stat().st_mtime_ns == before
    assert [p.name for p in out.iterdir()] == ["hellaswag_val.jsonl"]


def test_wrong_local_file_is_refused_and_nothing_installed(tmp_path, capsys, generated_is_canonical):
    wrong = tmp_path / "hellaswag_val.jsonl"
    wrong.write_bytes(HELLASWAG_VAL.read_bytes()[:-100])  # truncated copy
    out = tmp_path / "hs"
    assert hellaswag.main(["--out", str(out), "--from", str(wrong)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {wrong}: sha256 ") and "truncated" in err
    assert list(out.iterdir()) == []  # no partial file, no temp file
    assert hellaswag.main(["--out", str(out), "--from", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl: no such file" in capsys.readouterr().err


class FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_download_verifies_and_installs(tmp_path, monkeypatch, capsys, generated_is_canonical):
    seen = {}

    def fake_urlopen(url, timeout):
        seen.update(url=url, timeout=timeout)
        return FakeResponse(HELLASWAG_VAL.read_bytes())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    assert hellaswag.main(["--out", str(tmp_path), "--timeout", "7"]) == 0
    assert seen == {"url": hellaswag.URL, "timeout": 7.0}
    assert (tmp_path / "hellaswag_val.jsonl").read_bytes() == HELLASWAG_VAL.read_bytes()


def test_corrupted_download_is_not_installed(tmp_path, monkeypatch, capsys, generated_is_canonical):
    data = bytearray(HELLASWAG_VAL.read_bytes())
    data[1000] ^= 1
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: FakeResponse(bytes(data)))
    assert hellaswag.main(["--out", str(tmp_path)]) == 2
    assert "sha256" in capsys.readouterr().err and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("failure", [urllib.error.URLError("[Errno -3] Temporary failure in name resolution"),
                                     TimeoutError("timed out")])
def test_offline_without_local_copy_says_how_to_provide_it(tmp_path, monkeypatch, capsys, failure):
    def offline(url, timeout):
        raise failure

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert hellaswag.main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: cannot download HellaSwag from {hellaswag.URL}")
    assert "--from" in err and EXPECTED in err
    assert list(tmp_path.iterdir()) == []
