"""Industrial inspection on real electroluminescence (EL) images of solar cells (ELPV).

Introduced in notebook 13 (the capstone). The pieces, in the order the notebook uses them:

* data: :func:`load_elpv` (2,624 real 300 x 300 EL cells from the installed package
  ``elpv-dataset``, with defect probabilities 0, 1/3, 2/3, 1 and the cell type), its
  licence (:data:`LICENCE`, CC BY-NC-SA 4.0: non-commercial) and the published reference
  (:data:`PAPER`, Deitsch et al., Solar Energy 2019);
* protocol: :func:`paper_split` (75 % / 25 %, stratified by defect class and cell type),
  :func:`scores` (4-class accuracy, 2-class accuracy with defective = p >= 0.5, per cell
  type), :func:`paired_bootstrap` (an interval for the difference of two methods on the
  same test cells);
* classical measures: :func:`flatten_cell` (busbars and the row/column illumination
  profile removed), :func:`line_measures` (dark ridges = crack candidates, dark areas =
  inactive regions, intensity statistics) and :func:`texture_features` (LBP, GLCM, HOG,
  Gabor from :mod:`course_lib.features`);
* deep features: :func:`dino_tokens` (DINOv2-S CLS and patch tokens of grey cells) and
  :func:`pool_tokens`;
* where is the defect: :class:`MemoryBank`, a PatchCore-style nearest-neighbour memory of
  patch tokens from defect-free cells (greedy coreset subsampling), giving anomaly maps and
  per-image anomaly scores;
* the inspection note: :func:`cell_report`, :func:`report_text`, :func:`rule_note` and
  :func:`check_note` (numbers and verdicts in a note that the report does not contain).

Grey images are uint8 ``(N, H, W)`` throughout; bad input raises :class:`CourseError`.
"""
from __future__ import annotations

import re
from typing import Any, NamedTuple, Sequence

import numpy as np

from .config import CourseError

#: The data licence of the ELPV cells (the loader code of the package is Apache-2.0).
LICENCE = ("ELPV dataset (Buerhop-Lutz et al. 2018; Deitsch et al. 2019), "
           "licence CC BY-NC-SA 4.0: attribution, non-commercial use only, share alike")
PACKAGE = "elpv-dataset"
PACKAGE_PIN = "elpv-dataset==1.0.0.post1"

#: The four defect probabilities an expert assigned, as class ids 0..3.
PROBABILITIES = (0.0, 1 / 3, 2 / 3, 1.0)
CLASS_NAMES = ("0%", "33%", "67%", "100%")
CELL_TYPES = ("mono", "poly")

#: The published reference numbers (Deitsch et al., Solar Energy 185, 2019; arXiv 1807.02894).
PAPER = {
    "citation": "Deitsch et al., Automatic classification of defective photovoltaic module cells "
                "in electroluminescence images, Solar Energy 185 (2019) 455-468, arXiv 1807.02894",
    "svm_accuracy": 0.8244,      # hand-crafted features + SVM, "average accuracy"
    "cnn_accuracy": 0.8842,      # fine-tuned CNN on a GPU, "average accuracy"
    "n_train": 1968,             # 75 % of the 2,624 cells
    "n_test": 656,
    "svm_hardware": "any CPU (the paper's hardware-efficient approach)",
    "cnn_hardware": "a GPU (the paper's hardware-demanding approach)",
}

REGIONS = ("top left", "top", "top right", "left", "centre", "right",
           "bottom left", "bottom", "bottom right")


class ELPV(NamedTuple):
    """The ELPV cells: ``images`` uint8 (N, 300, 300), ``proba`` float (N,) in {0, 1/3, 2/3, 1},
    ``label`` int (N,) class ids 0..3, ``types`` str (N,) ``mono``/``poly``, ``index`` int (N,)
    the row of each cell in the package's own order."""

    images: np.ndarray
    proba: np.ndarray
    label: np.ndarray
    types: np.ndarray
    index: np.ndarray

    @property
    def defective(self) -> np.ndarray:
        """bool (N,): defect probability >= 0.5 (the 2-class task)."""
        return self.label >= 2


def _package_loader():
    try:
        from elpv_dataset.utils import load_dataset
    except ImportError:
        raise CourseError(
            f"the ELPV solar-cell images are not installed: they come with the package "
            f"{PACKAGE}. Fix: .venv/bin/pip install --no-deps {PACKAGE_PIN} (or run "
            f"scripts/setup.sh). Data licence: CC BY-NC-SA 4.0, non-commercial use only."
        ) from None
    return load_dataset


def available() -> bool:
    """True when the ``elpv-dataset`` package is importable (used by ``course doctor``)."""
    import importlib.util

    return importlib.util.find_spec("elpv_dataset") is not None


def proba_to_label(proba: Any) -> np.ndarray:
    """Defect probabilities (N,) in {0, 1/3, 2/3, 1} -> class ids int64 (N,) 0..3."""
    p = np.asarray(proba, dtype=np.float64)
    label = np.rint(p * 3).astype(np.int64)
    if p.ndim != 1 or np.any(np.abs(p * 3 - label) > 1e-6) or label.min(initial=0) < 0 or label.max(initial=0) > 3:
        raise CourseError("proba_to_label: expected a 1-D array of defect probabilities 0, 1/3, 2/3 or 1")
    return label


_CACHE: dict[str, Any] = {}


def load_elpv(n: int | None = None, seed: int = 0) -> ELPV:
    """Load the ELPV cells (all 2,624, or a stratified subset of ``n`` for quick runs).

    ``n``: None for all cells, else an int >= 8: a subset drawn with ``seed``, stratified by
    defect class and cell type (every one of the 8 groups keeps its share, at least one cell).
    Raises a CourseError saying how to install the data when the package is missing.
    Introduced in notebook 13. Data licence: :data:`LICENCE`.
    """
    if "all" not in _CACHE:
        images, proba, types = _package_loader()()
        images = np.ascontiguousarray(images, dtype=np.uint8)
        if images.ndim != 3:
            raise CourseError(f"load_elpv: the package returned images of shape {images.shape}, "
                              "expected (N, 300, 300) grey")
        _CACHE["all"] = ELPV(images, np.asarray(proba, dtype=np.float64), proba_to_label(proba),
                             np.asarray(types).astype(str), np.arange(len(images)))
    full = _CACHE["all"]
    if n is None or n >= len(full.images):
        return full
    if not isinstance(n, (int, np.integer)) or n < 8:
        raise CourseError(f"load_elpv: n must be None or an int >= 8, got {n!r}")
    rng = np.random.default_rng(seed)
    strata = full.label * 2 + (full.types == "poly")
    keep = []
    for s in np.unique(strata):
        members = np.flatnonzero(strata == s)
        k = max(1, int(round(n * len(members) / len(strata))))
        keep.append(rng.choice(members, size=min(k, len(members)), replace=False))
    idx = np.sort(np.concatenate(keep))
    return ELPV(full.images[idx], full.proba[idx], full.label[idx], full.types[idx], full.index[idx])


def paper_split(label: Any, types: Any, seed: int = 0, test_frac: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """The paper's protocol: ``test_frac`` of the cells for testing, stratified by defect class
    *and* cell type (8 groups). Returns sorted index arrays ``(train, test)``; a new ``seed``
    gives a new split. Introduced in notebook 13.
    """
    label = np.asarray(label)
    types = np.asarray(types).astype(str)
    if label.shape != types.shape or label.ndim != 1:
        raise CourseError(f"paper_split: label {label.shape} and types {types.shape} must be 1-D of equal length")
    if not 0 < test_frac < 1:
        raise CourseError(f"paper_split: test_frac must be in (0, 1), got {test_frac}")
    rng = np.random.default_rng(seed)
    strata = [f"{a}-{b}" for a, b in zip(label, types)]
    strata = np.unique(strata, return_inverse=True)[1].ravel()
    groups = [rng.permutation(np.flatnonzero(strata == s)) for s in np.unique(strata)]
    want = np.array([test_frac * len(g) for g in groups])
    k = np.floor(want).astype(int)                      # largest remainders get the last cells,
    extra = int(round(test_frac * len(label))) - k.sum()   # so the test set has exactly 25 %
    k[np.argsort(-(want - k), kind="stable")[:extra]] += 1
    test = [g[:n] for g, n in zip(groups, k)]
    test = np.sort(np.concatenate(test))
    train = np.setdiff1d(np.arange(len(label)), test)
    return train, test


def _check_pair(y_true: Any, y_pred: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.shape != p.shape or t.ndim != 1 or t.size == 0:
        raise CourseError(f"{where}: y_true {t.shape} and y_pred {p.shape} must be non-empty 1-D arrays of equal length")
    if t.dtype.kind not in "iu" or p.dtype.kind not in "iu" or t.min() < 0 or t.max() > 3 or p.min() < 0 or p.max() > 3:
        raise CourseError(f"{where}: expected integer class ids 0..3 (0%, 33%, 67%, 100% defect probability)")
    return t, p


def binary(label: Any) -> np.ndarray:
    """Class ids 0..3 -> bool "defective" (defect probability >= 0.5, i.e. class 2 or 3)."""
    return np.asarray(label) >= 2


def scores(y_true: Any, y_pred: Any, types: Any | None = None) -> dict[str, float]:
    """Accuracies of 4-class predictions on the paper's protocol.

    ``y_true``, ``y_pred``: class ids 0..3 (N,). Returns ``acc4`` (the four classes),
    ``acc2`` (functional p < 0.5 vs defective p >= 0.5, after mapping both to two classes),
    ``balanced4`` (the mean recall of the four classes), and with ``types`` also ``acc2_mono``,
    ``acc2_poly``, ``acc4_mono``, ``acc4_poly``. Introduced in notebook 13.
    """
    t, p = _check_pair(y_true, y_pred, "scores")
    out = {"acc4": float((t == p).mean()), "acc2": float((binary(t) == binary(p)).mean()),
           "balanced4": float(np.mean([(p[t == k] == k).mean() for k in np.unique(t)]))}
    if types is not None:
        ty = np.asarray(types).astype(str)
        if ty.shape != t.shape:
            raise CourseError(f"scores: types {ty.shape} must match y_true {t.shape}")
        for name in CELL_TYPES:
            m = ty == name
            if m.any():
                out[f"acc4_{name}"] = float((t[m] == p[m]).mean())
                out[f"acc2_{name}"] = float((binary(t[m]) == binary(p[m])).mean())
    return out


def paired_bootstrap(correct_a: Any, correct_b: Any, n_boot: int = 2000, seed: int = 0,
                     level: float = 0.95) -> dict[str, float]:
    """Paired bootstrap over test cells of the accuracy difference ``a - b``.

    ``correct_a``, ``correct_b``: bool (N,), whether each method got each test cell right
    (the same cells, in the same order). Resamples cells with replacement ``n_boot`` times.
    Returns ``diff`` (observed), ``low``, ``high`` (the central ``level`` interval) and
    ``p_not_better`` (share of resamples with diff <= 0). Introduced in notebook 13.
    """
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise CourseError(f"paired_bootstrap: expected two bool arrays of one shape (N,), got {a.shape}, {b.shape}")
    rng = np.random.default_rng(seed)
    d = a.astype(np.float64) - b.astype(np.float64)
    idx = rng.integers(0, len(d), size=(int(n_boot), len(d)))
    boots = d[idx].mean(1)
    q = (1 - level) / 2
    return {"diff": float(d.mean()), "low": float(np.quantile(boots, q)), "high": float(np.quantile(boots, 1 - q)),
            "p_not_better": float((boots <= 0).mean())}


# --------------------------------------------------------------------------- classical measures


def _grey_stack(images: Any, where: str) -> np.ndarray:
    X = np.asarray(images)
    if X.ndim == 2:
        X = X[None]
    if X.ndim != 3 or X.shape[0] == 0 or min(X.shape[1:]) < 16:
        raise CourseError(f"{where}: expected grey uint8 cells (N, H, W) with H, W >= 16, got shape {X.shape}. "
                          "EL images are grey: pass the (N, 300, 300) array from load_elpv")
    if X.dtype != np.uint8:
        raise CourseError(f"{where}: expected dtype uint8 (0..255), got {X.dtype}. "
                          "Fix: (x * 255).round().astype(np.uint8) for floats in [0, 1]")
    return X


def resize_cells(images: Any, size: int) -> np.ndarray:
    """uint8 (N, H, W) -> uint8 (N, size, size), area-averaged (``cv2.INTER_AREA``)."""
    import cv2

    X = _grey_stack(images, "resize_cells")
    if X.shape[1:] == (size, size):
        return X
    return np.stack([cv2.resize(x, (size, size), interpolation=cv2.INTER_AREA) for x in X])


def flatten_cell(images: Any, size: int = 150) -> np.ndarray:
    """Remove what every cell has, to leave what a defect adds. float32 (N, size, size).

    Each cell is resized to ``size``, scaled by its median brightness (EL intensity varies
    from module to module), then the median of every row and of every column is subtracted
    (a busbar is a dark line across the whole cell, so it lives in those profiles; a crack
    does not). Result: about 0 where the cell looks like any cell, negative where it is
    darker than its row and column (cracks, inactive areas). Introduced in notebook 13.
    """
    X = resize_cells(images, size).astype(np.float32)
    med = np.median(X.reshape(len(X), -1), axis=1)[:, None, None]
    X = X / np.maximum(med, 1.0)
    X = X - np.median(X, axis=2, keepdims=True)
    X = X - np.median(X, axis=1, keepdims=True)
    return X


def _hessian(f: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from skimage.feature import hessian_matrix

    return hessian_matrix(f, sigma=sigma, order="rc", use_gaussian_derivatives=False)


def ridge_map(images: Any, size: int = 150, sigmas: Sequence[float] = (1.0, 2.0),
              return_orientation: bool = False):
    """Dark-ridge (line) strength of each cell: float32 (N, size, size), >= 0.

    On the flattened cell (:func:`flatten_cell`), at each scale sigma: the larger eigenvalue
    of the Hessian (the second derivatives of the Gaussian-smoothed image), times sigma**2 so
    that scales compare. Across a thin *dark* line the intensity has a minimum, so that
    curvature is large and positive; along the line it is about 0. The map keeps the maximum
    over ``sigmas`` (line widths of about 2 to 4 pixels at 150 x 150): cracks, and what is
    left of busbars and grain boundaries. With ``return_orientation`` also the angle (N, size,
    size) of the line's normal in degrees, in [0, 180). Introduced in notebook 13.
    """
    F = flatten_cell(images, size)
    R = np.zeros_like(F)
    A = np.zeros_like(F)
    for i, f in enumerate(F):
        for sigma in sigmas:
            hrr, hrc, hcc = _hessian(f, sigma)
            lam = 0.5 * (hrr + hcc) + np.sqrt(0.25 * (hrr - hcc) ** 2 + hrc ** 2)   # larger eigenvalue
            lam = np.maximum(lam, 0) * sigma ** 2
            better = lam > R[i]
            R[i][better] = lam[better]
            if return_orientation:
                A[i][better] = (np.degrees(0.5 * np.arctan2(2 * hrc, hrr - hcc)) % 180)[better]
    return (R, A) if return_orientation else R


LINE_NAMES = ("ridge_mean", "ridge_p99", "ridge_frac_strong", "ridge_largest_component",
              "ridge_diagonal_share", "dark_frac", "dark_largest_component", "flat_std",
              "flat_p01", "intensity_mean", "intensity_std", "intensity_p05")


def line_measures(images: Any, size: int = 150, ridge_threshold: float = 0.08,
                  dark_threshold: float = -0.35) -> tuple[np.ndarray, list[str]]:
    """Hand-made crack and inactive-area measures: float32 (N, 12) and their names.

    From the ridge map (:func:`ridge_map`): mean, 99th percentile, share of pixels above
    ``ridge_threshold``, the largest 8-connected component of those (as a share of the
    cell: a long crack is one large component, noise is many small ones), and the share of
    strong ridge pixels whose orientation is diagonal (cracks often run at an angle,
    busbars and cell edges are axis-aligned). From the flattened cell (:func:`flatten_cell`):
    the share of pixels below ``dark_threshold`` (inactive, disconnected areas are dark),
    its largest component, std and 1st percentile. From the raw cell: mean, std and 5th
    percentile of brightness / 255. Introduced in notebook 13.
    """
    import cv2

    X = _grey_stack(images, "line_measures")
    R, A = ridge_map(X, size, return_orientation=True)
    F = flatten_cell(X, size)
    out = np.zeros((len(X), len(LINE_NAMES)), dtype=np.float32)
    area = float(size * size)
    for i, (r, a, f, x) in enumerate(zip(R, A, F, X)):
        strong = (r > ridge_threshold).astype(np.uint8)
        n_s, _, stats_s, _ = cv2.connectedComponentsWithStats(strong, connectivity=8)
        dark = (f < dark_threshold).astype(np.uint8)
        n_d, _, stats_d, _ = cv2.connectedComponentsWithStats(dark, connectivity=8)
        ang = a[strong > 0] % 90
        diag = float(((ang > 20) & (ang < 70)).mean()) if ang.size else 0.0
        xf = x.astype(np.float32) / 255.0
        out[i] = (r.mean(), np.quantile(r, 0.99), strong.mean(),
                  (stats_s[1:, cv2.CC_STAT_AREA].max() / area) if n_s > 1 else 0.0, diag,
                  dark.mean(), (stats_d[1:, cv2.CC_STAT_AREA].max() / area) if n_d > 1 else 0.0,
                  f.std(), np.quantile(f, 0.01), xf.mean(), xf.std(), np.quantile(xf, 0.05))
    return out, list(LINE_NAMES)


#: Texture feature kinds and parameters for 100 x 100 cells (notebook 03's extractors).
TEXTURE_KINDS = {
    "lbp": {"P": 8, "R": 2, "method": "uniform", "grid": 2},
    "glcm": {"distances": (1, 3), "levels": 16},
    "hog": {"pixels_per_cell": 20, "cells_per_block": 1},
    "gabor": {"frequencies": (0.1, 0.2, 0.3), "n_orientations": 4},
}


def texture_features(images: Any, size: int = 100, kinds: dict[str, dict[str, Any]] | None = None
                     ) -> dict[str, np.ndarray]:
    """LBP, GLCM, HOG and Gabor features of the cells resized to ``size``: ``{kind: float32 (N, D_k)}``.

    Uses :func:`course_lib.features.extract` (notebook 03) with :data:`TEXTURE_KINDS`
    unless ``kinds`` is given. Introduced in notebook 13.
    """
    from . import features

    X = resize_cells(images, size)
    kinds = dict(TEXTURE_KINDS if kinds is None else kinds)
    return {k: features.extract(X, kinds=(k,), progress=False, **{k: dict(p)}).values for k, p in kinds.items()}


# --------------------------------------------------------------------------- deep features


def dino_tokens(images: Any, size: int = 224, blocks: Sequence[int] = (9, 12), batch_size: int = 16,
                progress: bool = True) -> dict[str, np.ndarray]:
    """Frozen DINOv2-S on grey cells, one pass: image features and patch tokens.

    Returns ``cls`` float32 (N, 384), the final CLS token; ``pooled`` float32
    (N, len(blocks), 768), the CLS token and the mean patch token after each block in
    ``blocks`` (1..12; the final LayerNorm applied to each, as in the DINOv2 paper's linear
    evaluation); ``patches`` float16 (N, g, g, 384), the final patch tokens, g = size / 14
    (224 -> 16 x 16 patches of about 19 x 19 cell pixels). Each cell is copied into three
    channels, resized (antialiased) to ``size`` and ImageNet-normalised, as
    :func:`course_lib.fusion.resize_normalise` does. Introduced in notebook 13.
    """
    import torch

    from . import fusion, models
    from .viz import progress as bar

    X = _grey_stack(images, "dino_tokens")
    if not isinstance(size, (int, np.integer)) or size < 28 or size % 14:
        raise CourseError(f"dino_tokens: size must be a multiple of 14 (DINOv2's patch), >= 28; got {size!r}")
    if not blocks or any(not 1 <= int(b) <= 12 for b in blocks):
        raise CourseError(f"dino_tokens: blocks must be numbers 1..12 (DINOv2-S has 12 blocks), got {blocks!r}")
    g = size // 14
    model = fusion._shared("dinov2-small", lambda: models.load_dinov2()[0].requires_grad_(False))
    dev = next(model.parameters()).device
    cls, pooled, patches = [], [], []
    starts = range(0, len(X), int(batch_size))
    with torch.no_grad():
        for s in (bar(starts, desc=f"DINOv2 @{size}", unit="batch") if progress else starts):
            x = fusion.resize_normalise(X[s:s + batch_size], size, models.IMAGENET_MEAN, models.IMAGENET_STD)
            out = model(pixel_values=x.to(dev), output_hidden_states=True)
            h = out.last_hidden_state.float().cpu()
            cls.append(h[:, 0].numpy())
            patches.append(h[:, 1:].reshape(len(h), g, g, -1).half().numpy())
            per_block = [model.layernorm(out.hidden_states[int(b)]).float().cpu() for b in blocks]
            pooled.append(torch.stack([torch.cat([t[:, 0], t[:, 1:].mean(1)], -1) for t in per_block], 1).numpy())
    return {"cls": np.concatenate(cls).astype(np.float32), "pooled": np.concatenate(pooled).astype(np.float32),
            "patches": np.concatenate(patches)}


def pool_tokens(cls: np.ndarray, patches: np.ndarray, kind: str = "cls+mean") -> np.ndarray:
    """Image features from DINOv2 tokens: float32 (N, D).

    ``kind``: ``"cls"`` (384), ``"cls+mean"`` (768: the DINOv2 paper's linear-probe
    feature), ``"cls+mean+max"`` (1,152: the max over patches keeps a small, strong local
    response that the mean dilutes), ``"cls+grid2"`` (CLS and the mean of each quadrant,
    1,920). Introduced in notebook 13.
    """
    P = np.asarray(patches, dtype=np.float32)
    c = np.asarray(cls, dtype=np.float32)
    if P.ndim != 4 or c.shape != (P.shape[0], P.shape[-1]):
        raise CourseError(f"pool_tokens: expected cls (N, D) and patches (N, g, g, D), got {c.shape}, {P.shape}")
    flat = P.reshape(len(P), -1, P.shape[-1])
    if kind == "cls":
        return c
    if kind == "cls+mean":
        return np.concatenate([c, flat.mean(1)], 1)
    if kind == "cls+mean+max":
        return np.concatenate([c, flat.mean(1), flat.max(1)], 1)
    if kind == "cls+grid2":
        g = P.shape[1] // 2
        quads = [P[:, i * g:(i + 1) * g, j * g:(j + 1) * g].mean((1, 2)) for i in range(2) for j in range(2)]
        return np.concatenate([c, *quads], 1)
    raise CourseError(f"pool_tokens: unknown kind {kind!r}; use cls, cls+mean, cls+mean+max or cls+grid2")


# --------------------------------------------------------------------------- anomaly maps


def _smooth_patches(P: np.ndarray) -> np.ndarray:
    """3 x 3 neighbourhood average of a patch grid (N, g, g, D) (PatchCore's local aggregation)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(P, dtype=np.float32)).permute(0, 3, 1, 2)
    t = F.avg_pool2d(t, 3, stride=1, padding=1, count_include_pad=False)
    return t.permute(0, 2, 3, 1).numpy()


def greedy_coreset(X: np.ndarray, k: int, seed: int = 0, proj_dim: int = 128) -> np.ndarray:
    """Indices of ``k`` rows of ``X`` (M, D) chosen by greedy k-centre (farthest-point) selection.

    Each step adds the row farthest from everything chosen so far, so the subset covers the
    whole feature space with few points (PatchCore's coreset). Distances are computed on a
    random projection to ``proj_dim`` dimensions (Johnson-Lindenstrauss) to keep it cheap.
    Returns int64 (k,). Introduced in notebook 13.
    """
    import torch

    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or not 1 <= k <= len(X):
        raise CourseError(f"greedy_coreset: need X (M, D) and 1 <= k <= M, got {X.shape}, k={k}")
    rng = np.random.default_rng(seed)
    Z = torch.from_numpy(X)
    if X.shape[1] > proj_dim:
        W = torch.from_numpy((rng.standard_normal((X.shape[1], proj_dim)) / np.sqrt(proj_dim)).astype(np.float32))
        Z = Z @ W
    chosen = [int(rng.integers(len(X)))]
    dist = ((Z - Z[chosen[0]]) ** 2).sum(1)
    for _ in range(k - 1):
        i = int(dist.argmax())
        chosen.append(i)
        dist = torch.minimum(dist, ((Z - Z[i]) ** 2).sum(1))
    return np.asarray(chosen, dtype=np.int64)


class MemoryBank:
    """A PatchCore-style anomaly detector (Roth et al., 2022) over DINOv2 patch tokens.

    ``fit(patches)`` takes the patch tokens (N, g, g, D) of *defect-free* cells only, applies
    a 3 x 3 neighbourhood average, draws at most ``max_candidates`` patches at random and keeps
    a greedy coreset of ``size`` of them. ``maps(patches)`` gives, for every patch of new
    cells, the distance to its nearest neighbour in the bank: float32 (N, g, g), large where a
    cell looks like no defect-free cell did. ``score(maps)`` is the image's anomaly score,
    its largest patch distance. Introduced in notebook 13.
    """

    def __init__(self, size: int = 4000, max_candidates: int = 40_000, seed: int = 0):
        self.size, self.max_candidates, self.seed = int(size), int(max_candidates), int(seed)
        self.bank: np.ndarray | None = None

    def fit(self, patches: np.ndarray) -> "MemoryBank":
        P = np.asarray(patches)
        if P.ndim != 4 or len(P) == 0:
            raise CourseError(f"MemoryBank.fit: expected patch tokens (N, g, g, D) of defect-free cells, got {P.shape}")
        flat = _smooth_patches(P).reshape(-1, P.shape[-1])
        rng = np.random.default_rng(self.seed)
        if len(flat) > self.max_candidates:
            flat = flat[rng.choice(len(flat), self.max_candidates, replace=False)]
        k = min(self.size, len(flat))
        self.bank = flat[greedy_coreset(flat, k, seed=self.seed)]
        return self

    def maps(self, patches: np.ndarray, chunk: int = 4096) -> np.ndarray:
        import torch

        if self.bank is None:
            raise CourseError("MemoryBank.maps: call .fit(defect_free_patches) first")
        P = np.asarray(patches)
        if P.ndim != 4 or P.shape[-1] != self.bank.shape[1]:
            raise CourseError(f"MemoryBank.maps: expected (N, g, g, {self.bank.shape[1]}) patch tokens, got {P.shape}")
        Q = torch.from_numpy(_smooth_patches(P).reshape(-1, P.shape[-1]))
        B = torch.from_numpy(self.bank)
        b2 = (B ** 2).sum(1)
        out = []
        for s in range(0, len(Q), chunk):
            q = Q[s:s + chunk]
            d2 = (q ** 2).sum(1, keepdim=True) - 2 * q @ B.T + b2
            out.append(d2.min(1).values.clamp_min(0).sqrt())
        return torch.cat(out).numpy().reshape(P.shape[:3]).astype(np.float32)

    @staticmethod
    def score(maps: np.ndarray) -> np.ndarray:
        """Image anomaly scores float32 (N,): the largest patch distance of each map (N, g, g)."""
        M = np.asarray(maps)
        if M.ndim != 3:
            raise CourseError(f"MemoryBank.score: expected maps (N, g, g), got {M.shape}")
        return M.reshape(len(M), -1).max(1).astype(np.float32)


def region_of(grid_map: np.ndarray) -> str:
    """Where the maximum of a (g, g) map lies, in words: one of :data:`REGIONS` (a 3 x 3 split)."""
    m = np.asarray(grid_map)
    if m.ndim != 2:
        raise CourseError(f"region_of: expected one (g, g) map, got {m.shape}")
    r, c = np.unravel_index(int(np.argmax(m)), m.shape)
    return REGIONS[3 * min(2, 3 * r // m.shape[0]) + min(2, 3 * c // m.shape[1])]


# --------------------------------------------------------------------------- the inspection note

REPORT_KEYS = ("cell", "cell_type", "verdict", "defect_probability", "predicted_class",
               "anomaly_score", "anomaly_percentile", "anomaly_region", "crack_length_share", "dark_area_share")


def cell_report(cell: int | str, cell_type: str, class_probs: Sequence[float], anomaly_map: np.ndarray,
                reference_scores: np.ndarray, crack_share: float, dark_share: float) -> dict[str, Any]:
    """The measured evidence about one cell as a flat dict (the keys of :data:`REPORT_KEYS`).

    ``class_probs``: the classifier's probabilities of the 4 classes; the predicted class is
    the most likely one and the verdict is "defective" when that class is 67 % or 100 % (the
    2-class decision the accuracies score); ``defect_probability`` is the probability of
    those two classes together. ``anomaly_map`` (g, g) and ``reference_scores`` (the anomaly scores of defect-free
    *training* cells) give the cell's anomaly score, its percentile among those and the
    region of the map's peak. ``crack_share``: largest dark-ridge component as a share of the
    cell; ``dark_share``: share of dark pixels. Numbers are rounded as the note must quote
    them. Introduced in notebook 13.
    """
    p = np.asarray(class_probs, dtype=np.float64)
    if p.shape != (4,) or abs(p.sum() - 1) > 1e-3 or p.min() < 0:
        raise CourseError(f"cell_report: class_probs must be 4 probabilities summing to 1, got {p}")
    if cell_type not in CELL_TYPES:
        raise CourseError(f"cell_report: cell_type must be one of {CELL_TYPES}, got {cell_type!r}")
    ref = np.asarray(reference_scores, dtype=np.float64)
    score = float(MemoryBank.score(np.asarray(anomaly_map)[None])[0])
    p_def = float(p[2] + p[3])
    return {
        "cell": str(cell), "cell_type": str(cell_type),
        "verdict": "defective" if int(p.argmax()) >= 2 else "functional",
        "defect_probability": round(p_def, 2),
        "predicted_class": CLASS_NAMES[int(p.argmax())],
        "anomaly_score": round(score, 1),
        "anomaly_percentile": int(round(100 * (ref < score).mean())),
        "anomaly_region": region_of(anomaly_map),
        "crack_length_share": round(100 * float(crack_share), 1),
        "dark_area_share": round(100 * float(dark_share), 1),
    }


def report_text(report: dict[str, Any]) -> str:
    """The report as short ``key: value`` lines (what the language model reads)."""
    missing = [k for k in REPORT_KEYS if k not in report]
    if missing:
        raise CourseError(f"report_text: the report lacks {missing}; build it with cell_report")
    units = {"crack_length_share": " % of the cell", "dark_area_share": " % of the cell",
             "anomaly_percentile": " (percentile among defect-free training cells)"}
    return "\n".join(f"{k}: {report[k]}{units.get(k, '')}" for k in REPORT_KEYS)


def rule_note(report: dict[str, Any]) -> str:
    """A template inspection note that states only what the report holds (the baseline)."""
    r = report
    unusual = "more unusual" if r["anomaly_percentile"] >= 95 else "within the range"
    return (f"Cell {r['cell']} ({r['cell_type']}): {r['verdict']}, defect probability {r['defect_probability']} "
            f"(class {r['predicted_class']}). Anomaly score {r['anomaly_score']}, {unusual} of defect-free cells "
            f"(percentile {r['anomaly_percentile']}), strongest at the {r['anomaly_region']}. "
            f"Longest crack candidate {r['crack_length_share']} % of the cell, dark area {r['dark_area_share']} %.")


_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")


def check_note(note: str, report: dict[str, Any]) -> dict[str, Any]:
    """Find what a note says that its report does not: invented numbers, a wrong verdict or region.

    A number counts as supported when it equals (to its printed precision) a number in the
    report, or the cell id. The verdict is wrong when the note uses words of the other
    verdict but none of its own; the region is wrong when the note names one of
    :data:`REGIONS` other than the report's. Returns ``{"invented_numbers": [...],
    "wrong_verdict": bool, "wrong_region": bool, "ok": bool}``. Introduced in notebook 13.
    """
    if not isinstance(note, str):
        raise CourseError(f"check_note: note must be a string, got {type(note).__name__}")
    known = []
    for v in report.values():
        for m in _NUMBER.findall(str(v)):
            known.append(float(m))
    invented = []
    for m in _NUMBER.findall(note):
        x = float(m)
        tol = 0.5 * 10 ** -(len(m.split(".")[1]) if "." in m else 0)
        if not any(abs(x - k) <= tol + 1e-9 or abs(x - 100 * k) <= tol + 1e-9 for k in known):
            invented.append(m)
    low = note.lower()
    for phrase in ("defect-free", "defect free"):   # "defect-free cells" names the reference, not a verdict
        low = low.replace(phrase, "reference")
    says = {"defective": any(w in low.replace("non-defective", "").replace("not defective", "")
                             for w in ("defective", "damaged", "cracked")),
            "functional": any(w in low for w in ("functional", "non-defective", "not defective", "intact", "no defect"))}
    own = report["verdict"]
    other = "functional" if own == "defective" else "defective"
    wrong_verdict = says[other] and not says[own]
    named, rest = [], low
    for r in sorted(REGIONS, key=len, reverse=True):   # "top left" before "top"
        if r in rest:
            named.append(r)
            rest = rest.replace(r, " ")
    wrong_region = bool(named) and report["anomaly_region"] not in named
    return {"invented_numbers": invented, "wrong_verdict": bool(wrong_verdict), "wrong_region": wrong_region,
            "ok": not invented and not wrong_verdict and not wrong_region}
