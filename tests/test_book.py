"""The rendered course (docs/book/, written by ``make book``) matches its sources and holds no error.

A rendered copy is an executed notebook for reading without running it. It must be the same notebook as its source in
notebooks/ (every cell's type and text), or a reader sees a stale course; and no cell may show an error. Reads JSON
only: milliseconds.
"""

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
BOOK = ROOT / "docs" / "book"
COPIES = sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))


def _text(cell: dict) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def _cells(path: Path) -> list[tuple[str, str]]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    return [(c["cell_type"], _text(c)) for c in nb["cells"]]


def test_every_rendered_copy_has_a_source():
    names = {p.name for p in SOURCES}
    orphans = [p.name for p in COPIES if p.name not in names]
    assert not orphans, f"docs/book holds copies of notebooks that no longer exist: {orphans}; delete them"


@pytest.mark.parametrize("copy", COPIES, ids=lambda p: p.name)
def test_rendered_copy_matches_its_source(copy):
    source = ROOT / "notebooks" / copy.name
    ours, theirs = _cells(copy), _cells(source)
    fix = f"re-render it: make book NB={copy.name[:2]}"
    assert len(ours) == len(theirs), f"{copy.name}: {len(ours)} cells, its source has {len(theirs)}; {fix}"
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a == b, f"{copy.name}: cell {i} differs from notebooks/{copy.name}; {fix}"


@pytest.mark.parametrize("copy", COPIES, ids=lambda p: p.name)
def test_rendered_copy_ran_in_full_mode_without_errors(copy):
    nb = json.loads(copy.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c["execution_count"] is not None for c in code), f"{copy.name}: some cells never ran; re-render it"
    for i, cell in enumerate(code):
        errors = [o for o in cell["outputs"] if o.get("output_type") == "error"]
        assert not errors, f"{copy.name}: code cell {i} shows an error ({errors[0].get('ename')}); fix and re-render"
    mode = nb["metadata"].get("dalle2_edu_book", {}).get("mode")
    assert mode == "full", f"{copy.name}: rendered in {mode!r} mode, the book shows full mode; re-render it"


def test_every_notebook_has_a_rendered_copy():
    copies = {p.name for p in COPIES}
    missing = [p.name for p in SOURCES if p.name not in copies]
    fix = " ".join(name[:2] for name in missing)
    assert not missing, f"notebooks without a rendered copy in docs/book: {missing}; render them: make book NB='{fix}'"
