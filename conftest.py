"""Shared test setup: offline, smoke profile, a per-notebook time budget for nbval runs."""
from __future__ import annotations

import os
import time

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("COURSE_SCALE", "smoke")
os.environ.setdefault("MPLBACKEND", "Agg")

#: wall-time budget of one notebook at the smoke profile under nbval (seconds)
NOTEBOOK_BUDGET = float(os.environ.get("COURSE_NOTEBOOK_BUDGET", "300"))
_started: dict[str, float] = {}


def pytest_runtest_setup(item: pytest.Item) -> None:
    """nbval runs a notebook as one test per cell: fail the rest once its budget is spent."""
    path = str(getattr(item, "fspath", ""))
    if not path.endswith(".ipynb"):
        return
    start = _started.setdefault(path, time.monotonic())
    elapsed = time.monotonic() - start
    if elapsed > NOTEBOOK_BUDGET:
        pytest.fail(f"{os.path.basename(path)} has run {elapsed:.0f} s, over its smoke budget of "
                    f"{NOTEBOOK_BUDGET:.0f} s (COURSE_NOTEBOOK_BUDGET)")
