import json

import nbformat
import numpy as np
import pytest

import course_lib as cl
from course_lib import checks, results, student


def test_record_appends_and_validates(tmp_path, monkeypatch):
    f = tmp_path / "r.jsonl"
    monkeypatch.setenv(results.RESULTS_FILE_ENV, str(f))
    monkeypatch.setenv(results.NOTEBOOK_ENV, "99_test")
    assert results.record("acc", 0.5) == 0.5
    recs = results.read_jsonl(f)
    assert recs[0]["notebook"] == "99_test" and recs[0]["value"] == 0.5
    assert recs[0]["profile"] == cl.config.scale() and recs[0]["device"] in ("cpu", "cuda", "mps")
    for bad in (float("nan"), "high", None):
        with pytest.raises(cl.CourseError):
            results.record("acc", bad)
    with pytest.raises(cl.CourseError):
        results.record("two words", 1.0)


def test_merge_replaces_only_rerun_notebooks(tmp_path):
    path = tmp_path / "default-cpu.json"
    a = {"notebook": "01", "metric": "m", "value": 1.0, "profile": "default", "device": "cpu", "seconds": 3}
    b = dict(a, notebook="02")
    results.merge_results(path, [a, b], ["01", "02"])
    merged = results.merge_results(path, [dict(a, value=2.0)], ["01"])
    assert {(r["notebook"], r["value"]) for r in merged} == {("01", 2.0), ("02", 1.0)}
    assert json.loads(path.read_text()) == merged


def test_readme_table_update(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{results.RESULTS_START}\nold\n{results.RESULTS_END}\nend\n")
    rec = {"notebook": "04", "metric": "test_accuracy", "value": 0.9123, "profile": "default",
           "device": "cpu", "seconds": 100.0}
    assert results.update_readme(readme, [rec])
    text = readme.read_text()
    assert "| 04 | test_accuracy | 0.9123 |" in text and "old" not in text and text.endswith("end\n")
    assert not results.update_readme(readme, [rec])  # idempotent


def test_checks_pass_and_fail():
    assert checks.check_close("x", np.array([1.0, 2.0]), np.array([1.0, 2.0 + 1e-9])) < 1e-8
    with pytest.raises(checks.ExerciseCheckError, match="relative error"):
        checks.check_close("x", [1.0, 2.5], [1.0, 2.0])
    with pytest.raises(checks.ExerciseCheckError, match="shape"):
        checks.check_close("x", np.zeros(3), np.zeros(4))
    with pytest.raises(checks.ExerciseCheckError, match="no answer yet"):
        checks.check_close("x", None, 1.0)
    with pytest.raises(checks.ExerciseCheckError, match="in \\[0.9, 1\\]"):
        checks.check_range("acc", 0.5, 0.9, 1)
    with pytest.raises(checks.ExerciseCheckError, match="dtype"):
        checks.check_shape("img", np.zeros((2, 2)), (2, 2), dtype=np.uint8)
    checks.check_equal("s", "a b", "a b")
    with pytest.raises(checks.ExerciseCheckError):
        checks.check_equal("s", "a b", "a c")
    with pytest.raises(checks.ExerciseCheckError, match="no answer yet"):
        checks.check_function("f", None, [((1,), 1)])


def test_blank_solutions_keeps_code_runnable():
    src = "a = 1\n# BEGIN SOLUTION\nb, c = a + 1, 3\nd: int = 4\n# END SOLUTION\nprint(a)"
    out = student.blank_solutions(src)
    assert "a + 1" not in out
    assert "b = None  # YOUR CODE HERE" in out and "c = None" in out and "d = None" in out
    ns: dict = {}
    exec(out, ns)
    assert ns["b"] is None
    indented = "def f(x):\n    # BEGIN SOLUTION\n    y = x * 2\n    # END SOLUTION\n    return y"
    ns = {}
    exec(student.blank_solutions(indented), ns)
    assert ns["f"](3) is None
    with pytest.raises(cl.CourseError, match="no matching"):
        student.blank_solutions("# BEGIN SOLUTION\nx = 1")
    with pytest.raises(cl.CourseError, match="assigns no name"):
        student.blank_solutions("# BEGIN SOLUTION\nprint(1)\n# END SOLUTION")


def _exercise_notebook():
    sol = nbformat.v4.new_code_cell("# BEGIN SOLUTION\nanswer = sum(range(5))\n# END SOLUTION")
    sol.metadata["tags"] = ["solution"]
    return nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import course_lib as cl"),
        sol,
        nbformat.v4.new_code_cell("cl.checks.check_equal('sum', answer, 10)"),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})


def test_checks_fail_on_student_edition_and_pass_on_solutions():
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = _exercise_notebook()
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    assert "[ok] sum" in nb.cells[2].outputs[0]["text"]
    stud = student.student_notebook(nb)
    assert all(not c.get("outputs") for c in stud.cells if c.cell_type == "code")
    with pytest.raises(CellExecutionError, match="no answer yet"):
        NotebookClient(stud, timeout=120, kernel_name="python3").execute()


def test_grid_edge_flags_the_ends_only(capsys):
    from course_lib import checks
    assert checks.grid_edge("sigma", [0.5, 1.0, 2.0, 4.0], 0.5)
    assert checks.grid_edge("sigma", [0.5, 1.0, 2.0, 4.0], 4.0)
    assert not checks.grid_edge("sigma", [0.5, 1.0, 2.0, 4.0], 2.0)
    assert "widen the grid" in capsys.readouterr().out
    with pytest.raises(ValueError, match="not in the grid"):
        checks.grid_edge("sigma", [0.5, 1.0, 2.0], 3.0)
