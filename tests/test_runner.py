"""Headless runs never hang: widgets draw a static view, a stuck cell fails naming itself.

The regression test executes notebook 02's threshold-explorer cell (its real code, read from
the notebook) headless 18 times in three fresh kernels: with ``COURSE_HEADLESS=1`` (what
``scripts/test.sh`` sets), with no hint at all (a bare nbclient kernel), and through
``course run``'s own executor.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest

import course_lib as cl
from course_lib import results, runner, viz

ROOT = Path(__file__).resolve().parents[1]
REPEATS = 6  # explorer cells per kernel

STUB = """\
import numpy as np
import matplotlib.pyplot as plt
import course_lib as cl
from course_lib import edges as ed, imaging as im
rng = np.random.default_rng(0)
class Scenes:
    images = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
val = Scenes()
grey_val = np.stack([im.to_gray(x) for x in val.images])
truth_val = rng.random((2, 64, 64)) > 0.9
def canny_all(grays, low, high, sigma, detector=ed.cv2_canny):
    return np.stack([detector(x, low, high, sigma) for x in grays])
"""


def explorer_cell_source() -> str:
    nb = nbformat.read(ROOT / "notebooks" / "02_edges.ipynb", as_version=4)
    hits = [c.source for c in nb.cells if c.cell_type == "code" and "cl.viz.explore(" in c.source]
    assert len(hits) == 1, "notebook 02 should have one threshold-explorer cell using cl.viz.explore"
    assert "widgets.interactive" not in hits[0] and "display(" not in hits[0]
    return hits[0]


def explorer_notebook() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    src = explorer_cell_source()
    nb.cells = [nbformat.v4.new_code_cell(STUB)] + [nbformat.v4.new_code_cell(src) for _ in range(REPEATS)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def check_static_outputs(nb) -> None:
    for i, cell in enumerate(nb.cells[1:], 1):
        text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
        mimes = [m for o in cell.outputs for m in o.get("data", {})]
        plain = "".join(str(o.get("data", {}).get("text/plain", "")) for o in cell.outputs)
        assert "image/png" in mimes, f"explorer cell {i}: no figure in {mimes}"
        assert "static view at the defaults (sigma=1.5, low=40, high=100)" in text
        assert "interactive(" not in plain and "application/vnd.jupyter.widget-view+json" not in mimes


@pytest.mark.slow
@pytest.mark.parametrize("hint", ["COURSE_HEADLESS=1", "no hint (bare kernel)"])
def test_explorer_cell_runs_headless_repeatedly(hint, monkeypatch):
    from nbclient import NotebookClient

    for var in ("COURSE_HEADLESS", "CI", "COURSE_NOTEBOOK", "JPY_SESSION_NAME",
                *[k for k in os.environ if k.startswith("VSCODE_")]):
        monkeypatch.delenv(var, raising=False)
    if hint.startswith("COURSE_HEADLESS"):
        monkeypatch.setenv("COURSE_HEADLESS", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = explorer_notebook()
    NotebookClient(nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    check_static_outputs(nb)


@pytest.mark.slow
def test_explorer_cell_through_course_run(tmp_path, monkeypatch):
    monkeypatch.delenv("COURSE_HEADLESS", raising=False)
    path = tmp_path / "99_explorer.ipynb"
    nbformat.write(explorer_notebook(), path)
    seconds, records, error = runner.execute_notebook(path, "smoke", tmp_path / "out.ipynb", timeout=60,
                                                      progress=False)
    assert error is None, error
    check_static_outputs(nbformat.read(tmp_path / "out.ipynb", as_version=4))
    assert "COURSE_HEADLESS" not in os.environ  # restored after the run


def test_a_stuck_cell_fails_naming_itself(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 99"), nbformat.v4.new_code_cell("x = 1"),
                nbformat.v4.new_code_cell("import time\ntime.sleep(120)  # never finishes in time")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "99_stuck.ipynb"
    nbformat.write(nb, path)
    seconds, _, error = runner.execute_notebook(path, "smoke", tmp_path / "out.ipynb", timeout=3, progress=False)
    assert seconds < 60 and error is not None
    assert "cell 3 of 3 (code cell 2 of 2: 'import time')" in error
    assert "timeout of 3 s" in error and "--timeout 6" in error


def test_cell_timeout_is_sized_to_the_notebook(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "results_path", lambda scale, device: tmp_path / f"{scale}-{device}.json")
    (tmp_path / "default-cpu-timings.json").write_text(json.dumps({"02_edges": 81, "06_vit": 349, "xx": 900}))
    assert runner.cell_timeout("02_edges", "default")[0] == 324
    assert runner.cell_timeout("06_vit", "default")[0] == 1396
    assert runner.cell_timeout("xx", "default")[0] == runner.MAX_CELL_TIMEOUT
    t, why = runner.cell_timeout("02_edges", "smoke")
    assert t == runner.MAX_CELL_TIMEOUT and "no measured smoke wall time" in why
    (tmp_path / "smoke-cpu-timings.json").write_text(json.dumps({"02_edges": 9}))
    assert runner.cell_timeout("02_edges", "smoke")[0] == runner.MIN_CELL_TIMEOUT


def test_frontend_detection(monkeypatch):
    for var in ("COURSE_HEADLESS", "CI", "COURSE_NOTEBOOK"):
        monkeypatch.delenv(var, raising=False)
    assert not viz.has_widget_frontend()  # plain Python: no kernel, no frontend
    monkeypatch.setenv("COURSE_HEADLESS", "0")
    assert viz.has_widget_frontend()
    monkeypatch.setenv("COURSE_HEADLESS", "1")
    assert not viz.has_widget_frontend()


def test_explore_static_view_and_bad_controls(capsys, monkeypatch):
    monkeypatch.setenv("COURSE_HEADLESS", "1")
    seen = []

    def f(a=1, b=2.5):
        seen.append((a, b))

    assert viz.explore(f, a=(0, 10), b=(0.0, 5.0, 0.5)) is None
    assert seen == [(1, 2.5)] and "static view at the defaults (a=1, b=2.5)" in capsys.readouterr().out
    with pytest.raises(cl.CourseError, match="default values"):
        viz.explore(lambda a: None, a=(0, 10))
    with pytest.raises(cl.CourseError, match=r"\['c'\]"):
        viz.explore(f, c=(0, 1))


def test_explore_with_a_frontend_builds_the_sliders_at_the_defaults(monkeypatch):
    import IPython.display

    shown = []
    monkeypatch.setattr(viz, "has_widget_frontend", lambda: True)
    monkeypatch.setattr(IPython.display, "display", lambda w: shown.append(w))

    def show_canny(sigma=1.5, low=40, high=100):
        return None

    w = viz.explore(show_canny, sigma=(0.0, 4.0, 0.25), low=(0, 300, 5), high=(0, 600, 5))
    sliders = {c.description: c for c in w.children if hasattr(c, "description") and c.description}
    assert shown == [w]
    assert (sliders["sigma"].value, sliders["sigma"].max, sliders["sigma"].step) == (1.5, 4.0, 0.25)
    assert (sliders["low"].value, sliders["high"].value, sliders["high"].max) == (40, 100, 600)
    assert type(sliders["sigma"]).__name__ == "FloatSlider" and type(sliders["low"]).__name__ == "IntSlider"
