# Two commands do everything on a fresh machine:
#   make demo   set up .venv and run the main job (the OpenVLThinker cycle) on the embedded default
#   make test   set up .venv and run the test suite
# Set-up installs the exact tested set from locks/ (cpu.txt without a GPU: the local CPU torch, so
# nothing pulls CUDA wheels; gpu.txt with one: vLLM, torch 2.11), then ovlt itself without deps.
#   make test-latest   the newest releases pyproject.toml allows, in .venv-latest, fast tests only
#   make lock          recompile locks/ (run test-latest first; see locks/refresh.sh)

VENV ?= .venv
PY := $(VENV)/bin/python
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
LOCK := locks/$(if $(HAS_GPU),gpu,cpu).txt
PYTEST_ARGS ?=
DEMO_DIR ?= outputs/demo
LATEST ?= .venv-latest
comma := ,

.PHONY: setup demo test test-gpu test-latest lock clean

setup: $(VENV)/.installed

# --no-compile: pip would byte-compile every installed file (all of torch); Python compiles the
# modules it imports on first use instead, which is faster on a 2-core machine.
$(VENV)/.installed: pyproject.toml $(LOCK)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --no-compile -r $(LOCK)
	$(PY) -m pip install -q --no-compile --no-deps -e .
	touch $@

demo: setup
	$(VENV)/bin/ovlt cycle recipe=tiny trainer.output_dir=$(DEMO_DIR)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-gpu: setup
	$(PY) -m pytest -q -m gpu $(PYTEST_ARGS)

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
	rm -rf $(VENV) $(LATEST) outputs .pytest_cache
