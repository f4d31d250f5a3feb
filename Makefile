# The README's two commands: `make demo` (the main job) and `make test` (the test suite).
# Each creates the virtual environment on first use; torch is pinned in constraints.txt to a CPU build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# setup.py and the C source too: the editable install compiles textgym/_vecstep.c once, so a change must rebuild it.
$(VENV)/.installed: pyproject.toml constraints.txt setup.py textgym/_vecstep.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/textgym demo

test: $(VENV)/.installed
	$(BIN)/python -m pytest

.PHONY: demo test
