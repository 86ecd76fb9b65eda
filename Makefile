# On a fresh machine: `make book`, then `make test` (README.md says what each does).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup data book test bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV) && $(BIN)/pip install -q -e '.[book,dev]' && touch $@

data: setup
	$(BIN)/repro data fashion-mnist

book: data
	$(BIN)/repro demo

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python bench/train_speed.py
