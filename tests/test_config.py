import os
import socket
import time

import numpy as np
import pytest

import course_lib as cl
from course_lib import config


def test_scale_and_pick(monkeypatch):
    monkeypatch.setenv("COURSE_SCALE", "smoke")
    assert config.scale() == "smoke" and config.pick(smoke=1, default=2, full=3) == 1
    monkeypatch.setenv("COURSE_SCALE", "default")
    assert config.pick(smoke=1, default=2, full=3) == 2
    monkeypatch.setenv("COURSE_SCALE", "full")
    assert config.pick(smoke=1, default=2) == 2  # full falls back to default
    assert config.pick(smoke=1, default=2, full=3) == 3


def test_bad_scale_names_the_fix(monkeypatch):
    monkeypatch.setenv("COURSE_SCALE", "huge")
    with pytest.raises(cl.CourseError, match="COURSE_SCALE"):
        config.scale()


def test_seeding_makes_numpy_and_torch_repeat():
    import torch

    config.seed_everything(123)
    a = (np.random.rand(3), torch.rand(3))
    config.seed_everything(123)
    b = (np.random.rand(3), torch.rand(3))
    assert np.array_equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(cl.CourseError):
        config.seed_everything(-1)


def test_device_choice(monkeypatch):
    import torch

    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    dev = config.device()
    assert dev.type in ("cuda", "mps", "cpu")
    if not torch.cuda.is_available():
        assert dev.type != "cuda"
        with pytest.raises(cl.CourseError, match="only"):
            config.device("cuda")
    assert config.device("cpu").type == "cpu"


def test_cache_dir_moves_with_env(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path / "c"))
    assert config.cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()


def test_offline_env_is_honoured_without_probing(monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("probed the network although HF_HUB_OFFLINE was set")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert config.is_online(refresh=True) is False
    assert os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_probe_gives_up_within_its_timeout(monkeypatch):
    """A dead network that never answers (e.g. DNS hanging) costs at most the timeout."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: time.sleep(30))
    t0 = time.monotonic()
    assert config.is_online(refresh=True, timeout=0.5) is False
    assert time.monotonic() - t0 < 2.0
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # the hub libraries were switched off
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config.is_online(refresh=True)


def test_display_path_hides_machine_paths():
    assert config.display_path(config.REPO_ROOT / "data" / "cache") == "data/cache"
    assert not config.display_path(os.path.expanduser("~/x/y")).startswith("/")


def test_setup_returns_everything(capsys):
    info = config.setup(seed=1)
    assert set(info) >= {"seed", "scale", "device", "online", "cache"}
    out = capsys.readouterr().out
    assert "scale=" in out and str(config.REPO_ROOT) not in out
