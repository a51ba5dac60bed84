"""Setup obtains Fashion-MNIST by itself: the path a fresh machine takes, with no network.

The real files are replaced by small stand-ins (their checksums patched in), the system
folder and the cache by empty temporary folders, and apt-get by a fake on PATH that
records its calls and drops the files where the Debian package puts them.
"""
from __future__ import annotations

import gzip
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import course_lib as cl
from course_lib import config, data, kit

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_release(tmp_path, monkeypatch):
    """Four tiny valid idx files in ``release/``, their sha256s patched in; empty cache and system folder."""
    release = tmp_path / "release"
    release.mkdir()
    files = {}
    for key, (fname, _) in data.FASHION_FILES.items():
        n = 3
        if "images" in key:
            raw = bytes([0, 0, 8, 3]) + b"".join(v.to_bytes(4, "big") for v in (n, 28, 28)) + bytes(n * 784)
        else:
            raw = bytes([0, 0, 8, 1]) + n.to_bytes(4, "big") + bytes([1, 2, 3])
        (release / fname).write_bytes(gzip.compress(raw, mtime=0))
        files[key] = (fname, cl.cache.sha256_file(release / fname))
    monkeypatch.setattr(data, "FASHION_FILES", files)
    monkeypatch.setenv(config.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(data.FASHION_DIR_ENV, raising=False)
    monkeypatch.setattr(data, "FASHION_SYSTEM_DIR", tmp_path / "system" / "fashion-mnist")
    monkeypatch.setattr(config, "is_online", lambda *a, **k: False)
    data._FASHION_MEMO.clear()
    yield release
    data._FASHION_MEMO.clear()


def _fake_apt(tmp_path, monkeypatch, release: Path, needs_update: bool = False) -> Path:
    """Put a fake ``apt-get`` (and nothing else) on PATH; it logs its argv as JSON lines."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "apt-calls.jsonl"
    script = bindir / "apt-get"
    script.write_text(f"""#!{sys.executable}
import json, shutil, sys
from pathlib import Path
log, release, system = Path({str(log)!r}), Path({str(release)!r}), Path({str(data.FASHION_SYSTEM_DIR)!r})
calls = [json.loads(l) for l in log.read_text().splitlines()] if log.exists() else []
with log.open("a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1] == "install":
    if {needs_update!r} and not any(c[0] == "update" for c in calls):
        sys.exit("E: Unable to locate package dataset-fashion-mnist")
    system.mkdir(parents=True, exist_ok=True)
    for p in release.iterdir():
        shutil.copy(p, system / p.name)
""")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir))
    monkeypatch.setattr(os, "geteuid", lambda: 0)  # as root: no sudo needed
    return log


def test_fresh_machine_installs_the_debian_package(fake_release, tmp_path, monkeypatch):
    log = _fake_apt(tmp_path, monkeypatch, fake_release)
    assert data._missing_fashion() == list(data.FASHION_FILES)  # nothing in cache or system folder
    lines = []
    where = data.setup_fashion_mnist(log=lines.append)
    calls = [json.loads(l) for l in log.read_text().splitlines()]
    assert calls == [["install", "-y", "-q", "--no-install-recommends", "dataset-fashion-mnist"]]
    assert where == data.FASHION_SYSTEM_DIR and not data._missing_fashion()
    X, y = data.load_fashion_mnist("test")
    assert X.shape == (3, 28, 28) and y.tolist() == [1, 2, 3]
    assert any("installing the Debian package" in l for l in lines)
    # a second run finds it and calls apt-get no more
    data.setup_fashion_mnist(log=lines.append)
    assert len(log.read_text().splitlines()) == 1 and "found" in lines[-1]


def test_empty_package_lists_are_updated_first(fake_release, tmp_path, monkeypatch):
    log = _fake_apt(tmp_path, monkeypatch, fake_release, needs_update=True)
    data.setup_fashion_mnist(log=lambda s: None)
    calls = [json.loads(l)[0] for l in log.read_text().splitlines()]
    assert calls == ["install", "update", "install"] and not data._missing_fashion()


def test_no_apt_downloads_the_official_release(fake_release, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no apt-get, no sudo
    monkeypatch.setattr(config, "is_online", lambda *a, **k: True)
    monkeypatch.setattr(data, "FASHION_URL", fake_release.as_uri() + "/")  # a local "release"
    where = data.setup_fashion_mnist(log=lambda s: None)
    assert where == tmp_path / "cache" / "fashion-mnist" and not data._missing_fashion()
    for fname, sha in data.FASHION_FILES.values():
        assert cl.cache.sha256_file(where / fname) == sha


def test_a_corrupted_download_is_not_used(fake_release, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setattr(config, "is_online", lambda *a, **k: True)
    monkeypatch.setattr(data, "FASHION_URL", fake_release.as_uri() + "/")
    (fake_release / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not the release")
    with pytest.raises(cl.CourseError, match="sha256"):
        data.setup_fashion_mnist(log=lambda s: None)
    assert not (tmp_path / "cache" / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").exists()


def test_nothing_works_names_every_way(fake_release, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.delenv(kit.KIT_ENV, raising=False)
    with pytest.raises(cl.CourseError) as err:
        data.setup_fashion_mnist(log=lambda s: None)
    msg = str(err.value)
    for way in ("sudo apt-get install dataset-fashion-mnist", "course fetch fashion-mnist",
                "official release", data.FASHION_DIR_ENV, kit.KIT_ENV, "offline"):
        assert way in msg
    assert kit.setup_assets(log=lambda s: None) == 1  # what setup.sh runs: exit code 1, message on stderr
    assert "sudo apt-get install dataset-fashion-mnist" in capsys.readouterr().err


def test_a_kit_folder_is_copied_into_the_cache(fake_release, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    kit_dir = tmp_path / "kit"
    (kit_dir / "fashion-mnist").mkdir(parents=True)
    for p in fake_release.iterdir():
        (kit_dir / "fashion-mnist" / p.name).write_bytes(p.read_bytes())
    (kit_dir / "cache" / "models" / "tiny").mkdir(parents=True)
    (kit_dir / "cache" / "models" / "tiny" / "conversion.json").write_text("{}")
    monkeypatch.setenv(kit.KIT_ENV, str(kit_dir))
    assert kit.setup_assets(log=lambda s: None) == 0
    assert not data._missing_fashion()
    assert (tmp_path / "cache" / "models" / "tiny" / "conversion.json").exists()


def test_checksums_file_is_what_the_fetcher_uses():
    sums = data.read_checksums(ROOT / "data" / "checksums.sha256")
    assert sums == {f"fashion-mnist/{f}": s for f, s in data._FASHION_BUILTIN.values()}
    assert data.read_checksums() == sums and data._fashion_files() == data._FASHION_BUILTIN


def test_ci_runs_the_readme_command_and_nothing_setup_should_do():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in ci and "apt-get" not in ci
    assert "bash scripts/test.sh" in (ROOT / "README.md").read_text()
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "kit.setup_assets()" in setup
    for script in ("test.sh", "course.sh"):
        assert "bash scripts/setup.sh" in (ROOT / "scripts" / script).read_text()


def test_idx_reader_on_the_stand_in(fake_release):
    X = data._read_idx(fake_release / "t10k-images-idx3-ubyte.gz")
    assert X.shape == (3, 28, 28) and X.dtype == np.uint8
