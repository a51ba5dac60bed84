"""Shared bits of the benchmarks in bench/: interleaved timing, machine facts, JSON output.

Every benchmark times course_lib's way and a naive baseline *in the same process, interleaved*
(A, B, A, B, ...), reports medians, checks that both compute the same thing, and writes one
JSON file to ``bench/results/``. Benchmarks are not tests: nothing here passes or fails on speed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

RESULTS = Path(__file__).resolve().parent / "results"


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int = 5, warmup: int = 1) -> dict[str, dict[str, Any]]:
    """Median wall time of each zero-argument function, timed in turns; the first is the baseline.

    Returns ``{name: {"median_s", "min_s", "times_s", "speedup_vs_<first>"}}``.
    """
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(warmup + repeats):
        for n in names:
            t0 = time.perf_counter()
            fns[n]()
            dt = time.perf_counter() - t0
            if i >= warmup:
                times[n].append(dt)
    base = statistics.median(times[names[0]])
    out = {}
    for n in names:
        med = statistics.median(times[n])
        out[n] = {"median_s": med, "min_s": min(times[n]), "times_s": [round(t, 6) for t in times[n]],
                  f"speedup_vs_{names[0]}": base / med}
    return out


def parser(doc: str) -> argparse.ArgumentParser:
    """The options every benchmark shares: ``--repeats``, ``--quick`` (small sizes) and ``--out``."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default depends on --quick)")
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--out", default=None, help="JSON file to write (default bench/results/<name>.json)")
    return ap


def machine() -> dict[str, Any]:
    """Facts that make a timing interpretable: cores, threads, versions, load average."""
    import numpy as np
    import torch

    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__, "processor": platform.processor() or platform.machine(),
            "load_average_1min": round(os.getloadavg()[0], 2)}


def write(name: str, report: dict[str, Any], out: str | os.PathLike | None = None) -> Path:
    """Write ``report`` (plus machine facts) to ``bench/results/<name>.json`` (or ``out``)."""
    from course_lib import config

    report = dict(report)
    report["machine"] = machine()
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {config.display_path(path)}")
    return path
