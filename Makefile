# lmops — the two set-up commands are `make run` and `make test`; both create or reuse .venv.
SHELL := /bin/bash
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# Re-install when the dependency list changes (the stamp is keyed by pyproject.toml's hash).
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)
# kfp's local runner and Ray workers call the first `python3` on PATH: make it the venv's.
export PATH := $(BIN):$(PATH)
export RAY_AUTH_MODE ?= disabled
CONFIG ?= tiny
PYTEST_ARGS ?=

.PHONY: run test bench venv clean stop

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# torch first and pinned: an unpinned torch pulls several GB of CUDA packages
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[all,test]'
	@rm -f $(VENV)/.installed-* && touch $@

run: $(STAMP)
	$(BIN)/lmops run --config $(CONFIG)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	@# -P: bench/tokenize.py must not shadow the standard library's tokenize module
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python -P $$b || exit 1; done

clean:
	rm -rf runs .state/cache

stop:
	@echo "no local servers yet"
