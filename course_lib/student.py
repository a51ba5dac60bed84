"""The student edition: notebooks with reference solutions blanked out.

Introduced in notebook 00. Convention (for notebook authors): in a code cell tagged
``solution``, the reference solution stands between the lines ``# BEGIN SOLUTION`` and
``# END SOLUTION``. The student edition replaces each such block by one line per name the
block assigns, ``name = None  # YOUR CODE HERE``, at the block's indentation, so the code
around it still runs and the exercise's check fails with "no answer yet" until the learner
writes a solution. Outputs are cleared. Never edit a student edition by hand: regenerate it
with ``course student``.
"""
from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

import nbformat

from .config import CourseError

BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
TAG = "solution"


def _assigned_names(block: str) -> list[str]:
    tree = ast.parse(textwrap.dedent(block))
    names: list[str] = []

    def add(target: ast.AST) -> None:
        if isinstance(target, ast.Name) and target.id not in names:
            names.append(target.id)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for t in target.elts:
                add(t)

    for node in tree.body:
        if isinstance(node, ast.Assign):
            for t in node.targets:
                add(t)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            add(node.target)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name not in names:
            names.append(node.name)
    return names


def blank_solutions(source: str) -> str:
    """Return ``source`` with every solution block replaced by ``name = None`` lines."""
    lines = source.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() != BEGIN:
            out.append(lines[i])
            i += 1
            continue
        indent = re.match(r"\s*", lines[i]).group(0)
        try:
            j = next(k for k in range(i + 1, len(lines)) if lines[k].strip() == END)
        except StopIteration:
            raise CourseError(f"'{BEGIN}' at line {i + 1} has no matching '{END}'") from None
        block = "\n".join(lines[i + 1:j])
        names = _assigned_names(block)
        if not names:
            raise CourseError(f"the solution block at line {i + 1} assigns no name; "
                              "assign the answer to a variable so the student edition can blank it")
        out.extend(f"{indent}{n} = None  # YOUR CODE HERE" for n in names)
        i = j + 1
    return "\n".join(out)


def student_notebook(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``nb`` with solutions blanked (cells tagged ``solution``) and outputs cleared."""
    nb = nbformat.from_dict(nb)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if TAG in cell.get("metadata", {}).get("tags", []):
            if BEGIN not in cell.source:
                raise CourseError(f"a cell tagged {TAG!r} has no '{BEGIN}' block:\n{cell.source[:200]}")
            cell.source = blank_solutions(cell.source)
        cell.outputs = []
        cell.execution_count = None
    return nb


def write_student_edition(notebooks: list[Path], out_dir: Path) -> list[Path]:
    """Write the student edition of each notebook into ``out_dir``; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for src in notebooks:
        nb = nbformat.read(src, as_version=4)
        dst = out_dir / src.name
        nbformat.write(student_notebook(nb), dst)
        written.append(dst)
    return written
