"""course_lib.grounding and the claim / interval helpers of course_lib.checks."""
from __future__ import annotations

import numpy as np
import pytest
import skimage.data

from course_lib import CourseError, checks, config, grounding


def test_grounding_splits_checkable_words():
    g = grounding.grounding("A red cat sits next to two blue cups.", ["dominant colours: red 40%", "tabby 0.8"],
                            vocabulary={"red", "blue", "two", "cat", "tabby"})
    assert g["grounded"] == ["red"] and g["invented"] == ["cat", "two", "blue"]
    assert g["invented_rate"] == pytest.approx(0.75)
    assert grounding.grounding("nothing checkable", "x", vocabulary={"red"})["invented_rate"] == 0.0


def test_dominant_colours_and_photo_report():
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 210
    assert grounding.dominant_colours(red, k=1) == [("red", 1.0)]
    with pytest.raises(CourseError):
        grounding.dominant_colours(red.astype(np.float32))
    lines = grounding.photo_report(skimage.data.chelsea())
    assert len(lines) == 5 and lines[-1].startswith("CNN top-5 classes:")
    assert "cat" in lines[-1]  # EfficientNet-Lite0 sees a cat in chelsea


def test_claim_fails_at_default_but_not_at_smoke(monkeypatch):
    monkeypatch.setenv(config.SCALE_ENV, "smoke")
    assert checks.claim("1 < 2", 1 < 2) is True
    assert checks.claim("2 < 1", 2 < 1) is False  # printed, not raised: smoke sizes are tiny
    monkeypatch.setenv(config.SCALE_ENV, "default")
    with pytest.raises(checks.ClaimError, match="2 < 1"):
        checks.claim("2 < 1", False)


def test_paired_bootstrap():
    a = np.array([1] * 80 + [0] * 20, bool)
    b = np.array([1] * 50 + [0] * 50, bool)
    ci = checks.paired_bootstrap(a, b)
    assert ci["diff"] == pytest.approx(0.3) and ci["low"] < 0.3 < ci["high"] and ci["resolved"] == 1.0
    same = checks.paired_bootstrap(a, a)
    assert same["diff"] == 0 and same["resolved"] == 0.0
    assert "not resolved" in checks.interval_text(same)
    with pytest.raises(ValueError):
        checks.paired_bootstrap(a, b[:10])
