"""Image arrays: validation, dtype/layout conversion, noise, and quality measures.

Introduced in notebook 01. The course's image convention is a NumPy array laid out
``(H, W)`` (grey) or ``(H, W, C)`` (channels last, RGB order), either ``uint8`` in
[0, 255] or floating point in [0, 1]. Everything here checks that convention and raises
:class:`course_lib.CourseError` with the fix when an array breaks it (channels first,
0..255 floats, BGR order, ...)::

    img = cl.data.load_photo("astronaut")       # (512, 512, 3) uint8 RGB
    x = cl.imaging.as_float01(img)              # (512, 512, 3) float32 in [0, 1]
    noisy = cl.imaging.add_noise(x, sigma=0.1, seed=0)
    cl.imaging.psnr(x, noisy), cl.imaging.ssim(x, noisy)
"""
from __future__ import annotations

from typing import Literal

import numpy as np

from .config import CourseError

#: Per-channel RGB mean and std of ImageNet, in [0, 1] units (used by pretrained models).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_CHANNELS = (1, 3, 4)
_RANGE_TOL = 1e-6


def _describe(img: np.ndarray) -> str:
    return f"shape {img.shape}, dtype {img.dtype}"


def check_image(
    img: np.ndarray,
    *,
    channels: int | tuple[int, ...] | None = None,
    dtype: Literal["uint8", "float"] | None = None,
    name: str = "image",
) -> np.ndarray:
    """Check that ``img`` follows the course's image convention and return it unchanged.

    Accepted: a NumPy array ``(H, W)`` or ``(H, W, C)`` with C in (1, 3, 4), dtype
    ``uint8`` (values 0..255) or floating point with every value in [0, 1].

    ``channels``: required channel count(s); 1 accepts ``(H, W)`` and ``(H, W, 1)``.
    ``dtype``: ``"uint8"`` or ``"float"`` to require one of the two kinds.

    Raises :class:`CourseError` naming the problem and the fix for: non-arrays (e.g.
    torch tensors), channels-first ``(C, H, W)`` arrays, wrong channel counts, other
    dtypes, float images outside [0, 1] (e.g. 0..255 floats) and NaN/inf values.
    Introduced in notebook 01.
    """
    if hasattr(img, "detach"):
        raise CourseError(f"{name}: expected a NumPy array, got a torch tensor. Fix: "
                          "x.detach().cpu().numpy(), then cl.imaging.to_hwc(...) if it is (C, H, W)")
    if not isinstance(img, np.ndarray):
        raise CourseError(f"{name}: expected a NumPy array, got {type(img).__name__}. Fix: np.asarray(...)")
    if img.ndim not in (2, 3):
        raise CourseError(f"{name}: expected (H, W) or (H, W, C), got {_describe(img)}. "
                          "A batch (N, H, W, C)? Check one image at a time: img[0]")
    if img.ndim == 3 and img.shape[2] not in _CHANNELS:
        if img.shape[0] in _CHANNELS:
            raise CourseError(f"{name}: got {_describe(img)}, which looks channels-first (C, H, W); "
                              "the course expects channels last (H, W, C). "
                              "Fix: cl.imaging.to_hwc(img) or np.transpose(img, (1, 2, 0))")
        raise CourseError(f"{name}: the last axis should hold 1, 3 or 4 channels, got {_describe(img)}")
    c = 1 if img.ndim == 2 else img.shape[2]
    if channels is not None:
        wanted = (channels,) if isinstance(channels, int) else tuple(channels)
        if c not in wanted:
            fix = ("convert with cl.imaging.to_gray(img)" if 1 in wanted and c in (3, 4) else
                   "repeat a grey image with np.repeat(img[..., None], 3, axis=2)" if c == 1 else
                   "drop alpha with img[..., :3]" if c == 4 else "")
            raise CourseError(f"{name}: expected {' or '.join(map(str, wanted))} channel(s), "
                              f"got {c} ({_describe(img)}). Fix: {fix}")
    _check_values(img, dtype=dtype, name=name)
    return img


def _check_layout(img: np.ndarray, name: str) -> None:
    """The layout half of :func:`check_image` ((H, W) or (H, W, C)); values are not checked."""
    if not isinstance(img, np.ndarray) or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in _CHANNELS):
        check_image(img, name=name)  # raises with the precise message


def _check_values(img: np.ndarray, *, dtype: str | None = None, name: str = "image") -> None:
    """The dtype/range half of :func:`check_image`, for arrays of any shape."""
    if hasattr(img, "detach"):
        raise CourseError(f"{name}: expected a NumPy array, got a torch tensor. Fix: x.detach().cpu().numpy()")
    if not isinstance(img, np.ndarray):
        raise CourseError(f"{name}: expected a NumPy array, got {type(img).__name__}. Fix: np.asarray(...)")
    if img.dtype == np.uint8:
        if dtype == "float":
            raise CourseError(f"{name}: expected a float image in [0, 1], got uint8. "
                              "Fix: cl.imaging.as_float01(img)")
        return
    if not np.issubdtype(img.dtype, np.floating):
        raise CourseError(f"{name}: expected uint8 or float in [0, 1], got dtype {img.dtype}. "
                          "Fix: img.astype(np.uint8) for 0..255 integers, cl.imaging.as_float01 otherwise")
    if dtype == "uint8":
        raise CourseError(f"{name}: expected uint8 in [0, 255], got {img.dtype}. "
                          "Fix: cl.imaging.to_uint8(img)")
    if img.size and not np.all(np.isfinite(img)):
        raise CourseError(f"{name}: contains NaN or inf values")
    lo, hi = (float(img.min()), float(img.max())) if img.size else (0.0, 0.0)
    if lo < -_RANGE_TOL or hi > 1 + _RANGE_TOL:
        hint = ("it looks like a 0..255 image stored as float: divide by 255"
                if hi <= 255 + _RANGE_TOL and lo >= -_RANGE_TOL else
                "a normalised (mean/std) array? undo it with cl.imaging.denormalize; "
                "otherwise clip with np.clip(img, 0, 1)")
        raise CourseError(f"{name}: float images must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]. "
                          f"Fix: {hint}")


def as_float01(img: np.ndarray, name: str = "image") -> np.ndarray:
    """uint8 / bool / float-in-[0, 1] array of any shape -> float32 in [0, 1] (a new array).

    Usually an image ``(H, W[, C])`` or a batch ``(N, H, W, C)``: the shape is kept. uint8
    is divided by 255; bool becomes 0.0 / 1.0; floats are checked and clipped into [0, 1]
    (tiny round-off only). Raises :class:`CourseError` for other dtypes and out-of-range
    floats. Introduced in notebook 01.
    """
    if isinstance(img, np.ndarray) and img.dtype == bool:
        return img.astype(np.float32)
    _check_values(img, name=name)
    if img.dtype == np.uint8:
        return img.astype(np.float32) / np.float32(255)
    return np.clip(img, 0, 1).astype(np.float32)


def to_uint8(img: np.ndarray, name: str = "image") -> np.ndarray:
    """Float in [0, 1] (or uint8) array of any shape -> uint8 in [0, 255], rounding to nearest.

    Usually an image ``(H, W[, C])`` or a batch; the shape is kept. Raises
    :class:`CourseError` for 0..255 floats and other out-of-range values. Introduced in
    notebook 01.
    """
    _check_values(img, name=name)
    if img.dtype == np.uint8:
        return img.copy()
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def to_chw(img: np.ndarray) -> np.ndarray:
    """``(H, W, C)`` -> ``(C, H, W)`` (the PyTorch layout); ``(H, W)`` -> ``(1, H, W)``.

    Same dtype, a contiguous copy. Values are not checked, so a normalised array (see
    :func:`normalize`) can be converted too. Introduced in notebook 01.
    """
    _check_layout(img, "to_chw input")
    if img.ndim == 2:
        img = img[..., None]
    return np.ascontiguousarray(np.transpose(img, (2, 0, 1)))


def to_hwc(x: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` with C in (1, 3, 4) -> ``(H, W, C)`` (the course / matplotlib layout).

    A torch tensor is moved to the CPU and converted. Same dtype; values are not checked
    (a normalised tensor stays normalised). Introduced in notebook 01.
    """
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray) or x.ndim != 3 or x.shape[0] not in _CHANNELS:
        shape = getattr(x, "shape", None)
        raise CourseError(f"to_hwc expects a (C, H, W) array with C in {_CHANNELS}, got shape {shape}. "
                          "A batch (N, C, H, W)? Convert one image at a time: x[0]")
    return np.ascontiguousarray(np.transpose(x, (1, 2, 0)))


def to_gray(img: np.ndarray) -> np.ndarray:
    """RGB ``(H, W, 3)`` -> grey ``(H, W)`` with the ITU-R BT.601 weights 0.299 R + 0.587 G + 0.114 B.

    uint8 in -> uint8 out (rounded, as ``cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)``); float
    in [0, 1] -> float32 in [0, 1]. Grey input ``(H, W)`` or ``(H, W, 1)`` is returned as
    ``(H, W)``. Introduced in notebook 01.
    """
    check_image(img, channels=(1, 3), name="to_gray input")
    if img.ndim == 2 or img.shape[2] == 1:
        return img.reshape(img.shape[:2]).copy()
    if img.dtype == np.uint8:
        import cv2

        return cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
    w = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.clip(img.astype(np.float32) @ w, 0, 1)


def check_channel_order(img: np.ndarray, reference: np.ndarray, name: str = "image") -> np.ndarray:
    """Check that ``img`` has the channel order of ``reference`` (RGB), and return ``img``.

    Both ``(H, W, 3)``, same shape, uint8 or float in [0, 1]. ``img`` may be a noisy or
    processed version of ``reference``; it fails when it is closer to ``reference``
    with red and blue swapped than to ``reference`` itself (the classic result of
    ``cv2.imread`` / ``cv2.imdecode``, which return BGR). Introduced in notebook 01.
    """
    check_image(img, channels=3, name=name)
    check_image(reference, channels=3, name="reference")
    if img.shape != reference.shape:
        raise CourseError(f"{name}: shape {img.shape} differs from the reference's {reference.shape}")
    x, r = as_float01(img), as_float01(reference)
    d_same = float(np.mean((x - r) ** 2))
    d_swap = float(np.mean((x - r[..., ::-1]) ** 2))
    if d_swap < d_same:
        raise CourseError(f"{name}: channels look swapped (BGR instead of RGB): it matches the reference "
                          f"with red and blue exchanged (mean squared difference {d_swap:.3g} vs "
                          f"{d_same:.3g}). Fix: img[..., ::-1] or cv2.cvtColor(img, cv2.COLOR_BGR2RGB)")
    return img


def add_noise(img: np.ndarray, sigma: float = 0.1, *, kind: Literal["gaussian", "salt_pepper"] = "gaussian",
              amount: float = 0.05, seed: int | None = None) -> np.ndarray:
    """A noisy copy of ``img`` with the same shape and dtype (uint8 or float in [0, 1]).

    ``kind="gaussian"``: add N(0, ``sigma``²) to every value, ``sigma`` in [0, 1] units
    (0.1 is 25.5 grey levels), then clip to the valid range. ``kind="salt_pepper"``: set a
    fraction ``amount`` of the pixels (all channels together) to black or white, half each.
    uint8 results are rounded. ``seed`` makes it reproducible. Introduced in notebook 01.
    """
    check_image(img, name="add_noise input")
    rng = np.random.default_rng(seed)
    x = as_float01(img)
    if kind == "gaussian":
        if not (0 <= sigma <= 1):
            raise CourseError(f"sigma is in [0, 1] image units (0.1 = 25.5 grey levels), got {sigma}")
        out = np.clip(x + rng.normal(0.0, sigma, x.shape).astype(np.float32), 0, 1)
    elif kind == "salt_pepper":
        if not (0 <= amount <= 1):
            raise CourseError(f"amount is the fraction of pixels to corrupt, in [0, 1], got {amount}")
        u = rng.random(x.shape[:2])
        out = x.copy()
        out[u < amount / 2] = 0.0
        out[u > 1 - amount / 2] = 1.0
    else:
        raise CourseError(f"kind must be 'gaussian' or 'salt_pepper', got {kind!r}")
    return to_uint8(out) if img.dtype == np.uint8 else out.astype(img.dtype)


def noise_sigma(img: np.ndarray) -> float:
    """Estimate the std of additive white noise in an image, in [0, 1] units, from the image alone.

    ``img``: ``(H, W)`` or ``(H, W, C)``, uint8 or float in [0, 1], at least 2x2. Method
    (Donoho's robust estimator): the diagonal Haar detail ``(a - b - c + d) / 2`` of each
    2x2 block is almost pure noise in smooth regions, edges are rare outliers, so
    ``sigma = median(|detail|) / 0.6745`` (averaged over channels). Overestimates on very
    textured images; exact in expectation on a flat image with Gaussian noise.
    Introduced in notebook 01.
    """
    check_image(img, name="noise_sigma input")
    f = as_float01(img).astype(np.float64)
    if f.ndim == 2:
        f = f[..., None]
    h, w = f.shape[0] // 2 * 2, f.shape[1] // 2 * 2
    if h == 0 or w == 0:
        raise CourseError(f"noise_sigma needs an image of at least 2x2 pixels, got {img.shape}")
    detail = (f[0:h:2, 0:w:2] - f[0:h:2, 1:w:2] - f[1:h:2, 0:w:2] + f[1:h:2, 1:w:2]) / 2
    return float(np.median(np.abs(detail), axis=(0, 1)).mean() / 0.6745)


def _pair(reference: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    check_image(reference, name="reference")
    check_image(test, name="test")
    if reference.shape != test.shape:
        raise CourseError(f"reference {reference.shape} and test {test.shape} must have the same shape; "
                          "resize one of them (cv2.resize takes (width, height))")
    return as_float01(reference).astype(np.float64), as_float01(test).astype(np.float64)


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(1 / MSE)`` on [0, 1] values.

    Both images have the same shape, uint8 or float in [0, 1] (mixed is fine: both are
    rescaled to [0, 1]). Higher is better; ``inf`` for identical images. Introduced in
    notebook 01.
    """
    r, t = _pair(reference, test)
    mse = float(np.mean((r - t) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))


def ssim(reference: np.ndarray, test: np.ndarray) -> float:
    """Structural similarity (Wang et al. 2004) in [-1, 1], 1 for identical images.

    Same inputs as :func:`psnr`. Computed by ``skimage.metrics.structural_similarity`` on
    [0, 1] values with the paper's settings (11x11 Gaussian window, sigma 1.5, population
    covariance), averaged over channels for colour images. Introduced in notebook 01.
    """
    from skimage.metrics import structural_similarity

    r, t = _pair(reference, test)
    if min(r.shape[:2]) < 11:
        raise CourseError(f"ssim needs images of at least 11x11 pixels, got {r.shape[:2]}")
    return float(structural_similarity(r, t, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False,
                                       channel_axis=2 if r.ndim == 3 else None))


def normalize(img: np.ndarray, mean: tuple[float, ...] = IMAGENET_MEAN,
              std: tuple[float, ...] = IMAGENET_STD) -> np.ndarray:
    """``(H, W, 3)`` RGB image (uint8 or float in [0, 1]) -> float32 ``(x - mean) / std`` per channel.

    ``mean`` and ``std`` are in [0, 1] units (default: ImageNet's, which pretrained models
    expect). The result is no longer an image (values roughly in [-2, 2.7]); undo it with
    :func:`denormalize`. Introduced in notebook 01.
    """
    check_image(img, channels=3, name="normalize input")
    m, s = _stats(mean, std)
    return (as_float01(img) - m) / s


def denormalize(x: np.ndarray, mean: tuple[float, ...] = IMAGENET_MEAN,
                std: tuple[float, ...] = IMAGENET_STD) -> np.ndarray:
    """Inverse of :func:`normalize`: ``(H, W, 3)`` float -> float32 image in [0, 1] (clipped).

    Introduced in notebook 01.
    """
    if not isinstance(x, np.ndarray) or x.ndim != 3 or x.shape[2] != 3:
        raise CourseError(f"denormalize expects an (H, W, 3) array, got shape {getattr(x, 'shape', None)}; "
                          "a (3, H, W) tensor? convert it with cl.imaging.to_hwc first")
    m, s = _stats(mean, std)
    return np.clip(x.astype(np.float32) * s + m, 0, 1)


def _stats(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(mean, dtype=np.float32)
    s = np.asarray(std, dtype=np.float32)
    if m.shape != (3,) or s.shape != (3,) or np.any(s <= 0):
        raise CourseError(f"mean and std need 3 values each (std > 0), got {mean} and {std}")
    if np.any(m > 1.5) or np.any(s > 1.5):
        raise CourseError(f"mean/std are in [0, 1] units (ImageNet: {IMAGENET_MEAN}); got {mean}, {std}. "
                          "Fix: divide 0..255 statistics by 255")
    return m, s
