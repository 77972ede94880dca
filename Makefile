# Set-up and the two jobs of the README. `make demo` and `make test` create the
# virtual environment on first use; nothing else has to be installed by hand.
PYTHON ?= python3
VENV ?= .venv
# On the project's CPU machines torch comes from the local 2.13.0 CPU build;
# elsewhere any torch >= 2.4 works: `make TORCH_SPEC='torch>=2.4' install`.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install demo lint test clean

$(BIN)/cxr: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(BIN)/cxr

install: $(BIN)/cxr

demo: install
	$(BIN)/cxr demo

# Lint and types: ruff (rules and line length in pyproject.toml), ruff's formatter, mypy on
# src/cxr. Any finding fails `make lint`, and so `make test`.
lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) cxr-demo
