"""Edges: the course's reference Canny (NumPy, matching ``cv2.Canny``) and edge evaluation.

Introduced in notebook 02, which builds every step by hand and checks it against these
functions and against OpenCV. Conventions: a grey image is ``(H, W)`` uint8 in [0, 255]
(float in [0, 1] is converted); ``x`` runs along columns (to the right), ``y`` along rows
(downwards); gradients are those of the 3x3 Sobel operator on 0..255 values, so Canny
thresholds are in those units (a clean step of height 1 grey level gives magnitude 4).

Edge quality is scored where the true edges are known (procedural images, FashionScenes
masks) with :func:`edge_prf`: precision, recall and F1 with a pixel tolerance::

    truth = cl.edges.boundaries_from_masks(scenes.masks)           # (N, 64, 64) bool
    pred = np.stack([cl.edges.canny(cl.imaging.to_gray(im), 40, 100) for im in scenes.images])
    p, r, f1 = cl.edges.edge_prf(pred, truth, tolerance=2)
"""
from __future__ import annotations

import numpy as np

from . import imaging
from .config import CourseError


def _gray_u8(img: np.ndarray, name: str) -> np.ndarray:
    """(H, W) uint8 from a grey uint8 / float-in-[0, 1] image; colour raises with the fix."""
    imaging.check_image(img, channels=1, name=name)
    return imaging.to_uint8(img.reshape(img.shape[:2]), name=name)


def smooth(gray: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of a grey image, ``(H, W)`` uint8 -> ``(H, W)`` uint8 (rounded).

    ``cv2.GaussianBlur`` with a kernel of radius about ``3 * sigma`` and reflected borders;
    ``sigma = 0`` returns a copy. Both :func:`canny` and :func:`cv2_canny` smooth with it, so
    they see the same 8-bit image (``cv2.Canny`` itself accepts only 8-bit input and does
    no smoothing). Introduced in notebook 02.
    """
    import cv2

    g = _gray_u8(gray, "smooth input")
    if not (sigma >= 0):
        raise CourseError(f"sigma must be >= 0 pixels, got {sigma}")
    return g.copy() if sigma == 0 else cv2.GaussianBlur(g, (0, 0), float(sigma))


def sobel_gradients(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3x3 Sobel derivatives ``(gx, gy)`` of a grey image, each ``(H, W)`` float64.

    ``gx`` is positive where the image gets brighter to the right, ``gy`` where it gets
    brighter downwards. Borders replicate the edge pixels (as ``cv2.Canny`` does). A uint8
    image gives values in [-1020, 1020]. Introduced in notebook 02.
    """
    g = _gray_u8(gray, "sobel_gradients input").astype(np.float64)
    p = np.pad(g, 1, mode="edge")
    left = p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2]
    right = p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]
    top = p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:]
    bottom = p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]
    return right - left, bottom - top


def _check_maps(**maps: np.ndarray) -> tuple[int, int]:
    shapes = {k: np.shape(v) for k, v in maps.items()}
    first = next(iter(shapes.values()))
    if len(first) != 2 or any(s != first for s in shapes.values()):
        raise CourseError(f"expected (H, W) arrays of one shape, got {shapes}")
    return first


def non_max_suppression(mag: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Thin edges: ``True`` where ``mag`` is a local maximum across the edge, ``(H, W)`` bool.

    ``mag``, ``gx``, ``gy``: ``(H, W)`` floats (gradient magnitude and its components). The
    gradient direction is rounded to one of four axes (0, 45, 90, 135 degrees; boundaries
    at 22.5 and 67.5 degrees) and each pixel is compared with its two neighbours along
    it. Ties follow ``cv2.Canny``: along the horizontal and vertical axes a pixel must be
    strictly larger than its left (upper) neighbour and at least as large as its right
    (lower) one, so a two-pixel plateau keeps exactly one pixel; along diagonals it must
    be strictly larger than both. Outside the image the magnitude counts as 0.
    Introduced in notebook 02.
    """
    _check_maps(mag=mag, gx=gx, gy=gy)
    m = np.pad(np.asarray(mag, dtype=np.float64), 1)
    c = m[1:-1, 1:-1]
    ax, ay = np.abs(gx), np.abs(gy)
    t22 = np.tan(np.pi / 8)
    horizontal = ay < ax * t22            # gradient within 22.5 degrees of the x axis
    vertical = ay > ax / t22              # ... within 22.5 degrees of the y axis
    diagonal = ~horizontal & ~vertical
    same_sign = (np.asarray(gx) * np.asarray(gy)) >= 0  # gradient points down-right or up-left
    keep = horizontal & (c > m[1:-1, :-2]) & (c >= m[1:-1, 2:])
    keep |= vertical & (c > m[:-2, 1:-1]) & (c >= m[2:, 1:-1])
    keep |= diagonal & same_sign & (c > m[:-2, :-2]) & (c > m[2:, 2:])
    keep |= diagonal & ~same_sign & (c > m[:-2, 2:]) & (c > m[2:, :-2])
    return keep


def hysteresis(candidates: np.ndarray, strong: np.ndarray) -> np.ndarray:
    """Keep the 8-connected groups of ``candidates`` that contain at least one ``strong`` pixel.

    Both ``(H, W)`` bool (``strong`` is normally a subset of ``candidates``; strong pixels
    outside it are ignored). Returns ``(H, W)`` bool. Introduced in notebook 02.
    """
    from scipy import ndimage

    _check_maps(candidates=candidates, strong=strong)
    cand = np.asarray(candidates, dtype=bool)
    labels, n = ndimage.label(cand, structure=np.ones((3, 3), dtype=bool))
    good = np.zeros(n + 1, dtype=bool)
    good[labels[np.asarray(strong, dtype=bool) & cand]] = True
    good[0] = False
    return good[labels]


def _check_thresholds(low: float, high: float) -> None:
    if not (0 <= low <= high):
        raise CourseError(f"Canny thresholds need 0 <= low <= high, got low={low}, high={high} "
                          "(units: Sobel gradient magnitude of a 0..255 image)")


def canny(gray: np.ndarray, low: float, high: float, sigma: float = 1.0,
          l2gradient: bool = True) -> np.ndarray:
    """The course's Canny edge detector in NumPy: ``(H, W)`` grey image -> ``(H, W)`` bool edges.

    Steps: :func:`smooth` (Gaussian, ``sigma`` pixels) -> :func:`sobel_gradients` ->
    magnitude (``sqrt(gx² + gy²)`` if ``l2gradient`` else ``|gx| + |gy|``) ->
    :func:`non_max_suppression` -> double threshold (candidates ``mag > low``, strong
    ``mag > high``) -> :func:`hysteresis`. ``low`` and ``high`` are in Sobel units of a
    0..255 image (see the module docstring). Gives the same pixels as :func:`cv2_canny`
    with the same arguments. ``gray``: uint8, or float in [0, 1] (converted to uint8).
    Introduced in notebook 02.
    """
    _check_thresholds(low, high)
    gx, gy = sobel_gradients(smooth(gray, sigma))
    mag = np.hypot(gx, gy) if l2gradient else np.abs(gx) + np.abs(gy)
    cand = non_max_suppression(mag, gx, gy) & (mag > low)
    return hysteresis(cand, cand & (mag > high))


def cv2_canny(gray: np.ndarray, low: float, high: float, sigma: float = 1.0,
              l2gradient: bool = True) -> np.ndarray:
    """OpenCV's Canny after the same :func:`smooth`: ``(H, W)`` grey -> ``(H, W)`` bool edges.

    Arguments as :func:`canny` (``cv2.Canny(smooth(gray, sigma), low, high,
    L2gradient=l2gradient)``, 3x3 Sobel aperture). Introduced in notebook 02.
    """
    import cv2

    _check_thresholds(low, high)
    return cv2.Canny(smooth(gray, sigma), float(low), float(high), L2gradient=bool(l2gradient)) > 0


def boundaries_from_masks(masks: np.ndarray) -> np.ndarray:
    """True object boundaries from label masks: ``(H, W)`` or ``(N, H, W)`` int -> same shape bool.

    A pixel is on a boundary when its label is not 0 (background) and one of its four
    neighbours has a different label; so each boundary is one pixel thick, on the
    object's side (on both sides where two objects touch). The image frame is not a
    boundary. Works with ``cl.data.make_scenes(...).masks``. Introduced in notebook 02.
    """
    m = np.asarray(masks)
    if m.ndim not in (2, 3) or not (np.issubdtype(m.dtype, np.integer) or m.dtype == bool):
        raise CourseError(f"masks must be (H, W) or (N, H, W) integer labels, got shape {m.shape}, "
                          f"dtype {m.dtype}. Fix: pass scenes.masks (uint8, 0 = background)")
    b = np.zeros(m.shape, dtype=bool)
    dx = m[..., :, 1:] != m[..., :, :-1]
    dy = m[..., 1:, :] != m[..., :-1, :]
    b[..., :, 1:] |= dx
    b[..., :, :-1] |= dx
    b[..., 1:, :] |= dy
    b[..., :-1, :] |= dy
    return b & (m != 0)


def _disk(radius: float) -> np.ndarray:
    """(2r+1, 2r+1) bool: the integer offsets within Euclidean distance ``radius`` of the centre."""
    r = int(np.floor(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return yy ** 2 + xx ** 2 <= radius ** 2


def _dilate(maps: np.ndarray, radius: float) -> np.ndarray:
    """(N, H, W) bool -> True wherever a True pixel of the same image lies within ``radius``."""
    disk = _disk(radius)
    r = disk.shape[0] // 2
    padded = np.pad(maps, ((0, 0), (r, r), (r, r)))
    h, w = maps.shape[1:]
    out = np.zeros_like(maps)
    for dy, dx in zip(*np.nonzero(disk)):
        out |= padded[:, dy:dy + h, dx:dx + w]
    return out


def edge_prf(pred: np.ndarray, truth: np.ndarray, tolerance: float = 2.0) -> tuple[float, float, float]:
    """Precision, recall and F1 of an edge map against the true edges, with a pixel tolerance.

    ``pred``, ``truth``: bool (or 0/1) arrays ``(H, W)``, or ``(N, H, W)`` for a batch.
    A predicted pixel counts as correct when a true edge pixel lies within ``tolerance``
    pixels (Euclidean distance), and a true pixel counts as found when a predicted one lies
    within ``tolerance``. (Computed by dilating each map with a disk of that radius, which
    gives the same answer as thresholding a distance transform, and is faster on batches.)
    For a batch, the counts are pooled over all images before dividing; each image is
    matched only against itself. Matching is many-to-one (one predicted pixel may cover
    several true ones), simpler and a little more lenient than the one-to-one matching of
    the BSDS benchmark. Returns three floats in [0, 1]. Empty maps: with no predicted
    pixels precision is 0, with no true pixels recall is 0, unless both are empty (then
    all three are 1). Introduced in notebook 02.
    """
    p, t = np.asarray(pred), np.asarray(truth)
    for name, a in (("pred", p), ("truth", t)):
        if a.dtype == bool or (np.issubdtype(a.dtype, np.integer) and (a.size == 0 or (a.min() >= 0 and a.max() <= 1))):
            continue
        raise CourseError(f"{name} must be a bool (or 0/1) edge map, got dtype {a.dtype} with values in "
                          f"[{a.min()}, {a.max()}]; threshold it first, e.g. {name} > 0 "
                          "(cv2.Canny returns 0/255)")
    if p.shape != t.shape or p.ndim not in (2, 3):
        raise CourseError(f"pred {p.shape} and truth {t.shape} must both be (H, W) or (N, H, W)")
    if not tolerance >= 0:
        raise CourseError(f"tolerance is a distance in pixels (>= 0), got {tolerance}")
    p, t = p.astype(bool), t.astype(bool)
    if p.ndim == 2:
        p, t = p[None], t[None]
    near_t, near_p = _dilate(t, float(tolerance)), _dilate(p, float(tolerance))
    n_p, n_t = int(p.sum()), int(t.sum())
    if n_p == 0 and n_t == 0:
        return 1.0, 1.0, 1.0
    precision = int((p & near_t).sum()) / n_p if n_p else 0.0
    recall = int((t & near_p).sum()) / n_t if n_t else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return float(precision), float(recall), float(f1)
