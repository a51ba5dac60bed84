"""Tests of course_lib.cache: the array cache and atomic folder writes."""
from __future__ import annotations

import numpy as np
import pytest

from course_lib import CourseError, cache


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path / "cache"))


def test_cached_computes_once_then_loads():
    calls = []

    def compute():
        calls.append(1)
        return {"cls": np.arange(6, dtype=np.float32).reshape(2, 3), "ids": np.array([4, 5])}

    first = cache.cached("dinov2-small/demo-2", compute)
    second = cache.cached("dinov2-small/demo-2", compute)
    assert len(calls) == 1
    assert set(second) == {"cls", "ids"}
    np.testing.assert_array_equal(first["cls"], second["cls"])
    assert second["cls"].dtype == np.float32
    cache.cached("dinov2-small/demo-2", compute, refresh=True)
    assert len(calls) == 2


def test_a_plain_array_round_trips():
    x = np.random.default_rng(0).normal(size=(5, 4))
    cache.save("plain", x)
    np.testing.assert_array_equal(cache.load("plain"), x)
    assert cache.load("absent") is None


def test_a_corrupted_file_is_recomputed_not_used():
    path = cache.save("broken", np.ones(3))
    path.write_bytes(b"not a zip file")
    assert cache.load("broken") is None
    assert not path.exists()
    np.testing.assert_array_equal(cache.cached("broken", lambda: np.zeros(2)), np.zeros(2))


@pytest.mark.parametrize("key", ["../escape", "/abs", "spaces are bad", ""])
def test_bad_keys_are_refused(key):
    with pytest.raises(CourseError, match="cache key"):
        cache.path_for(key)


def test_values_must_be_arrays():
    with pytest.raises(CourseError, match="NumPy arrays"):
        cache.save("bad", {"a": [1, 2, 3]})
    assert cache.load("bad") is None


def test_write_dir_atomically_replaces_the_old_folder(tmp_path):
    final = tmp_path / "models" / "ckpt"

    def write(text):
        return lambda d: (d / "weights.txt").write_text(text)

    assert cache.write_dir_atomically(final, write("v1")) == final
    cache.write_dir_atomically(final, write("v2"))
    assert (final / "weights.txt").read_text() == "v2"
    assert sorted(p.name for p in final.parent.iterdir()) == ["ckpt"]  # no leftovers


def test_a_failed_write_leaves_the_old_folder_untouched(tmp_path):
    final = tmp_path / "ckpt"
    cache.write_dir_atomically(final, lambda d: (d / "weights.txt").write_text("good"))

    def crash(d):
        (d / "weights.txt").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        cache.write_dir_atomically(final, crash)
    assert (final / "weights.txt").read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_write_atomic_bytes_and_text_never_half_written(tmp_path):
    path = tmp_path / "sub" / "f.txt"
    assert cache.write_atomic(path, "héllo\n") == path
    assert path.read_text(encoding="utf-8") == "héllo\n"
    cache.write_atomic(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    with pytest.raises(RuntimeError):
        with cache.atomic_file(path) as f:
            f.write(b"partial")
            raise RuntimeError("interrupted")
    assert path.read_bytes() == b"\x00\x01"  # the old content stays; no temp file is left
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.txt"]


def test_sha256_file_matches_hashlib(tmp_path):
    import hashlib

    path = tmp_path / "blob"
    path.write_bytes(b"x" * (3 << 20))
    assert cache.sha256_file(path) == hashlib.sha256(b"x" * (3 << 20)).hexdigest()
