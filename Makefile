# lmops — the two set-up commands are `make run` and `make test`; both create or reuse .venv.
SHELL := /bin/bash
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# Every install goes through the lock (exact versions of every direct and transitive dependency).
LOCK := requirements.lock
# what the images install (a subset of LOCK at the same versions; `make lock` writes both)
RUNTIME_LOCK := requirements.runtime.lock
TORCH_VERSION := 2.13.0
# torch comes first and pinned: from this machine's wheel folder (pip's find-links: the CPU wheel) or,
# for CUDA, from TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cu128). An unpinned torch from
# PyPI pulls several GB of CUDA packages.
TORCH_INDEX_URL ?=
export UV_FIND_LINKS ?= $(shell $(PY) -m pip config get global.find-links 2>/dev/null)
# uv reads the system's certificate store (where a proxy's CA is installed), as pip does here.
export UV_SYSTEM_CERTS ?= 1
export UV_PYTHON := $(BIN)/python
UV := $(BIN)/uv
# Re-install when the lock or the package metadata changes.
STAMP := $(VENV)/.installed-$(shell cat $(LOCK) pyproject.toml | sha256sum | cut -c1-12)
# kfp's local runner and Ray workers call the first `python3` on PATH: make it the venv's.
export PATH := $(BIN):$(PATH)
export RAY_AUTH_MODE ?= disabled
CONFIG ?= tiny
PYTEST_ARGS ?=

.PHONY: run test test-containers bench venv lock clean stop pipeline images base-image cluster cluster-down k8s-binaries cpu-image demo

venv: $(STAMP)

$(UV):
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@# the installer itself, at the version the lock names
	$(BIN)/python -m pip install -q --disable-pip-version-check "$$(grep -m1 '^uv==' $(LOCK))"

# A fresh venv gets exactly the lock (uv pip sync), whose torch is the CPU build. With TORCH_INDEX_URL
# (e.g. a CUDA torch and its nvidia-* libraries, which the CPU lock does not list) torch comes from that
# index and everything else from the lock.
$(STAMP): $(LOCK) pyproject.toml | $(UV)
	$(UV) pip install -q torch==$(TORCH_VERSION) $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(if $(TORCH_INDEX_URL),grep -v '^torch==' $(LOCK) | $(UV) pip install -r -,$(UV) pip sync $(LOCK))
	$(UV) pip install -q --no-deps -e .
	@rm -f $(VENV)/.installed-* && touch $@

# Regenerate the lock from pyproject.toml (run after editing its dependencies; commit both together).
# torch resolves to this machine's CPU wheel (pip's find-links); the lock keeps its +cpu label, which is
# also what keeps uv from preferring PyPI's CUDA build of the same version on the next `make lock`.
lock: | $(UV)
	$(UV) pip compile pyproject.toml --extra all --extra test --extra dev --python-version 3.11 \
	  --constraint <(echo torch==$(TORCH_VERSION)) --custom-compile-command "make lock" -o $(LOCK)
	@grep -q '^torch==$(TORCH_VERSION)+cpu$$' $(LOCK) || { echo "make lock: torch did not resolve to the CPU \
	  wheel ($$(grep '^torch==' $(LOCK))): is pip's find-links folder with torch-$(TORCH_VERSION)+cpu here?"; exit 1; }
	@# the images' lock: the run-time extras only (no test, lint or chart tooling), at the full lock's versions
	$(UV) pip compile pyproject.toml --extra all --python-version 3.11 --constraint $(LOCK) \
	  --custom-compile-command "make lock" -o $(RUNTIME_LOCK)

# The Kubeflow pipeline through kfp's local runner: local Ray, MLflow (sqlite) and KServe model server.
# RUNNER=container: every task in the lmops image (make images first), through docker or podman.
RUNNER ?= subprocess
run: $(STAMP)
	LMOPS_STATE_DIR=$(CURDIR)/.state $(BIN)/lmops pipeline run --config $(CONFIG) --runner $(RUNNER)

# pipelines/lmops_pipeline.yaml for the Kubeflow UI (committed; a test compares it with a fresh compile)
pipeline: $(STAMP)
	$(BIN)/lmops pipeline compile

# The lmops images (components/Dockerfile) with docker where its daemon answers, else podman (installed with
# apt-get on a machine with neither): <repository>:<tag>-cpu and -cuda, localhost/lmops:<version>-* by default.
# A build whose key (lock, Dockerfile, sources) matches the existing image is skipped. Without a reachable
# registry the base is a Debian bookworm image made here (make base-image). IMAGE_VARIANTS=cpu: CPU only.
IMAGE_REPOSITORY ?=
IMAGE_TAG ?=
IMAGE_VARIANTS ?= cpu cuda
IMAGE_ARGS = $(if $(IMAGE_REPOSITORY),--repository $(IMAGE_REPOSITORY)) $(if $(IMAGE_TAG),--tag $(IMAGE_TAG))
images: $(STAMP)
	$(BIN)/lmops images build $(IMAGE_ARGS) $(foreach v,$(IMAGE_VARIANTS),--variant $(v))

base-image: $(STAMP)
	$(BIN)/lmops images base

# lmops cluster's binaries (kube-apiserver, -controller-manager, -scheduler, kubelet, kube-proxy, pause):
# built once from Debian's sources (4-16 min on 2 cores, progress shown) and cached in ~/.cache/lmops,
# keyed by the recipe; instant when cached. The node's packages (containerd, runc, CNI) come at `cluster up`.
k8s-binaries: $(STAMP)
	$(BIN)/python -m lmops.cluster.binaries

# The InferenceServices of the tests run as pods of the lmops CPU image (the KServe stand-in's predictors):
# built here first, with its progress shown (cold on a fresh machine: engine, Debian base and image, 6-8
# minutes; cached by its build key: a second), then loaded into the session node once by a fixture.
# --durations: CI's log names the slowest tests (the budget is 60 minutes for all of .ci/run).
test: $(STAMP) k8s-binaries cpu-image
	$(BIN)/python -m pytest -q -m "not containers" --durations=30 $(PYTEST_ARGS)

cpu-image: $(STAMP)
	$(BIN)/lmops images build --variant cpu

# The tests that run the pipeline in the lmops image and run it as pods on lmops cluster's node (operator via
# Helm, the bare predictor container, a kfp task pod). .ci/run runs both.
test-containers: $(STAMP) k8s-binaries
	$(BIN)/python -m pytest -q tests/containers $(PYTEST_ARGS)

# A local Kubernetes cluster (control plane, a node, the KServe / KubeRay stand-ins) under .state/cluster.
# The operator loop on lmops cluster (start it first: make cluster): kubectl apply a training job, promote
# its version, a canary promoted, a broken version rolled back by itself (alias and traffic).
demo: $(STAMP)
	$(BIN)/python -m lmops.operator.demo

cluster: $(STAMP) k8s-binaries
	LMOPS_STATE_DIR=$(CURDIR)/.state $(BIN)/lmops cluster up

cluster-down:
	LMOPS_STATE_DIR=$(CURDIR)/.state $(BIN)/lmops cluster down

bench: $(STAMP)
	@# -P: bench/tokenize.py must not shadow the standard library's tokenize module
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python -P $$b || exit 1; done

clean: stop
	rm -rf runs .state/cache .state/kfp

# Stop the local servers `make run` leaves up for the next run (MLflow, Ray, the KServe model server).
stop:
	@test -x $(BIN)/lmops || { echo "nothing to stop (no .venv)"; exit 0; }
	LMOPS_STATE_DIR=$(CURDIR)/.state $(BIN)/lmops stop
