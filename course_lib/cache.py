"""A disk cache for computed arrays (backbone features, embeddings), so that no notebook
computes the same features twice.

Introduced in notebook 07. Usage::

    feats = cl.cache.cached("dinov2-small/fmnist-train-2000", lambda: compute(...))

The value is a NumPy array or a dict of arrays, stored as ``<cache>/arrays/<key>.npz``
(written through a temp file and a rename, so an interrupted run never leaves a broken
file; an unreadable file is recomputed). Keys should name everything the value depends
on (model, data, split, size, preprocessing).

This module is also the library's one home of the mechanisms that keep files whole:
:func:`atomic_file` / :func:`write_atomic` (a file, never half-written),
:func:`write_dir_atomically` (a folder, never half-written) and :func:`sha256_file` (the
checksum every download, converted checkpoint and workshop kit is verified with).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import IO, Callable, Iterator, Union

import numpy as np

from . import config
from .config import CourseError

Value = Union[np.ndarray, dict[str, np.ndarray]]
_KEY = re.compile(r"^[A-Za-z0-9._\-/]+$")


# ------------------------------------------------------------------ whole files and folders


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (the library's one checksum)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", suffix: str = ".tmp") -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; rename it to ``path`` when the block ends.

    If the block raises (a failed download, a checksum mismatch, Ctrl-C) the temporary file
    is deleted and ``path`` is left as it was: readers never see a half-written file. The
    file gets the usual permissions (``0666`` less the umask; ``mkstemp`` alone makes
    ``0600`` files). ``mode``: ``"wb"`` or ``"w"`` (UTF-8 text). Yields the open file.
    """
    if mode not in ("wb", "w"):
        raise CourseError(f"atomic_file: mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        with open(tmp, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f  # f.name is the temporary path (e.g. to checksum it before the rename)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` through a temp file and a rename."""
    with atomic_file(path, "wb" if isinstance(data, (bytes, bytearray)) else "w") as f:
        f.write(data)
    return Path(path)


# --------------------------------------------------------------------------- array cache


def path_for(key: str) -> Path:
    """Where ``key`` is stored (``<cache>/arrays/<key>.npz``)."""
    if not _KEY.match(key) or ".." in key or key.startswith("/"):
        raise CourseError(f"cache key {key!r} may use letters, digits, '.', '_', '-' and '/' only")
    return config.cache_dir() / "arrays" / f"{key}.npz"


def save(key: str, value: Value) -> Path:
    """Store an array or a dict of arrays under ``key`` atomically; returns the path."""
    path = path_for(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = value if isinstance(value, dict) else {"__array__": value}
    if not all(isinstance(v, np.ndarray) for v in arrays.values()):
        raise CourseError(f"cache values must be NumPy arrays (or a dict of them); got "
                          f"{ {k: type(v).__name__ for k, v in arrays.items()} }")
    with atomic_file(path) as f:
        np.savez(f, **arrays)
    return path


def load(key: str) -> Value | None:
    """The stored value for ``key``, or ``None`` if absent or unreadable (then it is deleted)."""
    path = path_for(key)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        path.unlink(missing_ok=True)  # corrupted: never use it
        return None
    return out["__array__"] if set(out) == {"__array__"} else out


def cached(key: str, compute: Callable[[], Value], refresh: bool = False) -> Value:
    """Return the value stored under ``key``, computing and storing it first if needed."""
    if not refresh:
        value = load(key)
        if value is not None:
            return value
    value = compute()
    save(key, value)
    return value


def write_dir_atomically(final: str | os.PathLike, write: Callable[[Path], None], *,
                         keep_existing: Callable[[Path], bool] | None = None) -> Path:
    """Build a folder (a checkpoint, a saved model) so that ``final`` is never half-written.

    ``write(tmp)`` fills a fresh temporary folder next to ``final``; only when it returns is
    the temporary folder renamed to ``final`` (an older ``final`` is moved aside first and
    then deleted). If ``write`` raises, the temporary folder is removed and ``final`` is left
    as it was. ``keep_existing(final)``: when given and true for a ``final`` that another
    process finished meanwhile, that folder is kept and the new one dropped (the converted
    checkpoints of :mod:`course_lib.models`). Returns ``final`` as a Path. Introduced in
    notebook 06 (checkpoints); used for every saved model of the course.
    """
    import shutil
    import time

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        write(tmp)
        if keep_existing is not None and final.exists() and keep_existing(final):
            return final  # another process has just built a good one: keep that
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}-{time.time_ns()}")
            os.replace(final, old)
        try:
            os.replace(tmp, final)
        except OSError:  # another process installed one meanwhile: keep it if it checks out
            if keep_existing is None or not keep_existing(final):
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
