"""The notebooks are committed clean and follow the series' conventions.

Running them is `pytest --nbmake notebooks` (see the Makefile); this only reads their JSON, so it takes milliseconds.
"""

import json
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def _source(cell: dict) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def test_the_first_notebooks_are_there():
    names = {p.name[:2] for p in NOTEBOOKS}
    assert {"00", "01", "02", "03", "04"} <= names, f"found only {sorted(p.name for p in NOTEBOOKS)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert nb["nbformat"] == 4
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], f"cell {i} has outputs: clear them before committing"
            assert cell["execution_count"] is None, f"cell {i} has an execution count: clear it before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_follows_the_series_conventions(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    markdown = [c for c in nb["cells"] if c["cell_type"] == "markdown"]
    assert code and markdown
    first = code[0]
    assert "parameters" in first["metadata"].get("tags", []), "the first code cell must be tagged 'parameters'"
    assert "DALLE2_EDU_FAST" in _source(first) and "SEED" in _source(first), "the first code cell reads fast mode"
    assert any("assert" in _source(c) for c in code), "each notebook checks the package with an assert"
    assert "What to try next" in _source(markdown[-1]), "each notebook ends with a 'What to try next' section"
