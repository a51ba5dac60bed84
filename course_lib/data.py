"""Data: bundled real photos, textures, Fashion-MNIST and FashionScenes.

Every loader returns plain NumPy arrays with documented shapes and dtypes:

* photos: ``(H, W, 3)`` uint8 RGB (notebook 01)
* textures: ``(H, W)`` uint8 grey (real) or float32 in [0, 1] (procedural) (notebook 03)
* Fashion-MNIST: ``(N, 28, 28)`` uint8 and ``(N,)`` int64 labels (notebook 04)
* FashionScenes: ``(N, 64, 64, 3)`` uint8 scenes with scene graphs and captions (notebook 00)
"""
from __future__ import annotations

import gzip
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from . import config
from .cache import atomic_file, sha256_file
from .config import CourseError

# --------------------------------------------------------------------------- image statistics
# The one home of the normalisation constants (every loader and backbone input uses these).

#: Fashion-MNIST / FashionScenes pixels for the course's own models: ``(x / 255 - 0.5) / 0.5``
#: maps [0, 255] to [-1, 1] (``cl.train.make_loader``, the captioner's pixel ViT, 11's MLP).
PIXEL_MEAN = 0.5
PIXEL_STD = 0.5
#: ImageNet channel statistics (RGB, in [0, 1] units) of the pretrained ViTs (DINOv2-S).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: EfficientNet-Lite0's input map ``(x - 127) / 128`` written as a mean and std in [0, 1] units.
CNN_MEAN = (127.0 / 255,) * 3
CNN_STD = (128.0 / 255,) * 3

# --------------------------------------------------------------------------- photos

#: name -> (package, loader description). All ship inside installed packages: no download.
PHOTOS: dict[str, str] = {
    "astronaut": "skimage", "camera": "skimage", "chelsea": "skimage", "coffee": "skimage",
    "coins": "skimage", "horse": "skimage", "hubble_deep_field": "skimage",
    "immunohistochemistry": "skimage", "moon": "skimage", "page": "skimage",
    "retina": "skimage", "rocket": "skimage", "text": "skimage",
    "china": "sklearn", "flower": "sklearn", "grace_hopper": "matplotlib",
}
_ALIASES = {"cat": "chelsea"}


def list_photos() -> list[str]:
    """Names accepted by :func:`load_photo`. Introduced in notebook 00."""
    return sorted(PHOTOS)


def load_photo(name: str) -> np.ndarray:
    """Load a bundled real photo as ``(H, W, 3)`` uint8 RGB in [0, 255].

    Grey photos (camera, coins, moon, page, text, horse) are repeated over three channels so
    that every photo has the same layout. Introduced in notebook 00.
    """
    key = _ALIASES.get(name, name)
    if key not in PHOTOS:
        raise CourseError(f"unknown photo {name!r}; expected one of {list_photos()}")
    source = PHOTOS[key]
    if source == "skimage":
        import skimage.data

        img = getattr(skimage.data, key)()
    elif source == "sklearn":
        from sklearn.datasets import load_sample_image

        img = load_sample_image(f"{key}.jpg")
    else:
        import matplotlib.cbook
        import matplotlib.image

        with matplotlib.cbook.get_sample_data(f"{key}.jpg") as f:
            img = matplotlib.image.imread(f, format="jpg")
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    elif img.dtype != np.uint8:
        img = (np.clip(img.astype(np.float64), 0, 1) * 255).round().astype(np.uint8) if img.max() <= 1 else img.astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.shape[2] == 4:
        img = img[..., :3]
    return np.ascontiguousarray(img)


# --------------------------------------------------------------------------- textures

REAL_TEXTURES = ("brick", "grass", "gravel")


def load_texture(name: str) -> np.ndarray:
    """Load a real scikit-image texture (brick, grass, gravel) as ``(512, 512)`` uint8 grey.

    Introduced in notebook 03.
    """
    if name not in REAL_TEXTURES:
        raise CourseError(f"unknown texture {name!r}; expected one of {REAL_TEXTURES}")
    import skimage.data

    return np.ascontiguousarray(getattr(skimage.data, name)())


PROCEDURAL_KINDS = ("grating", "checker", "dots", "blobs")


def procedural_texture(
    kind: str,
    size: int = 64,
    orientation: float = 0.0,
    frequency: float = 0.125,
    scale: float = 1.0,
    phase: float = 0.0,
    noise: float = 0.0,
    seed: int | None = None,
) -> np.ndarray:
    """A texture with known parameters, ``(size, size)`` float32 in [0, 1].

    ``kind``: ``grating`` (sinusoid), ``checker``, ``dots`` or ``blobs`` (smoothed noise).
    ``orientation`` in degrees (counter-clockwise, 0 = vertical stripes), ``frequency`` in
    cycles per pixel (0 < f <= 0.5) at ``scale`` 1; ``scale`` > 1 zooms in (lower
    frequency), ``noise`` is the std of added Gaussian noise. Introduced in notebook 03.
    """
    if kind not in PROCEDURAL_KINDS:
        raise CourseError(f"unknown procedural texture {kind!r}; expected one of {PROCEDURAL_KINDS}")
    if not (0 < frequency <= 0.5):
        raise CourseError(f"frequency must be in (0, 0.5] cycles/pixel, got {frequency}")
    if scale <= 0 or size < 4:
        raise CourseError(f"need scale > 0 and size >= 4, got scale={scale}, size={size}")
    rng = np.random.default_rng(seed)
    f = frequency / scale
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    yy -= (size - 1) / 2
    xx -= (size - 1) / 2
    th = np.deg2rad(orientation)
    u = xx * np.cos(th) + yy * np.sin(th)
    v = -xx * np.sin(th) + yy * np.cos(th)
    if kind == "grating":
        img = 0.5 + 0.5 * np.cos(2 * np.pi * f * u + phase)
    elif kind == "checker":
        img = 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * f * u + phase) * np.sin(2 * np.pi * f * v + phase))
    elif kind == "dots":
        img = (np.cos(2 * np.pi * f * u + phase) * np.cos(2 * np.pi * f * v + phase) > 0.5).astype(np.float64)
    else:  # blobs: low-pass filtered noise, blob size ~ 1/f
        from scipy.ndimage import gaussian_filter

        img = gaussian_filter(rng.standard_normal((size, size)), sigma=max(0.5, 0.25 / f), mode="wrap")
        img = (img - img.min()) / (np.ptp(img) + 1e-12)
    if noise > 0:
        img = img + rng.normal(0, noise, img.shape)
    return np.clip(img, 0, 1).astype(np.float32)


# --------------------------------------------------------------------------- Fashion-MNIST

FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
#: built-in copy of ``data/checksums.sha256`` (used when course_lib is installed outside a clone)
_FASHION_BUILTIN = {
    "train-images": ("train-images-idx3-ubyte.gz", "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"),
    "train-labels": ("train-labels-idx1-ubyte.gz", "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056"),
    "t10k-images": ("t10k-images-idx3-ubyte.gz", "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa"),
    "t10k-labels": ("t10k-labels-idx1-ubyte.gz", "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05"),
}


def read_checksums(path: str | os.PathLike | None = None) -> dict[str, str]:
    """``{"fashion-mnist/<file>": sha256}`` from ``data/checksums.sha256`` (``sha256sum`` format).

    Every file the course fetches from outside a package is listed there; the fetcher
    verifies against it. Returns ``{}`` outside a clone. Introduced in notebook 00.
    """
    if path is None:
        if config.REPO_ROOT is None:
            return {}
        path = config.REPO_ROOT / "data" / "checksums.sha256"
    path = Path(path)
    if not path.exists():
        return {}
    sums = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            digest, name = line.split(maxsplit=1)
            sums[name.lstrip("*")] = digest.lower()
    return sums


def _fashion_files() -> dict[str, tuple[str, str]]:
    sums = read_checksums()
    return {key: (fname, sums.get(f"fashion-mnist/{fname}", sha)) for key, (fname, sha) in _FASHION_BUILTIN.items()}


#: key -> (official file name, sha256), from data/checksums.sha256 in a clone
FASHION_FILES = _fashion_files()
FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian: dataset-fashion-mnist
FASHION_DIR_ENV = "FASHION_MNIST_DIR"


def _fashion_cache() -> Path:
    return config.cache_dir() / "fashion-mnist"


def _system_dirs() -> list[Path]:
    dirs = [Path(os.environ[FASHION_DIR_ENV])] if os.environ.get(FASHION_DIR_ENV) else []
    return dirs + [FASHION_SYSTEM_DIR]


def _download(url: str, dest: Path, sha256: str, timeout: float = 20.0) -> None:
    """Download to a temp file beside ``dest``, verify the checksum, then rename into place."""
    with atomic_file(dest, suffix=".part") as out:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
        out.flush()
        got = sha256_file(out.name)
        if got != sha256:  # raising here deletes the temporary file: dest is never touched
            raise CourseError(f"download of {url} has sha256 {got}, expected {sha256}; not used")


def fashion_mnist_file(key: str, *, allow_download: bool = True) -> Path:
    """Locate one verified Fashion-MNIST file: cache -> system folder -> official download.

    A cached file whose sha256 does not match is deleted and fetched again, never used.
    Introduced in notebook 04 (``course fetch`` calls it too).
    """
    fname, sha = FASHION_FILES[key]
    cached = _fashion_cache() / fname
    if cached.exists():
        if sha256_file(cached) == sha:
            return cached
        cached.unlink()  # corrupted or half-written: never use it
    tried = [f"cache: {config.display_path(cached)} (missing)"]
    for d in _system_dirs():
        p = d / fname
        if p.exists() and sha256_file(p) == sha:
            return p
        tried.append(f"system folder: {p} ({'checksum mismatch' if p.exists() else 'missing'})")
    if allow_download and config.is_online():
        try:
            _download(FASHION_URL + fname, cached, sha)
            return cached
        except (OSError, CourseError) as e:
            tried.append(f"download from the official release: failed ({e})")
    else:
        tried.append("download from the official release: skipped (offline)")
    raise CourseError(
        f"Fashion-MNIST file {fname} not found. Tried:\n  - " + "\n  - ".join(tried) + "\n"
        "Fix one of: (1) Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist; "
        f"(2) put the four official *-ubyte.gz files in a folder and set {FASHION_DIR_ENV} "
        f"to it (or copy them into {config.display_path(_fashion_cache())}); "
        "(3) go online and run `course fetch fashion-mnist`."
    )


FASHION_DEBIAN_PACKAGE = "dataset-fashion-mnist"


def _apt_prefix() -> list[str] | None:
    """The command prefix that may run apt-get here (``[]`` as root, ``["sudo", "-n"]``), or None."""
    import shutil
    import subprocess

    if shutil.which("apt-get") is None:
        return None
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return []
    if shutil.which("sudo") is None:
        return None
    try:  # passwordless sudo only: setup never waits for a password
        ok = subprocess.run(["sudo", "-n", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return ["sudo", "-n"] if ok else None


def _apt_install(prefix: list[str], log=print) -> bool:
    """``apt-get install`` the Debian package (``apt-get update`` first if the lists lack it)."""
    import subprocess

    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*prefix, "apt-get", "install", "-y", "-q", "--no-install-recommends", FASHION_DEBIAN_PACKAGE]
    for attempt in ("install", "update"):
        if attempt == "update":
            log("  apt-get update (the package lists do not have it yet)")
            if subprocess.run([*prefix, "apt-get", "update", "-q"], env=env, capture_output=True).returncode != 0:
                return False
        log(f"  {' '.join(install)}")
        done = subprocess.run(install, env=env, capture_output=True, text=True)
        if done.returncode == 0:
            return True
    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
    log(f"  apt-get failed: {tail[0]}")
    return False


def _missing_fashion(allow_download: bool = False) -> list[str]:
    missing = []
    for key in FASHION_FILES:
        try:
            fashion_mnist_file(key, allow_download=allow_download)
        except CourseError:
            missing.append(key)
    return missing


def copy_fashion_mnist(folder: str | os.PathLike) -> list[Path]:
    """Copy verified official ``*-ubyte.gz`` files from ``folder`` into the cache.

    Files whose sha256 does not match are skipped. Returns the cached paths. Used by setup
    with a workshop kit (``course pack``).
    """
    import shutil

    out = []
    for fname, sha in FASHION_FILES.values():
        src = Path(folder) / fname
        if src.exists() and sha256_file(src) == sha:
            dest = _fashion_cache() / fname
            if not dest.exists() or sha256_file(dest) != sha:
                with atomic_file(dest, suffix=".part") as part, open(src, "rb") as f:
                    shutil.copyfileobj(f, part)
            out.append(dest)
    return out


def setup_fashion_mnist(*, kit: str | os.PathLike | None = None, install: bool = True,
                        download: bool = True, log=print) -> Path:
    """Make the four Fashion-MNIST files present and verified; what ``scripts/setup.sh`` runs.

    Tries, in order: the cache and the folders already on the machine (``FASHION_MNIST_DIR``,
    the Debian folder); a workshop kit folder (``kit/fashion-mnist``, copied into the cache);
    the Debian package ``dataset-fashion-mnist`` where apt-get may run (as root or with
    passwordless sudo); the official release over the internet (checksummed). Returns the
    folder of the first file; raises :class:`CourseError` naming every way when none works.
    """
    if not _missing_fashion():
        where = fashion_mnist_file("t10k-labels", allow_download=False).parent
        log(f"Fashion-MNIST: found ({config.display_path(where)})")
        return where
    tried = []
    if kit:
        got = copy_fashion_mnist(Path(kit) / "fashion-mnist")
        tried.append(f"the kit {kit}: {len(got)} of 4 files")
        if not _missing_fashion():
            log(f"Fashion-MNIST: copied from the kit into {config.display_path(_fashion_cache())}")
            return _fashion_cache()
    if install:
        prefix = _apt_prefix()
        if prefix is None:
            tried.append("Debian package: apt-get cannot run here (no apt-get, or not root and no passwordless sudo)")
        else:
            log(f"Fashion-MNIST: installing the Debian package {FASHION_DEBIAN_PACKAGE}")
            ok = _apt_install(prefix, log)
            if not _missing_fashion():
                where = fashion_mnist_file("t10k-labels", allow_download=False).parent
                log(f"Fashion-MNIST: installed ({config.display_path(where)})")
                return where
            tried.append(f"Debian package: apt-get install {'did not provide the files' if ok else 'failed'}")
    if download:
        if config.is_online():
            log("Fashion-MNIST: downloading the official release (checksummed)")
            try:
                for key in FASHION_FILES:
                    fashion_mnist_file(key)
                log(f"Fashion-MNIST: downloaded into {config.display_path(_fashion_cache())}")
                return _fashion_cache()
            except CourseError as e:
                failed = [ln.strip() for ln in str(e).splitlines() if "official release" in ln]
                tried.append(failed[0] if failed else "official release: download failed")
        else:
            tried.append("official release: offline")
    raise CourseError(
        "Fashion-MNIST could not be set up (" + "; ".join(tried) + ").\n"
        "Any one of these fixes it, then run the command again:\n"
        f"  1. Debian/Ubuntu: sudo apt-get install {FASHION_DEBIAN_PACKAGE}\n"
        "  2. with internet: run the command again, or `.venv/bin/course fetch fashion-mnist` "
        "(the official release, checksummed)\n"
        f"  3. a copy: set {FASHION_DIR_ENV} to a folder with the four official *-ubyte.gz files, "
        f"or COURSE_KIT to a workshop kit made by `course pack` (or copy the files into "
        f"{config.display_path(_fashion_cache())})"
    )


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


_FASHION_MEMO: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def load_fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST as ``X`` (N, 28, 28) uint8 in [0, 255] and ``y`` (N,) int64 in [0, 9].

    ``split``: ``"train"`` (60,000) or ``"test"`` (10,000). Class names are
    :data:`FASHION_CLASSES`. The arrays are read-only views shared between calls.
    Introduced in notebook 00; used in 04-09.
    """
    if split not in ("train", "test"):
        raise CourseError(f"split must be 'train' or 'test', got {split!r}")
    if split not in _FASHION_MEMO:
        prefix = "train" if split == "train" else "t10k"
        X = _read_idx(fashion_mnist_file(f"{prefix}-images"))
        y = _read_idx(fashion_mnist_file(f"{prefix}-labels")).astype(np.int64)
        X.flags.writeable = False
        y.flags.writeable = False
        _FASHION_MEMO[split] = (X, y)
    return _FASHION_MEMO[split]


# --------------------------------------------------------------------------- FashionScenes

SCENE_SIZE = 64
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 45, 40), "green": (40, 185, 70), "blue": (55, 95, 235),
    "yellow": (235, 215, 45), "purple": (160, 70, 210), "orange": (245, 145, 35),
}
TEXTURES = ("plain", "striped", "dotted", "checked")
SIZES: dict[str, int] = {"small": 20, "large": 30}
POSITIONS = ("top left", "top right", "bottom left", "bottom right")  # 32x32 quadrants
#: one-word name of each Fashion-MNIST class, as used in captions
OBJECT_WORDS = ("t-shirt", "trouser", "pullover", "dress", "coat",
                "sandal", "shirt", "sneaker", "bag", "boot")
#: (colour, object) compositions that never appear in the train/val/test splits
HELDOUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("red", "bag"), ("green", "dress"), ("blue", "sneaker"),
    ("yellow", "coat"), ("purple", "trouser"), ("orange", "boot"),
)
SCENE_SPLITS = ("train", "val", "test", "heldout")
_SLOT_ORIGIN = np.array([(0, 0), (0, 32), (32, 0), (32, 32)])  # (row, col) of each quadrant
_FIELDS = ("object", "colour", "texture", "size")


def _texture_pattern(texture: int, s: int) -> np.ndarray:
    yy, xx = np.mgrid[0:s, 0:s]
    if texture == 0:
        p = np.ones((s, s))
    elif texture == 1:
        p = (yy // 2) % 2 == 0
    elif texture == 2:
        p = ((yy % 4) >= 2) | ((xx % 4) >= 2)
        p = ~p
    else:
        p = ((yy // 3) + (xx // 3)) % 2 == 0
    return np.where(p, 1.0, 0.4).astype(np.float32)


_HELD = np.zeros((len(COLOURS), len(OBJECT_WORDS)), dtype=bool)
for _c, _o in HELDOUT_PAIRS:
    _HELD[list(COLOURS).index(_c), OBJECT_WORDS.index(_o)] = True


@dataclass
class Scenes:
    """A batch of FashionScenes.

    ``images``: (N, 64, 64, 3) uint8 RGB. ``slots``: per field (``object``, ``colour``,
    ``texture``, ``size``) an (N, 4) int64 array over the four quadrants (top left, top
    right, bottom left, bottom right), -1 where the quadrant is empty. ``masks``:
    (N, 64, 64) uint8, 0 for background, k+1 for the item in quadrant k.
    ``source``: (N, 4) index of the Fashion-MNIST image used (-1 if empty).
    ``captions``: one string per scene, from :func:`scene_caption`.
    """

    images: np.ndarray
    slots: dict[str, np.ndarray]
    masks: np.ndarray
    source: np.ndarray
    captions: list[str]
    split: str
    seed: int
    graphs: list[list[dict]] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def counts(self) -> np.ndarray:
        """(N,) int64 number of items in each scene (1-3)."""
        return (self.slots["object"] >= 0).sum(1)

    def subset(self, idx: Sequence[int] | np.ndarray) -> "Scenes":
        """A new Scenes with the scenes at ``idx``."""
        idx = np.asarray(idx)
        return Scenes(self.images[idx], {k: v[idx] for k, v in self.slots.items()},
                      self.masks[idx], self.source[idx], [self.captions[i] for i in idx],
                      self.split, self.seed, [self.graphs[i] for i in idx])


def scene_graph(slots_row: dict[str, np.ndarray]) -> list[dict]:
    """The scene graph of one scene: a list of items in reading order, each a dict with
    ``object``, ``colour``, ``texture``, ``size``, ``position`` (strings)."""
    items = []
    for k in range(4):
        o = int(slots_row["object"][k])
        if o < 0:
            continue
        items.append({
            "object": OBJECT_WORDS[o],
            "colour": list(COLOURS)[int(slots_row["colour"][k])],
            "texture": TEXTURES[int(slots_row["texture"][k])],
            "size": list(SIZES)[int(slots_row["size"][k])],
            "position": POSITIONS[k],
        })
    return items


def scene_caption(graph: list[dict]) -> str:
    """Caption from a scene graph, by the course grammar::

        caption := item ( " and " item )*
        item    := "a " size " " colour " " texture " " object " at the " position

    e.g. ``"a small red striped bag at the top left and a large blue plain boot at the
    bottom right"``. Items come in reading order. Introduced in notebook 00.
    """
    return " and ".join(
        f"a {it['size']} {it['colour']} {it['texture']} {it['object']} at the {it['position']}"
        for it in graph
    )


def parse_caption(caption: str) -> list[dict]:
    """Parse a caption back into a scene graph (inverse of :func:`scene_caption`).

    Words it does not understand are skipped, so a partly wrong caption still yields the
    items it names correctly; an item needs at least its object word. Used to score
    generated captions (notebook 10).
    """
    vocab = {
        "size": set(SIZES), "colour": set(COLOURS), "texture": set(TEXTURES),
        "object": set(OBJECT_WORDS),
    }
    items = []
    for chunk in caption.lower().replace(".", " ").split(" and "):
        words = chunk.split()
        item: dict = {}
        for w in words:
            for key, values in vocab.items():
                if w in values and key not in item:
                    item[key] = w
        for pos in POSITIONS:
            if f"at the {pos}" in " ".join(words):
                item["position"] = pos
        if "object" in item:
            items.append(item)
    return items


def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) linear-interpolation weights (pixel centres aligned, like cv2.INTER_LINEAR)."""
    x = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    x = np.clip(x, 0, n_in - 1)
    lo = np.floor(x).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    w = x - lo
    A = np.zeros((n_out, n_in), dtype=np.float32)
    A[np.arange(n_out), lo] += 1 - w
    A[np.arange(n_out), hi] += w
    return A


def _resize_items(imgs: np.ndarray, s: int) -> np.ndarray:
    """(M, h, w) uint8 -> (M, s, s) float32 in [0, 1] by separable linear interpolation."""
    A = _interp_matrix(imgs.shape[1], s)
    B = _interp_matrix(imgs.shape[2], s)
    return np.einsum("ij,mjk,lk->mil", A, imgs.astype(np.float32) / 255.0, B, optimize=True)


def _sample_slots(n: int, split: str, rng: np.random.Generator, max_items: int) -> dict[str, np.ndarray]:
    nc, no = len(COLOURS), len(OBJECT_WORDS)
    counts = rng.integers(1, max_items + 1, size=n)
    # choose `count` distinct quadrants per scene: rank random keys
    keys = rng.random((n, 4))
    ranks = keys.argsort(1).argsort(1)
    present = ranks < counts[:, None]
    colour = rng.integers(0, nc, size=(n, 4))
    obj = rng.integers(0, no, size=(n, 4))
    held = _HELD[colour, obj] & present
    if split == "heldout":
        # the first present quadrant of each scene gets a held-out composition ...
        first = np.where(present, ranks, 9).argmin(1)
        pair = rng.integers(0, len(HELDOUT_PAIRS), size=n)
        colour[np.arange(n), first] = [list(COLOURS).index(HELDOUT_PAIRS[p][0]) for p in pair]
        obj[np.arange(n), first] = [OBJECT_WORDS.index(HELDOUT_PAIRS[p][1]) for p in pair]
    else:
        # ... and the other splits never contain one: resample until none is left
        while held.any():
            colour[held] = rng.integers(0, nc, size=held.sum())
            obj[held] = rng.integers(0, no, size=held.sum())
            held = _HELD[colour, obj] & present
    slots = {
        "object": obj, "colour": colour,
        "texture": rng.integers(0, len(TEXTURES), size=(n, 4)),
        "size": rng.integers(0, len(SIZES), size=(n, 4)),
    }
    return {k: np.where(present, v, -1).astype(np.int64) for k, v in slots.items()}


def make_scenes(n: int, split: str = "train", seed: int = 0, max_items: int = 3,
                chunk: int = 2048) -> Scenes:
    """Generate ``n`` FashionScenes, deterministic in (``n``, ``split``, ``seed``).

    Each scene has 1..``max_items`` Fashion-MNIST items in distinct 32x32 quadrants of a
    64x64 dark, slightly noisy canvas; each item has an object class, a colour, a texture
    fill and a size. Splits: ``train`` and ``val`` draw items from Fashion-MNIST's training
    images (first 50k / last 10k), ``test`` and ``heldout`` from its test images;
    ``heldout`` scenes each contain at least one (colour, object) pair of
    :data:`HELDOUT_PAIRS`, which never occur in the other splits. Vectorised: about
    ten thousand scenes a second on a laptop core. Introduced in notebook 00.
    """
    if split not in SCENE_SPLITS:
        raise CourseError(f"split must be one of {SCENE_SPLITS}, got {split!r}")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise CourseError(f"n must be a positive int, got {n!r}")
    if max_items not in (1, 2, 3, 4):
        raise CourseError(f"max_items must be 1..4 (one item per quadrant), got {max_items}")
    rng = np.random.default_rng([int(seed), SCENE_SPLITS.index(split)])
    Xf, yf = load_fashion_mnist("train" if split in ("train", "val") else "test")
    lo, hi = {"train": (0, 50000), "val": (50000, 60000)}.get(split, (0, len(Xf)))
    slots = _sample_slots(n, split, rng, max_items)
    present = slots["object"] >= 0
    # pick a source image of the right class for every present item
    pool = np.arange(lo, hi)
    by_class = [pool[yf[lo:hi] == c] for c in range(len(OBJECT_WORDS))]
    source = np.full((n, 4), -1, dtype=np.int64)
    for c in range(len(OBJECT_WORDS)):
        sel = present & (slots["object"] == c)
        source[sel] = by_class[c][rng.integers(0, len(by_class[c]), size=sel.sum())]
    images = np.empty((n, SCENE_SIZE, SCENE_SIZE, 3), dtype=np.uint8)
    masks = np.zeros((n, SCENE_SIZE, SCENE_SIZE), dtype=np.uint8)
    bg_level = rng.uniform(15, 55, size=n).astype(np.float32)
    # item placement inside its quadrant
    sizes_px = np.array(list(SIZES.values()))
    offset = np.zeros((n, 4, 2), dtype=np.int64)
    for si, s in enumerate(sizes_px):
        sel = slots["size"] == si
        offset[sel] = rng.integers(0, 32 - s + 1, size=(sel.sum(), 2))
    colours = np.array(list(COLOURS.values()), dtype=np.float32) / 255.0
    patterns = {s: np.stack([_texture_pattern(t, s) for t in range(len(TEXTURES))]) for s in sizes_px}
    noise_bank = rng.normal(0, 4 / 255.0, size=(64, SCENE_SIZE, SCENE_SIZE, 1)).astype(np.float32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        m = stop - start
        # background: a grey level plus sensor-like noise drawn from a bank of noise tiles
        canvas = bg_level[start:stop, None, None, None] / 255.0 + noise_bank[
            rng.integers(0, len(noise_bank), size=m)]
        canvas = np.repeat(canvas, 3, axis=3)  # (m, 64, 64, 3) float32 in [0, 1]
        mask = np.zeros((m, SCENE_SIZE, SCENE_SIZE), dtype=np.uint8)
        for si, s in enumerate(sizes_px):
            scene_i, slot_k = np.nonzero(slots["size"][start:stop] == si)
            if len(scene_i) == 0:
                continue
            g = scene_i + start
            shape = _resize_items(Xf[source[g, slot_k]], int(s))  # (M, s, s)
            alpha = np.clip(shape * 2.5, 0, 1)[..., None]
            tex = patterns[s][slots["texture"][g, slot_k]][..., None]
            rgb = colours[slots["colour"][g, slot_k]][:, None, None, :] * tex * (0.7 + 0.3 * shape[..., None])
            r0 = _SLOT_ORIGIN[slot_k, 0] + offset[g, slot_k, 0]
            c0 = _SLOT_ORIGIN[slot_k, 1] + offset[g, slot_k, 1]
            rows = (r0[:, None] + np.arange(s))[:, :, None]
            cols = (c0[:, None] + np.arange(s))[:, None, :]
            sc = scene_i[:, None, None]
            canvas[sc, rows, cols] = canvas[sc, rows, cols] * (1 - alpha) + rgb * alpha
            mask[sc, rows, cols] = np.where(alpha[..., 0] > 0.5, (slot_k + 1)[:, None, None], mask[sc, rows, cols])
        canvas *= 255.0
        canvas += 0.5  # round to nearest on the cast below
        np.clip(canvas, 0, 255, out=canvas)
        images[start:stop] = canvas  # the assignment casts to uint8
        masks[start:stop] = mask
    graphs = [scene_graph({k: v[i] for k, v in slots.items()}) for i in range(n)]
    captions = [scene_caption(g) for g in graphs]
    return Scenes(images, slots, masks, source, captions, split, int(seed), graphs)
