"""Is a generated text grounded in a report? Checkable words, and a report for real photos.

Introduced in notebook 11 (real photos), reused by the capstone. A *checkable* word is one
a report could state: a colour name, a number word, or an ImageNet class name. A checkable
word of a generated text is *grounded* when the report says it, *invented* otherwise::

    lines = photo_report(img)                         # measured facts + CNN top-5, as text
    grounding(description, lines)                     # {"grounded": [...], "invented": [...]}
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from .config import CourseError

#: basic colour names (Berlin and Kay's eleven) with an sRGB anchor each
BASIC_COLOURS = {"black": (0, 0, 0), "white": (255, 255, 255), "grey": (128, 128, 128),
                 "red": (200, 30, 30), "orange": (240, 140, 30), "yellow": (235, 220, 50),
                 "green": (50, 160, 60), "blue": (40, 80, 200), "purple": (130, 50, 160),
                 "pink": (240, 150, 180), "brown": (120, 75, 40)}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_WORD = re.compile(r"[a-z]+")
#: words of ImageNet class names too common in English to count as a claim about the photo
_COMMON = frozenset("the and with for from that this has are its which what main photo image picture "
                    "one two".split())


def dominant_colours(image: np.ndarray, k: int = 3) -> list[tuple[str, float]]:
    """The ``k`` most frequent basic colour names of a uint8 RGB image (H, W, 3) with their
    pixel shares (0..1), each pixel voting for the nearest :data:`BASIC_COLOURS` anchor."""
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise CourseError(f"dominant_colours: expected a uint8 RGB image (H, W, 3), got "
                          f"{img.dtype} {img.shape}")
    px = img[::4, ::4].reshape(-1, 3).astype(np.float32)
    anchors = np.array(list(BASIC_COLOURS.values()), np.float32)
    nearest = ((px[:, None] - anchors[None]) ** 2).sum(-1).argmin(1)
    share = np.bincount(nearest, minlength=len(anchors)) / len(px)
    names = list(BASIC_COLOURS)
    return [(names[i], float(share[i])) for i in np.argsort(-share)[:k]]


def photo_report(image: np.ndarray) -> list[str]:
    """Facts about one real photo (uint8 RGB (H, W, 3)) as short lines: its size, brightness
    and contrast, Canny edge density (notebook 02), the three dominant colour names, and
    EfficientNet-Lite0's top-5 ImageNet classes with probabilities (notebook 07)."""
    from . import edges, imaging, models

    grey = imaging.to_gray(image)
    e = edges.cv2_canny(grey, 50.0, 150.0)
    cols = ", ".join(f"{n} {s:.0%}" for n, s in dominant_colours(image))
    top = ", ".join(f"{n} {p:.2f}" for n, p in models.imagenet_top5(image))
    return [f"size: {image.shape[1]} x {image.shape[0]} pixels",
            f"brightness {grey.mean() / 255:.2f}, contrast {grey.std() / 255:.2f} (0..1)",
            f"edge density {float(np.mean(e > 0)):.3f} (Canny)",
            f"dominant colours: {cols}",
            f"CNN top-5 classes: {top}"]


def _class_words() -> set[str]:
    from . import models

    return {w for name in models._imagenet_names() for w in _WORD.findall(name.lower())
            if len(w) > 2 and w not in _COMMON}


def grounding(text: str, report: Sequence[str] | str, vocabulary: set[str] | None = None) -> dict[str, Any]:
    """The checkable words of ``text`` split into ``grounded`` (the report says them) and
    ``invented`` (it does not), plus ``invented_rate`` (invented / checkable; 0 when none).

    Checkable: a basic colour, a number word, or a word of an ImageNet class name (or the
    given ``vocabulary``). Introduced in notebook 11."""
    vocab = vocabulary if vocabulary is not None else (
        set(BASIC_COLOURS) | set(NUMBER_WORDS) | _class_words())
    said = set(_WORD.findall((report if isinstance(report, str) else " ".join(report)).lower()))
    words = [w for w in _WORD.findall(str(text).lower()) if w in vocab]
    grounded = [w for w in words if w in said]
    invented = [w for w in words if w not in said]
    return {"grounded": grounded, "invented": invented,
            "invented_rate": len(invented) / len(words) if words else 0.0}
