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

.PHONY: run test bench venv clean stop pipeline images

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# torch first and pinned: an unpinned torch pulls several GB of CUDA packages
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[all,test]'
	@rm -f $(VENV)/.installed-* && touch $@

# The Kubeflow pipeline through kfp's local runner: local Ray, MLflow (sqlite) and KServe model server.
run: $(STAMP)
	LMOPS_STATE_DIR=$(CURDIR)/.state $(BIN)/lmops pipeline run --config $(CONFIG)

# pipelines/lmops_pipeline.yaml for the Kubeflow UI (committed; a test compares it with a fresh compile)
pipeline: $(STAMP)
	$(BIN)/lmops pipeline compile

# The component images (needs a docker engine): CPU for most steps, CUDA for training.
IMAGE ?= ghcr.io/lmops/lmops
VERSION ?= 0.1.0
images:
	@command -v docker >/dev/null || { echo "make images: docker is not installed here"; exit 2; }
	docker build -f components/Dockerfile --build-arg VARIANT=cpu --build-arg CODE_VERSION=$$(git rev-parse HEAD) -t $(IMAGE):$(VERSION)-cpu .
	docker build -f components/Dockerfile --build-arg VARIANT=cuda --build-arg CODE_VERSION=$$(git rev-parse HEAD) -t $(IMAGE):$(VERSION)-cuda .

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	@# -P: bench/tokenize.py must not shadow the standard library's tokenize module
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python -P $$b || exit 1; done

clean: stop
	rm -rf runs .state/cache .state/kfp

# Stop the local servers `make run` leaves up for the next run (MLflow, the KServe model server).
stop:
	@test -x $(BIN)/lmops || { echo "nothing to stop (no .venv)"; exit 0; }
	LMOPS_STATE_DIR=$(CURDIR)/.state $(BIN)/lmops stop
