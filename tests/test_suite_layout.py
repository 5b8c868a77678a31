"""The path lists in tests/conftest.py name real tests: a renamed file or test would otherwise
drop out of `slow`/`system` (and so run in `make test-quick`, or change the host) silently."""

from __future__ import annotations

import re

import pytest

from conftest import LONGEST_FIRST, REPO, SLOW_PATHS, SYSTEM_PATHS


@pytest.mark.parametrize("entry", sorted(set(SLOW_PATHS + SYSTEM_PATHS + LONGEST_FIRST)))
def test_every_listed_path_names_an_existing_test(entry):
    path, _, name = entry.partition("::")
    target = REPO / path
    assert target.exists(), f"{entry}: no such file or directory"
    if path.endswith("/"):
        assert target.is_dir() and list(target.glob("test_*.py")), f"{entry}: no test files there"
    if name:  # a prefix of a test function's name
        assert re.search(rf"^def {re.escape(name)}", target.read_text(), re.M), f"{entry}: no test named so"
