# Conclave's set-up contract: `make demo` and `make test` work on a machine that has only Rust
# and Python. They install what is missing (libtorch from PyPI into .venv), idempotently.

TORCH_VERSION := 2.11.0
VENV := .venv
PYTHON ?= python3
TORCH_STAMP := $(VENV)/.torch-$(TORCH_VERSION)
# tch finds libtorch through the venv's Python; .venv/bin comes first on PATH.
CARGO_ENV := LIBTORCH_USE_PYTORCH=1 PATH="$(CURDIR)/$(VENV)/bin:$$PATH"
CARGO ?= cargo

.PHONY: all build demo test lint bench clean-venv

all: build

$(TORCH_STAMP):
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check -q "torch==$(TORCH_VERSION)"
	$(VENV)/bin/python -c "import torch; assert torch.__version__.startswith('$(TORCH_VERSION)'), torch.__version__"
	touch $@

## Release binary at target/release/conclave (runs directly: libtorch is found through its rpath).
build: $(TORCH_STAMP)
	$(CARGO_ENV) $(CARGO) build --release -p conclave-cli

## The main job on shipped data: coordinator + 5 hospitals over loopback gRPC, 20 rounds.
demo: build
	./target/release/conclave demo

## Every test in the workspace (unit, property and end-to-end over loopback gRPC).
test: $(TORCH_STAMP)
	$(CARGO_ENV) $(CARGO) test --workspace

lint: $(TORCH_STAMP)
	$(CARGO) fmt --all -- --check
	$(CARGO_ENV) $(CARGO) clippy --workspace --all-targets -- -D warnings

bench: $(TORCH_STAMP)
	$(CARGO_ENV) $(CARGO) bench -p conclave-aggregation --bench fedavg --bench strategy --bench engine

clean-venv:
	rm -rf $(VENV)
