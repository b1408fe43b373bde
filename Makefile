# dalle2_edu — the README's commands. Each target creates .venv when missing and installs the project into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# This machine keeps these releases on local disk; elsewhere override, e.g. `make test TORCH_PINS=`.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: install test lint notebooks demo lab clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PINS) -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

# Unit tests, then every notebook top to bottom in fast mode.
test: $(STAMP) lint
	DALLE2_EDU_FAST=1 MPLBACKEND=Agg $(BIN)/python -m pytest -q tests
	DALLE2_EDU_FAST=1 MPLBACKEND=Agg $(BIN)/python -m pytest -q --nbmake --nbmake-timeout=600 notebooks

demo: $(STAMP)
	MPLBACKEND=Agg $(BIN)/python -m dalle2_edu demo --out out/demo

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf out .pytest_cache .ruff_cache
