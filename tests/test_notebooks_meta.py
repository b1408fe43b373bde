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
    assert any("## What to try next" in _source(c) for c in markdown), "each notebook has a 'What to try next' section"


def _bullets(markdown: str) -> int:
    """Top-level bullets of a markdown cell (a line starting "* " or "- ")."""
    return sum(1 for line in markdown.splitlines() if line.startswith(("* ", "- ")))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_exercise_has_a_worked_answer_that_checks_itself(path):
    """The 'What to try next' section is followed by 'Worked answers': one '### Answer k: ...' per bullet, in order,
    each with a code cell that asserts the expected outcome before the next answer."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    start = next(i for i, c in enumerate(cells) if c["cell_type"] == "markdown" and "## What to try next" in _source(c))
    exercises = _bullets(_source(cells[start]).split("## What to try next", 1)[1])
    assert exercises > 0, "'What to try next' lists no exercise"
    rest = cells[start + 1 :]
    assert rest and _source(rest[0]).startswith("## Worked answers"), "a '## Worked answers' cell follows the exercises"
    answers = [i for i, c in enumerate(rest) if c["cell_type"] == "markdown" and _source(c).startswith("### Answer ")]
    numbers = [_source(rest[i]).split(":", 1)[0].removeprefix("### Answer ").strip() for i in answers]
    assert numbers == [str(k) for k in range(1, exercises + 1)], (
        f"{exercises} exercises need answers 1..{exercises} in order, found {numbers}"
    )
    for k, (a, b) in enumerate(zip(answers, answers[1:] + [len(rest)]), start=1):
        code = [_source(c) for c in rest[a + 1 : b] if c["cell_type"] == "code"]
        assert any("assert" in src for src in code), f"answer {k} has no code cell that asserts its outcome"
