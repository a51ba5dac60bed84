"""Exercise checks: each compares a learner's answer with a reference and explains a miss.

Introduced in notebook 00. Every exercise ends with one of these calls; a check that
passes prints one line starting with ``[ok]``, a check that fails raises
:class:`ExerciseCheckError` (an ``AssertionError``) saying what was expected.

Reference solutions live in the notebooks between ``# BEGIN SOLUTION`` and
``# END SOLUTION`` in cells tagged ``solution``; ``course student`` writes the student
edition with those lines replaced by ``name = None  # YOUR CODE HERE`` (see
:mod:`course_lib.student`), so every check fails there until the learner fills it in.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np


class ExerciseCheckError(AssertionError):
    """An exercise answer did not pass its check; the message says what was expected."""


def _not_done(name: str, got: Any) -> None:
    if got is None or got is Ellipsis:
        raise ExerciseCheckError(
            f"{name}: no answer yet (got {got!r}). Replace the `# YOUR CODE HERE` line(s) "
            f"above with your solution, then run this cell again."
        )


def _ok(name: str, detail: str) -> None:
    print(f"[ok] {name}: {detail}")


def rel_error(x: Any, y: Any) -> float:
    """max |x - y| / max(|x| + |y|, 1e-8), elementwise maximum (the CS231n relative error)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return float(np.max(np.abs(x - y) / np.maximum(1e-8, np.abs(x) + np.abs(y)))) if x.size else 0.0


def _as_array(name: str, got: Any) -> np.ndarray:
    if hasattr(got, "detach"):  # a torch tensor
        got = got.detach().cpu().numpy()
    try:
        return np.asarray(got)
    except Exception as e:  # pragma: no cover - exotic inputs
        raise ExerciseCheckError(f"{name}: could not turn your answer into an array ({e})") from None


def check_close(name: str, got: Any, expected: Any, rtol: float = 1e-5) -> float:
    """Pass when ``got`` has ``expected``'s shape and ``rel_error(got, expected) <= rtol``.

    Returns the relative error.
    """
    _not_done(name, got)
    g, e = _as_array(name, got), _as_array(name, expected)
    if g.shape != e.shape:
        raise ExerciseCheckError(f"{name}: expected shape {e.shape}, got {g.shape}")
    if g.dtype == object or not (np.issubdtype(g.dtype, np.number) or g.dtype == bool):
        raise ExerciseCheckError(f"{name}: expected numbers, got dtype {g.dtype}")
    if not np.all(np.isfinite(g)):
        raise ExerciseCheckError(f"{name}: your answer contains NaN or inf")
    err = rel_error(g, e)
    if err > rtol:
        raise ExerciseCheckError(
            f"{name}: relative error {err:.2e} is above the tolerance {rtol:.0e}. "
            f"Yours (first values): {g.ravel()[:4]}, expected: {e.ravel()[:4]}"
        )
    _ok(name, f"relative error {err:.1e} <= {rtol:.0e}")
    return err


def check_shape(name: str, got: Any, shape: tuple, dtype: Any | None = None) -> None:
    """Pass when ``got`` has this ``shape`` (``None`` entries match anything) and ``dtype``."""
    _not_done(name, got)
    g = _as_array(name, got)
    if len(g.shape) != len(shape) or any(s is not None and s != t for s, t in zip(shape, g.shape)):
        raise ExerciseCheckError(f"{name}: expected shape {shape}, got {g.shape}")
    if dtype is not None and g.dtype != np.dtype(dtype):
        raise ExerciseCheckError(f"{name}: expected dtype {np.dtype(dtype)}, got {g.dtype}; "
                                 f"convert with .astype(np.{np.dtype(dtype)})")
    _ok(name, f"shape {g.shape}" + (f", dtype {g.dtype}" if dtype is not None else ""))


def check_range(name: str, got: Any, low: float, high: float) -> float:
    """Pass when the number ``got`` lies in ``[low, high]`` (e.g. an accuracy target)."""
    _not_done(name, got)
    try:
        v = float(got)
    except (TypeError, ValueError):
        raise ExerciseCheckError(f"{name}: expected a number, got {got!r}") from None
    if not (low <= v <= high):
        raise ExerciseCheckError(f"{name}: expected a value in [{low}, {high}], got {v:.4g}")
    _ok(name, f"{v:.4g} in [{low}, {high}]")
    return v


def check_equal(name: str, got: Any, expected: Any) -> None:
    """Pass when ``got == expected`` (arrays: same shape and all elements equal)."""
    _not_done(name, got)
    if isinstance(expected, np.ndarray) or hasattr(got, "shape"):
        g, e = _as_array(name, got), _as_array(name, expected)
        same = g.shape == e.shape and bool(np.all(g == e))
    else:
        same = got == expected
    if not same:
        raise ExerciseCheckError(f"{name}: expected {expected!r}, got {got!r}")
    _ok(name, "as expected")


def check_true(name: str, condition: Any, hint: str) -> None:
    """Pass when ``condition`` is truthy; otherwise fail with ``hint``."""
    _not_done(name, condition)
    if not bool(condition):
        raise ExerciseCheckError(f"{name}: {hint}")
    _ok(name, "condition holds")


def check_function(name: str, fn: Callable | None, cases: list[tuple[tuple, Any]], rtol: float = 1e-5) -> None:
    """Call ``fn(*args)`` for each ``(args, expected)`` case and compare with :func:`check_close`."""
    _not_done(name, fn)
    for i, (args, expected) in enumerate(cases):
        got = fn(*args)
        check_close(f"{name} (case {i + 1})", got, expected, rtol=rtol)


# ------------------------------------------------------------ claims and intervals


class ClaimError(AssertionError):
    """A teaching claim that the notebook's prose makes no longer holds in this run."""


def claim(statement: str, holds: Any, detail: str = "") -> bool:
    """Guard a teaching claim: at the ``default`` and ``full`` profiles a claim that does not
    hold raises :class:`ClaimError` (the prose around it would be false); at ``smoke`` (tiny
    sizes, CI) it only prints whether it held. Returns ``bool(holds)``. Introduced in
    notebook 11.
    """
    from . import config

    ok = bool(holds)
    tag = "claim holds" if ok else "CLAIM FAILS"
    print(f"[{tag}] {statement}" + (f" ({detail})" if detail else ""))
    if not ok and config.scale() != "smoke":
        raise ClaimError(f"the notebook claims: {statement!r}, but this run says otherwise "
                         f"{detail}. Re-read the prose above: it must change with the result.")
    return ok


def paired_bootstrap(correct_a: Any, correct_b: Any, n_boot: int = 2000, seed: int = 0,
                     level: float = 0.95) -> dict[str, float]:
    """Paired bootstrap of the accuracy difference ``a - b`` on the same N test questions.

    ``correct_a``, ``correct_b``: bool (N,), whether each method got each item right. Items
    are resampled with replacement ``n_boot`` times (both methods together, so the pairing
    is kept). Returns ``diff`` (observed), ``low`` and ``high`` (the central ``level``
    interval) and ``resolved`` (1.0 when the interval excludes 0, else 0.0). Introduced in
    notebook 11.
    """
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"paired_bootstrap: expected two bool arrays of one shape (N,), got "
                         f"{a.shape} and {b.shape}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n_boot, len(a)))
    diffs = a[idx].mean(1) - b[idx].mean(1)
    lo, hi = np.quantile(diffs, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"diff": float(a.mean() - b.mean()), "low": float(lo), "high": float(hi),
            "resolved": float(lo > 0 or hi < 0)}


def interval_text(ci: dict[str, float]) -> str:
    """``+0.120 [+0.070, +0.170]`` (or ``... not resolved``) from :func:`paired_bootstrap`."""
    txt = f"{ci['diff']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}]"
    return txt if ci["resolved"] else txt + " not resolved"


def grid_edge(name: str, grid: Any, chosen: Any) -> bool:
    """Warn when a value chosen from a search grid sits at the grid's smallest or largest
    value: the optimum may lie outside, so widen the grid. ``grid``: the numeric values tried;
    ``chosen``: the one the search picked. Prints one line and returns True at an edge (the
    lesson then widens its grid or says why the edge is a real limit). Introduced in
    notebook 01.
    """
    values = np.asarray(sorted({float(v) for v in grid}))
    if values.size < 3:
        raise ValueError(f"grid_edge({name!r}): expected a grid of at least 3 distinct values, got {list(grid)}")
    c = float(chosen)
    if not np.isclose(values, c).any():
        raise ValueError(f"grid_edge({name!r}): the chosen value {chosen} is not in the grid {values.tolist()}")
    edge = bool(np.isclose(c, values[0]) or np.isclose(c, values[-1]))
    where = "smallest" if np.isclose(c, values[0]) else "largest"
    print(f"[grid edge] {name} = {chosen:g} is the {where} value tried "
          f"({values[0]:g}..{values[-1]:g}): widen the grid" if edge
          else f"[grid ok] {name} = {chosen:g} lies inside the grid ({values[0]:g}..{values[-1]:g})")
    return edge
