"""An offline workshop kit: ``course pack DIR`` and what setup does with one.

Introduced in notebook 00. A kit is a folder that a room without internet copies from a
USB stick. It holds:

* ``wheels/``: a wheel for every pin of ``requirements.lock`` (``pip wheel --no-deps``), for
  the platform and Python that built the kit (pins published only as source are built);
* ``fashion-mnist/``: the four official files, verified against ``data/checksums.sha256``;
* ``cache/models/``: the converted checkpoints (DINOv2-S, EfficientNet-Lite0, ...), so
  no laptop has to convert them again;
* ``edges-to-captions.tar.gz``: the course itself (the committed tree), when built in a clone;
* ``kit.json`` (platform, Python, sizes) and ``SHA256SUMS`` (every file).

On each laptop: unpack the course, then ``COURSE_KIT=/path/to/kit bash scripts/test.sh``
(or ``scripts/course.sh``): setup installs with ``pip --no-index --find-links kit/wheels``
and copies the data and checkpoints into the cache; no network is touched.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import cache, config
from .config import CourseError

KIT_ENV = "COURSE_KIT"


def read_lock(lock: str | os.PathLike) -> list[str]:
    """The ``NAME==VERSION`` pins of a requirements file (comments and blank lines dropped)."""
    pins = []
    for line in Path(lock).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            if "==" not in line:
                raise CourseError(f"{lock}: {line!r} is not an exact pin (NAME==VERSION)")
            pins.append(line)
    return pins


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _pip(args: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    return subprocess.run(cmd, capture_output=True, text=True)


def download_wheels(pins: list[str], dest: Path, *, find_links: str | os.PathLike | None = None,
                    index: bool = True, log=print) -> dict[str, str]:
    """A wheel in ``dest`` for each pin, without dependencies (``pip wheel --no-deps``).

    A pin with a wheel for this platform is downloaded as is; a pin published only as a
    source release is built into a wheel. ``find_links`` adds a local folder of
    distributions, ``index=False`` forbids the package index (tests). Returns
    ``{pin: "wheel" | "built"}``; raises :class:`CourseError` with pip's message on failure.
    """
    dest.mkdir(parents=True, exist_ok=True)
    src = ([] if index else ["--no-index"]) + (["--find-links", str(find_links)] if find_links else [])
    req = dest.parent / ".pins.txt"
    req.write_text("\n".join(pins) + "\n")
    try:
        done = _pip(["wheel", "--no-deps", "--progress-bar", "off", "-w", str(dest), *src, "-r", str(req)])
    finally:
        req.unlink()
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise CourseError(f"pip could not get a wheel for every pin:\n{tail}")
    built = {line.split("Building wheel for ", 1)[1].split(" ", 1)[0].lower().replace("_", "-")
             for line in done.stdout.splitlines() if "Building wheel for " in line}
    how = {}
    for pin in pins:
        name = pin.split("==", 1)[0].lower().replace("_", "-")
        how[pin] = "built" if name in built else "wheel"
    if built:
        log(f"  built from source releases: {sorted(built)}")
    return how


def pack(out: str | os.PathLike, *, lock: str | os.PathLike | None = None,
         find_links: str | os.PathLike | None = None, index: bool = True,
         data: bool = True, models: bool = True, course: bool = True, log=print) -> dict:
    """Write a workshop kit into ``out`` (see the module docstring); returns its ``kit.json``.

    ``data``: copy Fashion-MNIST (set up first if needed); ``models``: convert every offline
    checkpoint into the cache (once) and copy it; ``course``: the committed course tree as
    a tarball. Run it online, on the platform and Python the laptops use.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if lock is None:
        if config.REPO_ROOT is None:
            raise CourseError("course pack needs requirements.lock: run it in a clone of the course")
        lock = config.REPO_ROOT / "requirements.lock"
    t0 = time.perf_counter()
    pins = read_lock(lock)
    log(f"wheels: {len(pins)} pins of {Path(lock).name}")
    how = download_wheels(pins, out / "wheels", find_links=find_links, index=index, log=log)
    shutil.copyfile(lock, out / "requirements.lock")
    if data:
        from . import data as course_data

        course_data.setup_fashion_mnist(log=log)
        (out / "fashion-mnist").mkdir(exist_ok=True)
        for key in course_data.FASHION_FILES:
            src = course_data.fashion_mnist_file(key, allow_download=False)
            shutil.copyfile(src, out / "fashion-mnist" / src.name)
        log("fashion-mnist: 4 files")
    if models:
        from . import models as course_models

        for st in course_models.asset_status():
            if st.get("online_only"):
                continue
            course_models.fetch(st["name"])  # converts once into the cache when needed
        src_root = config.cache_dir() / "models"
        names = []
        if src_root.is_dir():
            for folder in sorted(src_root.iterdir()):
                if folder.is_dir() and not folder.name.startswith(".") and (folder / "conversion.json").exists():
                    dest = out / "cache" / "models" / folder.name
                    shutil.rmtree(dest, ignore_errors=True)
                    shutil.copytree(folder, dest)
                    names.append(folder.name)
        log(f"converted checkpoints: {names}")
    if course and config.REPO_ROOT is not None and shutil.which("git"):
        archive = out / "edges-to-captions.tar.gz"
        done = subprocess.run(["git", "-C", str(config.REPO_ROOT), "archive", "--format=tar.gz",
                               "--prefix=edges-to-captions/", "-o", str(archive), "HEAD"],
                              capture_output=True, text=True)
        log("course: edges-to-captions.tar.gz (the last commit)" if done.returncode == 0
            else f"course: not archived ({done.stderr.strip()})")
        dirty = subprocess.run(["git", "-C", str(config.REPO_ROOT), "diff", "--quiet", "HEAD", "--",
                                "requirements.lock", "pyproject.toml"], capture_output=True)
        if dirty.returncode != 0:
            log("WARNING: requirements.lock or pyproject.toml has uncommitted changes: the wheels follow "
                "the working tree, the course archive the last commit. Commit, then pack again.")
    sums = []
    for p in sorted(out.rglob("*")):
        if p.is_file() and p.name not in ("SHA256SUMS", "kit.json"):
            sums.append(f"{cache.sha256_file(p)}  {p.relative_to(out).as_posix()}")
    (out / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    meta = {
        "python": platform.python_version(), "platform": f"{sys.platform}-{platform.machine()}",
        "pins": len(pins), "built_from_source": sorted(p for p, h in how.items() if h == "built"),
        "bytes": _folder_bytes(out), "pack_seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "kit.json").write_text(json.dumps(meta, indent=1) + "\n")
    log(f"kit: {config.display_path(out)}  {meta['bytes'] / 2**20:.0f} MiB  "
        f"(Python {meta['python']}, {meta['platform']}); on each laptop: COURSE_KIT=<kit> bash scripts/test.sh")
    return meta


def restore_models(kit: str | os.PathLike, log=print) -> list[str]:
    """Copy the kit's converted checkpoints into the cache (those not there yet)."""
    src_root = Path(kit) / "cache" / "models"
    copied = []
    if src_root.is_dir():
        dest_root = config.cache_dir() / "models"
        dest_root.mkdir(parents=True, exist_ok=True)
        for folder in sorted(src_root.iterdir()):
            dest = dest_root / folder.name
            if folder.is_dir() and not dest.exists():
                cache.write_dir_atomically(dest, lambda tmp, src=folder: shutil.copytree(src, tmp, dirs_exist_ok=True))
                copied.append(folder.name)
    if copied:
        log(f"converted checkpoints copied from the kit: {copied}")
    return copied


def setup_assets(log=print) -> int:
    """What ``scripts/setup.sh`` runs after installing: the data (and a kit's checkpoints).

    Returns an exit code: 0 when Fashion-MNIST is there, 1 with the error that names every
    way to get it.
    """
    from . import data

    kit = os.environ.get(KIT_ENV) or None
    try:
        if kit:
            if not Path(kit).is_dir():
                raise CourseError(f"{KIT_ENV}={kit} is not a folder; expected a kit made by `course pack`")
            restore_models(kit, log=log)
        data.setup_fashion_mnist(kit=kit, log=log)
    except CourseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
