# Everything sets itself up on a fresh machine: `make demo` and `make test` create .venv,
# install, and run. Python 3.11.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CORE_STAMP := $(VENV)/.core-installed

.PHONY: demo test lint clean

$(CORE_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# The main job: search the Game-of-24 test puzzles, print the summary table.
demo: $(CORE_STAMP)
	$(VENV)/bin/treesearch run configs/game24-beam.yaml --out runs/demo

test: $(CORE_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest

lint: $(CORE_STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .hypothesis
