# Two commands do everything on a fresh machine:
#   make demo   set up .venv and run the main job (the OpenVLThinker cycle) on the embedded default
#   make test   set up .venv and run the test suite
# Without a GPU, torch is pinned to the local CPU build through constraints-cpu.txt.

VENV ?= .venv
PY := $(VENV)/bin/python
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
PIN := $(if $(HAS_GPU),,-c constraints-cpu.txt)
PYTEST_ARGS ?=
DEMO_DIR ?= outputs/demo

.PHONY: setup demo test test-gpu clean

setup: $(VENV)/.installed

# --no-compile: pip would byte-compile every installed file (all of torch); Python compiles the
# modules it imports on first use instead, which is faster on a 2-core machine.
$(VENV)/.installed: pyproject.toml constraints-cpu.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(if $(HAS_GPU),,$(PY) -m pip install -q --no-compile torch==2.13.0)
	$(PY) -m pip install -q --no-compile $(PIN) -e '.[dev]'
	touch $@

demo: setup
	$(VENV)/bin/ovlt cycle recipe=tiny trainer.output_dir=$(DEMO_DIR)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-gpu: setup
	$(PY) -m pytest -q -m gpu $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) outputs .pytest_cache
