"""A workshop kit: `course pack` writes one, and scripts/setup.sh installs from it offline.

Two tiny hand-made wheels stand in for the lock; the package index is a closed local port
and pip runs with --no-index, so any attempt to reach the network fails the test.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import course_lib as cl
from course_lib import kit

ROOT = Path(__file__).resolve().parents[1]
CLOSED_INDEX = "http://127.0.0.1:9/simple"  # the discard port: nothing listens there


def make_wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel with one module ``name`` defining ``VERSION``."""
    dist = f"{name}-{version}"
    files = {
        f"{name}.py": f"VERSION = {version!r}\n",
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist}.dist-info/RECORD,,")
    files[f"{dist}.dist-info/RECORD"] = "\n".join(record) + "\n"
    whl = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return whl


TINY_BACKEND = """\
import base64, hashlib, os, zipfile

def _wheel(wheel_directory, files):
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files["tiny_course-0.1.dist-info/RECORD"] = "\\n".join(record + ["tiny_course-0.1.dist-info/RECORD,,"]) + "\\n"
    name = "tiny_course-0.1-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return name

def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    return _wheel(wheel_directory, {
        "tiny_course.pth": os.path.abspath(os.path.dirname(__file__)) + "\\n",
        "tiny_course-0.1.dist-info/METADATA": "Metadata-Version: 2.1\\nName: tiny-course\\nVersion: 0.1\\n",
        "tiny_course-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\\nGenerator: tiny\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
    })

build_wheel = build_editable
"""


@pytest.fixture
def offline_env(monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", CLOSED_INDEX)
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    for var in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", kit.KIT_ENV):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def small_kit(tmp_path, offline_env):
    src = tmp_path / "dists"
    src.mkdir()
    make_wheel(src, "tinyalpha", "1.0")
    make_wheel(src, "tinybeta", "2.0")
    make_wheel(src, "tinybeta", "3.0")  # not pinned: must stay out of the kit
    lock = tmp_path / "requirements.lock"
    lock.write_text("# a lock\ntinyalpha==1.0\ntinybeta==2.0  # pinned\n")
    out = tmp_path / "kit"
    meta = kit.pack(out, lock=lock, find_links=src, index=False, data=False, models=False,
                    course=False, log=lambda s: None)
    return out, lock, meta


def test_pack_writes_a_wheel_per_pin_and_checksums(small_kit):
    out, lock, meta = small_kit
    assert sorted(p.name for p in (out / "wheels").iterdir()) == [
        "tinyalpha-1.0-py3-none-any.whl", "tinybeta-2.0-py3-none-any.whl"]
    assert meta["pins"] == 2 and meta["built_from_source"] == []
    assert json.loads((out / "kit.json").read_text())["bytes"] == meta["bytes"] > 0
    sums = dict(line.split("  ")[::-1] for line in (out / "SHA256SUMS").read_text().splitlines())
    assert set(sums) == {"requirements.lock", "wheels/tinyalpha-1.0-py3-none-any.whl",
                         "wheels/tinybeta-2.0-py3-none-any.whl"}
    assert sums["requirements.lock"] == cl.cache.sha256_file(lock)


def test_pack_names_a_pin_it_cannot_get(tmp_path, offline_env):
    lock = tmp_path / "requirements.lock"
    lock.write_text("tinyalpha==9.9\n")
    with pytest.raises(cl.CourseError, match="tinyalpha"):
        kit.pack(tmp_path / "kit", lock=lock, find_links=tmp_path, index=False, data=False,
                 models=False, course=False, log=lambda s: None)


def test_read_lock_refuses_ranges(tmp_path):
    lock = tmp_path / "r.txt"
    lock.write_text("numpy>=1\n")
    with pytest.raises(cl.CourseError, match="exact pin"):
        kit.read_lock(lock)
    assert len(kit.read_lock(ROOT / "requirements.lock")) > 50


def test_setup_installs_from_the_kit_with_no_network(small_kit, tmp_path):
    """The real scripts/setup.sh, in a throwaway course with a two-pin lock, COURSE_KIT set."""
    out, lock, _ = small_kit
    repo = tmp_path / "course"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup.sh", repo / "scripts" / "setup.sh")
    shutil.copy(lock, repo / "requirements.lock")
    # an in-tree build backend: the throwaway venv has no build tools beyond what the kit brings
    (repo / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "tinybackend"\nbackend-path = ["."]\n'
        '[project]\nname = "tiny-course"\nversion = "0.1"\n')
    (repo / "tinybackend.py").write_text(TINY_BACKEND)
    (repo / "course_lib").mkdir()
    (repo / "course_lib" / "__init__.py").write_text("")
    (repo / "course_lib" / "kit.py").write_text(
        "import os\ndef setup_assets():\n    print('assets from', os.path.basename(os.environ['COURSE_KIT']))\n    return 0\n")
    base = getattr(sys, "_base_executable", sys.executable)
    # CHROMIUM set: setup's optional browser step (for the website check) is skipped here
    env = {**os.environ, "COURSE_KIT": str(out), "PYTHON": base, "CHROMIUM": "skipped-in-this-test"}
    done = subprocess.run(["bash", "scripts/setup.sh"], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "from the kit" in done.stdout and "assets from kit" in done.stdout
    py = repo / ".venv" / "bin" / "python"
    got = subprocess.run([str(py), "-c", "import tinyalpha, tinybeta, course_lib.kit; "
                                         "print(tinyalpha.VERSION, tinybeta.VERSION)"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert got.stdout.split() == ["1.0", "2.0"], got.stderr
    again = subprocess.run(["bash", "scripts/setup.sh"], cwd=repo, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and ".venv is up to date" in again.stdout


def test_setup_refuses_a_folder_that_is_not_a_kit(tmp_path):
    env = {**os.environ, "COURSE_KIT": str(tmp_path / "nothing")}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and "not a kit" not in done.stdout and "no wheels/ folder" in done.stderr
