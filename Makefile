# `make test` and `make demo` create .venv when it is missing.
# torch is pinned on the install line (not in pyproject) so that pip takes the
# local CPU wheel on machines that have it and the default (CUDA) wheel from
# PyPI elsewhere. Override with e.g. `make TORCH_SPEC='torch==2.13.0' test`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python

.PHONY: setup test test-quick test-data demo clean-venv

# --no-compile, then compileall: pip byte-compiles one file at a time (measured 319 s -> 129 s
# without it), while compileall -j 0 does all ~15k files of the venv on every core in ~30 s.
# The bytecode is not optional where PYTHONDONTWRITEBYTECODE is set (as on the development VMs):
# without it every process compiles torch from source again, `import torch` + torch._dynamo
# (which any torch optimizer imports) took 8.5 s instead of 2.6 s, in each of the hundreds of
# processes the tests start. Files compileall cannot parse (a few packages ship Python 2
# fixtures) are skipped, hence `|| true`. The venv's own pip is recent enough for an editable
# pyproject install, so it is not upgraded (one network round trip fewer).
$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-compile "$(TORCH_SPEC)" -e '.[dev]'
	$(PY) -m compileall -qq -j 0 "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" || true
	touch $@

setup: $(VENV)/.installed

# Everything, as CI runs it. Tests that need the real files (HellaSwag val, tinyshakespeare)
# run when GPT2_PIPELINE_TEST_DATA, ../shared/data or .test-data/real has them (make test-data),
# else they skip and the session says how many; with CI=true they are required.
# TEST_JOBS pytest processes (pytest-xdist); a file's tests stay on one process, so module
# fixtures (the demo run, a fault sweep's runs) are built once. TEST_JOBS=0: one process.
TEST_JOBS ?= 2
# --no-loadscope-reorder: files go out longest first (tests/conftest.py LONGEST_FIRST), not by test count.
TEST_DIST = $(if $(filter-out 0,$(TEST_JOBS)),-n $(TEST_JOBS) --dist loadfile --no-loadscope-reorder)

test: setup
	$(PY) -m pytest -q $(TEST_DIST) $(PYTEST_ARGS)

# Day to day (a few minutes): no Slurm, no fault sweeps, nothing over ~20 s (the `slow` marker).
test-quick: setup
	$(PY) -m pytest -q $(TEST_DIST) -m "not slow and not system" $(PYTEST_ARGS)

# Optional, needs internet: the real files into .test-data/real (gitignored), sha256-checked.
test-data: setup
	$(PY) tests/download_real_data.py $(TEST_DATA_ARGS)

demo: setup
	$(PY) -m pipeline demo $(DEMO_ARGS)

clean-venv:
	rm -rf $(VENV)
