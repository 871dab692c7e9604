# Modelgate: `make run` serves, `make test` checks the layer contracts and tests; both build .venv on first use.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-nodeps.txt | cksum | cut -d' ' -f1)

.PHONY: run test fuzz bench stop install

install: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Modelgate needs Python 3.11 or newer")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "Installing requirements into $(VENV) (the first time takes a few minutes)…"
	@# pip's notes about unused local package indexes are noise; real errors still fail the build.
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	@# The source roots on the venv's path, for tools that run outside manage.py and pytest (lint-imports).
	@printf '%s\n%s\n' "$(CURDIR)" "$(CURDIR)/platform" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/modelgate.pth"
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

run: $(STAMP)
	$(PY) manage.py serve

stop: $(STAMP)
	$(PY) manage.py serve --stop

test: $(STAMP)
	@# The layer contracts of .importlinter first: a broken one fails the run before any test.
	$(VENV)/bin/lint-imports
	$(PY) -m pytest $(PYTEST_ARGS)

# The schema fuzz test of `make test` (tests/config/test_fuzz.py) at length: many examples per operation,
# the boundary values of every field too, a fresh seed each run (FUZZ_SEED=N replays one), and failures
# shrunk to their smallest request.
FUZZ_EXAMPLES ?= 100
FUZZ_SEED ?= $(shell date +%s)
fuzz: $(STAMP)
	MODELGATE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) MODELGATE_FUZZ_SEED=$(FUZZ_SEED) MODELGATE_FUZZ_SHRINK=1 \
	MODELGATE_FUZZ_PHASES=examples,coverage,fuzzing,stateful \
		$(PY) -m pytest tests/config/test_fuzz.py -s $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/run.py $(BENCH)
