# On a fresh machine: `make book`, then `make test` (README.md says what each does).
PYTHON ?= python3
# where the lock's CPU build of torch is not on disk, name its index here (README, Requirements)
PIP_ARGS ?=
VENV := .venv
BIN := $(VENV)/bin
LOCK := requirements/suite.lock
BOOK_LOCK := requirements/book.lock
PIP_COMPILE := build/pip-tools/bin/pip-compile --quiet --generate-hashes --allow-unsafe \
	--strip-extras --no-emit-index-url --no-emit-find-links

.PHONY: setup data book reproduce check test test-latest lock bench

# the suite at the locked versions; reprolib itself editable, its dependencies all from the lock
setup: $(VENV)/.installed

$(VENV)/.installed: $(LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV) && $(BIN)/pip install -q $(PIP_ARGS) --require-hashes -r $(LOCK) \
		&& $(BIN)/pip install -q --no-deps -e . && touch $@

# Jupyter Book alone: enough to build the committed book, without reprolib or PyTorch
$(VENV)/.book-installed: $(BOOK_LOCK)
	$(PYTHON) -m venv $(VENV) && $(BIN)/pip install -q --require-hashes -r $(BOOK_LOCK) && touch $@

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

# the quick tier: unit tests that need no notebook, Ray instance, browser or torch.compile
QUICK := -m "not notebook and not browser and not ray and not compile"
check: data
	$(BIN)/python -m pytest $(QUICK) tests

# every chapter executed once at the smoke profile into a book (tests/smoke_book.py), which the
# unit tests' browser check reads; the ℓ∞ chapter again over two seeds (tests/two_seeds.py runs
# seed 1, nbval seed 0 pooling it); then every notebook under nbval in its paper's setting (the
# paper's model, the CIFAR-10 reader) over the 200-image fixture in tests/data
# (tests/paper_setting.py). Every stage on a cache of its own under build/test-cache, emptied
# first (a cold run); the user's ~/.cache/repro is checked untouched.
TEST_CACHE := $(CURDIR)/build/test-cache
test: export REPRO_CACHE_DIR := $(TEST_CACHE)/zoo
test: export XDG_CACHE_HOME := $(TEST_CACHE)/xdg
test: data
	rm -rf $(TEST_CACHE) && $(BIN)/python tests/home_cache.py before $(TEST_CACHE)/home.txt
	$(BIN)/python tests/smoke_book.py build/smoke-book
	REPRO_SMOKE_BOOK=$(CURDIR)/build/smoke-book $(BIN)/python -m pytest tests
	$(BIN)/python tests/two_seeds.py build/two-seeds
	REPRO_PROFILE=smoke $(BIN)/python -m pytest --nbval-lax build/two-seeds/
	$(BIN)/python tests/paper_setting.py build/paper-setting
	REPRO_DATA_DIR=$(CURDIR)/tests/data/cifar10-mini $(BIN)/python -m pytest --nbval-lax build/paper-setting/
	$(BIN)/python tests/home_cache.py after $(TEST_CACHE)/home.txt

# the quick tier against the newest releases pyproject.toml's bounds allow, in a venv of its own,
# to see a release that breaks us before the lock moves to it; not part of `make test`
test-latest:
	rm -rf build/venv-latest && $(PYTHON) -m venv build/venv-latest \
		&& build/venv-latest/bin/pip install -q -e '.[book,dev]'
	build/venv-latest/bin/pip freeze --exclude-editable > build/venv-latest/versions.txt
	build/venv-latest/bin/python -m pytest $(QUICK) tests

# the lock again from pyproject.toml's bounds and requirements/*.in (pip-tools in a venv of its own)
lock:
	[ -x build/pip-tools/bin/pip-compile ] || ($(PYTHON) -m venv build/pip-tools \
		&& build/pip-tools/bin/pip install -q pip-tools)
	$(PIP_COMPILE) --extra book --extra dev --extra cluster -o $(LOCK) pyproject.toml requirements/suite.in
	$(PIP_COMPILE) -o $(BOOK_LOCK) requirements/book.in

# in a venv of its own: the speed baseline's torchvision does not import beside the lock's CPU torch
bench:
	[ -x build/venv-bench/bin/python ] || ($(PYTHON) -m venv build/venv-bench \
		&& build/venv-bench/bin/pip install -q -e '.[bench]')
	build/venv-bench/bin/python bench/train_speed.py && build/venv-bench/bin/python bench/neural_cleanse_speed.py \
		&& build/venv-bench/bin/python bench/together_speed.py
