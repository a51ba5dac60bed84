"""Execute notebooks headless, time them, collect their results (``course run``).

Introduced in notebook 00. Each notebook runs in a fresh kernel with ``COURSE_SCALE`` set,
from the ``notebooks/`` folder, under a progress bar over its cells. At the default profile
the executed notebooks are written back in place (learners read them executed); at other
profiles they go to ``build/executed/<profile>/``.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from . import cache, config, results
from .config import CourseError


def notebooks_dir() -> Path:
    if config.REPO_ROOT is None:
        raise CourseError("course run needs a clone of the course repository (no notebooks/ folder found)")
    return config.REPO_ROOT / "notebooks"


def all_notebooks() -> list[Path]:
    """Every ``NN_topic.ipynb`` in ``notebooks/``, in order."""
    return sorted(p for p in notebooks_dir().glob("[0-9][0-9]_*.ipynb"))


def find_notebooks(names: list[str]) -> list[Path]:
    """Resolve ``["02", "03_texture_and_colour", ...]`` to notebook paths (all when empty)."""
    nbs = all_notebooks()
    if not names:
        return nbs
    out = []
    for name in names:
        hits = [p for p in nbs if p.stem == name or p.stem.startswith(name) or p.name == name]
        if len(hits) != 1:
            raise CourseError(f"notebook {name!r} matches {[p.stem for p in hits]}; "
                              f"expected one of {[p.stem for p in nbs]}")
        out.append(hits[0])
    return out


def strip_widget_state(nb) -> None:
    """Drop saved widget state (it bloats stored notebooks and is useless without a kernel)."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "application/vnd.jupyter.widget-view+json" in data:
                data.pop("application/vnd.jupyter.widget-view+json")
                if not data:
                    data["text/plain"] = "(interactive widget: run the notebook to use it)"


#: per-cell timeout when a notebook has no measured wall time at that profile (seconds)
MAX_CELL_TIMEOUT = 1800
#: otherwise: this many times the notebook's measured wall time, at least MIN_CELL_TIMEOUT
TIMEOUT_FACTOR, MIN_CELL_TIMEOUT = 4, 300


def cell_timeout(stem: str, scale: str, device: str = "cpu") -> tuple[int, str]:
    """The per-cell timeout for notebook ``stem`` (seconds) and how it was sized.

    Sized to the notebook: ``TIMEOUT_FACTOR`` x its whole wall time measured at ``scale`` on
    ``device`` (``results/*-timings.json``), at least ``MIN_CELL_TIMEOUT`` and at most
    ``MAX_CELL_TIMEOUT``; ``MAX_CELL_TIMEOUT`` when it was never measured. No single cell
    takes longer than its whole notebook, so a cell past the limit is stuck or the machine
    is far slower than the one that measured it.
    """
    path = results.results_path(scale, device).with_name(f"{scale}-{device}-timings.json")
    measured = json.loads(path.read_text()).get(stem) if path.exists() else None
    if measured is None:
        return MAX_CELL_TIMEOUT, f"{stem} has no measured {scale} wall time yet"
    t = int(min(MAX_CELL_TIMEOUT, max(MIN_CELL_TIMEOUT, TIMEOUT_FACTOR * measured)))
    return t, f"{TIMEOUT_FACTOR}x the whole notebook's measured {scale} wall time of {measured:.0f} s, at least {MIN_CELL_TIMEOUT} s"


def _cell_label(nb, index: int) -> str:
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    first = next((ln for ln in nb.cells[index].source.splitlines() if ln.strip()), "")
    first = first if len(first) <= 70 else first[:67] + "..."
    return f"cell {index + 1} of {len(nb.cells)} (code cell {code.index(index) + 1} of {len(code)}: {first!r})"


def execute_notebook(path: Path, scale: str, out_path: Path, timeout: int | None = None,
                     progress: bool = True) -> tuple[float, list[dict], str | None]:
    """Run one notebook; returns (wall seconds, result records, error text or None).

    ``timeout`` is per cell in seconds (default: :func:`cell_timeout`). The kernel gets
    ``COURSE_HEADLESS=1``: widgets draw a static view (:func:`course_lib.viz.explore`) and
    progress bars are plain text, so no cell waits for a frontend that is not there.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
    from tqdm.auto import tqdm

    from .viz import HEADLESS_ENV

    nb = nbformat.read(path, as_version=4)
    if timeout is None:
        timeout, why = cell_timeout(path.stem, scale, results._device_name())
    else:
        why = "--timeout"
    fd, rec_file = tempfile.mkstemp(prefix="course-results-", suffix=".jsonl")
    os.close(fd)
    env_backup = {k: os.environ.get(k) for k in (config.SCALE_ENV, results.RESULTS_FILE_ENV, results.NOTEBOOK_ENV,
                                                 "MPLBACKEND", HEADLESS_ENV)}
    # the kernel must draw inline, whatever the calling shell says: with MPLBACKEND=Agg
    # (common in headless shells and CI) every figure would silently be left out
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    os.environ[config.SCALE_ENV] = scale
    os.environ[results.RESULTS_FILE_ENV] = rec_file
    os.environ[results.NOTEBOOK_ENV] = path.stem
    os.environ[HEADLESS_ENV] = "1"
    n_code = sum(c.cell_type == "code" for c in nb.cells)
    bar = tqdm(total=n_code, desc=path.stem, unit="cell", disable=not progress, leave=True)
    current = {"index": 0}

    def started(cell, cell_index, **kw):
        current["index"] = cell_index

    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", record_timing=False,
        resources={"metadata": {"path": str(path.parent)}},
        on_cell_start=started, on_cell_executed=lambda **kw: bar.update(1),
    )
    error = None
    t0 = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as e:
        error = str(e)[-3000:]
    except CellTimeoutError:
        error = (f"{path.stem}: {_cell_label(nb, current['index'])} did not finish within the per-cell "
                 f"timeout of {timeout} s ({why}). If it was still computing, give it longer: "
                 f"course run {path.stem[:2]} --timeout {2 * timeout}. If the kernel sat idle, the cell "
                 "waits for something that never comes (e.g. a widget without a frontend: use cl.viz.explore).")
    except DeadKernelError as e:
        error = f"{path.stem}: the kernel died in {_cell_label(nb, current['index'])} ({e}); out of memory?"
    finally:
        seconds = time.perf_counter() - t0
        bar.close()
        for k, v in env_backup.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    records = results.read_jsonl(rec_file)
    os.remove(rec_file)
    strip_widget_state(nb)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    cache.write_atomic(out_path, nbformat.writes(nb) + "\n")
    return seconds, records, error


RUNTIME_START, RUNTIME_END = "<!-- runtime -->", "<!-- /runtime -->"


def _fmt_seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.1f} min"


def runtime_line(stem: str, device: str = "cpu") -> str:
    """The measured runtime of notebook ``stem`` per profile, from ``results/*-timings.json``."""
    parts = []
    for prof in config.SCALES:
        path = results.results_path(prof, device).with_name(f"{prof}-{device}-timings.json")
        t = json.loads(path.read_text()).get(stem) if path.exists() else None
        if t is not None:
            parts.append(f"`{prof}` {_fmt_seconds(t)}")
    if not parts:
        return "**Runtime:** not measured yet (run `course run` to measure it)."
    return (f"**Runtime** (whole notebook, measured on a 2-core {device.upper()} by `course run`): "
            + " · ".join(parts) + ". `full` is meant for a GPU.")


def update_runtime_markers(paths: list[Path], device: str = "cpu") -> None:
    """Rewrite the runtime line between the markers in each notebook's first Markdown cell."""
    import nbformat

    for path in paths:
        nb = nbformat.read(path, as_version=4)
        cell = next((c for c in nb.cells if c.cell_type == "markdown"), None)
        if cell is None or RUNTIME_START not in cell.source or RUNTIME_END not in cell.source:
            continue
        head, rest = cell.source.split(RUNTIME_START, 1)
        _, tail = rest.split(RUNTIME_END, 1)
        new = f"{head}{RUNTIME_START}{runtime_line(path.stem, device)}{RUNTIME_END}{tail}"
        if new != cell.source:
            cell.source = new
            cache.write_atomic(path, nbformat.writes(nb) + "\n")


def run(names: list[str], scale: str | None = None, inplace: bool | None = None,
        timeout: int | None = None) -> int:
    """Execute notebooks, write the results file and print a Markdown table; returns an exit code."""
    scale = scale or config.scale()
    if scale not in config.SCALES:
        raise CourseError(f"scale must be one of {config.SCALES}, got {scale!r}")
    os.environ[config.SCALE_ENV] = scale
    nbs = find_notebooks(names)
    inplace = (scale == "default") if inplace is None else inplace
    out_dir = notebooks_dir() if inplace else config.REPO_ROOT / "build" / "executed" / scale
    device = results._device_name()
    all_records: list[dict] = []
    failures = []
    timing = []
    for nb in nbs:
        seconds, recs, error = execute_notebook(nb, scale, out_dir / nb.name, timeout=timeout)
        timing.append((nb.stem, seconds, error is None))
        for r in recs:
            r["seconds"] = round(seconds, 1)
        if error is None:
            all_records.extend(recs)
        else:
            failures.append((nb.stem, error))
        print(f"{nb.stem}: {'ok' if error is None else 'FAILED'} in {seconds:.0f} s, {len(recs)} results")
    run_ok = [stem for stem, _, ok in timing if ok]
    path = results.results_path(scale, device)
    merged = results.merge_results(path, all_records, run_ok)
    timings_path = path.with_name(f"{scale}-{device}-timings.json")
    results.merge_timings(timings_path, {stem: round(s, 1) for stem, s, ok in timing if ok})
    update_runtime_markers([nb for nb in nbs if (notebooks_dir() / nb.name).exists()], device)
    print()
    print(results.markdown_table(merged))
    print(f"\nresults: {config.display_path(path)}")
    if scale == "default" and device == "cpu" and config.REPO_ROOT is not None:
        readme = config.REPO_ROOT / "README.md"
        if readme.exists() and results.update_readme(readme, merged, results.load_timings(device)):
            print("README.md results table updated")
    for stem, err in failures:
        print(f"\n{stem} FAILED:\n{err}")
    if inplace:
        print("\nOpen the executed notebooks with:  .venv/bin/jupyter lab notebooks/")
    return 1 if failures else 0
