"""The stored notebooks follow CONTRIBUTING.md: checked on the files as committed."""
import json
import re

import nbformat
import pytest

from course_lib import runner, student

NOTEBOOKS = runner.all_notebooks()
from course_lib import config

# the clone's own absolute location, home folders, temp folders and installed packages
MACHINE_PATH = re.compile("(" + "|".join([re.escape(str(config.REPO_ROOT)), r"/tmp/", r"/root/",
                                          r"/home/\w+/", r"/Users/\w+/", "site-packages"]) + ")")


def test_there_are_notebooks():
    assert NOTEBOOKS and NOTEBOOKS[0].stem == "00_setup_and_tour"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_structure(path):
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith(f"# {path.stem[:2]}")
    assert "Objective" in first.source
    assert runner.RUNTIME_START in first.source and runner.RUNTIME_END in first.source
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert sum("cl.config.setup(" in c.source for c in code) == 1, "exactly one setup cell"
    n_ex = sum("solution" in c.metadata.get("tags", []) for c in code)
    assert 2 <= n_ex <= 4, f"{n_ex} exercises; the course asks for 2-4"
    tail = " ".join(c.source for c in nb.cells[-3:] if c.cell_type == "markdown")
    assert "Summary" in tail


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_outputs_are_clean(path):
    assert path.stat().st_size < 2_000_000, "keep stored notebooks under 2 MB"
    nb = nbformat.read(path, as_version=4)
    assert "widgets" not in nb.metadata, "widget state must be stripped"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert any(c.outputs for c in code), "notebooks are stored executed (run `course run`)"
    for c in code:
        for out in c.outputs:
            assert out.output_type != "error", f"stored error in cell:\n{c.source[:200]}"
            text = json.dumps({k: v for k, v in out.items() if k != "data"}) + json.dumps(
                {k: v for k, v in out.get("data", {}).items() if not k.startswith("image/")})
            m = MACHINE_PATH.search(text)
            assert m is None, f"a machine path {m.group(0)!r} in the outputs of:\n{c.source[:200]}"


FIGURE_CODE = re.compile(r"plt\.show\(|cl\.viz\.show_\w+\(|\.plot\(")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_notebooks_keep_their_figures(path):
    # a notebook executed with a non-inline matplotlib backend (MPLBACKEND=Agg) loses every figure
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    draws = sum(bool(FIGURE_CODE.search(c.source)) for c in code)
    figures = sum(any(k.startswith("image/") for k in o.get("data", {})) for c in code for o in c.get("outputs", []))
    if draws:
        assert figures >= 1, f"{draws} cells draw figures but the stored notebook has none: re-run `course run`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_student_edition_blanks_every_solution(path):
    nb = nbformat.read(path, as_version=4)
    stud = student.student_notebook(nb)
    for orig, new in zip(nb.cells, stud.cells):
        if "solution" in orig.metadata.get("tags", []):
            assert student.BEGIN not in new.source and "# YOUR CODE HERE" in new.source
