# dalle2_edu — the README's commands. Each target creates .venv when missing and installs the project into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# This machine keeps these releases on local disk; elsewhere override, e.g. `make test TORCH_PINS=`.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: install test lint notebooks demo lab book clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PINS) -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

# Unit tests, every notebook top to bottom in fast mode, then the widgets in a real JupyterLab + headless Chromium
# (when Chromium is installed: `apt-get install chromium`; .ci/run installs it). Screenshots: test-artifacts/browser.
test: $(STAMP) lint
	DALLE2_EDU_FAST=1 MPLBACKEND=Agg $(BIN)/python -m pytest -q tests
	DALLE2_EDU_FAST=1 MPLBACKEND=Agg $(BIN)/python -m pytest -q --nbmake --nbmake-timeout=600 notebooks
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then \
		DALLE2_EDU_FAST=1 MPLBACKEND=Agg $(BIN)/python -m pytest -q -m browser tests/browser; \
	else echo "browser test SKIPPED: Chromium is not installed (apt-get install chromium)"; fi

demo: $(STAMP)
	MPLBACKEND=Agg $(BIN)/python -m dalle2_edu demo --out out/demo

# The rendered course: executes notebooks in full mode and writes copies with outputs to docs/book/ (all of them:
# about two hours on 2 cores; one: `make book NB=07`, several: `make book NB="07 13"`). tests/test_book.py checks them.
book: $(STAMP)
	$(BIN)/python scripts/book.py $(NB)

lab: $(STAMP)
	$(BIN)/jupyter lab $$( [ "$$(id -u)" = 0 ] && echo --allow-root ) notebooks/

clean:
	rm -rf out .pytest_cache .ruff_cache
