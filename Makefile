# rayd: the two commands a new machine needs are `make run` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
export PATH := $(HOME)/.cargo/bin:$(PATH)

VENV := .venv
PYTHON := $(VENV)/bin/python
# Debug builds for tests and `make run`; `make bench` asks for release.
PROFILE ?= debug
CARGO_PROFILE_FLAG := $(if $(filter release,$(PROFILE)),--release,)
BINARIES := rayd rayd-redis-shard rayd-global-scheduler rayd-plasma rayd-raylet rayd-worker rayd-dashboard

.PHONY: all deps build build-python wheel deploy-test run test test-rust test-python lint bench chaos clean

all: build

## deps: install what the build and the tests use but cargo cannot (redis-server).
deps:
	@bash scripts/install-deps.sh

## build: every rayd binary, and the Python SDK with the binaries in .venv (a virtual
## env inside the repo: `.venv/bin/python -c "import ray"`).
build: build-python

$(VENV)/.deps: sdk/python/requirements-dev.txt
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r sdk/python/requirements-dev.txt
	touch $@

build-python: $(VENV)/.deps
	$(CARGO) build $(CARGO_PROFILE_FLAG) --workspace --bins
	install -m 0755 $(addprefix target/$(PROFILE)/,$(BINARIES)) $(VENV)/bin/
	mkdir -p target/wheel-data/scripts
	VIRTUAL_ENV=$(CURDIR)/$(VENV) PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/maturin develop --quiet $(CARGO_PROFILE_FLAG) -m sdk/python/Cargo.toml

## wheel: dist/rayd-*.whl, the SDK with every rayd binary (installed into the env's bin/):
## `pip install dist/rayd-*.whl` plus a redis-server on PATH is all a machine needs. The
## wheels it depends on go to dist/deps/ (an offline install: `pip install --no-index
## --find-links dist/deps dist/rayd-*.whl`); scripts/check-wheel.sh checks what the
## worker links (no build-machine RUNPATH).
wheel: $(VENV)/.deps
	RAYD_WORKER_RPATH='$$ORIGIN/../lib' $(CARGO) build --release --workspace --bins
	rm -rf target/wheel-data && mkdir -p target/wheel-data/scripts
	install -m 0755 $(addprefix target/release/,$(BINARIES)) target/wheel-data/scripts/
	rm -f dist/rayd-*.whl
	$(VENV)/bin/maturin build --release -m sdk/python/Cargo.toml --out dist
	rm -rf target/wheel-data && mkdir -p target/wheel-data/scripts
	rm -rf dist/deps && $(PYTHON) -m pip download --quiet --only-binary :all: --dest dist/deps dist/rayd-*.whl
	rm -f dist/deps/rayd-*.whl
	bash scripts/check-wheel.sh dist/rayd-*.whl

## deploy-test: the operators' rollout, proven: three Debian 12 hosts booted with
## systemd-nspawn (root; base cached in /var/tmp/rayd-lab), the wheel, the playbook twice,
## then health, drivers, kill -9, restarts, watchdog and hardening checks (deploy/test/).
## Not part of `make test`: it takes about ten minutes.
deploy-test: wheel
	bash deploy/test/run.sh 2>&1 | tee deploy/test/results/latest.log; exit $${PIPESTATUS[0]}

## run: build, then run every program of the seed document (examples/) on a fresh local
## cluster, and show `rayd start` / `rayd status` / `rayd stop` on a head node.
run: deps build
	@bash scripts/run-local.sh

## test: install what is missing, check formatting and lints, build, run every test.
test: deps lint build test-rust test-python

test-rust:
	$(CARGO) build --workspace --bins --tests
	$(CARGO) test --workspace

test-python:
	cd sdk/python && ../../$(PYTHON) -m mypy
	$(PYTHON) -m pytest -q sdk/python/tests

## lint: formatting and clippy, as CI expects them.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## bench: rayd (release build) beside the newest real Ray from PyPI, alternating, in a
## loopback-only network namespace; prints the table and writes bench/results/ (bench/README.md).
bench: deps
	$(CARGO) build --release --workspace --bins
	$(MAKE) build-python PROFILE=release
	@if [ -x .venv/bin/python ] && ! .venv/bin/python -c "import numpy, psutil" 2>/dev/null; then \
		.venv/bin/python -m pip install --quiet numpy psutil; fi
	@bash bench/setup_ray.sh
	python3 bench/run.py

## chaos: a three-node cluster runs 10,000 tasks, large objects and actors while workers,
## raylets, plasma stores and whole nodes are killed at random; checks every result, that
## nothing hangs and nothing is left; writes bench/results/chaos.md (scripts/chaos.py).
chaos: build
	$(PYTHON) scripts/chaos.py --tasks 10000 --period 2 --out bench/results/chaos.md

clean:
	$(CARGO) clean
