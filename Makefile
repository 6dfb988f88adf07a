# rayd: the two commands a new machine needs are `make run` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: all deps build run test lint bench clean

all: build

## deps: install what the build and the tests use but cargo cannot (redis-server).
deps:
	@bash scripts/install-deps.sh

## build: every rayd binary (debug profile) into target/debug.
build:
	$(CARGO) build --workspace --bins

## run: build, start a local head node, show its status, stop it.
run: deps build
	@bash scripts/run-local.sh

## test: install what is missing, check formatting and lints, build, run every test.
test: deps lint
	$(CARGO) build --workspace --bins --tests
	$(CARGO) test --workspace

## lint: formatting and clippy, as CI expects them.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## bench: rayd (release build) beside the newest real Ray from PyPI, alternating, in a
## loopback-only network namespace; prints the table and writes bench/results/ (bench/README.md).
bench: deps
	$(CARGO) build --release --workspace --bins
# BENCH-TODO (issue 4): install rayd's Python SDK, built against the release daemons, into .venv
# here once its make target exists (e.g. `$(MAKE) build-python PROFILE=release`). Until then
# rayd's column reads "unavailable" whenever .venv does not import rayd.
	@if [ -x .venv/bin/python ] && ! .venv/bin/python -c "import numpy, psutil" 2>/dev/null; then \
		.venv/bin/python -m pip install --quiet numpy psutil; fi
	@bash bench/setup_ray.sh
	python3 bench/run.py

clean:
	$(CARGO) clean
