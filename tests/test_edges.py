"""Tests of course_lib.edges (notebook 02): Sobel, NMS, hysteresis, Canny vs OpenCV, edge P/R/F1."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

import course_lib as cl
from course_lib import CourseError
from course_lib import edges as ed


def disk(size: int = 64, radius: float = 18.0, lo: int = 40, hi: int = 200) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:size, :size]
    inside = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < radius ** 2
    return np.where(inside, hi, lo).astype(np.uint8), inside.astype(np.uint8)


def test_sobel_matches_opencv():
    g = cl.data.load_photo("camera")[::4, ::4, 0].copy()
    gx, gy = ed.sobel_gradients(g)
    assert gx.dtype == np.float64 and gx.shape == g.shape
    want_x = cv2.Sobel(g, cv2.CV_64F, 1, 0, ksize=3, borderType=cv2.BORDER_REPLICATE)
    want_y = cv2.Sobel(g, cv2.CV_64F, 0, 1, ksize=3, borderType=cv2.BORDER_REPLICATE)
    assert np.array_equal(gx, want_x) and np.array_equal(gy, want_y)


def test_sobel_sign_convention():
    ramp = np.tile(np.arange(0, 64, dtype=np.uint8), (8, 1))  # brighter to the right
    gx, gy = ed.sobel_gradients(ramp)
    assert np.all(gx[:, 1:-1] == 8) and np.all(gy == 0)
    gx, gy = ed.sobel_gradients(ramp.T.copy())  # brighter downwards
    assert np.all(gy[1:-1] == 8) and np.all(gx == 0)


def test_non_max_suppression_thins_a_step_to_one_pixel():
    step = np.zeros((10, 10), np.uint8)
    step[:, 5:] = 100
    gx, gy = ed.sobel_gradients(step)
    keep = ed.non_max_suppression(np.hypot(gx, gy), gx, gy)
    # the step gives a two-pixel plateau (columns 4 and 5); the tie rule keeps one column
    assert keep.sum(axis=1).tolist() == [1] * 10
    assert np.all(keep[:, 4])


def test_non_max_suppression_diagonal():
    yy, xx = np.mgrid[:12, :12]
    img = np.where(xx + yy > 11, 200, 20).astype(np.uint8)  # anti-diagonal step
    gx, gy = ed.sobel_gradients(img)
    keep = ed.non_max_suppression(np.hypot(gx, gy), gx, gy)
    assert keep.any() and np.all(np.abs((xx + yy)[keep] - 11.5) <= 1)


def test_hysteresis_keeps_connected_weak_pixels():
    cand = np.zeros((7, 9), bool)
    cand[1, 1:5] = True        # a chain with one strong pixel
    cand[2, 5] = True          # diagonally attached: 8-connected
    cand[5, 2:7] = True        # a chain without strong pixels
    strong = np.zeros_like(cand)
    strong[1, 1] = True
    out = ed.hysteresis(cand, strong)
    assert out[1, 1:5].all() and out[2, 5] and not out[5].any()
    assert not ed.hysteresis(cand, np.zeros_like(cand)).any()
    with pytest.raises(CourseError, match="one shape"):
        ed.hysteresis(cand, strong[:3])


@pytest.mark.parametrize("name", ["astronaut", "coins", "chelsea"])
@pytest.mark.parametrize("l2", [True, False])
def test_canny_equals_opencv(name, l2):
    g = cl.imaging.to_gray(cl.data.load_photo(name))[:200, :200].copy()
    for low, high, sigma in [(40, 120, 1.0), (80, 200, 1.4), (20, 50, 0.0)]:
        ours = ed.canny(g, low, high, sigma=sigma, l2gradient=l2)
        ref = ed.cv2_canny(g, low, high, sigma=sigma, l2gradient=l2)
        assert ours.dtype == bool and ours.shape == g.shape
        assert ref.sum() > 100
        assert np.array_equal(ours, ref), f"{(ours ^ ref).sum()} pixels differ"


def test_canny_thresholds_act():
    g = cl.imaging.to_gray(cl.data.load_photo("camera"))[:200, :200].copy()
    counts = [ed.canny(g, low, 2 * low).sum() for low in (20, 60, 180)]
    assert counts[0] > counts[1] > counts[2]


def test_canny_bad_input():
    photo = cl.data.load_photo("astronaut")[:32, :32]
    with pytest.raises(CourseError, match="to_gray"):
        ed.canny(photo, 10, 20)
    with pytest.raises(CourseError, match="low <= high"):
        ed.canny(photo[..., 0], 50, 20)
    with pytest.raises(CourseError, match="divide by 255"):
        ed.canny(photo[..., 0].astype(np.float32), 10, 20)
    with pytest.raises(CourseError, match="sigma"):
        ed.smooth(photo[..., 0], -1)


def test_canny_float_input_same_as_uint8():
    g = cl.imaging.to_gray(cl.data.load_photo("coins"))[:100, :100].copy()
    assert np.array_equal(ed.canny(g, 40, 100), ed.canny(g / 255.0, 40, 100))


def test_boundaries_from_masks():
    img, mask = disk()
    b = ed.boundaries_from_masks(mask)
    assert b.dtype == bool and b.shape == mask.shape
    assert np.all(mask[b] == 1)
    # a ring one pixel thick: every boundary pixel has a background 4-neighbour
    from scipy import ndimage
    inner = ndimage.binary_erosion(mask.astype(bool))
    assert np.array_equal(b, mask.astype(bool) & ~inner)
    two = np.zeros((6, 6), np.uint8)
    two[:, :3], two[:, 3:] = 1, 2          # two touching objects filling the frame
    bb = ed.boundaries_from_masks(two)
    assert bb[:, 2].all() and bb[:, 3].all() and bb.sum() == 12  # frame is not a boundary
    batch = np.stack([mask, mask * 0])
    assert ed.boundaries_from_masks(batch)[1].sum() == 0
    with pytest.raises(CourseError, match="integer labels"):
        ed.boundaries_from_masks(mask.astype(float))


def test_boundaries_of_fashion_scenes():
    scenes = cl.data.make_scenes(8, seed=0)
    b = ed.boundaries_from_masks(scenes.masks)
    assert b.shape == scenes.masks.shape
    assert all(b[i].sum() > 20 for i in range(8))


def test_edge_prf_known_values():
    truth = np.zeros((20, 20), bool)
    truth[10, 2:18] = True                               # 16 true pixels
    pred = np.zeros_like(truth)
    pred[11, 2:10] = True                                # 8 pixels, 1 px off: found
    pred[16, 2:6] = True                                 # 4 pixels, 6 px off: false
    p, r, f = ed.edge_prf(pred, truth, tolerance=2)
    assert p == pytest.approx(8 / 12)
    assert r == pytest.approx(9 / 16)                    # columns 2..10 lie within 2 px of a prediction
    assert f == pytest.approx(2 * p * r / (p + r))
    p0, r0, _ = ed.edge_prf(pred, truth, tolerance=0)    # exact positions only: the 1-px shift misses
    assert p0 == 0 and r0 == 0
    assert ed.edge_prf(truth, truth, tolerance=0) == (1.0, 1.0, 1.0)


def test_edge_prf_empty_and_batch():
    z = np.zeros((8, 8), bool)
    t = z.copy()
    t[4, 4] = True
    assert ed.edge_prf(z, z) == (1.0, 1.0, 1.0)
    assert ed.edge_prf(z, t) == (0.0, 0.0, 0.0)
    assert ed.edge_prf(t, z) == (0.0, 0.0, 0.0)
    # pooled counts; an image is never matched against another image's edges
    far = np.zeros((8, 8), bool)
    far[0, 0] = True
    p, r, f = ed.edge_prf(np.stack([t, far]), np.stack([t, z]), tolerance=1)
    assert p == pytest.approx(0.5) and r == pytest.approx(1.0)


def test_edge_prf_bad_input():
    t = np.zeros((8, 8), bool)
    with pytest.raises(CourseError, match="0/255"):
        ed.edge_prf(np.full((8, 8), 255, np.uint8), t)
    with pytest.raises(CourseError, match="same|both"):
        ed.edge_prf(t, t[:4])
    with pytest.raises(CourseError, match="tolerance"):
        ed.edge_prf(t, t, tolerance=-1)


def test_canny_finds_the_disk_and_noise_hurts():
    img, mask = disk(96, 30)
    truth = ed.boundaries_from_masks(mask)
    f_clean = ed.edge_prf(ed.canny(img, 50, 150), truth)[2]
    noisy = cl.imaging.add_noise(img, 0.3, seed=0)
    f_noisy = ed.edge_prf(ed.canny(noisy, 50, 150), truth)[2]
    assert f_clean > 0.95 and f_noisy < f_clean - 0.2


def test_edge_prf_equals_distance_transform_definition():
    rng = np.random.default_rng(0)
    pred = rng.random((6, 40, 40)) < 0.05
    truth = rng.random((6, 40, 40)) < 0.05
    from scipy import ndimage
    for tol in (0, 1, 1.5, 2, 3):
        hp = sum(int((ndimage.distance_transform_edt(~t)[p] <= tol).sum()) for p, t in zip(pred, truth))
        ht = sum(int((ndimage.distance_transform_edt(~p)[t] <= tol).sum()) for p, t in zip(pred, truth))
        p_, r_, _ = ed.edge_prf(pred, truth, tolerance=tol)
        assert p_ == pytest.approx(hp / pred.sum()) and r_ == pytest.approx(ht / truth.sum())
