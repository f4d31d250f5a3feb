# The README's two commands: `make demo` (the main job) and `make test` (the test suite).
# Each creates the virtual environment on first use; torch is pinned in constraints.txt to a CPU build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/textgym demo

# Style first (ruff, pinned in the dev extra, rules in pyproject.toml): it takes a second and fails fast.
test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

.PHONY: demo test
