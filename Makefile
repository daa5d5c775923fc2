# pacsbox — the two commands: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= pacsbox.toml

.PHONY: run test lint venv viewer clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "pacsbox needs Python >= 3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

## viewer: download (pinned, verified, cached in ~/.cache/pacsbox), slim and install OHIF
## into src/pacsbox/web/static/ohif/; a no-op when already installed
viewer: $(STAMP)
	$(BIN)/python scripts/fetch_ohif.py

## run: create .venv, install, initialise ./pacsbox.toml + ./data, start the listeners
run: $(STAMP)
	-$(BIN)/python scripts/fetch_ohif.py
	$(BIN)/pacsbox init --config $(CONFIG)
	exec $(BIN)/pacsbox serve --config $(CONFIG)

## test: install what the tests need and run the whole suite (ruff first)
test: $(STAMP)
	-$(BIN)/python scripts/fetch_ohif.py
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/python -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts

clean:
	rm -rf $(VENV) build *.egg-info
