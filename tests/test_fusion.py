"""Tests of course_lib.fusion: scaling, heads, fusion methods, ablation, leakage audit, features."""
from __future__ import annotations

import numpy as np
import pytest

import course_lib as cl
from course_lib import fusion
from course_lib.config import CourseError


def _toy(n: int = 600, seed: int = 0):
    """Two branches that each see half of the label: y = 2 * a + b, branch A knows a, B knows b.

    Each branch repeats its bit in 20 noisy columns next to 20 columns of pure noise; B is
    on a very different scale (x 50 + 7), which the scaler must undo.
    """
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 2, n), rng.integers(0, 2, n)
    y = 2 * a + b
    A = np.c_[a[:, None] + 0.8 * rng.standard_normal((n, 20)), rng.standard_normal((n, 20))].astype(np.float32)
    B = np.c_[b[:, None] + 0.8 * rng.standard_normal((n, 20)), rng.standard_normal((n, 20))] * 50 + 7
    return {"A": A, "B": B.astype(np.float32)}, y


@pytest.fixture(scope="module")
def toy():
    tr, ytr = _toy(600, 0)
    te, yte = _toy(400, 1)
    scaler = fusion.BranchScaler().fit(tr)
    return scaler.transform(tr), ytr, scaler.transform(te), yte


def test_branch_scaler_equalises_branches():
    tr, _ = _toy()
    out = fusion.BranchScaler().fit(tr).transform(tr)
    for name, F in out.items():
        assert F.dtype == np.float32 and F.shape == tr[name].shape
        np.testing.assert_allclose(F.mean(0), 0, atol=1e-4)
        # each branch has expected squared norm 1 per row, whatever its width and scale
        assert abs(float((F.astype(np.float64) ** 2).sum(1).mean()) - 1.0) < 1e-3


def test_branch_scaler_uses_train_statistics_only():
    tr, _ = _toy(200, 0)
    sc = fusion.BranchScaler().fit(tr)
    shifted = {k: v + 100.0 for k, v in tr.items()}
    assert float(sc.transform(shifted)["A"].mean()) > 1.0


def test_bad_branches_raise():
    with pytest.raises(CourseError, match="same number of rows"):
        fusion.check_branches({"a": np.zeros((3, 2)), "b": np.zeros((4, 2))})
    with pytest.raises(CourseError, match="2-D"):
        fusion.check_branches({"a": np.zeros(3)})
    with pytest.raises(CourseError, match="NaN"):
        fusion.check_branches({"a": np.full((3, 2), np.nan)})
    with pytest.raises(CourseError, match="fit"):
        fusion.BranchScaler().transform({"a": np.zeros((3, 2))})
    with pytest.raises(CourseError, match="not seen"):
        fusion.BranchScaler().fit({"a": np.ones((3, 2))}).transform({"b": np.ones((3, 2))})


def test_concat_and_dims():
    X, dims = fusion.concat({"a": np.ones((4, 2)), "b": np.zeros((4, 3))}, ["b", "a"])
    assert X.shape == (4, 5) and dims == [3, 2]
    assert X[:, :3].sum() == 0 and X[:, 3:].sum() == 8
    with pytest.raises(CourseError, match="unknown branches"):
        fusion.concat({"a": np.ones((4, 2))}, ["zzz"])


@pytest.mark.parametrize("method", fusion.METHODS)
def test_every_method_learns_the_joint_label(toy, method):
    tr, ytr, te, yte = toy
    res = fusion.evaluate_fusion(method, tr, ytr, te, yte, seed=0, num_epochs=30)
    assert res["probs"].shape == (len(yte), 4)
    np.testing.assert_allclose(res["probs"].sum(1), 1, atol=1e-4)
    # each branch alone can reach at most about 50 %; together well above
    assert res["accuracy"] > 0.8, (method, res["accuracy"])


def test_single_branch_is_limited_and_fusion_helps(toy):
    tr, ytr, te, yte = toy
    rows = fusion.ablation(tr, ytr, te, yte, method="early", seeds=(0, 1), progress=False, num_epochs=30)
    table = {r["branches"]: r for r in rows}
    assert list(table) == ["A", "B", "A+B"]
    assert table["A"]["mean"] < 0.6 and table["B"]["mean"] < 0.6
    assert table["A+B"]["mean"] > table["A"]["mean"] + 0.25
    assert len(table["A+B"]["accs"]) == 2 and table["A+B"]["std"] >= 0
    assert "A+B" in fusion.format_table(rows)


def test_training_is_deterministic_in_the_seed(toy):
    tr, ytr, te, yte = toy
    p1 = fusion.evaluate_fusion("gated", tr, ytr, te, yte, seed=3, num_epochs=5)["probs"]
    p2 = fusion.evaluate_fusion("gated", tr, ytr, te, yte, seed=3, num_epochs=5)["probs"]
    p3 = fusion.evaluate_fusion("gated", tr, ytr, te, yte, seed=4, num_epochs=5)["probs"]
    np.testing.assert_allclose(p1, p2, atol=1e-6)
    assert np.abs(p1 - p3).max() > 1e-4


def test_gated_and_attention_expose_their_weights(toy):
    tr, ytr, te, yte = toy
    res = fusion.evaluate_fusion("gated", tr, ytr, te, yte, seed=0, num_epochs=3)
    fusion.predict_proba(res["model"], fusion.concat(te)[0][:7])
    g = res["model"].last_gates
    assert tuple(g.shape) == (7, 2)
    np.testing.assert_allclose(g.sum(1).numpy(), 1, atol=1e-5)
    res = fusion.evaluate_fusion("attention", tr, ytr, te, yte, seed=0, num_epochs=3,
                                 tokens={"A": [20, 20], "B": [40]})
    fusion.predict_proba(res["model"], fusion.concat(te)[0][:5])
    w = res["model"].last_attention
    assert tuple(w.shape) == (5, 3)
    np.testing.assert_allclose(w.sum(1).numpy(), 1, atol=1e-5)
    with pytest.raises(CourseError, match="must sum"):
        fusion.evaluate_fusion("attention", tr, ytr, te, yte, tokens={"A": [2, 2]}, num_epochs=1)


def test_evaluate_fusion_bad_input(toy):
    tr, ytr, te, yte = toy
    with pytest.raises(CourseError, match="unknown fusion method"):
        fusion.evaluate_fusion("magic", tr, ytr, te, yte)
    with pytest.raises(CourseError, match="integer class ids"):
        fusion.evaluate_fusion("early", tr, ytr[:-1], te, yte)
    with pytest.raises(CourseError, match="missing"):
        fusion.evaluate_fusion("early", tr, ytr, {"A": te["A"]}, yte)


def test_late_fusion_averages():
    p = fusion.late_fusion([np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])], weights=[3, 1])
    np.testing.assert_allclose(p, [[0.75, 0.25]])
    with pytest.raises(CourseError):
        fusion.late_fusion([np.ones((2, 3)), np.ones((2, 4))])
    with pytest.raises(CourseError):
        fusion.late_fusion([np.ones((2, 3))], weights=[-1])


def test_leakage_report_flags_a_label_lookup_but_not_image_features():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 500)
    label_text = np.eye(10, dtype=np.float32)[y] * 0.7 + 0.1        # one row per class
    image = rng.standard_normal((500, 16)).astype(np.float32) + y[:, None]
    rows = {r["branch"]: r for r in fusion.leakage_report({"image": image, "text": label_text}, y)}
    assert rows["text"]["leak"] and rows["text"]["distinct"] == 10 and rows["text"]["lookup_acc"] == 1.0
    assert not rows["image"]["leak"] and rows["image"]["distinct"] == 500 and rows["image"]["lookup_acc"] == 0.0
    # a coarse but honest feature (few distinct values that do not determine the label) is not a leak
    coarse = (y[:, None] // 5 + rng.integers(0, 2, (500, 1))).astype(np.float32)
    assert not fusion.leakage_report({"coarse": coarse}, y)[0]["leak"]


def test_split_and_loader():
    tr, va = fusion.split_indices(100, 0.2, seed=0)
    assert len(va) == 20 and len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == 100
    loader = fusion.feature_loader(np.ones((10, 3)), np.arange(10), batch_size=4)
    batches = list(loader)
    assert [len(b[1]) for b in batches] == [4, 4, 2] and batches[0][0].dtype.is_floating_point
    with pytest.raises(CourseError):
        fusion.feature_loader(np.ones(10))


def test_subsets_order():
    assert fusion.subsets(["a", "b", "c"]) == [("a",), ("b",), ("c",), ("a", "b"), ("a", "c"), ("b", "c"),
                                               ("a", "b", "c")]


def test_resize_normalise_matches_dinov2_preprocess():
    img = cl.data.load_photo("chelsea")[:200, :240]
    ours = fusion.resize_normalise(img[None], 224, cl.models.IMAGENET_MEAN, cl.models.IMAGENET_STD)
    ref = cl.models.dinov2_preprocess(img)
    assert ours.shape == (1, 3, 224, 224)
    assert float((ours - ref).abs().max()) < 1e-5


def test_handcrafted_features_shapes():
    scenes = cl.data.make_scenes(3, "train", seed=0, max_items=1)
    hand = fusion.handcrafted_features(scenes.images)
    assert list(hand) == list(fusion.HAND_KINDS)
    for F in hand.values():
        assert F.dtype == np.float32 and F.shape[0] == 3 and np.isfinite(F).all()


def test_backbone_features_shapes_and_bad_input():
    scenes = cl.data.make_scenes(2, "train", seed=0)
    v = fusion.vit_features(scenes.images, size=56, grid=2, progress=False)
    assert v["cls"].shape == (2, 384) and v["grid"].shape == (2, 4, 384)
    # the grid cells average to the mean patch token
    np.testing.assert_allclose(v["grid"].mean(1), v["patch_mean"], atol=1e-4)
    c = fusion.cnn_features(scenes.images, size=64, progress=False)
    assert c.shape == (2, 1280) and c.dtype == np.float32
    with pytest.raises(CourseError, match="multiple of 14"):
        fusion.vit_features(scenes.images, size=100)
    with pytest.raises(CourseError, match="multiple of 32"):
        fusion.cnn_features(scenes.images, size=100)
    with pytest.raises(CourseError, match="uint8"):
        fusion.vit_features(scenes.images.astype(np.float32))
    with pytest.raises(CourseError, match="channels-first"):
        fusion.cnn_features(np.zeros((2, 3, 64, 64), np.uint8))


def test_locate_items_finds_the_scene_items():
    scenes = cl.data.make_scenes(300, "test", seed=3, max_items=1)
    boxes = fusion.locate_items(scenes.images)
    assert boxes.shape == (300, 4) and boxes.dtype == np.int64
    fg = scenes.masks > 0
    rows, cols = fg.any(2), fg.any(1)
    true = np.stack([rows.argmax(1), cols.argmax(1), 63 - rows[:, ::-1].argmax(1), 63 - cols[:, ::-1].argmax(1)], 1)
    lo, hi = np.maximum(boxes[:, :2], true[:, :2]), np.minimum(boxes[:, 2:], true[:, 2:])
    inter = np.clip(hi - lo + 1, 0, None).prod(1)
    area = lambda b: (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    iou = inter / (area(boxes) + area(true) - inter)
    assert (iou > 0.7).mean() > 0.95


def test_crop_items_centres_a_known_square():
    img = np.full((1, 64, 64, 3), 20, np.uint8)
    img[0, 40:50, 5:15] = 200                                 # a bright 10 x 10 square
    assert fusion.locate_items(img).tolist() == [[40, 5, 49, 14]]
    crop = fusion.crop_items(img, size=14, margin=2)          # 10 + 2 * 2 = 14: no resizing
    assert crop.shape == (1, 14, 14, 3) and crop.dtype == np.uint8
    assert (crop[0, 2:12, 2:12] == 200).all() and (crop[0, :2] == 20).all() and (crop[0, :, 12:] == 20).all()
    empty = np.full((2, 32, 32), 30, np.uint8)                 # nothing above the background
    assert fusion.locate_items(empty).tolist() == [[0, 0, 31, 31]] * 2
    with pytest.raises(CourseError, match="size"):
        fusion.crop_items(img, size=2)


def test_first_item_labels():
    slots = {"object": np.array([[-1, 3, 5, -1], [7, -1, -1, -1]]), "texture": np.array([[-1, 2, 0, -1], [1, -1, -1, -1]])}
    assert fusion.first_item_labels(slots, "object").tolist() == [3, 7]
    assert fusion.first_item_labels(slots, "texture").tolist() == [2, 1]
    with pytest.raises(CourseError, match="field"):
        fusion.first_item_labels(slots, "colour")
