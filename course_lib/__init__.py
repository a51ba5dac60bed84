"""course_lib: the helper library of the *Edges to Captions* course.

Import it as ``import course_lib as cl``; submodules load on first use
(``cl.data``, ``cl.features``, ...), so importing the package is cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = (
    "config", "data", "features", "models", "train", "explain", "fusion", "align",
    "caption", "caption_metrics", "pipeline", "scene_qa", "llm", "grounding", "viz", "checks", "results", "cli",
    "runner", "student", "cache", "edges", "imaging", "inspection", "site", "vit", "efficiency", "kit", "vlm",
)

from . import config  # noqa: E402  (cheap: numpy only)
from .config import CourseError  # noqa: E402


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'course_lib' has no attribute {name!r}")


__all__ = ["CourseError", "config", *_SUBMODULES]
