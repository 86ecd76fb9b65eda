# On a fresh machine: `make book`, then `make test` (README.md says what each does).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
JUPYTER_BOOK := jupyter-book>=1.0.4,<2# as pyproject.toml's book extra pins it

.PHONY: setup data book reproduce test bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV) && $(BIN)/pip install -q -e '.[book,dev]' && touch $@

# Jupyter Book alone: enough to build the committed book, without reprolib or PyTorch
$(VENV)/.book-installed:
	$(PYTHON) -m venv $(VENV) && $(BIN)/pip install -q '$(JUPYTER_BOOK)' && touch $@

data: setup
	$(BIN)/repro data fashion-mnist

# the committed book (book/runs, book/results and the pages `repro book` generated from them)
# into _build/html; runs no chapter (tests/test_book.py keeps the committed pages current)
book: $(VENV)/.book-installed
	$(BIN)/jupyter-book build . --warningiserror --keep-going --quiet
	@echo "the book is in _build/html; open _build/html/index.html"

# every chapter executed again at the quick profile, then the book built (hours on a 2-core CPU)
reproduce: data
	$(BIN)/repro book --rerun

# unit tests and the browser check; every notebook under nbval at the smoke profile, and the ℓ∞
# chapter again over two seeds (tests/two_seeds.py); then every
# notebook again in its paper's setting (the paper's model, the CIFAR-10 reader) over the
# 200-image fixture in tests/data (tests/paper_setting.py)
test: data
	$(BIN)/python -m pytest tests
	REPRO_PROFILE=smoke $(BIN)/python -m pytest --nbval-lax notebooks/
	$(BIN)/python tests/two_seeds.py build/two-seeds
	REPRO_PROFILE=smoke $(BIN)/python -m pytest --nbval-lax build/two-seeds/
	$(BIN)/python tests/paper_setting.py build/paper-setting
	REPRO_DATA_DIR=$(CURDIR)/tests/data/cifar10-mini $(BIN)/python -m pytest --nbval-lax build/paper-setting/

bench: setup
	$(BIN)/python bench/train_speed.py && $(BIN)/python bench/neural_cleanse_speed.py
