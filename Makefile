# Sift: `make up` serves the whole local stack; `make test` runs every test (the fast lane, then the
# integration lane; each test runs once). Both install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
LS_VENV := .venv-labelstudio
# checkov pins its own versions of many libraries: it gets a virtualenv of its own
DEPLOY_VENV := .venv-deploy
CHECKOV_VERSION ?= 3.3.30
SIFT_IMAGE ?= localhost/sift:dev
SIFT_BASE_IMAGE ?= localhost/sift-base:bookworm
BIN := $(VENV)/bin
LABEL_STUDIO_VERSION ?= 1.23.2
PYTEST_ARGS ?=

.PHONY: up down status test test-fast test-integration test-deploy lint bench demo install install-labelstudio \
	install-browser install-deploy install-cluster cluster clean

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

# the local cluster's load balancer and database (Debian packages): `make cluster`, tests/test_cluster.py
install-cluster:
	@command -v haproxy >/dev/null 2>&1 || test -x /usr/sbin/haproxy && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    haproxy postgresql >/dev/null; }

# podman (rootful, runc), debootstrap for the image's base, Debian's docker-compose for `config`
install-deploy: $(DEPLOY_VENV)/.installed
	@command -v podman >/dev/null 2>&1 && command -v runc >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1 \
	  && command -v docker-compose >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    podman runc debootstrap docker-compose >/dev/null; }
	@# this kind of machine runs containers only without default ulimits and with runc
	@test -f /etc/containers/containers.conf || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
	  printf '[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n' \
	    | $$SUDO tee /etc/containers/containers.conf >/dev/null; }

$(DEPLOY_VENV)/.installed:
	$(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/pip install -q checkov==$(CHECKOV_VERSION)
	touch $@

# the production files: compose config, Helm lint/render/validate, checkov, the image built with podman
# on a debootstrapped base and run against the loopback services
test-deploy: $(BIN)/.installed install-deploy
	cd infra/deploy && S3_SECRET_KEY=x LABEL_STUDIO_TOKEN=x WEBHOOK_SECRET=x ADMIN_KEY=x POSTGRES_PASSWORD=x \
	  LABEL_STUDIO_PASSWORD=x docker-compose config -q
	$(BIN)/python infra/deploy/podman_build.py --tag $(SIFT_IMAGE) --base $(SIFT_BASE_IMAGE)
	SIFT_TEST_IMAGE=$(SIFT_IMAGE) SIFT_TEST_BASE_IMAGE=$(SIFT_BASE_IMAGE) SIFT_TEST_IMAGE_BUILT=1 \
	  $(BIN)/python -m pytest tests/test_deploy_files.py tests/test_deploy_checks.py tests/test_deploy_image.py $(PYTEST_ARGS)

up: install
	$(BIN)/sift up

# the production shape on this machine: 2 brokers and 3 API replicas behind HAProxy, 2 workers of a kind,
# MLflow and Label Studio on PostgreSQL
cluster: install install-cluster
	$(BIN)/sift up --api-replicas 3 --workers 2 --brokers 2

down:
	$(BIN)/sift down

status:
	$(BIN)/sift status

test: install install-browser install-cluster lint
	$(BIN)/python -m pytest --fast-lane -m "not deploy" $(PYTEST_ARGS)
	$(BIN)/python -m pytest -m "integration and not deploy" $(PYTEST_ARGS)
	$(MAKE) test-deploy

# unit tests that start no server (tests/lanes.py: integration tests deselected, a server start fails)
test-fast: $(BIN)/.installed
	$(BIN)/python -m pytest --fast-lane -m "not deploy" $(PYTEST_ARGS)

test-integration: install install-browser install-cluster
	$(BIN)/python -m pytest -m "integration and not deploy" $(PYTEST_ARGS)

# ruff, then the import contract of pyproject.toml's [tool.importlinter] (stage boundaries, torch only in model/)
lint: $(BIN)/.installed
	$(BIN)/ruff check .
	PYTHONPATH=$(CURDIR) $(BIN)/lint-imports  # the tree here, not whatever copy is installed

# each writes bench/results/<name>.json; nice: other work on the machine is disturbed less
bench: $(BIN)/.installed
	nice -n 5 $(BIN)/python bench/classify.py
	nice -n 5 $(BIN)/python bench/feedback.py
	nice -n 5 $(BIN)/python bench/tenants.py
	nice -n 5 $(BIN)/python bench/retrain.py

demo: install
	$(BIN)/sift demo

clean:
	rm -rf $(VENV) $(LS_VENV) $(DEPLOY_VENV) .stack
