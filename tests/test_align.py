"""Tests of course_lib.align: InfoNCE, retrieval recall with duplicate captions, LiT training,
zero-shot classification, text embeddings and the Fashion-MNIST pasting helper."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import course_lib as cl
from course_lib import align
from course_lib.config import CourseError


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def test_caption_ids_group_identical_texts():
    ids = align.caption_ids(["a", "b", "a", "c", "b"])
    assert ids.tolist() == [0, 1, 0, 2, 1] and ids.dtype == np.int64
    with pytest.raises(CourseError, match="list of strings"):
        align.caption_ids("a single string")


def test_info_nce_matches_cross_entropy_without_duplicates():
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=1)
    logits = 10.0 * img @ txt.T
    ref = 0.5 * (torch.nn.functional.cross_entropy(logits, torch.arange(6))
                 + torch.nn.functional.cross_entropy(logits.T, torch.arange(6)))
    assert torch.allclose(align.info_nce(img, txt, 10.0), ref, atol=1e-6)
    assert torch.allclose(align.info_nce(img, txt, 10.0, torch.arange(6)), ref, atol=1e-6)


def test_info_nce_treats_duplicates_as_positives():
    # images 0 and 1 have the same caption: with ids, matching 0 to caption 1 is not penalised
    img = torch.eye(3)
    txt = torch.eye(3)[[1, 0, 2]]          # caption rows 0 and 1 swapped
    wrong = align.info_nce(img, txt, 20.0)
    same = align.info_nce(img, txt, 20.0, torch.tensor([7, 7, 3]))
    assert float(wrong) > 5 and float(same) < 1.0
    with pytest.raises(CourseError, match="same shape"):
        align.info_nce(img, txt[:2], 1.0)


def test_retrieval_recall_counts_identical_captions_as_hits():
    rng = np.random.default_rng(0)
    T = _unit(rng.standard_normal((5, 4)))
    T[4] = T[0]                                   # scenes 0 and 4 have the same caption text
    ids = np.array([0, 1, 2, 3, 0])
    img = _unit(T + 0.01 * rng.standard_normal((5, 4)))
    # image 4 may rank caption 0 first and caption 0 may rank image 0 or 4 first: all hits
    r = align.retrieval_recall(img, T, ids, ks=(1,))
    assert r["i2t_r1"] == 1.0 and r["t2i_r1"] == 1.0
    assert align.retrieval_recall(img, T, ["x", "y", "z", "w", "x"], ks=(1,)) == r   # strings work as ids
    # images 1 and 2 swapped: distinct captions, so both directions miss twice at k = 1
    swapped = img[[0, 2, 1, 3, 4]]
    r2 = align.retrieval_recall(swapped, T, ids, ks=(1, 5))
    assert r2["i2t_r1"] == pytest.approx(0.6) and r2["t2i_r1"] == pytest.approx(0.6)
    assert r2["i2t_r5"] == 1.0
    hits = align.retrieval_hits(swapped, T, ids, k=1)
    assert hits["i2t"].dtype == bool and hits["i2t"].mean() == pytest.approx(r2["i2t_r1"])
    assert hits["t2i"].mean() == pytest.approx(r2["t2i_r1"])


def test_retrieval_recall_ranks_and_chance():
    rng = np.random.default_rng(1)
    n = 200
    img, txt = _unit(rng.standard_normal((n, 16))), _unit(rng.standard_normal((n, 16)))
    r = align.retrieval_recall(img, txt, np.arange(n), ks=(1, 5, 10))
    assert r["i2t_r1"] <= r["i2t_r5"] <= r["i2t_r10"]
    assert r["i2t_r10"] < 0.2                      # random embeddings: about 10 / 200
    perfect = align.retrieval_recall(txt, txt, np.arange(n))
    assert perfect["i2t_r1"] == 1.0 and perfect["t2i_r1"] == 1.0
    with pytest.raises(CourseError, match="rows"):
        align.retrieval_recall(img, txt[:-1], np.arange(n))
    with pytest.raises(CourseError, match="positive"):
        align.retrieval_recall(img, txt, np.arange(n), ks=(0,))


def _toy_pairs(n: int, seed: int):
    """Image features = a fixed random linear map of the caption embedding plus noise."""
    rng = np.random.default_rng(seed)
    W = np.random.default_rng(123).standard_normal((32, 24))
    T = _unit(rng.standard_normal((n, 384)))
    X = (T[:, :32] @ W + 0.05 * rng.standard_normal((n, 24))).astype(np.float32)
    return X, T, np.arange(n)


def test_train_lit_learns_to_retrieve():
    X, T, ids = _toy_pairs(600, 0)
    Xv, Tv, idv = _toy_pairs(150, 1)
    scaler = align.FeatureScaler().fit(X)
    model, history = align.train_lit(scaler.transform(X), T, ids, scaler.transform(Xv), Tv, idv,
                                     num_epochs=40, lr=3e-3, batch_size=128, temperature=0.05,
                                     progress=False, seed=0)
    assert history.monitor == "val_acc_r5" and history.num_epochs >= 1
    E = align.embed_images(model, scaler.transform(Xv))
    assert E.shape == (150, 384) and np.allclose(np.linalg.norm(E, axis=1), 1, atol=1e-5)
    r = align.retrieval_recall(E, Tv, idv)
    assert r["i2t_r5"] > 0.5 and r["t2i_r5"] > 0.5, r       # chance would be 5 / 150


def test_temperature_learned_or_fixed():
    m = align.make_model(10, temperature=0.05, learn_temperature=False)
    assert m.temperature == pytest.approx(0.05, rel=1e-5)
    assert "log_logit_scale" not in dict(m.named_parameters())
    m2 = align.make_model(10, temperature=0.05, learn_temperature=True)
    assert "log_logit_scale" in dict(m2.named_parameters())
    with torch.no_grad():
        m2.log_logit_scale.fill_(10.0)
    assert float(m2.logit_scale().detach()) == pytest.approx(100.0)          # clamped like CLIP
    assert align.make_model(10, temperature=0.003, learn_temperature=False).temperature == pytest.approx(0.003, rel=1e-5)
    with pytest.raises(CourseError):
        align.make_model(0)
    with pytest.raises(CourseError):
        align.make_model(10, temperature=0.0)


def test_model_classes_live_at_module_level():
    assert isinstance(align.make_model(10), align.LiT)
    m = align.make_model(10, hidden_size=16)
    assert isinstance(m.tower, align.ImageTower) and m.tower.net[0].out_features == 16
    assert isinstance(align.make_model(10, hidden_size=0).tower.net, torch.nn.Linear)
    assert align.LiT.__module__ == "course_lib.align"


def test_pair_loader_and_scaler_checks():
    X, T, ids = _toy_pairs(10, 0)
    batches = list(align.pair_loader(X, T, ids, batch_size=4))
    assert [len(b[0]) for b in batches] == [4, 4, 2] and batches[0][1].shape == (4, 384)
    assert batches[0][2].dtype == torch.int64 and torch.equal(batches[0][0], torch.from_numpy(X[:4]))
    shuffled = list(align.pair_loader(X, T, ids, batch_size=4, shuffle=True, seed=3))
    order = torch.cat([b[2] for b in shuffled])
    assert sorted(order.tolist()) == list(range(10)) and order.tolist() != list(range(10))
    assert torch.equal(torch.cat([b[0] for b in shuffled]), torch.from_numpy(X)[order])   # rows stay paired
    with pytest.raises(CourseError, match="batch_size"):
        align.pair_loader(X, T, ids, batch_size=1)
    with pytest.raises(CourseError, match="rows"):
        align.pair_loader(X, T[:5], ids)
    with pytest.raises(CourseError, match="fit"):
        align.FeatureScaler().transform(X)
    Z = align.FeatureScaler().fit(X).transform(X)
    np.testing.assert_allclose(Z.mean(0), 0, atol=1e-5)


def test_zero_shot_predict():
    cls = _unit(np.eye(3, 8))
    img = _unit(np.eye(3, 8)[[2, 0, 1, 1]] + 0.1)
    assert align.zero_shot_predict(img, cls).tolist() == [2, 0, 1, 1]
    with pytest.raises(CourseError, match="same space"):
        align.zero_shot_predict(img, np.ones((3, 5), np.float32))


def test_text_embeddings_and_class_embeddings():
    texts = ["a small red striped bag at the top left", "a large blue plain boot at the bottom right",
             "a small red striped bag at the top left"]
    E = align.text_embeddings(texts)
    assert E.shape == (3, 384) and E.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(E, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(E[0], E[2])
    np.testing.assert_allclose(E[:2], cl.models.encode_text(texts[:2]), atol=1e-5)   # order restored
    C = align.class_embeddings(["bag", "boot"], ("a {}", "a photo of a {}."))
    assert C.shape == (2, 384)
    # the bag caption is closer to the "bag" class, the boot caption to "boot"
    assert align.zero_shot_predict(E[:2], C).tolist() == [0, 1]
    with pytest.raises(CourseError, match="exactly one"):
        align.class_embeddings(["bag"], ("no slot here",))


def test_paste_items():
    X, _ = cl.data.load_fashion_mnist("test")
    P = align.paste_items(X[:6], size=30, seed=0)
    assert P.shape == (6, 64, 64, 3) and P.dtype == np.uint8
    assert np.array_equal(P, align.paste_items(X[:6], size=30, seed=0))
    assert np.array_equal(P[..., 0], P[..., 2])                       # grey
    # each scene has one bright item in exactly one quadrant
    for img in P[..., 0]:
        bright = [(img[r:r + 32, c:c + 32] > 120).sum() for r in (0, 32) for c in (0, 32)]
        assert sum(b > 20 for b in bright) == 1
    with pytest.raises(CourseError):
        align.paste_items(X[:2].astype(np.float32))
    with pytest.raises(CourseError):
        align.paste_items(X[:2], size=40)


def test_learned_temperature_changes_during_training():
    X, T, ids = _toy_pairs(300, 2)
    scaler = align.FeatureScaler().fit(X)
    model, _ = align.train_lit(scaler.transform(X), T, ids, scaler.transform(X[:100]), T[:100], ids[:100],
                               num_epochs=5, lr=1e-2, temperature=0.07, learn_temperature=True,
                               patience=None, progress=False)
    assert not math.isclose(model.temperature, 0.07, rel_tol=1e-3)
