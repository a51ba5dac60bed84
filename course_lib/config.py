"""Course-wide settings: scale profile, seeding, device, cache folder, offline switch.

Introduced in notebook 00. Every notebook's setup cell calls::

    import course_lib as cl
    cl.config.setup(seed=0)          # seeds everything, decides offline/online once

Environment variables (all optional):

=====================  =====================================================
``COURSE_SCALE``       ``smoke`` (tests, seconds), ``default`` (2-core laptop
                       CPU, minutes) or ``full`` (a GPU). Default: ``default``.
``COURSE_CACHE``       where fetched data, converted checkpoints and cached
                       features live. Default: ``<repo>/data/cache``.
``COURSE_DEVICE``      force ``cpu`` / ``cuda`` / ``mps``.
``HF_HUB_OFFLINE``     ``1`` forces offline, ``0`` forces online. Unset: a
                       short network probe decides (< 2 s).
=====================  =====================================================
"""
from __future__ import annotations

import os
import random
import socket
import threading
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

SCALES = ("smoke", "default", "full")
SCALE_ENV = "COURSE_SCALE"
CACHE_ENV = "COURSE_CACHE"
DEVICE_ENV = "COURSE_DEVICE"

#: Repository root when course_lib is used from a clone (``None`` when installed elsewhere).
REPO_ROOT: Path | None = (
    Path(__file__).resolve().parent.parent
    if (Path(__file__).resolve().parent.parent / "notebooks").is_dir()
    else None
)

_ONLINE: bool | None = None
_HUB_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
_PROBE_HOST = ("huggingface.co", 443)


class CourseError(RuntimeError):
    """Base class of the errors course_lib raises on bad input or missing assets."""


def scale() -> str:
    """Return the active scale profile (``smoke``, ``default`` or ``full``) from ``COURSE_SCALE``.

    Introduced in notebook 00.
    """
    value = os.environ.get(SCALE_ENV, "default").strip().lower() or "default"
    if value not in SCALES:
        raise CourseError(
            f"{SCALE_ENV}={value!r} is not a scale profile; expected one of {SCALES}. "
            f"Fix: export {SCALE_ENV}=default (or smoke / full)."
        )
    return value


def pick(smoke: T, default: T, full: T | None = None) -> T:
    """Pick a value by the active profile, e.g. ``num_epochs = pick(smoke=1, default=8, full=30)``.

    ``full`` falls back to ``default`` when not given. Introduced in notebook 00.
    """
    s = scale()
    if s == "smoke":
        return smoke
    if s == "full" and full is not None:
        return full
    return default


def seed_everything(seed: int = 0) -> int:
    """Seed Python, NumPy and torch (all devices) and make torch's CPU kernels deterministic.

    Returns the seed. Introduced in notebook 00; called once in every setup cell.
    """
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise CourseError(f"seed must be a non-negative int, got {seed!r}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    try:
        import torch
    except ImportError:  # the classical notebooks work without torch
        return seed
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return seed


def device(prefer: str | None = None):
    """Return the best available ``torch.device``: cuda > mps > cpu.

    ``prefer`` (or ``COURSE_DEVICE``) forces one; asking for a device that is not there
    raises a CourseError that says which ones are. Introduced in notebook 00.
    """
    import torch

    want = (prefer or os.environ.get(DEVICE_ENV, "")).strip().lower()
    available = ["cpu"]
    if torch.cuda.is_available():
        available.insert(0, "cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        available.insert(0 if "cuda" not in available else 1, "mps")
    if not want:
        return torch.device(available[0])
    if want.split(":")[0] not in available:
        raise CourseError(
            f"device {want!r} was asked for (argument or {DEVICE_ENV}) but only {available} "
            f"are available here. Fix: unset {DEVICE_ENV} to pick automatically."
        )
    return torch.device(want)


def cache_dir() -> Path:
    """Folder for fetched data, converted checkpoints and feature caches (created if needed).

    ``COURSE_CACHE`` moves it; the default is ``data/cache`` in the repository (or
    ``~/.cache/edges-to-captions`` when course_lib is installed outside a clone).
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        path = Path(env).expanduser()
    elif REPO_ROOT is not None:
        path = REPO_ROOT / "data" / "cache"
    else:
        path = Path.home() / ".cache" / "edges-to-captions"
    path.mkdir(parents=True, exist_ok=True)
    return path


def display_path(path: str | os.PathLike) -> str:
    """A path as shown to learners: relative to the repository (or ``~``) when possible.

    Stored notebooks must not carry the absolute paths of the machine that ran them.
    """
    p = Path(path).resolve()
    for base, label in ((REPO_ROOT, ""), (Path.home(), "~/")):
        if base is not None:
            try:
                rel = p.relative_to(base.resolve())
            except ValueError:
                continue
            return f"{label}{rel.as_posix()}" if label else rel.as_posix()
    return p.name if p.is_absolute() and len(p.parts) > 4 else str(p)


def _probe(host: tuple[str, int], timeout: float) -> bool:
    """True when a TCP connection to ``host`` opens within ``timeout`` seconds (DNS included)."""
    result: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection(host, timeout=timeout):
                result.append(True)
        except Exception:  # noqa: BLE001 - any failure to connect means "offline"
            result.append(False)

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(timeout)  # DNS has no timeout of its own: never wait for it past ours
    return bool(result and result[0])


def _set_hub_offline(offline: bool) -> None:
    value = "1" if offline else "0"
    for var in _HUB_OFFLINE_VARS:
        os.environ[var] = value
    # huggingface_hub reads the variable at import time; patch it if already imported.
    import sys

    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = offline


def is_online(refresh: bool = False, timeout: float = 1.5) -> bool:
    """Decide once whether the model hub is reachable, then set the hub's offline switches.

    ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``) means offline without probing;
    ``HF_HUB_OFFLINE=0`` means online without probing; otherwise one TCP probe with a
    ``timeout`` (default 1.5 s) decides. The answer is cached for the session.
    Introduced in notebook 00.
    """
    global _ONLINE
    if _ONLINE is not None and not refresh:
        return _ONLINE
    forced = os.environ.get("HF_HUB_OFFLINE", os.environ.get("TRANSFORMERS_OFFLINE"))
    if forced is not None and forced.strip() != "":
        online = forced.strip().lower() in ("0", "false", "no", "off")
    else:
        online = _probe(_PROBE_HOST, timeout)
    _set_hub_offline(not online)
    _ONLINE = online
    return online


def setup(seed: int = 0, *, quiet: bool = False) -> dict[str, Any]:
    """One call for a notebook's setup cell: seed, device, profile, cache, offline decision.

    Returns a dict with ``seed``, ``scale``, ``device``, ``online``, ``cache`` and prints a
    one-line summary unless ``quiet``. Introduced in notebook 00.
    """
    info = {
        "seed": seed_everything(seed),
        "scale": scale(),
        "online": is_online(),
        "cache": cache_dir(),
    }
    try:
        info["device"] = device()
    except ImportError:
        info["device"] = "cpu"
    if not quiet:
        print(
            f"scale={info['scale']}  device={info['device']}  "
            f"{'online' if info['online'] else 'offline'}  seed={seed}  "
            f"cache={display_path(info['cache'])}"
        )
    return info
