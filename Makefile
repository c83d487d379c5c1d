# synthd — `make demo` and `make test` set everything up on a fresh machine.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
SYNTHD := $(VENV)/bin/synthd
STAMP  := $(VENV)/.synthd-installed
PYTEST_ARGS ?=

.PHONY: setup browser model demo test bench bench-vllm clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: the CPU build; a looser pin would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP) browser

# Debian's Chromium for the console's browser tests (Playwright cannot download browsers here);
# without it tests/test_console.py is skipped, so a failed install does not stop the set-up.
browser:
	@command -v chromium >/dev/null 2>&1 || apt-get install -y chromium || \
		(apt-get update && apt-get install -y chromium) || \
		echo "chromium not installed: the console browser tests will be skipped"

model: setup
	$(SYNTHD) models pull

demo: model
	$(SYNTHD) demo

test: model
	$(PY) -m pytest $(PYTEST_ARGS)

bench: model
	bash benchmarks/compare_vllm.sh

clean:
	rm -rf $(VENV) build *.egg-info
