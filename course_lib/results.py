"""Headline results: one call in a notebook records a number; the runner collects them.

Introduced in notebook 00. In a notebook::

    cl.results.record("test_accuracy", acc)          # returns acc, prints one line

When the notebook runs under ``course run``, every record goes to the runner, which writes
``results/<profile>-<device>.json`` as a list of records
``{"notebook", "metric", "value", "profile", "device", "seconds"}`` and regenerates the
README's results table from ``results/default-cpu.json``.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

from . import config
from .cache import write_atomic  # the library's one atomic writer
from .config import CourseError

RESULTS_FILE_ENV = "COURSE_RESULTS_FILE"  # set by the runner: a JSON-lines file to append to
NOTEBOOK_ENV = "COURSE_NOTEBOOK"          # set by the runner: the notebook's stem
_SESSION: list[dict[str, Any]] = []


def _device_name() -> str:
    try:
        return config.device().type
    except ImportError:
        return "cpu"


def record(metric: str, value: float, *, notebook: str | None = None, note: str = "") -> float:
    """Record one headline number (a finite float) and return it unchanged.

    ``metric`` is a short snake_case name such as ``"test_accuracy"``; ``notebook`` defaults
    to the notebook being run (``COURSE_NOTEBOOK``) or ``"interactive"``.
    """
    if not isinstance(metric, str) or not metric or any(c.isspace() for c in metric):
        raise CourseError(f"metric must be a non-empty name without spaces, got {metric!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise CourseError(f"value of {metric!r} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise CourseError(f"value of {metric!r} is {v}: only finite numbers can be recorded")
    rec = {
        "notebook": notebook or os.environ.get(NOTEBOOK_ENV, "interactive"),
        "metric": metric,
        "value": v,
        "profile": config.scale(),
        "device": _device_name(),
    }
    if note:
        rec["note"] = note
    _SESSION.append(rec)
    path = os.environ.get(RESULTS_FILE_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
    print(f"[result] {metric} = {v:.4g}" + (f"  ({note})" if note else ""))
    return value


def session_records() -> list[dict[str, Any]]:
    """Records made in this Python session (a copy)."""
    return list(_SESSION)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records from a JSON-lines file written by :func:`record` (empty list if missing)."""
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def results_path(profile: str, device: str, root: Path | None = None) -> Path:
    """``results/<profile>-<device>.json`` under the repository (or ``root``)."""
    base = root or config.REPO_ROOT or Path.cwd()
    return base / "results" / f"{profile}-{device}.json"


def load_timings(device: str = "cpu", root: Path | None = None) -> dict[str, dict[str, float]]:
    """``{profile: {notebook: seconds}}`` from ``results/<profile>-<device>-timings.json``."""
    out = {}
    nb_dir = (root or config.REPO_ROOT or Path.cwd()) / "notebooks"
    for prof in config.SCALES:
        p = results_path(prof, device, root).with_name(f"{prof}-{device}-timings.json")
        times = json.loads(p.read_text(encoding="utf-8")) if p.exists() else {}
        # only the notebooks that are part of the course now
        out[prof] = {k: v for k, v in times.items() if (nb_dir / f"{k}.ipynb").exists()}
    return out


def merge_results(path: Path, new: Iterable[dict[str, Any]], notebooks_run: Iterable[str]) -> list[dict]:
    """Replace the records of ``notebooks_run`` in the results file at ``path`` by ``new``."""
    import fcntl

    run = set(notebooks_run)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two runs at once must not lose each other's records
        old = json.loads(path.read_text(encoding="utf-8")) if path.exists() else []
        kept = [r for r in old if r.get("notebook") not in run]
        merged = sorted(kept + list(new), key=lambda r: (r["notebook"], r["metric"]))
        write_atomic(path, json.dumps(merged, indent=1) + "\n")
    return merged


def merge_timings(path: Path, new: dict[str, float]) -> dict[str, float]:
    """Update ``{notebook: wall seconds}`` in the timings file at ``path`` (locked, atomic)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        old.update(new)
        merged = dict(sorted(old.items()))
        write_atomic(path, json.dumps(merged, indent=1) + "\n")
    return merged


def _fmt(v: float) -> str:
    if float(v).is_integer() and abs(v) >= 1:
        return f"{int(v)}"
    return f"{v:.4g}"


def markdown_table(records: list[dict[str, Any]]) -> str:
    """A Markdown table of records: notebook | metric | value | profile | device | notebook seconds."""
    lines = ["| notebook | metric | value | profile | device | notebook wall time (s) |",
             "|---|---|---|---|---|---|"]
    for r in records:
        secs = r.get("seconds")
        lines.append(f"| {r['notebook']} | {r['metric']} | {_fmt(r['value'])} | {r['profile']} | "
                     f"{r['device']} | {'' if secs is None else f'{secs:.0f}'} |")
    return "\n".join(lines)


RESULTS_START = "<!-- results:start (generated by `course results`; do not edit) -->"
RESULTS_END = "<!-- results:end -->"


RUNTIMES_START = "<!-- runtimes:start (generated by `course results`; do not edit) -->"
RUNTIMES_END = "<!-- runtimes:end -->"


def runtimes_table(timings: dict[str, dict[str, float]]) -> str:
    """Markdown table notebook x profile of wall times, from ``{profile: {notebook: seconds}}``."""
    profiles = [p for p in config.SCALES if timings.get(p)]
    stems = sorted({s for p in profiles for s in timings[p]})
    if not stems:
        return "(no runs recorded yet)"

    def fmt(s: float | None) -> str:
        return "" if s is None else (f"{s:.0f} s" if s < 90 else f"{s / 60:.1f} min")

    lines = ["| notebook | " + " | ".join(f"{p} (CPU)" for p in profiles) + " |",
             "|---|" + "---|" * len(profiles)]
    lines += [f"| {s} | " + " | ".join(fmt(timings[p].get(s)) for p in profiles) + " |" for s in stems]
    return "\n".join(lines)


def _replace_between(text: str, start: str, end: str, body: str, name: str) -> str:
    if start not in text or end not in text:
        raise CourseError(f"{name} has no markers; add {start!r} and {end!r}")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def update_readme(readme: Path, records: list[dict[str, Any]],
                  timings: dict[str, dict[str, float]] | None = None) -> bool:
    """Regenerate the results table (and, given ``timings``, the runtimes table) between
    their markers in ``readme``; True if the file changed."""
    text = readme.read_text(encoding="utf-8")
    new = _replace_between(text, RESULTS_START, RESULTS_END, markdown_table(records), readme.name)
    if timings is not None and RUNTIMES_START in new:
        new = _replace_between(new, RUNTIMES_START, RUNTIMES_END, runtimes_table(timings), readme.name)
    if new != text:
        write_atomic(readme, new)
        return True
    return False
