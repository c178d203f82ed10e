# Two entry points for a fresh machine:
#   make study   set up and run the embedded default study (config/config.yaml)
#   make test    set up and run the test suite
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
CORES   ?= 2
PIP_CONSTRAINT_FILE ?= constraints/cpu.txt

.PHONY: setup study test test-fast lint bench clean

$(BIN)/cptlaws: pyproject.toml constraints/cpu.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c $(PIP_CONSTRAINT_FILE) -e '.[workflow,dev]'
	touch $@

setup: $(BIN)/cptlaws

# The rules call `cptlaws`: put the venv first on PATH so an unactivated `make study` finds it.
study: export PATH := $(abspath $(BIN)):$(PATH)
study: setup
	$(BIN)/snakemake --profile profiles/local --cores $(CORES)

test: export PATH := $(abspath $(BIN)):$(PATH)
test: setup
	$(BIN)/python -m pytest -q tests

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not slurm" tests

lint: setup
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check workflow

clean:
	rm -rf results logs .snakemake
