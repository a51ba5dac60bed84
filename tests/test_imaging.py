"""Tests of course_lib.imaging (notebook 01): conventions, conversions, noise, PSNR/SSIM."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import course_lib as cl
from course_lib import CourseError
from course_lib import imaging as im


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return cl.data.load_photo("astronaut")[::4, ::4].copy()  # (128, 128, 3) uint8


def test_check_image_accepts_the_convention(photo):
    assert im.check_image(photo) is photo
    assert im.check_image(photo, channels=3, dtype="uint8") is photo
    f = photo / 255.0
    assert im.check_image(f, dtype="float") is f
    assert im.check_image(photo[..., 0], channels=1) is not None
    assert im.check_image(photo[..., :1], channels=1) is not None


@pytest.mark.parametrize("bad, words", [
    (np.zeros((3, 32, 32), np.uint8), "channels-first"),
    (np.zeros((32, 32, 3), np.float64) + 200.0, "divide by 255"),
    (np.zeros((32, 32, 3), np.float32) - 1.5, "denormalize"),
    (np.zeros((32, 32, 3), np.int32), "dtype int32"),
    (np.zeros((2, 32, 32, 3), np.uint8), "batch"),
    (np.zeros((32, 32, 5), np.uint8), "1, 3 or 4 channels"),
    (np.full((32, 32), np.nan, np.float32), "NaN"),
    ([[0, 1], [1, 0]], "NumPy array"),
])
def test_check_image_rejects_with_a_fix(bad, words):
    with pytest.raises(CourseError, match=words):
        im.check_image(bad)


def test_check_image_requirements(photo):
    with pytest.raises(CourseError, match="to_gray"):
        im.check_image(photo, channels=1)
    with pytest.raises(CourseError, match="as_float01"):
        im.check_image(photo, dtype="float")
    with pytest.raises(CourseError, match="to_uint8"):
        im.check_image(photo / 255.0, dtype="uint8")


def test_torch_tensor_is_named():
    torch = pytest.importorskip("torch")
    with pytest.raises(CourseError, match="torch tensor"):
        im.check_image(torch.zeros(3, 8, 8))


def test_float_uint8_roundtrip(photo):
    f = im.as_float01(photo)
    assert f.dtype == np.float32 and f.min() >= 0 and f.max() <= 1
    assert np.array_equal(im.to_uint8(f), photo)
    assert im.as_float01(np.array([[True, False]])).tolist() == [[1.0, 0.0]]
    assert im.to_uint8(np.array([[0.5 / 255, 1.0]])).tolist() == [[1, 255]]
    batch = np.stack([photo, photo])                     # conversions keep any shape
    assert im.as_float01(batch).shape == batch.shape and np.array_equal(im.to_uint8(im.as_float01(batch)), batch)
    with pytest.raises(CourseError, match="divide by 255"):
        im.to_uint8(photo.astype(np.float32))
    with pytest.raises(CourseError, match="dtype int64"):
        im.as_float01(np.arange(3))


def test_chw_hwc(photo):
    x = im.to_chw(photo)
    assert x.shape == (3, 128, 128) and x.flags.c_contiguous
    assert np.array_equal(x[1], photo[..., 1])
    assert np.array_equal(im.to_hwc(x), photo)
    assert im.to_chw(photo[..., 0]).shape == (1, 128, 128)
    with pytest.raises(CourseError, match=r"\(C, H, W\)"):
        im.to_hwc(photo)  # already channels-last
    with pytest.raises(CourseError, match="channels-first"):
        im.to_chw(x)
    z = im.normalize(photo)                              # normalised arrays convert too
    assert np.array_equal(im.to_hwc(im.to_chw(z)), z)


def test_to_gray_matches_opencv(photo):
    g = im.to_gray(photo)
    assert g.shape == photo.shape[:2] and g.dtype == np.uint8
    assert np.array_equal(g, cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY))
    gf = im.to_gray(im.as_float01(photo))
    assert gf.dtype == np.float32 and np.abs(gf * 255 - g).max() <= 1.0
    # swapping red and blue changes the grey image: the weights are not symmetric
    assert not np.array_equal(im.to_gray(photo[..., ::-1].copy()), g)


def test_check_channel_order_catches_bgr(photo):
    ok, buf = cv2.imencode(".png", photo)  # OpenCV treats the array as BGR when encoding
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)  # ... and returns BGR when decoding
    assert ok and np.array_equal(decoded, photo)  # the round trip itself is lossless
    assert im.check_channel_order(photo, photo) is photo
    noisy = im.add_noise(photo, 0.1, seed=0)
    im.check_channel_order(noisy, photo)  # noise is not a swap
    with pytest.raises(CourseError, match="BGR"):
        im.check_channel_order(noisy[..., ::-1], photo)
    with pytest.raises(CourseError, match="shape"):
        im.check_channel_order(photo[:64], photo)


def test_add_noise(photo):
    n1 = im.add_noise(photo, 0.1, seed=1)
    assert n1.dtype == np.uint8 and n1.shape == photo.shape
    assert np.array_equal(n1, im.add_noise(photo, 0.1, seed=1))
    assert not np.array_equal(n1, im.add_noise(photo, 0.1, seed=2))
    f = im.as_float01(photo)
    nf = im.add_noise(f, 0.05, seed=0)
    assert nf.dtype == np.float32 and 0 <= nf.min() and nf.max() <= 1
    # away from the clipping limits the noise has the asked-for std
    mid = (f > 0.2) & (f < 0.8)
    assert abs(float(np.std((nf - f)[mid])) - 0.05) < 0.005
    sp = im.add_noise(photo, kind="salt_pepper", amount=0.2, seed=0)
    changed = np.any(sp != photo, axis=2)
    assert 0.15 < changed.mean() < 0.21
    assert set(np.unique(sp[changed])) <= {0, 255}
    with pytest.raises(CourseError, match="0.1 = 25.5"):
        im.add_noise(photo, sigma=25)
    with pytest.raises(CourseError, match="kind"):
        im.add_noise(photo, kind="poisson")


def test_psnr_matches_skimage(photo):
    noisy = im.add_noise(photo, 0.1, seed=0)
    want = peak_signal_noise_ratio(photo, noisy, data_range=255)
    assert im.psnr(photo, noisy) == pytest.approx(want, abs=1e-6)
    assert im.psnr(im.as_float01(photo), noisy) == pytest.approx(want, abs=1e-4)  # mixed dtypes
    assert im.psnr(photo, photo) == float("inf")
    assert im.psnr(photo, im.add_noise(photo, 0.2, seed=0)) < im.psnr(photo, noisy)
    with pytest.raises(CourseError, match="same shape"):
        im.psnr(photo, photo[:64])


def test_ssim(photo):
    noisy = im.add_noise(photo, 0.1, seed=0)
    s = im.ssim(photo, noisy)
    want = structural_similarity(photo / 255.0, noisy / 255.0, data_range=1.0, channel_axis=2,
                                 gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert s == pytest.approx(want, abs=1e-6)  # float32 vs float64 rounding
    assert im.ssim(photo, photo) == pytest.approx(1.0)
    assert 0 < s < 0.9
    assert im.ssim(photo[..., 0], noisy[..., 0]) < 1
    with pytest.raises(CourseError, match="11x11"):
        im.ssim(photo[:8, :8], photo[:8, :8])


def test_normalize_roundtrip(photo):
    x = im.normalize(photo)
    assert x.dtype == np.float32 and x.shape == photo.shape
    manual = (photo / 255.0 - np.array(im.IMAGENET_MEAN)) / np.array(im.IMAGENET_STD)
    assert np.allclose(x, manual, atol=1e-5)
    assert np.abs(im.denormalize(x) - im.as_float01(photo)).max() < 1e-5
    with pytest.raises(CourseError, match="divide 0..255"):
        im.normalize(photo, mean=(124, 116, 104), std=(58, 57, 57))
    with pytest.raises(CourseError, match="denormalize"):
        im.check_image(x)  # a normalised array is not an image any more
    with pytest.raises(CourseError, match="to_hwc"):
        im.denormalize(np.transpose(x, (2, 0, 1)))


def test_noise_sigma(photo):
    flat = np.full((128, 128, 3), 0.5, np.float32)
    for sigma in (0.02, 0.05, 0.1):
        assert im.noise_sigma(im.add_noise(flat, sigma, seed=0)) == pytest.approx(sigma, rel=0.05)
    assert im.noise_sigma(flat) == 0.0
    # on a real photo the estimate tracks the added noise (the photo's own detail adds a little)
    est = [im.noise_sigma(im.add_noise(im.as_float01(photo), s, seed=1)) for s in (0.03, 0.1)]
    assert est[0] < est[1] and est[1] == pytest.approx(0.1, rel=0.2)
    with pytest.raises(CourseError, match="2x2"):
        im.noise_sigma(np.zeros((1, 5), np.uint8))
