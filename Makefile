# Two entry points on a fresh machine: `make demo` and `make test`.
# Each creates .venv with the CPU build of torch pinned first, so pip never
# resolves the multi-gigabyte CUDA wheels.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH  := torch==2.13.0
RUN    ?= runs/demo

.PHONY: demo test lint venv clean

# The demo installs the `clinical` extra too, so that its polarity check runs.
$(VENV)/.stamp-core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[clinical]'
	touch $@

$(VENV)/.stamp-dev: $(VENV)/.stamp-core
	$(PY) -m pip install -q -e '.[dev,clinical,tracking]'
	touch $@

venv: $(VENV)/.stamp-dev

demo: $(VENV)/.stamp-core
	HF_HUB_OFFLINE=1 $(VENV)/bin/mechtune demo --out $(RUN)

test: $(VENV)/.stamp-dev
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow"

lint: $(VENV)/.stamp-dev
	$(VENV)/bin/ruff check src tests benchmarks experiments
	$(VENV)/bin/ruff format --check src tests benchmarks experiments
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
