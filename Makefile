# Sift: `make up` serves the whole local stack; `make test` runs every test (the fast lane, then the
# integration lane; each test runs once). Both install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
LS_VENV := .venv-labelstudio
BIN := $(VENV)/bin
LABEL_STUDIO_VERSION ?= 1.23.2
PYTEST_ARGS ?=

.PHONY: up down status test test-fast test-integration lint bench demo install install-labelstudio install-browser clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU wheel of torch first, so nothing below pulls a CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

$(LS_VENV)/.installed:
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install -q --upgrade pip
	$(LS_VENV)/bin/pip install -q label-studio==$(LABEL_STUDIO_VERSION)
	touch $@

install: $(BIN)/.installed $(LS_VENV)/.installed

install-labelstudio: $(LS_VENV)/.installed

# headless Chromium for the reviewer browser test (Debian package; Playwright drives it)
install-browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

up: install
	$(BIN)/sift up

down:
	$(BIN)/sift down

status:
	$(BIN)/sift status

test: install install-browser lint
	$(BIN)/python -m pytest --fast-lane $(PYTEST_ARGS)
	$(BIN)/python -m pytest -m integration $(PYTEST_ARGS)

# unit tests that start no server (tests/lanes.py: integration tests deselected, a server start fails)
test-fast: $(BIN)/.installed
	$(BIN)/python -m pytest --fast-lane $(PYTEST_ARGS)

test-integration: install install-browser
	$(BIN)/python -m pytest -m integration $(PYTEST_ARGS)

# ruff, then the import contract of pyproject.toml's [tool.importlinter] (stage boundaries, torch only in model/)
lint: $(BIN)/.installed
	$(BIN)/ruff check .
	PYTHONPATH=$(CURDIR) $(BIN)/lint-imports  # the tree here, not whatever copy is installed

# each writes bench/results/<name>.json; nice: other work on the machine is disturbed less
bench: $(BIN)/.installed
	nice -n 5 $(BIN)/python bench/classify.py
	nice -n 5 $(BIN)/python bench/feedback.py
	nice -n 5 $(BIN)/python bench/retrain.py

demo: install
	$(BIN)/sift demo

clean:
	rm -rf $(VENV) $(LS_VENV) .stack
