# `make test` and `make demo` create .venv when it is missing.
# torch is pinned on the install line (not in pyproject) so that pip takes the
# local CPU wheel on machines that have it and the default (CUDA) wheel from
# PyPI elsewhere. Override with e.g. `make TORCH_SPEC='torch==2.13.0' test`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python

.PHONY: setup test test-quick test-data demo clean-venv

# --no-compile: byte-compiling every file of torch/transformers/pandas dominated the
# install time on a 2-core machine (measured 319 s -> 129 s); Python compiles the few
# modules it imports on first use instead. The venv's own pip is recent enough for an
# editable pyproject install, so it is not upgraded (one network round trip fewer).
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-compile "$(TORCH_SPEC)" -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

# Everything, as CI runs it. Tests that need the real files (HellaSwag val, tinyshakespeare)
# run when GPT2_PIPELINE_TEST_DATA, ../shared/data or .test-data/real has them (make test-data),
# else they skip and the session says how many; with CI=true they are required.
# TEST_JOBS pytest processes (pytest-xdist); a file's tests stay on one process, so module
# fixtures (the demo run, a fault sweep's runs) are built once. TEST_JOBS=0: one process.
TEST_JOBS ?= 2
TEST_DIST = $(if $(filter-out 0,$(TEST_JOBS)),-n $(TEST_JOBS) --dist loadfile)

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
