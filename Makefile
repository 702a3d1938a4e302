# Two commands for a fresh machine: `make run` (API + Redis + one worker) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint bench system-deps

# torch is pinned and installed first, so that nothing resolves an unpinned torch (a
# multi-GB CUDA build). TORCH_INDEX_URL picks another wheel index, e.g. PyTorch's CPU one.
TORCH_INDEX_URL ?=
TORCH_INDEX := $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL),)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_INDEX) torch==2.13.0
	$(PY) -m pip install -q -e '.[worker,dev]'
	touch $@

run: $(STAMP)
	$(PY) -m scripts.run_local

# Tests start their own redis-server and nginx, drive the playground in headless chromium;
# the packaging tests lint with docker-compose.
system-deps:
	bash scripts/ensure-debian-packages.sh redis-server:redis-server docker-compose:docker-compose nginx:nginx-light chromium:chromium

lint: $(STAMP)
	$(PY) -m ruff check .

test: $(STAMP) system-deps lint
	$(PY) -m pytest

# The benchmark suite: a results table (bench/results.md) and docs/benchmarks.png.
bench: $(STAMP) system-deps
	bash scripts/ensure-debian-packages.sh wrk:wrk
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m bench
