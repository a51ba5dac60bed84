"""Classical image features, batched: HOG, LBP, GLCM, Gabor, colour histograms, pixels.

Introduced in notebook 03 (texture and colour); used in 04 (classical classifier) and 08
(feature fusion). Every extractor takes a *stack* of images and returns a
:class:`FeatureSet` ``(values, names)``: ``values`` is float32 ``(N, D)``, ``names`` a list
of ``D`` strings, so ``F, names = hog_features(X)`` works.

Accepted stacks (checked by :func:`as_stack`):

* ``(N, H, W)`` uint8 grey, or ``(N, H, W, 3)`` uint8 RGB, values 0..255;
* the same shapes as floats in [0, 1] (procedural textures), converted to uint8 by rounding
  ``x * 255``.

A single image is a stack of one: ``X[None]``. Extractors that need grey convert RGB with
the ITU-R 601 weights (``cv2.COLOR_RGB2GRAY``). The batched versions are checked against
the per-image references (``skimage.feature.hog``, ``local_binary_pattern``,
``graycomatrix``/``graycoprops``, ``skimage.filters.gabor``) in ``tests/test_features.py``.

Typical use::

    F, names = cl.features.extract(X, kinds=("hog", "lbp", "colour"),
                                   hog={"pixels_per_cell": (4, 4)})
"""
from __future__ import annotations

import inspect
import math
from functools import lru_cache
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from .config import CourseError

KINDS = ("hog", "lbp", "glcm", "gabor", "colour", "pixels")
LBP_METHODS = ("default", "ror", "uniform", "nri_uniform")
GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "ASM", "energy", "correlation")
HOG_NORMS = ("L1", "L1-sqrt", "L2", "L2-Hys")
COLOUR_SPACES = ("rgb", "hsv")
_PROGRESS_PIXELS = 30_000_000  # progress bar above this many pixel values (about 40k 28x28 images)


class FeatureSet(NamedTuple):
    """Features of a stack of images: ``values`` float32 ``(N, D)`` and ``D`` ``names``."""

    values: np.ndarray
    names: list[str]


# --------------------------------------------------------------------------- input checks

def as_stack(X: Any, name: str = "X") -> np.ndarray:
    """Validate a stack of images and return it as a C-contiguous uint8 array.

    In: ``(N, H, W)`` grey or ``(N, H, W, 3)`` RGB, uint8 in [0, 255] or float in [0, 1].
    Out: the same shape, uint8. Raises :class:`CourseError` for a single image, channels-first
    or RGBA stacks, other dtypes, floats outside [0, 1], or empty stacks.
    Introduced in notebook 03.
    """
    if not isinstance(X, np.ndarray):
        raise CourseError(f"{name} must be a NumPy array, got {type(X).__name__}; "
                          f"fix: {name} = np.asarray({name})")
    if X.ndim == 2:
        raise CourseError(f"{name} has shape {X.shape}: one image, but a stack (N, H, W) is expected; "
                          f"fix: pass {name}[None]")
    if X.ndim == 3 and X.shape[-1] in (3, 4) and min(X.shape[:2]) > 4:
        raise CourseError(f"{name} has shape {X.shape}: this looks like one (H, W, {X.shape[-1]}) colour "
                          f"image, but a stack is expected; fix: pass {name}[None]")
    if X.ndim == 4:
        if X.shape[-1] == 4:
            raise CourseError(f"{name} has shape {X.shape}: RGBA; expected (N, H, W, 3) RGB; "
                              f"fix: drop alpha with {name}[..., :3]")
        if X.shape[-1] != 3:
            hint = (f"it looks channels-first; fix: {name}.transpose(0, 2, 3, 1)" if X.shape[1] in (1, 3)
                    else f"one channel; fix: {name}[..., 0] for a grey stack" if X.shape[-1] == 1
                    else "expected (N, H, W, 3) with 3 colour channels last")
            raise CourseError(f"{name} has shape {X.shape}: {hint}")
    elif X.ndim != 3:
        raise CourseError(f"{name} has {X.ndim} dimensions {X.shape}; expected (N, H, W) grey "
                          f"or (N, H, W, 3) RGB")
    if X.shape[0] == 0 or X.shape[1] < 3 or X.shape[2] < 3:
        raise CourseError(f"{name} has shape {X.shape}: need at least one image of at least 3x3 pixels")
    if X.dtype == np.uint8:
        return np.ascontiguousarray(X)
    if np.issubdtype(X.dtype, np.floating):
        lo, hi = float(np.min(X)), float(np.max(X))
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi > 1:
            raise CourseError(f"{name} is {X.dtype} with values in [{lo:.3g}, {hi:.3g}]; float stacks "
                              f"must lie in [0, 1]; fix: scale to [0, 1], or for 0..255 values use "
                              f"{name}.astype(np.uint8)")
        return (X * 255.0 + 0.5).astype(np.uint8)
    raise CourseError(f"{name} has dtype {X.dtype}; expected uint8 in [0, 255] or float in [0, 1]; "
                      f"fix: {name}.astype(np.uint8) if its values are already 0..255")


def to_gray(X: Any) -> np.ndarray:
    """Grey version of a stack: ``(N, H, W)`` uint8, with :func:`course_lib.imaging.to_gray`'s
    BT.601 weights (the stack is converted as one tall image).

    In: any stack accepted by :func:`as_stack`. Introduced in notebook 03.
    """
    from .imaging import to_gray as image_to_gray

    X = as_stack(X)
    if X.ndim == 3:
        return X
    n, h, w, _ = X.shape
    return image_to_gray(X.reshape(n * h, w, 3)).reshape(n, h, w)


def _chunks(n: int, chunk_size: int | None, pixels_per_image: int, desc: str, progress: bool | None,
            budget: int = 1 << 20):
    """Ranges of image indices, under a progress bar when the job is large.

    ``chunk_size=None`` picks as many images as fit in ``budget`` pixel values: small chunks
    keep the temporary arrays in the CPU caches, which is faster than one huge array.
    """
    if chunk_size is None:
        chunk_size = max(1, budget // max(1, pixels_per_image))
    if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise CourseError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    starts = range(0, n, int(chunk_size))
    show = (n * pixels_per_image > _PROGRESS_PIXELS and len(starts) > 1) if progress is None else progress
    if show:
        from .viz import progress as bar

        starts = bar(starts, desc=desc, unit="chunk")
    for s in starts:
        yield slice(s, min(n, s + int(chunk_size)))


def _pair(value: Any, what: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        value = (value, value)
    try:
        a, b = (int(v) for v in value)
    except (TypeError, ValueError):
        raise CourseError(f"{what} must be an int or a pair of ints, got {value!r}") from None
    if a < 1 or b < 1:
        raise CourseError(f"{what} must be positive, got {value!r}")
    return a, b


# --------------------------------------------------------------------------- HOG

@lru_cache(maxsize=8)
def _hog_lut(orientations: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin and magnitude of every integer gradient pair (g_col, g_row) in [-255, 255]^2.

    Uses the reference's exact arithmetic (``arctan2`` in degrees mod 180, float32 bin edges),
    so the batched HOG bins every uint8 pixel exactly as ``skimage.feature.hog`` does.
    Bin ``-1`` marks a pixel that falls in no bin (as in the reference, it does not vote).
    """
    g = np.arange(-255, 256, dtype=np.float64)
    gc, gr = np.meshgrid(g, g, indexing="ij")  # index = (g_col + 255) * 511 + (g_row + 255)
    mag = np.hypot(gc, gr).ravel()
    angle = (np.rad2deg(np.arctan2(gr, gc)) % 180).ravel()
    return _orientation_bins(angle, orientations).astype(np.int16), mag


def _orientation_bins(angle: np.ndarray, orientations: int) -> np.ndarray:
    """Bin index of unsigned angles in degrees [0, 180): bin i is [edge_i, edge_{i+1})."""
    width = np.float32(180.0 / orientations)
    edges = np.array([np.float32(width * np.float32(i)) for i in range(orientations + 1)], dtype=np.float64)
    b = np.searchsorted(edges, angle, side="right") - 1
    b[(b < 0) | (b >= orientations)] = -1
    return b


def _hog_gradients(X: np.ndarray, transform_sqrt: bool) -> tuple[np.ndarray, np.ndarray]:
    """Central-difference gradients (rows, cols) of a chunk, zero on the border rows/cols.

    ``X``: (n, H, W) or (n, H, W, 3) uint8. Out: two arrays of X's shape, int16 (exact) or,
    with ``transform_sqrt``, float64 gradients of ``sqrt(X)``.
    """
    if transform_sqrt:
        img = np.sqrt(X.astype(np.float64))
        dtype = np.float64
    else:
        img = X.astype(np.int16)
        dtype = np.int16
    grow = np.zeros(img.shape, dtype=dtype)
    gcol = np.zeros(img.shape, dtype=dtype)
    grow[:, 1:-1] = img[:, 2:] - img[:, :-2]
    gcol[:, :, 1:-1] = img[:, :, 2:] - img[:, :, :-2]
    return grow, gcol


def hog_cells(X: Any, orientations: int = 9, pixels_per_cell: int | tuple[int, int] = (8, 8),
              transform_sqrt: bool = False) -> np.ndarray:
    """Cell orientation histograms of a stack, before block normalisation.

    In: a stack (see :func:`as_stack`). Out: float32 ``(N, H // ch, W // cw, orientations)``,
    the mean gradient magnitude per unsigned-orientation bin (bin ``i`` covers
    ``[i, i + 1) * 180 / orientations`` degrees) in each ``ch x cw`` cell, exactly the
    quantity ``skimage.feature.hog`` normalises. Introduced in notebook 03.
    """
    X = as_stack(X)
    ch, cw = _pair(pixels_per_cell, "pixels_per_cell")
    return _hog_cells_chunk(X, int(orientations), ch, cw, transform_sqrt).astype(np.float32)


def _hog_cells_chunk(X: np.ndarray, orientations: int, ch: int, cw: int,
                     transform_sqrt: bool) -> np.ndarray:
    n, h, w = X.shape[:3]
    ncr, ncc = h // ch, w // cw
    if orientations < 1:
        raise CourseError(f"orientations must be >= 1, got {orientations}")
    if ncr < 1 or ncc < 1:
        raise CourseError(f"images of {h}x{w} pixels are smaller than one {ch}x{cw} cell; "
                          f"use smaller pixels_per_cell")
    grow, gcol = _hog_gradients(X, transform_sqrt)
    if not transform_sqrt:  # integer gradients: exact look-up of bin and magnitude
        bins_lut, mag_lut = _hog_lut(orientations)
        idx = (gcol.astype(np.int32) + 255) * 511 + (grow + 255)
        mag = mag_lut[idx]
        if X.ndim == 4:
            pick = mag.argmax(axis=3)[..., None]
            mag = np.take_along_axis(mag, pick, 3)[..., 0]
            idx = np.take_along_axis(idx, pick, 3)[..., 0]
        bins = bins_lut[idx]
    else:
        mag = np.hypot(grow, gcol)
        if X.ndim == 4:  # per pixel, the channel with the largest gradient (as the reference)
            pick = mag.argmax(axis=3)[..., None]
            mag = np.take_along_axis(mag, pick, 3)[..., 0]
            grow = np.take_along_axis(grow, pick, 3)[..., 0]
            gcol = np.take_along_axis(gcol, pick, 3)[..., 0]
        bins = _orientation_bins(np.rad2deg(np.arctan2(grow, gcol)) % 180, orientations)
    mag = mag[:, :ncr * ch, :ncc * cw]
    bins = bins[:, :ncr * ch, :ncc * cw]
    cell = (np.arange(ncr * ch) // ch)[:, None] * ncc + (np.arange(ncc * cw) // cw)[None, :]
    n_bins_img = ncr * ncc * orientations
    index = (np.arange(n, dtype=np.int64)[:, None, None] * n_bins_img
             + cell[None].astype(np.int64) * orientations + bins)
    weights = np.where(bins >= 0, mag, 0.0)
    index = np.where(bins >= 0, index, 0)
    hist = np.bincount(index.ravel(), weights=weights.ravel(), minlength=n * n_bins_img)
    return hist.reshape(n, ncr, ncc, orientations) / (ch * cw)


def _normalise_blocks(cells: np.ndarray, br: int, bc: int, method: str) -> np.ndarray:
    """(n, ncr, ncc, o) cell histograms -> (n, nbr, nbc, br, bc, o) normalised blocks."""
    from numpy.lib.stride_tricks import sliding_window_view

    blocks = sliding_window_view(cells, (br, bc), axis=(1, 2))  # (n, nbr, nbc, o, br, bc)
    blocks = np.ascontiguousarray(blocks.transpose(0, 1, 2, 4, 5, 3))
    eps = 1e-5
    axes = (3, 4, 5)
    if method == "L1":
        return blocks / (np.abs(blocks).sum(axes, keepdims=True) + eps)
    if method == "L1-sqrt":
        return np.sqrt(blocks / (np.abs(blocks).sum(axes, keepdims=True) + eps))
    out = blocks / np.sqrt((blocks ** 2).sum(axes, keepdims=True) + eps ** 2)
    if method == "L2-Hys":
        out = np.minimum(out, 0.2)
        out = out / np.sqrt((out ** 2).sum(axes, keepdims=True) + eps ** 2)
    return out


def hog_features(X: Any, orientations: int = 9, pixels_per_cell: int | tuple[int, int] = (8, 8),
                 cells_per_block: int | tuple[int, int] = (2, 2), block_norm: str = "L2-Hys",
                 transform_sqrt: bool = False, chunk_size: int | None = None,
                 progress: bool | None = None) -> FeatureSet:
    """Histograms of oriented gradients of a stack, batched.

    In: a stack (see :func:`as_stack`), grey or RGB (RGB: per pixel the channel with the
    largest gradient). Out: :class:`FeatureSet`, float32 ``(N, D)`` with
    ``D = n_blocks_row * n_blocks_col * block_rows * block_cols * orientations``, in the
    order of ``skimage.feature.hog(..., feature_vector=True)`` with the same parameters
    (``channel_axis=-1`` for RGB). Values lie in [0, 1] for the L2 norms.
    Introduced in notebook 03.
    """
    X = as_stack(X)
    if block_norm not in HOG_NORMS:
        raise CourseError(f"block_norm must be one of {HOG_NORMS}, got {block_norm!r}")
    ch, cw = _pair(pixels_per_cell, "pixels_per_cell")
    br, bc = _pair(cells_per_block, "cells_per_block")
    n, h, w = X.shape[:3]
    ncr, ncc = h // ch, w // cw
    if ncr < br or ncc < bc:
        raise CourseError(f"images of {h}x{w} pixels are too small for blocks of {br}x{bc} cells of "
                          f"{ch}x{cw} pixels: need at least {br * ch}x{bc * cw}; use smaller "
                          f"pixels_per_cell or cells_per_block")
    nbr, nbc = ncr - br + 1, ncc - bc + 1
    D = nbr * nbc * br * bc * orientations
    out = np.empty((n, D), dtype=np.float32)
    for sl in _chunks(n, chunk_size, h * w * (3 if X.ndim == 4 else 1), "hog", progress):
        cells = _hog_cells_chunk(X[sl], int(orientations), ch, cw, transform_sqrt)
        out[sl] = _normalise_blocks(cells, br, bc, block_norm).reshape(-1, D)
    names = [f"hog_b{i}_{j}_c{a}_{b}_o{o}" for i in range(nbr) for j in range(nbc)
             for a in range(br) for b in range(bc) for o in range(orientations)]
    return FeatureSet(out, names)


# --------------------------------------------------------------------------- LBP

def _lbp_offsets(P: int, R: float) -> tuple[np.ndarray, np.ndarray]:
    """Row and column offsets of the P circle samples (as in the reference: rounded to 5 decimals)."""
    k = np.arange(P, dtype=np.float64)
    return np.round(-R * np.sin(2 * np.pi * k / P), 5), np.round(R * np.cos(2 * np.pi * k / P), 5)


def _shifted(pad: int, base: np.ndarray, axis_rows: bool) -> Any:
    """Index along rows (or columns) of a padded stack: a slice if the offset is constant."""
    idx = base + pad
    if np.all(np.diff(idx) == 1):
        return slice(int(idx[0]), int(idx[0]) + len(idx))
    return idx[:, None] if axis_rows else idx[None, :]


def _sample(Xp: np.ndarray, pad: int, h: int, w: int, rp: float, cp: float) -> np.ndarray:
    """Bilinear samples at (r + rp, c + cp) of every pixel, zero outside, float64 (n, h, w).

    Same arithmetic, in the same order, as the reference's bilinear interpolation, so the
    values are bit-identical (this matters: LBP thresholds them against the centre).
    """
    rr = np.arange(h, dtype=np.float64) + rp
    cc = np.arange(w, dtype=np.float64) + cp
    rmin, cmin = np.floor(rr), np.floor(cc)
    rmax, cmax = np.ceil(rr), np.ceil(cc)
    dr = (rr - rmin)[:, None]
    dc = (cc - cmin)[None, :]
    rmin, rmax, cmin, cmax = (a.astype(np.int64) for a in (rmin, rmax, cmin, cmax))

    def px(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        ri = _shifted(pad, rows, True)
        ci = _shifted(pad, cols, False)
        if isinstance(ri, slice) and isinstance(ci, slice):
            return Xp[:, ri, ci]
        if isinstance(ri, slice):
            return Xp[:, ri][:, :, ci[0]]
        if isinstance(ci, slice):
            return Xp[:, :, ci][:, ri[:, 0]]
        return Xp[:, ri, ci]

    tl = px(rmin, cmin)
    if not dc.any() and not dr.any():
        return tl
    if dc.any():  # top = (1 - dc) * tl + dc * tr, built in place (same products, same sum)
        top = np.multiply(tl, 1 - dc)
        top += np.multiply(px(rmin, cmax), dc)
    else:
        top = tl
    if not dr.any():
        return top
    if dc.any():
        bottom = np.multiply(px(rmax, cmin), 1 - dc)
        bottom += np.multiply(px(rmax, cmax), dc)
    else:
        bottom = px(rmax, cmin)
    out = np.multiply(top, 1 - dr)
    out += np.multiply(bottom, dr)
    return out


def _rotate_right(v: np.ndarray, P: int) -> np.ndarray:
    return (v >> 1) | ((v & 1) << (P - 1))


def _map_codes(codes: np.ndarray, P: int, method: str) -> np.ndarray:
    """Map default LBP codes (int64) to ``method``'s codes, vectorised, with the reference's rules."""
    if method == "default":
        return codes
    if method == "uniform" and hasattr(np, "bitwise_count"):  # NumPy >= 2: popcounts, no bit planes
        # 0/1 changes around the circle = ones of code XOR its rotation; at most 2 <=> uniform
        changes = np.bitwise_count(codes ^ _rotate_right(codes, P))
        return np.where(changes <= 2, np.bitwise_count(codes).astype(np.int64), P + 1)
    bits = (codes[..., None] >> np.arange(P)) & 1
    changes = (bits[..., :-1] != bits[..., 1:]).sum(-1)
    n_ones = bits.sum(-1)
    if method == "uniform":
        return np.where(changes <= 2, n_ones, P + 1)
    if method == "ror":
        best = codes.copy()
        rot = codes.copy()
        for _ in range(P - 1):
            rot = _rotate_right(rot, P)
            np.minimum(best, rot, out=best)
        return best
    # nri_uniform: uniform patterns keep their rotation, in P * (P - 1) + 3 codes
    first_one = np.where(bits.any(-1), bits.argmax(-1), -1)
    first_zero = np.where((bits == 0).any(-1), (bits == 0).argmax(-1), -1)
    rot_index = np.where(first_one == 0, n_ones - first_zero, P - first_one)
    uniform = np.where(n_ones == 0, 0, np.where(n_ones == P, P * (P - 1) + 1,
                                                1 + (n_ones - 1) * P + rot_index))
    return np.where(changes <= 2, uniform, P * (P - 1) + 2)


@lru_cache(maxsize=16)
def _code_lut(P: int, method: str) -> np.ndarray:
    lut = _map_codes(np.arange(2 ** P, dtype=np.int64), P, method)
    lut.flags.writeable = False
    return lut


def lbp_code_map(P: int = 8, method: str = "uniform") -> np.ndarray:
    """Look-up table from ``default`` LBP codes to ``method``'s codes: int64 ``(2**P,)``.

    ``lbp_code_map(8, "uniform")[code]`` is the rotation-invariant uniform code (0..P+1) of
    the default code ``code`` (0..255). Needs ``P <= 16``. Introduced in notebook 03.
    """
    P, _ = _check_lbp(P, 1.0, method)
    if P > 16:
        raise CourseError(f"a look-up table needs P <= 16 (2**P entries), got P={P}")
    return _code_lut(P, method).copy()


def _check_lbp(P: int, R: float, method: str) -> tuple[int, float]:
    if method not in LBP_METHODS:
        raise CourseError(f"LBP method must be one of {LBP_METHODS}, got {method!r}")
    if not isinstance(P, (int, np.integer)) or not (2 <= P <= 31):
        raise CourseError(f"P (number of circle samples) must be an int in 2..31, got {P!r}")
    if not (float(R) > 0):
        raise CourseError(f"R (circle radius in pixels) must be > 0, got {R!r}")
    return int(P), float(R)


def _lbp_chunk(G: np.ndarray, P: int, R: float, method: str) -> np.ndarray:
    n, h, w = G.shape
    pad = int(math.ceil(R)) + 1
    Xp = np.zeros((n, h + 2 * pad, w + 2 * pad), dtype=np.float64)
    Xp[:, pad:pad + h, pad:pad + w] = G
    centre = Xp[:, pad:pad + h, pad:pad + w]
    rps, cps = _lbp_offsets(P, R)
    dtype = np.uint8 if P <= 8 else np.uint16 if P <= 16 else np.int64
    codes = np.zeros((n, h, w), dtype=dtype)
    bit = np.empty((n, h, w), dtype=bool)
    for i, (rp, cp) in enumerate(zip(rps, cps)):
        np.greater_equal(_sample(Xp, pad, h, w, rp, cp), centre, out=bit)
        codes |= bit.view(np.uint8).astype(dtype, copy=False) << dtype(i)
    if method == "default":
        return codes.astype(np.int64, copy=False)
    if P <= 16:
        return _code_lut(P, method)[codes]
    return _map_codes(codes, P, method)


def lbp_codes(X: Any, P: int = 8, R: float = 1.0, method: str = "default",
              chunk_size: int | None = None, progress: bool | None = None) -> np.ndarray:
    """Local binary pattern code of every pixel of a stack, batched.

    In: a stack (RGB is converted to grey). ``P`` circle samples (2..31) at radius ``R``
    pixels, bilinearly interpolated, zero outside the image; ``method`` one of
    ``default`` (codes 0..2^P-1), ``ror`` (rotation-invariant: the smallest code over the P
    rotations), ``uniform`` (rotation-invariant uniform: 0..P+1) or ``nri_uniform``
    (0..P(P-1)+2). Out: int64 ``(N, H, W)``, equal to
    ``skimage.feature.local_binary_pattern(img, P, R, method)`` for every image.
    Introduced in notebook 03.
    """
    P, R = _check_lbp(P, R, method)
    G = to_gray(X)
    n, h, w = G.shape
    out = np.empty((n, h, w), dtype=np.int64)
    for sl in _chunks(n, chunk_size, h * w * P // 8, "lbp", progress, budget=1 << 17):
        out[sl] = _lbp_chunk(G[sl], P, R, method)
    return out


def lbp_n_bins(P: int, method: str) -> int:
    """Number of distinct codes (histogram bins) of an LBP ``method`` with ``P`` samples.

    ``ror`` histograms use only the codes that occur (36 for P = 8), when P <= 16.
    Introduced in notebook 03.
    """
    _check_lbp(P, 1.0, method)
    if method == "uniform":
        return P + 2
    if method == "nri_uniform":
        return P * (P - 1) + 3
    if method == "ror" and P <= 16:
        return len(np.unique(_code_lut(P, "ror")))
    return 2 ** P


@lru_cache(maxsize=16)
def _ror_compact(P: int) -> np.ndarray:
    """Map each rotation-invariant code to its rank among the codes that occur."""
    values = np.unique(_code_lut(P, "ror"))
    lut = np.full(2 ** P, -1, dtype=np.int64)
    lut[values] = np.arange(len(values))
    return lut


def lbp_histograms(X: Any, P: int = 8, R: float = 1.0, method: str = "uniform",
                   grid: int | tuple[int, int] = (1, 1), chunk_size: int | None = None,
                   progress: bool | None = None) -> FeatureSet:
    """Normalised LBP code histograms of a stack (optionally one per cell of a spatial grid).

    In: a stack; ``P``, ``R``, ``method`` as in :func:`lbp_codes`; ``grid`` = (rows, cols)
    of equal cells (the last cells take the remainder). Out: :class:`FeatureSet`, float32
    ``(N, grid_rows * grid_cols * lbp_n_bins(P, method))``, each cell's histogram sums to 1.
    ``uniform`` with a single cell is invariant to rotations by multiples of 360/P degrees
    (up to interpolation). Introduced in notebook 03.
    """
    P, R = _check_lbp(P, R, method)
    gr, gc = _pair(grid, "grid")
    G = to_gray(X)
    n, h, w = G.shape
    if gr > h or gc > w:
        raise CourseError(f"grid {grid} has more cells than the {h}x{w} image has pixels")
    nb = lbp_n_bins(P, method)
    if nb > 2 ** 16:
        raise CourseError(f"{method!r} LBP with P={P} has {nb} bins: too many for a histogram; "
                          f"use method='uniform' or 'nri_uniform', or P <= 16")
    cell = (np.minimum(np.arange(h) // (h // gr), gr - 1)[:, None] * gc
            + np.minimum(np.arange(w) // (w // gc), gc - 1)[None, :])
    counts = np.bincount(cell.ravel(), minlength=gr * gc).astype(np.float64)
    out = np.empty((n, gr * gc * nb), dtype=np.float32)
    for sl in _chunks(n, chunk_size, h * w * P // 8, "lbp", progress, budget=1 << 17):
        codes = _lbp_chunk(G[sl], P, R, method)
        if method == "ror" and P <= 16:
            codes = _ror_compact(P)[codes]
        m = codes.shape[0]
        index = (np.arange(m)[:, None, None] * (gr * gc) + cell[None]) * nb + codes
        hist = np.bincount(index.ravel(), minlength=m * gr * gc * nb).reshape(m, gr * gc, nb)
        out[sl] = (hist / counts[None, :, None]).reshape(m, -1)
    tag = f"lbp_P{P}_R{R:g}_{method}"
    names = [f"{tag}_g{a}_{b}_{k}" if (gr, gc) != (1, 1) else f"{tag}_{k}"
             for a in range(gr) for b in range(gc) for k in range(nb)]
    return FeatureSet(out, names)


# --------------------------------------------------------------------------- GLCM

def _glcm_offset(distance: float, angle: float) -> tuple[int, int]:
    """Row and column offset as the reference computes it (C ``round``: half away from zero)."""
    def c_round(x: float) -> int:
        return int(math.copysign(math.floor(abs(x) + 0.5), x))

    return c_round(math.sin(angle) * distance), c_round(math.cos(angle) * distance)


def quantise(X: Any, levels: int) -> np.ndarray:
    """Grey levels 0..255 -> 0..levels-1 (``floor(x * levels / 256)``), uint8 ``(N, H, W)``.

    Introduced in notebook 03 (GLCMs are computed on a few grey levels).
    """
    if not isinstance(levels, (int, np.integer)) or not (2 <= levels <= 256):
        raise CourseError(f"levels must be an int in 2..256, got {levels!r}")
    G = to_gray(X)
    return ((G.astype(np.uint16) * int(levels)) >> 8).astype(np.uint8)


def glcm_matrices(X: Any, distances: Sequence[float] = (1,), angles: Sequence[float] = (0.0,),
                  levels: int = 16, symmetric: bool = True, normed: bool = True) -> np.ndarray:
    """Grey-level co-occurrence matrices of a stack, batched.

    In: a stack (quantised to ``levels`` grey levels with :func:`quantise`); ``distances``
    in pixels, ``angles`` in radians. Out: float64 ``(N, levels, levels, len(distances),
    len(angles))``; image ``k`` equals ``skimage.feature.graycomatrix(quantise(X)[k],
    distances, angles, levels, symmetric, normed)``. Introduced in notebook 03.
    """
    Q = quantise(X, levels)
    n, h, w = Q.shape
    L = int(levels)
    dist = [float(d) for d in distances]
    angs = [float(a) for a in angles]
    if not dist or not angs:
        raise CourseError("glcm needs at least one distance and one angle")
    out = np.zeros((n, L, L, len(dist), len(angs)), dtype=np.float64)
    base = (np.arange(n, dtype=np.int64) * (L * L))[:, None, None]
    for di, d in enumerate(dist):
        for ai, a in enumerate(angs):
            orow, ocol = _glcm_offset(d, a)
            if abs(orow) >= h or abs(ocol) >= w:
                raise CourseError(f"distance {d} at angle {a:.3g} rad leaves no pixel pairs in "
                                  f"{h}x{w} images; use smaller distances")
            r0, r1 = max(0, -orow), min(h, h - orow)
            c0, c1 = max(0, -ocol), min(w, w - ocol)
            i = Q[:, r0:r1, c0:c1].astype(np.int64)
            j = Q[:, r0 + orow:r1 + orow, c0 + ocol:c1 + ocol].astype(np.int64)
            counts = np.bincount((base + i * L + j).ravel(), minlength=n * L * L)
            out[..., di, ai] = counts.reshape(n, L, L)
    if symmetric:
        out = out + out.transpose(0, 2, 1, 3, 4)
    if normed:
        sums = out.sum(axis=(1, 2), keepdims=True)
        sums[sums == 0] = 1
        out /= sums
    return out


def glcm_props(Pm: np.ndarray, props: Sequence[str] = GLCM_PROPS) -> np.ndarray:
    """Haralick-style properties of a batch of GLCMs.

    In: ``(N, L, L, nd, na)`` co-occurrence matrices (counts or normalised). Out: float64
    ``(N, len(props), nd, na)``; ``[k, p]`` equals ``skimage.feature.graycoprops(Pm[k], props[p])``.
    Introduced in notebook 03.
    """
    Pm = np.asarray(Pm, dtype=np.float64)
    if Pm.ndim != 5 or Pm.shape[1] != Pm.shape[2]:
        raise CourseError(f"expected GLCMs of shape (N, L, L, n_distances, n_angles), got {Pm.shape}")
    bad = [p for p in props if p not in GLCM_PROPS]
    if bad:
        raise CourseError(f"unknown GLCM properties {bad}; expected some of {GLCM_PROPS}")
    sums = Pm.sum(axis=(1, 2), keepdims=True)
    sums[sums == 0] = 1
    Pm = Pm / sums
    L = Pm.shape[1]
    I = np.arange(L, dtype=np.float64).reshape(1, L, 1, 1, 1)
    J = I.reshape(1, 1, L, 1, 1)
    res = []
    for p in props:
        if p == "contrast":
            v = (Pm * (I - J) ** 2).sum((1, 2))
        elif p == "dissimilarity":
            v = (Pm * np.abs(I - J)).sum((1, 2))
        elif p == "homogeneity":
            v = (Pm / (1.0 + (I - J) ** 2)).sum((1, 2))
        elif p in ("ASM", "energy"):
            v = (Pm ** 2).sum((1, 2))
            v = np.sqrt(v) if p == "energy" else v
        else:  # correlation
            di = I - (I * Pm).sum((1, 2), keepdims=True)
            dj = J - (J * Pm).sum((1, 2), keepdims=True)
            si = np.sqrt((Pm * di ** 2).sum((1, 2)))
            sj = np.sqrt((Pm * dj ** 2).sum((1, 2)))
            cov = (Pm * di * dj).sum((1, 2))
            flat = (si < 1e-15) | (sj < 1e-15)
            v = np.where(flat, 1.0, cov / np.where(flat, 1.0, si * sj))
        res.append(v)
    return np.stack(res, axis=1)


def glcm_features(X: Any, distances: Sequence[float] = (1, 2),
                  angles: Sequence[float] = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4),
                  levels: int = 16, props: Sequence[str] = GLCM_PROPS, average_angles: bool = False,
                  chunk_size: int | None = None, progress: bool | None = None) -> FeatureSet:
    """GLCM properties of a stack: one value per (property, distance, angle).

    In: a stack. Out: :class:`FeatureSet`, float32 ``(N, len(props) * len(distances) *
    len(angles))``, or ``(N, len(props) * len(distances))`` with ``average_angles=True``
    (a cheap, approximately rotation-invariant variant). Symmetric, normalised matrices on
    ``levels`` grey levels. Introduced in notebook 03.
    """
    X = as_stack(X)
    n, h, w = X.shape[:3]
    props = list(props)
    blocks = []
    for sl in _chunks(n, chunk_size, h * w, "glcm", progress):
        v = glcm_props(glcm_matrices(X[sl], distances, angles, levels), props)
        if average_angles:
            v = v.mean(axis=3, keepdims=True)
        blocks.append(v.reshape(v.shape[0], -1))
    degs = ["mean"] if average_angles else [f"{np.rad2deg(a):g}" for a in angles]
    names = [f"glcm_{p}_d{d:g}_a{a}" for p in props for d in distances for a in degs]
    return FeatureSet(np.concatenate(blocks).astype(np.float32), names)


# --------------------------------------------------------------------------- Gabor

def gabor_bank(frequencies: Sequence[float] = (0.1, 0.2, 0.3, 0.4), n_orientations: int = 4,
               bandwidth: float = 1.0) -> list[tuple[str, np.ndarray]]:
    """A bank of complex Gabor kernels: every frequency (cycles/pixel) at ``n_orientations``
    angles ``k * 180 / n_orientations`` degrees.

    Out: list of ``(name, kernel)``, ``kernel`` complex128 ``(kh, kw)`` from
    ``skimage.filters.gabor_kernel(f, theta, bandwidth)``; the name is ``f{f}_t{degrees}``.
    Introduced in notebook 03.
    """
    from skimage.filters import gabor_kernel

    if not isinstance(n_orientations, (int, np.integer)) or n_orientations < 1:
        raise CourseError(f"n_orientations must be a positive int, got {n_orientations!r}")
    bank = []
    for f in frequencies:
        if not (0 < float(f) <= 0.5):
            raise CourseError(f"Gabor frequencies must be in (0, 0.5] cycles/pixel, got {f}")
        for k in range(int(n_orientations)):
            theta = np.pi * k / n_orientations
            bank.append((f"f{float(f):g}_t{np.rad2deg(theta):g}",
                         gabor_kernel(float(f), theta=theta, bandwidth=bandwidth)))
    return bank


def gabor_responses(X: Any, bank: Sequence[tuple[str, np.ndarray]]) -> np.ndarray:
    """Magnitude of every Gabor filter's complex response, for a stack, via batched FFTs.

    In: a stack (grey; RGB is converted), taken as float in [0, 1]; ``bank`` from
    :func:`gabor_bank`. Borders are extended by reflection (``ndimage`` mode ``reflect``).
    Out: float32 ``(N, len(bank), H, W)``; ``[k, b]`` equals ``hypot(*skimage.filters.gabor(
    X[k] / 255, ...))`` with the same kernel up to float32 rounding. Introduced in notebook 03.
    """
    import scipy.fft as sfft

    G = to_gray(X).astype(np.float32) / 255.0
    n, h, w = G.shape
    if not bank:
        raise CourseError("the Gabor bank is empty: build one with gabor_bank()")
    spectra: dict[tuple[int, int], tuple[np.ndarray, tuple[int, int]]] = {}
    out = np.empty((n, len(bank), h, w), dtype=np.float32)
    for b, (_, k) in enumerate(bank):
        kh, kw = k.shape
        ph, pw = kh // 2, kw // 2
        if (ph, pw) not in spectra:  # one forward FFT per padding size, shared by its kernels
            Gp = np.pad(G, ((0, 0), (ph, ph), (pw, pw)), mode="symmetric")
            # circular convolution of this length equals the linear one on the rows/cols we keep
            shape = (sfft.next_fast_len(h + 2 * ph), sfft.next_fast_len(w + 2 * pw))
            spectra[(ph, pw)] = (sfft.fft2(Gp, s=shape, axes=(1, 2), workers=-1), shape)
        F, shape = spectra[(ph, pw)]
        K = sfft.fft2(k.astype(np.complex64), s=shape)
        full = sfft.ifft2(F * K[None], axes=(1, 2), workers=-1)
        out[:, b] = np.abs(full[:, 2 * ph:2 * ph + h, 2 * pw:2 * pw + w])
    return out


def gabor_features(X: Any, frequencies: Sequence[float] = (0.1, 0.2, 0.3, 0.4),
                   n_orientations: int = 4, bandwidth: float = 1.0,
                   average_orientations: bool = False, chunk_size: int | None = None,
                   progress: bool | None = None) -> FeatureSet:
    """Mean and standard deviation of each Gabor filter's response magnitude.

    In: a stack. Out: :class:`FeatureSet`, float32 ``(N, 2 * n_filters)`` (names
    ``gabor_f{f}_t{deg}_mean`` / ``_std``), or ``(N, 2 * len(frequencies))`` with
    ``average_orientations=True`` (averaged over orientations: approximately rotation
    invariant). Introduced in notebook 03.
    """
    X = as_stack(X)
    n, h, w = X.shape[:3]
    bank = gabor_bank(frequencies, n_orientations, bandwidth)
    blocks = []
    for sl in _chunks(n, chunk_size, h * w * len(bank), "gabor", progress, budget=1 << 22):
        mag = gabor_responses(X[sl], bank)
        v = np.stack([mag.mean(axis=(2, 3)), mag.std(axis=(2, 3))], axis=2)  # (m, B, 2)
        if average_orientations:
            v = v.reshape(v.shape[0], len(frequencies), int(n_orientations), 2).mean(axis=2)
        blocks.append(v.reshape(v.shape[0], -1))
    if average_orientations:
        names = [f"gabor_f{float(f):g}_{s}" for f in frequencies for s in ("mean", "std")]
    else:
        names = [f"gabor_{name}_{s}" for name, _ in bank for s in ("mean", "std")]
    return FeatureSet(np.concatenate(blocks).astype(np.float32), names)


# --------------------------------------------------------------------------- colour, pixels

def colour_histograms(X: Any, bins: int = 16, space: str = "hsv", chunk_size: int | None = None,
                      progress: bool | None = None) -> FeatureSet:
    """Per-channel colour histograms, each normalised to sum to 1.

    In: a stack. RGB stacks give ``3 * bins`` values in ``space`` ``"rgb"`` or ``"hsv"``
    (hue over the full 0..255 range, ``cv2.COLOR_RGB2HSV_FULL``); grey stacks give one
    intensity histogram of ``bins`` values, whatever the space. Out: :class:`FeatureSet`,
    float32 ``(N, D)``. Introduced in notebook 03.
    """
    import cv2

    X = as_stack(X)
    if space not in COLOUR_SPACES:
        raise CourseError(f"space must be one of {COLOUR_SPACES}, got {space!r}")
    if not isinstance(bins, (int, np.integer)) or not (1 <= bins <= 256):
        raise CourseError(f"bins must be an int in 1..256, got {bins!r}")
    n, h, w = X.shape[:3]
    if X.ndim == 3:
        channels = ["grey"]
    else:
        channels = ["h", "s", "v"] if space == "hsv" else ["r", "g", "b"]
    nc = len(channels)
    out = np.empty((n, nc * bins), dtype=np.float32)
    lut = ((np.arange(256) * int(bins)) >> 8).astype(np.int32)  # value 0..255 -> bin
    for sl in _chunks(n, chunk_size, h * w * nc, "colour", progress, budget=1 << 18):
        Z = X[sl]
        m = Z.shape[0]
        if X.ndim == 4 and space == "hsv":
            Z = cv2.cvtColor(Z.reshape(m * h, w, 3), cv2.COLOR_RGB2HSV_FULL).reshape(m, h, w, 3)
        q = lut[Z.reshape(m, h * w, nc)]
        index = q + (np.arange(m, dtype=np.int32)[:, None, None] * nc + np.arange(nc, dtype=np.int32)) * bins
        hist = np.bincount(index.ravel(), minlength=m * nc * bins)
        out[sl] = hist.reshape(m, nc * bins) / float(h * w)
    names = [f"colour_{space if nc == 3 else 'grey'}_{c}{k}" for c in channels for k in range(bins)]
    return FeatureSet(out, names)


def pixel_features(X: Any) -> FeatureSet:
    """Raw pixels scaled to [0, 1], flattened: float32 ``(N, H * W [* 3])``.

    The baseline every hand-made feature has to beat. Introduced in notebook 04.
    """
    X = as_stack(X)
    n = X.shape[0]
    F = X.reshape(n, -1).astype(np.float32) / 255.0
    if X.ndim == 3:
        names = [f"px_{r}_{c}" for r in range(X.shape[1]) for c in range(X.shape[2])]
    else:
        names = [f"px_{r}_{c}_{ch}" for r in range(X.shape[1]) for c in range(X.shape[2]) for ch in "rgb"]
    return FeatureSet(F, names)


# --------------------------------------------------------------------------- one call

_EXTRACTORS: dict[str, Callable[..., FeatureSet]] = {
    "hog": hog_features, "lbp": lbp_histograms, "glcm": glcm_features,
    "gabor": gabor_features, "colour": colour_histograms, "pixels": pixel_features,
}


def extract(X: Any, kinds: Sequence[str] = ("hog", "lbp", "colour"), *, chunk_size: int | None = None,
            progress: bool | None = None, **params: dict[str, Any]) -> FeatureSet:
    """Several feature kinds of a stack, concatenated: one call for notebooks 04 and 08.

    In: a stack (see :func:`as_stack`, 28x28 grey Fashion-MNIST and 64x64 RGB FashionScenes
    both work); ``kinds`` some of :data:`KINDS`; the keyword named after a kind holds its
    extractor's parameters, e.g. ``extract(X, ("hog", "lbp"), hog={"pixels_per_cell": 4},
    lbp={"P": 8, "R": 1, "grid": 2})``. Work is done ``chunk_size`` images at a time (``None``:
    a few thousand 28x28 images, fewer large ones), under one progress bar.
    Out: :class:`FeatureSet`, float32 ``(N, D)``, columns in the order of
    ``kinds``; each name starts with its kind. Introduced in notebook 03.
    """
    X = as_stack(X)
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise CourseError(f"unknown feature kinds {bad or kinds}; expected some of {KINDS}")
    if len(set(kinds)) != len(kinds):
        raise CourseError(f"kinds {kinds} has duplicates")
    stray = [k for k in params if k not in kinds]
    if stray:
        raise CourseError(f"parameters given for {stray}, which are not in kinds {kinds}")
    for k, p in params.items():
        if not isinstance(p, dict):
            raise CourseError(f"{k}= must be a dict of {k} parameters, got {type(p).__name__}")
        allowed = [a for a in inspect.signature(_EXTRACTORS[k]).parameters if a not in ("X", "progress")]
        unknown = [a for a in p if a not in allowed]
        if unknown:
            raise CourseError(f"bad feature parameters {unknown} for {k!r}; "
                              f"{_EXTRACTORS[k].__name__} takes {allowed}")
    n, h, w = X.shape[:3]
    pieces: list[np.ndarray] = []
    names: list[str] = []
    for sl in _chunks(n, chunk_size, h * w * (3 if X.ndim == 4 else 1), "features", progress, budget=1 << 21):
        sets = [_EXTRACTORS[k](X[sl], **({"progress": False} if k != "pixels" else {}),
                               **params.get(k, {})) for k in kinds]
        pieces.append(np.concatenate([s.values for s in sets], axis=1))
        if not names:
            names = [nm for s in sets for nm in s.names]
    return FeatureSet(np.concatenate(pieces), names)
