# pvaflow developer entry points. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Re-install when the project metadata changes (new dependency, new entry point).
STAMP := $(VENV)/.pvaflow-installed
LINT_PATHS := pvaflow bridge processors collectors ops tests benchmarks
TYPE_PATHS := pvaflow bridge processors collectors ops
PYTEST_ARGS ?=
BROKER_ARGS ?=

.PHONY: help venv lint test demo bench broker clean

help:
	@echo "make venv    create $(VENV) (if missing) and pip install -e '.[dev]'"
	@echo "make lint    ruff + mypy + hadolint"
	@echo "make image   build the Dockerfile with buildah (BASE=... or a local Debian base)"
	@echo "make test    lint, tools, image, then pytest (real Kafka broker + PVA sim servers; PYTEST_ARGS=...)"
	@echo "make test-under-load  make test beside 2 CPU hogs (HOGS=N): the suite must not need an idle machine"
	@echo "make alerts  regenerate alerts/pvaflow.rules.yaml from the chart's alert rules"
	@echo "make demo    run the end-to-end demo (python -m pvaflow.ops.demo)"
	@echo "make bench   run every benchmark; rewrites docs/performance.md (quiet machine!)"
	@echo "make broker  run a local Kafka broker in the foreground (BROKER_ARGS='--port 0')"
	@echo "make clean   remove caches and build artifacts (keeps $(VENV))"

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[dev]'
	@touch $@

lint: venv
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/mypy $(TYPE_PATHS)
	$(BIN)/hadolint Dockerfile

# The image test (tests/ops/test_image.py) runs what `image` builds (localhost/pvaflow:latest);
# outside CI, a machine that cannot build it (not root, no buildah) skips that test instead.
test: lint tools
	@IMAGE_OPTIONAL=1 scripts/image
	$(BIN)/pytest -q $(PYTEST_ARGS)

# The same suite with every core of a 2-core machine kept busy by other work.
test-under-load:
	@scripts/under-load $(MAKE) test

.PHONY: tools alerts image test-under-load
# helm (go install), Prometheus (Debian package, unpacked), kubernetes-validate, and buildah +
# mmdebstrap (Debian packages, installed when run as root) for tests/ops.
tools: venv
	@scripts/tools

# localhost/pvaflow:<version> and :latest with buildah; the base is localhost/pvaflow-base made
# from Debian packages (scripts/base-image, cached in .cache/image) unless BASE=image is given.
image: tools
	@scripts/image

# The plain Prometheus rules file, from the chart's helm/pvaflow/files/alerts.yaml.
alerts: venv
	$(BIN)/python -m tests.ops.rules >alerts/pvaflow.rules.yaml

demo: venv
	$(BIN)/python -m pvaflow.ops.demo

BENCHMARKS := codec bridge processors collector stream
bench: venv
	@for b in $(BENCHMARKS); do echo "== benchmarks.$$b"; $(BIN)/python -m benchmarks.$$b || exit 1; done

broker: venv
	$(BIN)/python -m pvaflow.ops.broker run $(BROKER_ARGS)

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +
