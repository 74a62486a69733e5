# halluc: `make run` runs the main job on the embedded toy default; `make test` runs every test.
# Both create .venv when it is missing. Caches stay inside the repo (.cache/, gitignored).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.halluc-installed
CACHE := $(CURDIR)/.cache

export HF_HOME := $(CACHE)/hf
export HF_DATASETS_CACHE := $(CACHE)/hf/datasets
export MPLCONFIGDIR := $(CACHE)/matplotlib
export IPYTHONDIR := $(CACHE)/ipython
export JUPYTER_CONFIG_DIR := $(CACHE)/jupyter/config
export JUPYTER_DATA_DIR := $(CACHE)/jupyter/data
export JUPYTER_RUNTIME_DIR := $(CACHE)/jupyter/runtime
export TORCHINDUCTOR_CACHE_DIR := $(CACHE)/torchinductor
export TRITON_CACHE_DIR := $(CACHE)/triton
export XDG_CACHE_HOME := $(CACHE)/xdg
export HYPOTHESIS_STORAGE_DIRECTORY := $(CACHE)/hypothesis
export TOKENIZERS_PARALLELISM := false
export WANDB_MODE := disabled
export HF_HUB_DISABLE_TELEMETRY := 1
export PYTHONDONTWRITEBYTECODE := 1
# the embedded default needs no network; set HF_HUB_OFFLINE=0 to reach the Hub for real models
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export GSM8K_DIR ?= $(abspath $(CURDIR)/../shared/data/gsm8k)

.PHONY: install run test test-fast test-compat export check-export nbdev-test pytest bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $@

# The main job: the toy experiment on the embedded default (no downloads), executed with papermill
# into runs/toy-experiment/ (an earlier one is moved aside, not deleted).
# One torch thread unless set: the toy models are too small to gain from two, and two threads on a
# 2-core machine slow down many times as soon as anything else runs.
run: install
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(VENV)/bin/halluc run nbs/experiment.ipynb --name toy-experiment -p overwrite=true

export: install
	$(VENV)/bin/nbdev-export

# halluc/ must equal what nbdev-export produces from nbs/.
check-export: install
	@rm -rf $(CACHE)/export-check && mkdir -p $(CACHE) && cp -r halluc $(CACHE)/export-check
	@$(VENV)/bin/nbdev-export
	@if ! diff -r -q -x __pycache__ $(CACHE)/export-check halluc; then \
	  echo "halluc/ differed from nbdev-export output (now re-exported): commit nbs/ and halluc/ together"; exit 1; fi
	@echo "halluc/ matches nbdev-export"

nbdev-test: install
	$(VENV)/bin/nbdev-test --n-workers 2 --timing

pytest: install
	$(PY) -m pytest tests

test: check-export nbdev-test pytest

# the edit loop: the tests that neither train nor spawn processes
test-fast: install
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest tests -m "not slow"

# The declared lower bounds are true: a second venv at exactly pyproject.toml's floors (requirements/lowest.txt)
# runs the fast tests. Made once, reused while requirements/lowest.txt and pyproject.toml stay as they are.
COMPAT := .venv-compat
$(COMPAT)/.halluc-installed: pyproject.toml requirements/lowest.txt
	@test -x $(COMPAT)/bin/python || python3 -m venv $(COMPAT)
	$(COMPAT)/bin/python -m pip install -q --upgrade pip
	$(COMPAT)/bin/python -m pip install -q torch==2.13.0
	$(COMPAT)/bin/python -m pip install -q -c requirements/lowest.txt -r requirements/lowest.txt -e ".[dev]"
	@touch $@

test-compat: $(COMPAT)/.halluc-installed
	@$(COMPAT)/bin/python -c "import transformers, trl, peft, datasets, accelerate; print('lowest:', 'transformers', transformers.__version__, 'trl', trl.__version__, 'peft', peft.__version__, 'datasets', datasets.__version__, 'accelerate', accelerate.__version__)"
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(COMPAT)/bin/python -m pytest tests -m "not slow" -p no:cacheprovider

bench: install
	$(PY) bench/bench_core.py

clean:
	rm -rf $(CACHE) .pytest_cache
