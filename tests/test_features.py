"""Tests of course_lib.features: batched extractors against the per-image references."""
from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.feature import graycomatrix, graycoprops, hog, local_binary_pattern
from skimage.filters import gabor

import course_lib as cl
from course_lib import features as ft
from course_lib.checks import rel_error


@pytest.fixture(scope="module")
def fashion() -> np.ndarray:
    X, _ = cl.data.load_fashion_mnist("test")
    return np.array(X[:64])


@pytest.fixture(scope="module")
def scenes() -> np.ndarray:
    return cl.data.make_scenes(12, split="val", seed=3).images


@pytest.fixture(scope="module")
def brick() -> np.ndarray:
    return cl.data.load_texture("brick")[100:148, 200:260]


# --------------------------------------------------------------------------- HOG

@pytest.mark.parametrize("ppc,cpb,norm,sqrt", [
    ((4, 4), (2, 2), "L2-Hys", False),
    ((7, 7), (2, 2), "L1", False),
    ((8, 8), (3, 3), "L2", False),
    ((5, 6), (1, 2), "L1-sqrt", False),
    ((4, 4), (2, 2), "L2-Hys", True),
])
def test_hog_matches_skimage_grey(fashion, ppc, cpb, norm, sqrt):
    F, names = ft.hog_features(fashion, pixels_per_cell=ppc, cells_per_block=cpb, block_norm=norm,
                               transform_sqrt=sqrt, chunk_size=20)
    ref = np.stack([hog(x, pixels_per_cell=ppc, cells_per_block=cpb, block_norm=norm,
                        transform_sqrt=sqrt) for x in fashion])
    assert F.dtype == np.float32 and F.shape == ref.shape and len(names) == F.shape[1]
    assert rel_error(F, ref) < 1e-5
    assert np.abs(F - ref).max() < 1e-5


@pytest.mark.parametrize("sqrt", [False, True])
def test_hog_matches_skimage_rgb(scenes, sqrt):
    F, _ = ft.hog_features(scenes, pixels_per_cell=8, orientations=12, transform_sqrt=sqrt)
    ref = np.stack([hog(x, orientations=12, pixels_per_cell=(8, 8), cells_per_block=(2, 2),
                        channel_axis=-1, transform_sqrt=sqrt) for x in scenes])
    assert F.shape == ref.shape
    assert np.abs(F - ref).max() < 1e-5


def test_hog_cells_are_mean_magnitudes():
    # a vertical step edge: horizontal gradient of 255 (two-pixel difference) on two columns
    X = np.zeros((1, 8, 8), dtype=np.uint8)
    X[:, :, 4:] = 255
    cells = ft.hog_cells(X, orientations=9, pixels_per_cell=8)
    assert cells.shape == (1, 1, 1, 9)
    # columns 3 and 4 have g_col = 255 on every row: 16 pixels of the 64 in the cell, bin 0
    assert cells[0, 0, 0, 0] == pytest.approx(255 * 16 / 64)
    assert np.all(cells[0, 0, 0, 1:] == 0)


def test_hog_float_input_equals_uint8(fashion):
    a = ft.hog_features(fashion[:5]).values
    b = ft.hog_features(fashion[:5].astype(np.float32) / 255.0).values
    np.testing.assert_array_equal(a, b)


def test_hog_too_small_image():
    with pytest.raises(cl.CourseError, match="too small"):
        ft.hog_features(np.zeros((2, 10, 10), np.uint8), pixels_per_cell=8, cells_per_block=2)


def test_hog_bad_norm(fashion):
    with pytest.raises(cl.CourseError, match="block_norm"):
        ft.hog_features(fashion, block_norm="L3")


# --------------------------------------------------------------------------- LBP

@pytest.mark.parametrize("P,R", [(8, 1), (8, 2), (16, 2), (12, 1.5), (24, 3), (4, 1)])
@pytest.mark.parametrize("method", ft.LBP_METHODS)
def test_lbp_codes_equal_skimage(fashion, brick, P, R, method):
    codes = ft.lbp_codes(fashion[:8], P, R, method)
    ref = np.stack([local_binary_pattern(x, P, R, method) for x in fashion[:8]])
    np.testing.assert_array_equal(codes, ref)
    np.testing.assert_array_equal(ft.lbp_codes(brick[None], P, R, method)[0],
                                  local_binary_pattern(brick, P, R, method))


def test_lbp_rgb_uses_grey(scenes):
    a = ft.lbp_codes(scenes[:3], 8, 1, "uniform")
    b = ft.lbp_codes(ft.to_gray(scenes[:3]), 8, 1, "uniform")
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("method", ft.LBP_METHODS)
def test_lbp_histograms(fashion, method):
    F, names = ft.lbp_histograms(fashion[:10], 8, 1, method, grid=(2, 3))
    nb = ft.lbp_n_bins(8, method)
    assert F.shape == (10, 6 * nb) and len(names) == F.shape[1]
    np.testing.assert_allclose(F.reshape(10, 6, nb).sum(-1), 1.0, rtol=1e-6)
    # the whole-image histogram equals np.histogram of the reference codes
    G, _ = ft.lbp_histograms(fashion[:10], 8, 1, method)
    codes = np.stack([local_binary_pattern(x, 8, 1, method) for x in fashion[:10]]).astype(int)
    if method == "ror":
        codes = np.searchsorted(np.unique(ft._code_lut(8, "ror")), codes)
    ref = np.stack([np.bincount(c.ravel(), minlength=nb) / c.size for c in codes])
    np.testing.assert_allclose(G, ref, rtol=1e-6)


def test_lbp_code_map_rules():
    m = ft.lbp_code_map(8, "uniform")
    assert m[0b00000000] == 0 and m[0b11111111] == 8
    assert m[0b00011100] == 3 and m[0b10000001] == 2  # uniform: count the ones
    assert m[0b01010000] == 9 and m[0b00100100] == 9  # four transitions: not uniform
    r = ft.lbp_code_map(8, "ror")
    assert r[0b00011100] == 0b00000111 and r[0b10000001] == 0b00000011
    with pytest.raises(cl.CourseError, match="P <= 16"):
        ft.lbp_code_map(24, "uniform")


def test_lbp_bin_counts():
    assert ft.lbp_n_bins(8, "uniform") == 10
    assert ft.lbp_n_bins(8, "nri_uniform") == 59
    assert ft.lbp_n_bins(8, "ror") == 36
    assert ft.lbp_n_bins(8, "default") == 256


def test_uniform_lbp_rotation_invariant_by_90_degrees(brick):
    # rotations by multiples of 360/P = 45 degrees move samples onto samples; 90 degrees is exact
    X = brick[None]
    a = ft.lbp_histograms(X, 8, 1, "uniform").values
    b = ft.lbp_histograms(np.rot90(X, 1, axes=(1, 2)).copy(), 8, 1, "uniform").values
    np.testing.assert_allclose(a, b, atol=1e-6)
    # ... while the default (not rotation-invariant) codes change
    c = ft.lbp_histograms(X, 8, 1, "default").values
    d = ft.lbp_histograms(np.rot90(X, 1, axes=(1, 2)).copy(), 8, 1, "default").values
    assert np.abs(c - d).sum() > 0.1


def test_lbp_bad_args(fashion):
    with pytest.raises(cl.CourseError, match="method"):
        ft.lbp_codes(fashion, method="var")
    with pytest.raises(cl.CourseError, match="P"):
        ft.lbp_codes(fashion, P=40)
    with pytest.raises(cl.CourseError, match="R"):
        ft.lbp_codes(fashion, R=0)


# --------------------------------------------------------------------------- GLCM

@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("normed", [True, False])
def test_glcm_matrices_equal_skimage(fashion, symmetric, normed):
    d, a = (1, 2, 3), (0, np.pi / 6, np.pi / 4, np.pi / 2, 3 * np.pi / 4, np.pi)
    M = ft.glcm_matrices(fashion[:6], d, a, levels=8, symmetric=symmetric, normed=normed)
    Q = ft.quantise(fashion[:6], 8)
    ref = np.stack([graycomatrix(q, d, a, levels=8, symmetric=symmetric, normed=normed) for q in Q])
    np.testing.assert_allclose(M, ref, rtol=1e-12, atol=0)


def test_glcm_props_equal_skimage(fashion, brick):
    X = np.concatenate([fashion[:6, :24, :24], brick[None, :24, :24]])
    M = ft.glcm_matrices(X, (1, 2), (0, np.pi / 2), levels=16)
    P = ft.glcm_props(M)
    ref = np.stack([np.stack([graycoprops(m, p) for p in ft.GLCM_PROPS]) for m in M])
    assert rel_error(P, ref) < 1e-10


def test_glcm_constant_image_correlation_is_one():
    M = ft.glcm_matrices(np.full((1, 8, 8), 77, np.uint8), (1,), (0.0,), levels=4)
    assert ft.glcm_props(M, ["correlation"])[0, 0, 0, 0] == 1.0


def test_glcm_features_shapes(fashion):
    F, names = ft.glcm_features(fashion[:5])
    assert F.shape == (5, 6 * 2 * 4) and len(names) == F.shape[1]
    G, gn = ft.glcm_features(fashion[:5], average_angles=True)
    assert G.shape == (5, 12) and len(gn) == 12
    np.testing.assert_allclose(G[:, 0], F[:, :4].mean(1), rtol=1e-6)  # contrast, d=1


def test_glcm_bad_args(fashion):
    with pytest.raises(cl.CourseError, match="levels"):
        ft.quantise(fashion, 1)
    with pytest.raises(cl.CourseError, match="no pixel pairs"):
        ft.glcm_matrices(fashion, (30,), (0.0,))
    with pytest.raises(cl.CourseError, match="unknown GLCM"):
        ft.glcm_props(ft.glcm_matrices(fashion[:1]), ["entropy2"])


# --------------------------------------------------------------------------- Gabor

def test_gabor_responses_match_skimage(brick, fashion):
    bank = ft.gabor_bank((0.1, 0.25), n_orientations=4)
    G = ft.gabor_responses(brick[None], bank)
    assert G.shape == (1, 8) + brick.shape and G.dtype == np.float32
    for b, (name, kernel) in enumerate(bank):
        f = float(name.split("_")[0][1:])
        theta = math.radians(float(name.split("_t")[1]))
        re, im = gabor(brick / 255.0, f, theta=theta)
        assert np.abs(G[0, b] - np.hypot(re, im)).max() < 1e-6
    # a kernel larger than the image (69x69 on 28x28): borders still reflect like ndimage
    bank = ft.gabor_bank((0.05,), 1)
    re, im = gabor(fashion[0] / 255.0, 0.05)
    assert np.abs(ft.gabor_responses(fashion[:1], bank)[0, 0] - np.hypot(re, im)).max() < 1e-6


def test_gabor_orientation_selectivity():
    # a vertical grating (0 deg = vertical stripes) answers most to the theta = 0 filter
    g = cl.data.procedural_texture("grating", size=64, orientation=0, frequency=0.2)
    F, names = ft.gabor_features(g[None], frequencies=(0.2,), n_orientations=4)
    means = F[0, 0::2]
    assert names[int(np.argmax(means)) * 2] == "gabor_f0.2_t0_mean"
    assert means.max() > 3 * np.sort(means)[-2]


def test_gabor_features_average(fashion):
    F, _ = ft.gabor_features(fashion[:4], frequencies=(0.2, 0.3), n_orientations=3)
    A, names = ft.gabor_features(fashion[:4], frequencies=(0.2, 0.3), n_orientations=3,
                                 average_orientations=True)
    assert A.shape == (4, 4) and names[0] == "gabor_f0.2_mean"
    np.testing.assert_allclose(A[:, 0], F[:, [0, 2, 4]].mean(1), rtol=1e-5)


def test_gabor_bad_frequency():
    with pytest.raises(cl.CourseError, match="frequencies"):
        ft.gabor_bank((0.7,))


# --------------------------------------------------------------------------- colour, pixels

def test_colour_histograms_rgb_and_hsv(scenes):
    import cv2

    F, names = ft.colour_histograms(scenes, bins=8, space="rgb")
    assert F.shape == (len(scenes), 24) and names[0] == "colour_rgb_r0"
    ref = np.stack([np.concatenate([np.histogram(x[..., c], bins=8, range=(0, 256))[0]
                                    for c in range(3)]) / (64 * 64) for x in scenes])
    np.testing.assert_allclose(F, ref, rtol=1e-6)
    H, _ = ft.colour_histograms(scenes, bins=8, space="hsv")
    hsv = np.stack([cv2.cvtColor(x, cv2.COLOR_RGB2HSV_FULL) for x in scenes])
    ref = np.stack([np.concatenate([np.histogram(x[..., c], bins=8, range=(0, 256))[0]
                                    for c in range(3)]) / (64 * 64) for x in hsv])
    np.testing.assert_allclose(H, ref, rtol=1e-6)


def test_colour_hue_separates_red_from_blue():
    red = np.zeros((1, 16, 16, 3), np.uint8)
    red[..., 0] = 220
    blue = red[..., ::-1].copy()
    F = ft.colour_histograms(np.concatenate([red, blue]), bins=4).values
    assert F[0, 0] == 1.0 and F[1, 0] == 0.0  # hue bin 0 holds red, not blue


def test_colour_grey_stack(fashion):
    F, names = ft.colour_histograms(fashion[:3], bins=16)
    assert F.shape == (3, 16) and names[0] == "colour_grey_grey0"
    np.testing.assert_allclose(F.sum(1), 1.0, rtol=1e-6)


def test_pixel_features(scenes, fashion):
    F, names = ft.pixel_features(fashion[:2])
    assert F.shape == (2, 784) and F.max() <= 1 and names[29] == "px_1_1"
    assert ft.pixel_features(scenes[:2]).values.shape == (2, 64 * 64 * 3)


# --------------------------------------------------------------------------- extract, input checks

def test_extract_concatenates_in_order(fashion):
    F, names = ft.extract(fashion[:20], ("hog", "lbp", "colour"), hog={"pixels_per_cell": 4},
                          chunk_size=7)
    h = ft.hog_features(fashion[:20], pixels_per_cell=4).values
    lbp = ft.lbp_histograms(fashion[:20]).values
    col = ft.colour_histograms(fashion[:20]).values
    np.testing.assert_array_equal(F, np.hstack([h, lbp, col]))
    assert F.dtype == np.float32 and len(names) == F.shape[1]
    assert names[0].startswith("hog") and names[-1].startswith("colour")


def test_extract_on_fashion_scenes(scenes):
    F, names = ft.extract(scenes, ("hog", "lbp", "glcm", "gabor", "colour", "pixels"))
    assert F.shape[0] == len(scenes) and F.shape[1] == len(names)
    assert np.isfinite(F).all()


def test_extract_bad_kinds(fashion):
    with pytest.raises(cl.CourseError, match="unknown feature kinds"):
        ft.extract(fashion, ("hog", "sift"))
    with pytest.raises(cl.CourseError, match="not in kinds"):
        ft.extract(fashion, ("hog",), lbp={"P": 8})
    with pytest.raises(cl.CourseError, match="bad feature parameters"):
        ft.extract(fashion[:2], ("hog",), hog={"cell_size": 4})


@pytest.mark.parametrize("bad,match", [
    (np.zeros((28, 28), np.uint8), r"X\[None\]"),
    (np.zeros((32, 32, 3), np.uint8), "one .* colour"),
    (np.zeros((2, 3, 16, 16), np.uint8), "channels-first"),
    (np.zeros((2, 16, 16, 4), np.uint8), "RGBA"),
    (np.zeros((2, 16, 16, 1), np.uint8), r"X\[\.\.\., 0\]"),
    (np.zeros((2, 16, 16), bool), "dtype bool"),
    (np.full((2, 16, 16), np.nan, np.float32), r"\[0, 1\]"),
    (np.zeros((2, 16, 16), np.int32), "dtype int32"),
    (np.full((2, 16, 16), 200.0), r"\[0, 1\]"),
    (np.zeros((0, 16, 16), np.uint8), "at least one image"),
    ([[1, 2], [3, 4]], "NumPy array"),
])
def test_as_stack_rejects_bad_input(bad, match):
    with pytest.raises(cl.CourseError, match=match):
        ft.hog_features(bad, pixels_per_cell=4)


def test_to_gray_matches_cv2(scenes):
    import cv2

    g = ft.to_gray(scenes[:2])
    np.testing.assert_array_equal(g[1], cv2.cvtColor(scenes[1], cv2.COLOR_RGB2GRAY))


def test_chunking_does_not_change_results(fashion, scenes):
    for X in (fashion[:11], scenes[:5]):
        for fn in (ft.hog_features, ft.lbp_histograms, ft.glcm_features, ft.colour_histograms):
            np.testing.assert_array_equal(fn(X, chunk_size=3).values, fn(X).values)
    with pytest.raises(cl.CourseError, match="chunk_size"):
        ft.hog_features(fashion[:2], chunk_size=0)
