# Set-up and the two everyday commands. `make quickstart` works on a fresh machine:
# it makes .venv, installs torch 2.13.0 first (the local CPU wheel; anything else would pull
# a multi-GB CUDA build), then edgetier with its dev extras, then runs the quickstart recipe.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup quickstart test lint benchmark clean

$(BIN)/edgetier: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev]" "torch==2.13.0"
	touch $@

setup: $(BIN)/edgetier

quickstart: setup
	$(BIN)/edgetier run recipes/quickstart.yaml
	$(BIN)/edgetier inspect runs/quickstart/end

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

benchmark: setup
	$(BIN)/python -m pytest -q -m benchmark

clean:
	rm -rf runs .pytest_cache
