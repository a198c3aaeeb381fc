# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test install clean

$(BIN)/probebench: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(BIN)/probebench

install: $(BIN)/probebench

demo: install
	$(BIN)/probebench demo

test: install
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache demo-output
