# Set-up and entry points. Every target creates or reuses the virtual environment in .venv and
# installs kdcore and every first-party plugin package into it (editable).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PLUGINS := $(wildcard plugins/*/pyproject.toml)
STAMP := $(VENV)/.kdcore-installed
RECIPE ?= recipes/amlkd.toml

.PHONY: setup run test test-fast lint browser mutants fashion-mnist results

setup: $(STAMP)

# torch 2.14.1 / torchvision 0.29.1 install from this machine's local disk (no GPU needed: the
# CUDA build runs on the CPU). Reinstalls only when a pyproject.toml changes.
$(STAMP): pyproject.toml $(PLUGINS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/python -m pip install --quiet -e ".[test,analysis,cleanlab]" $(foreach p,$(PLUGINS),-e $(dir $(p)))
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/kdcore run $(RECIPE) --overwrite

test: $(STAMP) browser
	$(BIN)/python -m pytest

# the unit tests only (no whole-recipe run): a minute on 2 cores
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

# Debian's headless Chromium, for the test that renders `kdcore report --html` (root: apt-get)
browser:
	command -v chromium >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)

# mutation testing (mutmut) of the formula and wiring modules; hours for all targets on 2
# cores: `make mutants TARGETS=kdcore-lp` runs one (benchmarks/mutants.py --list names them)
mutants: $(STAMP)
	$(BIN)/python -m pip install --quiet "mutmut>=3.3"
	$(BIN)/python benchmarks/mutants.py $(TARGETS)

lint: $(STAMP)
	$(BIN)/ruff check .

# Fashion-MNIST (real, 60k + 10k) for the benchmark recipes, from Debian's archive.
fashion-mnist:
	test -d /usr/share/datasets/fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)

# docs/results.md from the grids it lists (each grid's command is in the file; finished runs
# are reused, so this only writes the tables once the grids have run)
results: $(STAMP)
	$(BIN)/kdcore ablate recipes/ce.toml recipes/kd.toml recipes/ls.toml recipes/clean.toml recipes/amlkd.toml recipes/amlkd-no-awe.toml --seeds 0,1,2,3,4,5,6,7,8,9 --out runs/digits-baselines
	$(BIN)/kdcore ablate --grid benchmarks/grids/amlkd-fmnist-sym.toml --out runs/amlkd-fmnist-sym
	$(BIN)/kdcore ablate --grid benchmarks/grids/amlkd-fmnist-pair.toml --out runs/amlkd-fmnist-pair
	for g in smkd-fmnist-sym smkd-fmnist-pair almkd-fmnist-sym almkd-fmnist-pair ff-fmnist ff-fmnist-sym ff-fmnist-pair lsh-fmnist-sym lsh-fmnist-pair mlc-fmnist-sym mlc-fmnist-pair; do \
	  $(BIN)/kdcore ablate --grid benchmarks/grids/$$g.toml --out runs/$$g || exit 1; done
	$(BIN)/python benchmarks/results_doc.py
