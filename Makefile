# The two commands: `make demo` (the local network on 127.0.0.1) and `make test` (every test).
# Both build the virtual environment from nothing but this repository on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Cargo's build folder lives outside the clone so that fresh clones (and CI) reuse it.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/dgpu/cargo-target
PY_DIRS := protocol node client contracts bootstrap tests bench examples dgpu/__init__.py dgpu/_lazy.py dgpu/_http.py

.PHONY: install demo demo-solana test lint typecheck pytest cargo-test

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	# libp2p pulls in trio-typing, whose stubs describe an old trio and hide trio's own inline
	# types from mypy (trio.TaskStatus "not defined"); trio has shipped its types since 0.22.
	rm -rf $(VENV)/lib/python*/site-packages/trio-stubs
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/dgpu demo

demo-solana: install
	$(BIN)/dgpu demo --ledger solana

lint: install
	$(BIN)/ruff check $(PY_DIRS)

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest

cargo-test:
	@if [ -f contracts/Cargo.toml ]; then cd contracts && cargo test --locked; else echo "no Rust workspace yet"; fi

# pytest runs last so its summary ("N passed") closes the output
test: lint typecheck cargo-test pytest
