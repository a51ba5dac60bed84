"""Feature fusion: handcrafted, ViT and CNN features combined, compared and audited.

Introduced in notebook 08 (the ViT feature helper is reused in 09). A *branch* is one
family of features of the same images, a float32 array ``(N, D_b)``; a notebook keeps its
branches in a dict ``{"hand": ..., "vit": ..., "cnn": ...}`` (all with the same N, rows in
the same order). Backbone features are slow on a CPU, so they are computed once and kept
with :func:`course_lib.cache.cached`; everything here trains small heads on those cached
arrays, which takes seconds.

Fusion methods (:data:`METHODS`), all trained with :func:`course_lib.train.fit`:

* ``early``     standardise each branch, concatenate, one linear softmax head;
* ``late``      one linear head per branch, average their class probabilities;
* ``stacking``  a linear meta-classifier over the branch heads' out-of-fold log-probabilities;
* ``gated``     per-branch projections mixed by per-example softmax gates (:class:`GatedFusion`);
* ``attention`` tokens from every branch attend to each other, then one learned query
  reads them out (:class:`AttentionFusion`).

Typical use::

    scaler = cl.fusion.BranchScaler().fit(train)
    res = cl.fusion.evaluate_fusion("early", scaler.transform(train), y_train,
                                    scaler.transform(test), y_test, seed=0)
    res["accuracy"]
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from . import config
from .config import CourseError

Branches = Mapping[str, np.ndarray]
METHODS = ("early", "late", "stacking", "gated", "attention")
#: default peak learning rate of each method's heads (AdamW): linear heads on scaled inputs
#: need large steps, the modules with LayerNorm and attention prefer smaller ones
DEFAULT_LR = {"early": 1e-2, "late": 1e-2, "stacking": 1e-2, "gated": 3e-3, "attention": 3e-3}
VIT_SIZE = 56    # DINOv2 input side for 32 x 32 item crops: a 4 x 4 grid of 14-pixel patches
CNN_SIZE = 64    # EfficientNet-Lite0 input side: a multiple of 32 keeps its "same" padding exact

_MODELS: dict[tuple[str, str], Any] = {}


# --------------------------------------------------------------------------- input checks


def _rgb_stack(images: Any, where: str) -> np.ndarray:
    """Check a stack of images and return it as uint8 (N, H, W, 3) (grey is repeated 3 times)."""
    if not isinstance(images, np.ndarray):
        raise CourseError(f"{where}: expected a NumPy stack of images (N, H, W) or (N, H, W, 3), "
                          f"got {type(images).__name__}. Fix: images = np.asarray(images)")
    if images.ndim == 3 and images.shape[-1] != 3:
        images = np.repeat(images[..., None], 3, axis=-1)
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] == 0:
        hint = (" It looks channels-first: use images.transpose(0, 2, 3, 1)."
                if images.ndim == 4 and images.shape[1] in (1, 3) else "")
        raise CourseError(f"{where}: expected uint8 images (N, H, W) grey or (N, H, W, 3) RGB with "
                          f"N >= 1, got shape {images.shape}.{hint}")
    if images.dtype != np.uint8:
        raise CourseError(f"{where}: expected dtype uint8 (values 0..255), got {images.dtype}. "
                          "Fix: (img * 255).round().astype(np.uint8) for floats in [0, 1]")
    return images


def check_branches(branches: Any, where: str = "branches", n: int | None = None) -> dict[str, np.ndarray]:
    """Validate a dict of branches: each a finite 2-D float array, all with the same rows.

    Returns a new dict with float32 C-contiguous arrays. Introduced in notebook 08.
    """
    if not isinstance(branches, Mapping) or not branches:
        raise CourseError(f"{where}: expected a non-empty dict {{name: (N, D) float array}}, "
                          f"got {type(branches).__name__}")
    out: dict[str, np.ndarray] = {}
    for name, F in branches.items():
        F = np.asarray(F)
        if F.ndim != 2 or F.shape[1] == 0:
            raise CourseError(f"{where}[{name!r}]: expected a 2-D array (N, D), got shape {F.shape}. "
                              "Fix: flatten per-example features with F.reshape(len(F), -1)")
        if F.dtype.kind not in "fiub":
            raise CourseError(f"{where}[{name!r}]: expected numbers, got dtype {F.dtype}")
        F = np.ascontiguousarray(F, dtype=np.float32)
        if not np.isfinite(F).all():
            raise CourseError(f"{where}[{name!r}] contains NaN or inf; check the feature extractor")
        out[str(name)] = F
    rows = {name: F.shape[0] for name, F in out.items()}
    if len(set(rows.values())) != 1 or (n is not None and set(rows.values()) != {n}):
        want = f" (and {n} rows, one per label)" if n is not None else ""
        raise CourseError(f"{where}: every branch must have the same number of rows{want}; got {rows}")
    return out


def _check_labels(y: Any, n: int, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n or y.dtype.kind not in "iu":
        raise CourseError(f"{where}: expected integer class ids of shape ({n},), got "
                          f"{y.dtype} {y.shape}. Fix: y = np.asarray(y, dtype=np.int64)")
    if n and y.min() < 0:
        raise CourseError(f"{where}: class ids must be >= 0, got {int(y.min())}")
    return y.astype(np.int64)


# --------------------------------------------------------------------------- backbone features


def _shared(name: str, factory: Callable[[], Any]) -> Any:
    key = (name, str(config.device()))
    if key not in _MODELS:
        _MODELS[key] = factory()
    return _MODELS[key]


def resize_normalise(images: Any, size: int, mean: Sequence[float], std: Sequence[float]):
    """uint8 images (N, H, W[, 3]) -> float32 tensor (N, 3, size, size), ``(x / 255 - mean) / std``.

    Antialiased bilinear resize of the whole image (nothing cropped), as
    :func:`course_lib.models.dinov2_preprocess` does at 224. Introduced in notebook 08.
    """
    import torch
    import torch.nn.functional as F

    X = _rgb_stack(images, "resize_normalise")
    if not isinstance(size, (int, np.integer)) or size < 8:
        raise CourseError(f"resize_normalise: size must be an int >= 8, got {size!r}")
    x = torch.from_numpy(np.ascontiguousarray(X)).permute(0, 3, 1, 2).float() / 255.0
    x = F.interpolate(x, size=(int(size), int(size)), mode="bilinear", antialias=True, align_corners=False)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


def vit_features(images: Any, size: int = VIT_SIZE, grid: int = 0, batch_size: int = 64,
                 progress: bool = True) -> dict[str, np.ndarray]:
    """Frozen DINOv2-S features of uint8 images at a chosen input size, in batches.

    ``images``: (N, H, W) grey or (N, H, W, 3) RGB uint8. Each is resized to ``size`` x
    ``size`` (a multiple of 14: ``(size/14)**2`` patch tokens; 112 -> 8 x 8) and
    ImageNet-normalised. Returns float32 arrays (values roughly -10..10):
    ``"cls"`` (N, 384) the final CLS token, ``"patch_mean"`` (N, 384) the mean patch token,
    and with ``grid`` = g > 0 also ``"grid"`` (N, g*g, 384): the patch tokens averaged over
    a g x g grid of regions in reading order (g = 2: the four quadrants of a scene).
    Introduced in notebook 08 (used again in 09).
    """
    import torch
    import torch.nn.functional as F

    from . import models
    from .viz import progress as bar

    X = _rgb_stack(images, "vit_features")
    if not isinstance(size, (int, np.integer)) or size < 14 or size % 14:
        raise CourseError(f"vit_features: size must be a positive multiple of 14 (DINOv2's patch), "
                          f"got {size!r}; e.g. 112 (8 x 8 patches) or 224 (16 x 16)")
    side = size // 14
    if not isinstance(grid, (int, np.integer)) or grid < 0 or (grid and side % grid):
        raise CourseError(f"vit_features: grid must be 0 or divide the {side} x {side} patch grid, got {grid!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise CourseError(f"vit_features: batch_size must be a positive int, got {batch_size!r}")
    model = _shared("dinov2-small", lambda: models.load_dinov2()[0].requires_grad_(False))
    dev = next(model.parameters()).device
    keys = ("cls", "patch_mean", "grid") if grid else ("cls", "patch_mean")
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    starts = range(0, len(X), int(batch_size))
    with torch.no_grad():
        for s in (bar(starts, desc=f"DINOv2 @{size}", unit="batch") if progress else starts):
            x = resize_normalise(X[s:s + batch_size], size, models.IMAGENET_MEAN, models.IMAGENET_STD)
            h = model(pixel_values=x.to(dev)).last_hidden_state.float()
            parts["cls"].append(h[:, 0].cpu().numpy())
            patches = h[:, 1:]
            parts["patch_mean"].append(patches.mean(1).cpu().numpy())
            if grid:
                fmap = patches.reshape(len(h), side, side, -1).permute(0, 3, 1, 2)
                pooled = F.adaptive_avg_pool2d(fmap, grid).flatten(2).transpose(1, 2)
                parts["grid"].append(pooled.cpu().numpy())
    return {k: np.concatenate(v).astype(np.float32, copy=False) for k, v in parts.items()}


def cnn_features(images: Any, size: int = CNN_SIZE, batch_size: int = 64,
                 progress: bool = True) -> np.ndarray:
    """Frozen EfficientNet-Lite0 features: the global-average-pooled last feature map.

    ``images``: (N, H, W) grey or (N, H, W, 3) RGB uint8, resized to ``size`` x ``size``
    (a multiple of 32, so the network's fixed "same" padding stays exact) and mapped by
    (x - 127) / 128 as in EfficientNet-Lite's evaluation. Returns float32 (N, 1280),
    values >= -0.28 (after the swish). Introduced in notebook 08.
    """
    import torch

    from . import models
    from .viz import progress as bar

    X = _rgb_stack(images, "cnn_features")
    if not isinstance(size, (int, np.integer)) or size < 32 or size % 32:
        raise CourseError(f"cnn_features: size must be a positive multiple of 32, got {size!r}; e.g. 96, 128 or 224")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise CourseError(f"cnn_features: batch_size must be a positive int, got {batch_size!r}")
    model = _shared("efficientnet-lite0", lambda: models.load_imagenet_cnn()[0].requires_grad_(False))
    dev = next(model.parameters()).device
    mean, std = (127.0 / 255,) * 3, (128.0 / 255,) * 3
    out = []
    starts = range(0, len(X), int(batch_size))
    with torch.no_grad():
        for s in (bar(starts, desc=f"CNN @{size}", unit="batch") if progress else starts):
            x = resize_normalise(X[s:s + batch_size], size, mean, std).to(dev)
            out.append(model.extract_features(x).float().mean(dim=(2, 3)).cpu().numpy())
    return np.concatenate(out).astype(np.float32, copy=False)


#: the handcrafted branch: feature kinds of :func:`course_lib.features.extract` and their
#: parameters, for 32 x 32 item crops (and 28 x 28 Fashion-MNIST)
HAND_KINDS: dict[str, dict[str, Any]] = {
    "hog": {"pixels_per_cell": 4},
    "lbp": {"P": 8, "R": 1, "method": "uniform"},
    "gabor": {"frequencies": (0.15, 0.25, 0.35), "n_orientations": 4},
    "colour": {"bins": 8},
}


def locate_items(images: Any, threshold: float = 30.0) -> np.ndarray:
    """Bounding box of the bright foreground of each image, by a classical threshold.

    ``images``: uint8 (N, H, W) or (N, H, W, 3). The background level of an image is the
    median over its border pixels of the brightest channel; foreground = pixels more than
    ``threshold`` grey levels above it. Returns int64 (N, 4) boxes ``(row0, col0, row1,
    col1)``, inclusive; an image without foreground gets the whole frame.
    Introduced in notebook 08.
    """
    X = _rgb_stack(images, "locate_items")
    m = X.max(axis=3).astype(np.int16)                                   # (N, H, W)
    border = np.concatenate([m[:, 0], m[:, -1], m[:, :, 0], m[:, :, -1]], axis=1)
    fg = m > np.median(border, axis=1)[:, None, None] + threshold
    H, W = m.shape[1:]
    boxes = np.tile(np.array([0, 0, H - 1, W - 1], np.int64), (len(X), 1))
    rows, cols = fg.any(2), fg.any(1)
    has = rows.any(1)
    boxes[has, 0] = rows[has].argmax(1)
    boxes[has, 2] = H - 1 - rows[has][:, ::-1].argmax(1)
    boxes[has, 1] = cols[has].argmax(1)
    boxes[has, 3] = W - 1 - cols[has][:, ::-1].argmax(1)
    return boxes


def crop_items(images: Any, size: int = 32, margin: int = 2, threshold: float = 30.0) -> np.ndarray:
    """Localise the item of each image (:func:`locate_items`) and cut a square crop around it.

    The crop is the box's longer side plus ``margin`` pixels each way, centred on the box
    (the image is edge-padded where the square leaves it), resized to ``size`` x ``size``
    with OpenCV (area averaging when shrinking, bilinear when enlarging). Returns uint8
    (N, size, size, 3). For single-item FashionScenes this puts every item at the same
    scale and place, whatever its size and quadrant. Introduced in notebook 08.
    """
    import cv2

    X = _rgb_stack(images, "crop_items")
    if not isinstance(size, (int, np.integer)) or size < 4 or margin < 0:
        raise CourseError(f"crop_items: need size >= 4 and margin >= 0, got size={size!r}, margin={margin!r}")
    boxes = locate_items(X, threshold)
    out = np.empty((len(X), size, size, 3), np.uint8)
    for i, (r0, c0, r1, c1) in enumerate(boxes):
        side = int(max(r1 - r0, c1 - c0)) + 1 + 2 * int(margin)
        top, left = int(round((r0 + r1 - side + 1) / 2)), int(round((c0 + c1 - side + 1) / 2))
        padded = np.pad(X[i], ((side, side), (side, side), (0, 0)), mode="edge")
        crop = padded[top + side:top + 2 * side, left + side:left + 2 * side]
        out[i] = cv2.resize(crop, (int(size), int(size)),
                            interpolation=cv2.INTER_AREA if side > size else cv2.INTER_LINEAR)
    return out


def handcrafted_features(images: Any, kinds: Mapping[str, dict[str, Any]] | None = None,
                         progress: bool = False) -> dict[str, np.ndarray]:
    """The handcrafted branch, one float32 array (N, D_k) per feature kind.

    ``images``: a stack accepted by :func:`course_lib.features.extract`. ``kinds`` maps a
    kind (``hog``, ``lbp``, ``gabor``, ``colour``, ...) to its parameters; default
    :data:`HAND_KINDS` (sized for 28..32-pixel images).
    Concatenate with ``np.concatenate(list(d.values()), axis=1)`` for one branch.
    Introduced in notebook 08.
    """
    from . import features

    kinds = dict(HAND_KINDS if kinds is None else kinds)
    if not kinds:
        raise CourseError("handcrafted_features: kinds is empty; give at least one feature kind")
    return {k: features.extract(images, kinds=(k,), progress=progress, **{k: dict(p)}).values
            for k, p in kinds.items()}


def first_item_labels(slots: Mapping[str, np.ndarray], field: str) -> np.ndarray:
    """The ``field`` (``object``, ``colour``, ``texture`` or ``size``) of each scene's first
    item in reading order, from ``scenes.slots``: int64 (N,). For single-item scenes this
    is *the* item's attribute. Introduced in notebook 08."""
    if not isinstance(slots, Mapping) or "object" not in slots or field not in slots:
        raise CourseError(f"first_item_labels: expected scenes.slots and a field among "
                          f"{list(slots) if isinstance(slots, Mapping) else '(object, colour, texture, size)'}, "
                          f"got field {field!r}")
    obj = np.asarray(slots["object"])
    first = (obj >= 0).argmax(1)
    return np.asarray(slots[field])[np.arange(len(obj)), first].astype(np.int64)


def seconds_per_image(fn: Callable[[np.ndarray], Any], images: np.ndarray, repeats: int = 1) -> float:
    """Wall time of ``fn(images)`` divided by ``len(images)`` (best of ``repeats``), in seconds.

    Used to put a cost next to each branch's accuracy gain. Introduced in notebook 08.
    """
    if len(images) == 0 or repeats < 1:
        raise CourseError("seconds_per_image: need at least one image and repeats >= 1")
    best = float("inf")
    for _ in range(int(repeats)):
        t0 = time.perf_counter()
        fn(images)
        best = min(best, time.perf_counter() - t0)
    return best / len(images)


# --------------------------------------------------------------------------- scaling


class BranchScaler:
    """Standardise every branch with training statistics, then weight branches equally.

    Each column gets ``(x - mean) / std``, then each branch is divided by ``sqrt(D_b)``, so
    every branch has an expected squared norm of 1 however many columns it has (HOG's
    1,764 columns do not drown 24 colour bins). A column that hardly varies in training
    has its std floored at ``floor`` times the branch's mean column std, so that a rare
    test value is not blown up a million times. Fit on the training branches only, then
    transform train and test alike. Introduced in notebook 08.
    """

    def __init__(self, floor: float = 0.1):
        self.floor = float(floor)
        self.stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def fit(self, branches: Branches) -> "BranchScaler":
        branches = check_branches(branches, "BranchScaler.fit")
        self.stats = {}
        for name, F in branches.items():
            mean = F.mean(0, dtype=np.float64)
            std = F.std(0, dtype=np.float64)
            std = np.maximum(std, self.floor * std.mean() + 1e-12) * np.sqrt(F.shape[1])
            self.stats[name] = (mean.astype(np.float32), std.astype(np.float32))
        return self

    def transform(self, branches: Branches) -> dict[str, np.ndarray]:
        """Scaled copies of the branches (float32, same shapes)."""
        if not self.stats:
            raise CourseError("BranchScaler.transform: call .fit(train_branches) first")
        branches = check_branches(branches, "BranchScaler.transform")
        out = {}
        for name, F in branches.items():
            if name not in self.stats:
                raise CourseError(f"BranchScaler: branch {name!r} was not seen by fit; known: {list(self.stats)}")
            mean, std = self.stats[name]
            if F.shape[1] != mean.shape[0]:
                raise CourseError(f"BranchScaler: branch {name!r} has {F.shape[1]} columns, fit saw {mean.shape[0]}")
            out[name] = (F - mean) / std
        return out


def concat(branches: Branches, names: Sequence[str] | None = None) -> tuple[np.ndarray, list[int]]:
    """Concatenate branches ``names`` (default: all, in dict order) -> ``(X (N, sum D), dims)``.

    ``dims`` lists each branch's width, which the fusion modules use to split ``X`` again.
    Introduced in notebook 08.
    """
    branches = check_branches(branches, "concat")
    names = list(branches) if names is None else list(names)
    missing = [n for n in names if n not in branches]
    if missing or not names:
        raise CourseError(f"concat: unknown branches {missing or names}; available: {list(branches)}")
    return np.concatenate([branches[n] for n in names], axis=1), [branches[n].shape[1] for n in names]


# --------------------------------------------------------------------------- torch heads


@functools.lru_cache(maxsize=None)
def _torch_modules():
    """The torch head classes, built once on first use (importing this module stays cheap)."""
    import torch
    from torch import nn

    class LinearHead(nn.Module):
        """Logistic regression on concatenated branches: (B, sum D) -> (B, K) logits."""

        def __init__(self, dims: Sequence[int], n_classes: int, dropout: float = 0.0):
            super().__init__()
            self.dims = list(dims)
            self.drop = nn.Dropout(dropout)
            self.fc = nn.Linear(sum(self.dims), n_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.drop(x))

    class GatedFusion(nn.Module):
        """Per-branch projection to ``width``, softmax gates over branches per example.

        ``x`` (B, sum D) is split into branches; ``h_b = GELU(LN(W_b x_b))``; gates
        ``g = softmax(G [h_1..h_M])`` (B, M); the fused vector ``sum_b g_b h_b`` goes to a
        linear classifier. ``last_gates`` keeps the gates of the latest forward pass.
        """

        def __init__(self, dims: Sequence[int], n_classes: int, width: int = 128, dropout: float = 0.1):
            super().__init__()
            self.dims = list(dims)
            self.proj = nn.ModuleList(nn.Sequential(nn.Linear(d, width), nn.LayerNorm(width), nn.GELU())
                                      for d in self.dims)
            self.gate = nn.Linear(width * len(self.dims), len(self.dims))
            self.drop = nn.Dropout(dropout)
            self.fc = nn.Linear(width, n_classes)
            self.last_gates: torch.Tensor | None = None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            hs = [p(part) for p, part in zip(self.proj, x.split(self.dims, dim=1))]
            H = torch.stack(hs, dim=1)                                     # (B, M, width)
            g = self.gate(self.drop(H.flatten(1))).softmax(dim=-1)        # (B, M)
            self.last_gates = g.detach()
            return self.fc(self.drop((g.unsqueeze(-1) * H).sum(1)))

    class AttentionFusion(nn.Module):
        """Cross-attention fusion over tokens from every branch.

        ``token_dims`` lists the width of each token's slice of ``x`` (a branch may give
        several tokens, e.g. one per handcrafted feature kind); ``token_branch`` says which
        branch each token comes from (a learned branch embedding is added). One
        transformer block lets every token attend to the tokens of the other branches; a
        learned query then attends over all tokens and its output is classified.
        ``last_attention`` (B, T) keeps the read-out weights of the latest forward pass.
        """

        def __init__(self, token_dims: Sequence[int], token_branch: Sequence[int], n_classes: int,
                     width: int = 64, heads: int = 4, dropout: float = 0.1):
            super().__init__()
            if len(token_dims) != len(token_branch):
                raise CourseError("AttentionFusion: token_dims and token_branch must have the same length")
            self.dims = list(token_dims)
            self.register_buffer("branch_ids", torch.as_tensor(list(token_branch), dtype=torch.long))
            self.proj = nn.ModuleList(nn.Linear(d, width) for d in self.dims)
            self.branch_embed = nn.Embedding(int(max(token_branch)) + 1, width)
            self.block = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=dropout,
                                                    activation="gelu", batch_first=True, norm_first=True)
            self.query_token = nn.Parameter(torch.zeros(1, 1, width))
            self.readout = nn.MultiheadAttention(width, heads, dropout=0.0, batch_first=True)
            self.norm = nn.LayerNorm(width)
            self.fc = nn.Linear(width, n_classes)
            self.last_attention: torch.Tensor | None = None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tokens = torch.stack([p(part) for p, part in zip(self.proj, x.split(self.dims, dim=1))], dim=1)
            tokens = self.block(tokens + self.branch_embed(self.branch_ids)[None])
            q = self.query_token.expand(len(x), -1, -1)
            out, w = self.readout(q, tokens, tokens, need_weights=True)
            self.last_attention = w[:, 0].detach()                          # (B, T)
            return self.fc(self.norm(out[:, 0]))

    return LinearHead, GatedFusion, AttentionFusion


def make_head(method: str, dims: Sequence[int], n_classes: int, *, token_dims: Sequence[int] | None = None,
              token_branch: Sequence[int] | None = None, width: int | None = None):
    """Build the torch head of a fusion ``method`` for branches of widths ``dims``.

    ``early``/``late``/``stacking`` -> a linear head over all columns; ``gated`` ->
    :class:`GatedFusion`; ``attention`` -> :class:`AttentionFusion` with one token per
    branch, or per slice when ``token_dims``/``token_branch`` are given (their sum must
    equal ``sum(dims)``). Input of every head: float (B, sum(dims)); output (B, n_classes)
    logits. Introduced in notebook 08.
    """
    LinearHead, GatedFusion, AttentionFusion = _torch_modules()
    if method not in METHODS:
        raise CourseError(f"unknown fusion method {method!r}; expected one of {METHODS}")
    if not dims or any(int(d) < 1 for d in dims) or n_classes < 2:
        raise CourseError(f"make_head: need branch widths >= 1 and n_classes >= 2, got {list(dims)}, {n_classes}")
    if method == "gated":
        return GatedFusion(dims, n_classes, width=width or 128)
    if method == "attention":
        if token_dims is None:
            token_dims, token_branch = list(dims), list(range(len(dims)))
        if token_branch is None or sum(token_dims) != sum(dims):
            raise CourseError(f"make_head: token_dims must sum to {sum(dims)} (the branch widths) and "
                              "come with token_branch")
        return AttentionFusion(token_dims, token_branch, n_classes, width=width or 64)
    return LinearHead(dims, n_classes)


def feature_loader(X: np.ndarray, y: np.ndarray | None = None, batch_size: int = 256,
                   shuffle: bool = False, seed: int = 0):
    """A DataLoader over in-memory feature rows: yields ``(X_batch float32 (B, D), y_batch int64 (B,))``.

    The feature counterpart of :func:`course_lib.train.make_loader` (which takes images).
    Introduced in notebook 08.
    """
    import torch
    from torch.utils.data import DataLoader, Dataset

    from .train import BatchIndexSampler

    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] == 0:
        raise CourseError(f"feature_loader: expected features (N, D) with N >= 1, got shape {X.shape}")
    Xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    yt = None if y is None else torch.from_numpy(_check_labels(y, len(X), "feature_loader"))

    class _Rows(Dataset):
        def __len__(self) -> int:
            return len(Xt)

        def __getitem__(self, idx):
            idx = torch.as_tensor(idx, dtype=torch.long)
            return (Xt[idx],) if yt is None else (Xt[idx], yt[idx])

    sampler = BatchIndexSampler(len(Xt), int(batch_size), bool(shuffle), int(seed))
    return DataLoader(_Rows(), sampler=sampler, batch_size=None, num_workers=0)


def split_indices(n: int, val_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random split of ``range(n)`` into (train, val) index arrays, deterministic in ``seed``."""
    if not 0.0 < val_frac < 1.0 or n < 4:
        raise CourseError(f"split_indices: need n >= 4 and 0 < val_frac < 1, got n={n}, val_frac={val_frac}")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(val_frac * n)))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one CPU thread inside the block (small heads train faster without
    thread synchronisation, especially on a busy machine); restores the setting after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_head(model, X: np.ndarray, y: np.ndarray, *, seed: int = 0, val_frac: float = 0.15,
               num_epochs: int = 30, lr: float = 1e-2, weight_decay: float = 0.05, batch_size: int = 128,
               patience: int | None = 8, progress: bool = False):
    """Train a head on feature rows with :func:`course_lib.train.fit`; returns its History.

    ``X`` float (N, D), ``y`` int (N,). A random ``val_frac`` of the rows (chosen by
    ``seed``) is held out for early stopping on validation accuracy; the best epoch's
    weights are kept. ``seed`` also seeds the initialisation and the batch order.
    Introduced in notebook 08.
    """
    from . import train

    y = _check_labels(y, len(X), "train_head")
    tr, va = split_indices(len(X), val_frac, seed)
    config.seed_everything(seed)  # dropout masks; the batch order comes from the loader's seed
    with one_thread():
        return train.fit(model, feature_loader(X[tr], y[tr], batch_size, shuffle=True, seed=seed),
                         feature_loader(X[va], y[va], 1024), num_epochs=num_epochs, lr=lr,
                         weight_decay=weight_decay, patience=patience, progress=progress, seed=None)


def predict_proba(model, X: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Class probabilities of a trained head: float32 (N, K), rows sum to 1. Introduced in notebook 08."""
    from . import train

    logits = train.predict(model, feature_loader(X, None, batch_size))
    e = np.exp(logits - logits.max(1, keepdims=True))
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


# --------------------------------------------------------------------------- fusion methods


def late_fusion(probs: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted average of per-branch class probabilities: list of (N, K) -> (N, K).

    ``weights`` default to equal; they are normalised to sum to 1. Introduced in notebook 08.
    """
    probs = [np.asarray(p, dtype=np.float64) for p in probs]
    if not probs or any(p.ndim != 2 or p.shape != probs[0].shape for p in probs):
        raise CourseError(f"late_fusion: expected a list of (N, K) probability arrays of one shape, "
                          f"got {[p.shape for p in probs]}")
    w = np.ones(len(probs)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(probs),) or (w < 0).any() or w.sum() <= 0:
        raise CourseError(f"late_fusion: need {len(probs)} non-negative weights with a positive sum, got {weights}")
    w = w / w.sum()
    return sum(wi * p for wi, p in zip(w, probs)).astype(np.float32)


def _n_classes(*ys: np.ndarray) -> int:
    return int(max(int(y.max()) for y in ys if len(y))) + 1


def _linear_fit(X: np.ndarray, y: np.ndarray, K: int, seed: int, fit_kwargs: dict[str, Any]):
    config.seed_everything(seed)
    head = make_head("early", [X.shape[1]], K)
    train_head(head, X, y, seed=seed, **fit_kwargs)
    return head


def evaluate_fusion(method: str, train: Branches, y_train: Any, test: Branches, y_test: Any, *,
                    names: Sequence[str] | None = None, seed: int = 0, tokens: Mapping[str, Sequence[int]] | None = None,
                    folds: int = 3, **fit_kwargs: Any) -> dict[str, Any]:
    """Train fusion ``method`` on the training branches and score it on the test branches.

    ``train``/``test``: dicts of scaled branches (see :class:`BranchScaler`) with matching
    names; ``names`` picks and orders the branches used (default: all). ``tokens`` (for
    ``attention``) splits a branch into several tokens: ``{"hand": [1764, 40, 24, 24]}``.
    ``stacking`` cross-fits ``folds`` heads per branch for out-of-fold inputs to its meta
    head. Extra keywords go to :func:`train_head`. Returns ``{"accuracy": float in [0, 1],
    "probs": (N_test, K) float32, "seconds": training wall time, "model": the head}``.
    Introduced in notebook 08.
    """
    train = check_branches(train, "evaluate_fusion(train)")
    test = check_branches(test, "evaluate_fusion(test)")
    names = list(train) if names is None else list(names)
    if method not in METHODS:
        raise CourseError(f"unknown fusion method {method!r}; expected one of {METHODS}")
    missing = [n for n in names if n not in train or n not in test]
    if missing or not names:
        raise CourseError(f"evaluate_fusion: branches {missing or names} missing from train or test; "
                          f"train has {list(train)}, test has {list(test)}")
    first_tr, first_te = train[names[0]], test[names[0]]
    y_train = _check_labels(y_train, len(first_tr), "evaluate_fusion(y_train)")
    y_test = _check_labels(y_test, len(first_te), "evaluate_fusion(y_test)")
    K = _n_classes(y_train, y_test)
    fit_kwargs.setdefault("lr", DEFAULT_LR[method])
    t0 = time.perf_counter()
    if method in ("early", "gated", "attention"):
        Xtr, dims = concat(train, names)
        Xte, _ = concat(test, names)
        token_dims = token_branch = None
        if method == "attention":
            token_dims, token_branch = [], []
            for b, n in enumerate(names):
                parts = list((tokens or {}).get(n, [train[n].shape[1]]))
                if sum(parts) != train[n].shape[1]:
                    raise CourseError(f"evaluate_fusion: tokens[{n!r}] = {parts} must sum to the "
                                      f"branch width {train[n].shape[1]}")
                token_dims += parts
                token_branch += [b] * len(parts)
        config.seed_everything(seed)  # the head's initial weights
        model = make_head(method, dims, K, token_dims=token_dims, token_branch=token_branch)
        train_head(model, Xtr, y_train, seed=seed, **fit_kwargs)
        probs = predict_proba(model, Xte)
    elif method == "late":
        heads = [_linear_fit(train[n], y_train, K, seed, fit_kwargs) for n in names]
        probs = late_fusion([predict_proba(h, test[n]) for h, n in zip(heads, names)])
        model = heads
    else:  # stacking: out-of-fold log-probabilities of every branch -> meta linear head
        rng = np.random.default_rng(seed)
        fold = rng.permutation(len(y_train)) % folds
        oof = np.zeros((len(y_train), K * len(names)), np.float32)
        meta_test = np.zeros((len(y_test), K * len(names)), np.float32)
        for b, n in enumerate(names):
            cols = slice(b * K, (b + 1) * K)
            for f in range(folds):
                h = _linear_fit(train[n][fold != f], y_train[fold != f], K, seed + 101 * (f + 1), fit_kwargs)
                oof[fold == f, cols] = np.log(predict_proba(h, train[n][fold == f]) + 1e-6)
            h = _linear_fit(train[n], y_train, K, seed, fit_kwargs)
            meta_test[:, cols] = np.log(predict_proba(h, test[n]) + 1e-6)
        model = _linear_fit(oof, y_train, K, seed, fit_kwargs)
        probs = predict_proba(model, meta_test)
    seconds = time.perf_counter() - t0
    accuracy = float((probs.argmax(1) == y_test).mean())
    return {"accuracy": accuracy, "probs": probs, "seconds": seconds, "model": model}


def subsets(names: Sequence[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset of branch names, singles first: a, b, c, a+b, a+c, b+c, a+b+c."""
    names = list(names)
    return [c for r in range(1, len(names) + 1) for c in itertools.combinations(names, r)]


def ablation(train: Branches, y_train: Any, test: Branches, y_test: Any, *, method: str = "early",
             seeds: Sequence[int] = (0, 1, 2), combos: Sequence[Sequence[str]] | None = None,
             progress: bool = True, **kwargs: Any) -> list[dict[str, Any]]:
    """Test accuracy of ``method`` on every subset of branches, over several seeds.

    Returns one row per subset: ``{"branches": "hand+vit", "names": (...), "accs": [per
    seed], "mean": float, "std": float (population std over seeds), "seconds": mean training
    time, "probs": [per seed (N_test, K) test probabilities], "models": [per seed head]}``. ``combos`` restricts the subsets (default :func:`subsets` of all branches).
    Introduced in notebook 08.
    """
    from .viz import progress as bar

    combos = [tuple(c) for c in (combos if combos is not None else subsets(list(train)))]
    seeds = list(seeds)
    if not seeds or not combos:
        raise CourseError("ablation: need at least one seed and one subset of branches")
    jobs = [(c, s) for c in combos for s in seeds]
    results: dict[tuple[str, ...], list[dict[str, Any]]] = {c: [] for c in combos}
    for c, s in (bar(jobs, desc=f"ablation ({method})", unit="fit") if progress else jobs):
        results[c].append(evaluate_fusion(method, train, y_train, test, y_test, names=c, seed=s, **kwargs))
    rows = []
    for c in combos:
        accs = [r["accuracy"] for r in results[c]]
        rows.append({"branches": "+".join(c), "names": c, "accs": accs, "mean": float(np.mean(accs)),
                     "std": float(np.std(accs)), "seconds": float(np.mean([r["seconds"] for r in results[c]])),
                     "probs": [r["probs"] for r in results[c]], "models": [r["model"] for r in results[c]]})
    return rows


def format_table(rows: Sequence[Mapping[str, Any]], key: str = "branches", scale: float = 100.0,
                 unit: str = "%") -> str:
    """Rows from :func:`ablation` (or any ``{key, mean, std, accs}`` dicts) as aligned text,
    e.g. ``hand+vit   87.3 ± 0.4 %   (n=3)``. Introduced in notebook 08."""
    width = max(len(str(r[key])) for r in rows)
    return "\n".join(f"{str(r[key]):<{width}}  {scale * r['mean']:6.2f} ± {scale * r['std']:4.2f} {unit}"
                     f"  (n={len(r['accs'])})" for r in rows)


# --------------------------------------------------------------------------- leakage


def leakage_report(branches: Branches, y: Any, max_distinct_frac: float = 0.2,
                   min_lookup_acc: float = 0.99) -> list[dict[str, Any]]:
    """Audit branches for label leakage: does a branch encode the label as a lookup table?

    For each branch: ``distinct`` (number of distinct rows), ``lookup_acc`` (leave-one-out
    accuracy of predicting an example's label by the majority label of the *other*
    examples with an identical row; 0 for rows seen once) and ``leak`` (True when
    ``lookup_acc >= min_lookup_acc`` with at most ``max_distinct_frac * N`` distinct rows).
    Image features of real images are (almost) never identical, so their lookup accuracy
    is about 0; a feature made from the label (e.g. the embedded class name) has one row
    per class and a lookup accuracy of 1. Introduced in notebook 08.
    """
    branches = check_branches(branches, "leakage_report")
    n = next(iter(branches.values())).shape[0]
    y = _check_labels(y, n, "leakage_report(y)")
    K = _n_classes(y)
    rows = []
    for name, F in branches.items():
        _, inverse = np.unique(F, axis=0, return_inverse=True)
        inverse = inverse.ravel()
        counts = np.zeros((inverse.max() + 1, K), np.int64)
        np.add.at(counts, (inverse, y), 1)
        others = counts[inverse].copy()
        others[np.arange(n), y] -= 1                      # leave the example itself out
        seen = others.sum(1) > 0
        hit = seen & (others.argmax(1) == y)
        lookup = float(hit.mean())
        distinct = int(counts.shape[0])
        rows.append({"branch": name, "distinct": distinct, "lookup_acc": lookup,
                     "leak": bool(lookup >= min_lookup_acc and distinct <= max_distinct_frac * n)})
    return rows


def __getattr__(name: str) -> Any:
    """``fusion.LinearHead``, ``fusion.GatedFusion``, ``fusion.AttentionFusion``: the head classes."""
    heads = ("LinearHead", "GatedFusion", "AttentionFusion")
    if name in heads:
        return dict(zip(heads, _torch_modules()))[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
