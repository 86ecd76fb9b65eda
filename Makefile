# On a fresh machine: `make book`, then `make test` (README.md says what each does).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup dev data book reproduce test bench

# what the book needs; `dev` adds what the tests need (pytest, nbval, Playwright, Ray)
setup: $(VENV)/.installed
dev: $(VENV)/.dev-installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV) && $(BIN)/pip install -q -e '.[book]' && touch $@

$(VENV)/.dev-installed: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[book,dev]' && touch $@

data: setup
	$(BIN)/repro data fashion-mnist

# the committed runs (book/runs, book/results) into _build/html: no chapter runs unless one is missing
book: data
	$(BIN)/repro book

# every chapter executed again at the quick profile, then the book built (hours on a 2-core CPU)
reproduce: data
	$(BIN)/repro book --rerun

# unit tests and the browser check; every notebook under nbval at the smoke profile, and the ℓ∞
# chapter again over two seeds (tests/two_seeds.py); then every
# notebook again in its paper's setting (the paper's model, the CIFAR-10 reader) over the
# 200-image fixture in tests/data (tests/paper_setting.py)
test: dev data
	$(BIN)/python -m pytest tests
	REPRO_PROFILE=smoke $(BIN)/python -m pytest --nbval-lax notebooks/
	$(BIN)/python tests/two_seeds.py build/two-seeds
	REPRO_PROFILE=smoke $(BIN)/python -m pytest --nbval-lax build/two-seeds/
	$(BIN)/python tests/paper_setting.py build/paper-setting
	REPRO_DATA_DIR=$(CURDIR)/tests/data/cifar10-mini $(BIN)/python -m pytest --nbval-lax build/paper-setting/

bench: setup
	$(BIN)/python bench/train_speed.py && $(BIN)/python bench/neural_cleanse_speed.py
