"""Small plotting helpers shared by the notebooks (matplotlib only).

Introduced in notebook 00.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .config import CourseError


def show_images(images: Sequence[np.ndarray] | np.ndarray, titles: Sequence[str] | None = None,
                ncols: int = 8, size: float = 1.8, cmap: str = "gray", fontsize: int = 8,
                suptitle: str | None = None):
    """Show a grid of images: each (H, W) grey or (H, W, 3) RGB, uint8 or float in [0, 1].

    Returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt

    images = list(images)
    if not images:
        raise CourseError("show_images got no images")
    if titles is not None and len(titles) != len(images):
        raise CourseError(f"got {len(images)} images but {len(titles)} titles")
    ncols = min(ncols, len(images))
    nrows = math.ceil(len(images) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, img in enumerate(images):
        img = np.asarray(img)
        if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[2] not in (1, 3):
            raise CourseError(f"image {i} looks channels-first {img.shape}; "
                              "expected (H, W, 3): use np.transpose(img, (1, 2, 0))")
        ax = axes.flat[i]
        ax.imshow(img.squeeze(), cmap=cmap if img.ndim == 2 or img.shape[-1] == 1 else None)
        if titles is not None:
            ax.set_title(titles[i], fontsize=fontsize)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def wrap_caption(caption: str) -> str:
    """Put each ``and``-joined item of a FashionScenes caption on its own line."""
    return caption.replace(" and ", "\nand ")


def show_scenes(scenes, n: int = 16, ncols: int = 4, captions: Sequence[str] | None = None):
    """Show the first ``n`` FashionScenes with their captions (or ``captions`` given)."""
    n = min(n, len(scenes))
    caps = list(captions) if captions is not None else scenes.captions[:n]
    return show_images(scenes.images[:n], [wrap_caption(c) for c in caps[:n]],
                       ncols=ncols, size=3.2, fontsize=7)


def bar_table(names: Sequence[str], values: Sequence[float], xlabel: str = "", title: str = "",
              ref: float | None = None, ref_label: str = ""):
    """A horizontal bar chart of named values, with an optional reference line."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 0.35 * len(names) + 1))
    ax.barh(list(names), list(values), color="tab:blue")
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:.3g}", va="center", fontsize=8)
    if ref is not None:
        ax.axvline(ref, color="tab:red", ls="--", label=ref_label)
        ax.legend(loc="lower right")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


class QuietBar:
    """A progress bar for headless runs: silent while it runs, one plain line when it ends.

    Stored notebooks then hold ``desc: 4220/4220 step in 253.1 s (16.7 step/s), loss=0.31``
    instead of carriage-return fragments. Supports what the course uses of tqdm:
    iteration, ``update``, ``set_postfix``, ``set_description``, ``close`` and ``with``.
    Introduced in notebook 00 (through :func:`progress`).
    """

    def __init__(self, iterable=None, total=None, desc: str = "", unit: str = "it",
                 disable: bool = False, **_ignored):
        import time

        self.iterable, self.desc, self.unit, self.disable = iterable, desc, unit, disable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self.postfix = total, 0, ""
        self._start, self._closed = time.perf_counter(), False

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.n += 1
        finally:
            self.close()

    def __len__(self):
        return int(self.total or 0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = dict(ordered_dict or {}, **kwargs)
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        pass

    def write(self, s: str) -> None:
        print(s, flush=True)

    def close(self) -> None:
        import time

        if self._closed:
            return
        self._closed = True
        if self.disable:
            return
        seconds = time.perf_counter() - self._start
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        rate = f" ({self.n / seconds:.1f} {self.unit}/s)" if seconds > 0 and self.n else ""
        line = f"{self.desc + ': ' if self.desc else ''}{done} {self.unit} in {seconds:.1f} s{rate}"
        print(line + (f", {self.postfix}" if self.postfix else ""), flush=True)


def progress(iterable=None, **kwargs):
    """A progress bar for loops that take more than a few seconds (tqdm).

    Interactive notebooks get tqdm's notebook widget; headless runs (``course run``, nbval,
    scripts: ``COURSE_HEADLESS``, ``COURSE_NOTEBOOK`` or ``CI`` set) get a :class:`QuietBar`,
    which prints one summary line when the loop ends, so stored notebooks hold no bar
    fragments. Takes tqdm's arguments (``total``, ``desc``, ``unit``, ``disable``, ...).
    Introduced in notebook 00.
    """
    import os

    if os.environ.get("COURSE_NOTEBOOK") or os.environ.get("COURSE_HEADLESS") or os.environ.get("CI"):
        return QuietBar(iterable, **kwargs)
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


HEADLESS_ENV = "COURSE_HEADLESS"


def has_widget_frontend() -> bool:
    """True when interactive widgets can be shown: a Jupyter frontend is attached.

    ``COURSE_HEADLESS=1`` (set by ``course run`` and ``scripts/test.sh``), ``CI`` or
    ``COURSE_NOTEBOOK`` mean no; ``COURSE_HEADLESS=0`` means yes. Otherwise: outside an
    IPython kernel there is none; a kernel started by a Jupyter server (JupyterLab,
    Notebook) or by VS Code or Colab has one; any other kernel (nbclient, nbconvert,
    papermill) is taken as headless, since their widget messages go nowhere and can
    stall the run (jupyter/nbclient#312). Introduced in notebook 02.
    """
    import os
    import sys

    forced = os.environ.get(HEADLESS_ENV, "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return False
    if forced in ("0", "false", "no", "off"):
        return True
    if os.environ.get("CI") or os.environ.get("COURSE_NOTEBOOK"):
        return False
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or getattr(shell, "kernel", None) is None:
        return False
    return bool(os.environ.get("JPY_SESSION_NAME") or "google.colab" in sys.modules
                or any(k.startswith("VSCODE_") for k in os.environ))


def explore(fn, **controls):
    """An ``ipywidgets.interactive`` explorer of ``fn``, or a static figure without a frontend.

    ``controls`` use ``interact``'s abbreviations, e.g. ``sigma=(0.0, 4.0, 0.25)`` for a
    float slider (min, max, step) or ``low=(0, 300, 5)`` for an int slider; each starts at
    ``fn``'s default value for that argument. With a Jupyter frontend the explorer is
    displayed and returned. Headless (``course run``, nbval, CI; see
    :func:`has_widget_frontend`) no widget is created: ``fn`` is called once with its
    defaults, so the stored notebook shows that figure, and ``None`` is returned.
    Introduced in notebook 02.
    """
    import inspect

    params = inspect.signature(fn).parameters
    missing = [k for k in controls if k not in params or params[k].default is inspect.Parameter.empty]
    if missing:
        raise CourseError(f"explore: {missing} must be arguments of {fn.__name__} with default values "
                          "(the explorer starts there)")
    if has_widget_frontend():
        import ipywidgets
        from IPython.display import display

        explorer = ipywidgets.interactive(fn, **controls)
        display(explorer)
        return explorer
    defaults = {k: params[k].default for k in controls}
    print("static view at the defaults (" + ", ".join(f"{k}={v}" for k, v in defaults.items())
          + "): open the notebook in Jupyter to move the sliders")
    fn(**defaults)
    return None
