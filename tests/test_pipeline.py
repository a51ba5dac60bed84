"""course_lib.pipeline: measurements, perception, reports and template questions."""
from __future__ import annotations

import numpy as np
import pytest

import course_lib as cl
from course_lib import CourseError
from course_lib import pipeline as P


@pytest.fixture(scope="module")
def scenes():
    return cl.data.make_scenes(200, "train", seed=4)


@pytest.fixture(scope="module")
def meas(scenes):
    return P.measure(scenes.images)


@pytest.fixture(scope="module")
def perception(scenes, meas):
    return P.fit_perception(scenes, meas, num_epochs=5, seed=0)


GRAPH = [
    {"object": "bag", "colour": "red", "texture": "striped", "size": "small", "position": "top left"},
    {"object": "boot", "colour": "blue", "texture": "plain", "size": "large", "position": "bottom right"},
]


# --------------------------------------------------------------------------- measurements


def test_quadrant_crops_follow_reading_order(scenes):
    q = P.quadrant_crops(scenes.images[:3])
    assert q.shape == (3, 4, 32, 32, 3) and q.dtype == np.uint8
    assert np.array_equal(q[1, 1], scenes.images[1, :32, 32:])
    assert np.array_equal(q[2, 2], scenes.images[2, 32:, :32])
    with pytest.raises(CourseError, match="64, 64, 3"):
        P.quadrant_crops(scenes.images[:, :, :, 0])
    with pytest.raises(CourseError):
        P.quadrant_crops(scenes.images.astype(np.float32))


def test_measurements_agree_with_the_scene_graphs(scenes, meas):
    occ = scenes.slots["object"] >= 0
    assert len(meas) == len(scenes)
    assert np.mean(meas.occupied == occ) > 0.99
    assert np.mean(meas.count == scenes.counts) > 0.98
    assert np.mean(meas.colour[occ] == scenes.slots["colour"][occ]) > 0.97
    assert np.mean((meas.extent[occ] > P.LARGE_EXTENT) == scenes.slots["size"][occ]) > 0.97
    assert (meas.colour[~meas.occupied] == -1).all() and (meas.edge_density[~meas.occupied] == 0).all()
    assert (meas.edge_density >= 0).all() and (meas.edge_density <= 1).all()
    # textured items have more edges inside than plain ones
    tex = scenes.slots["texture"][occ]
    dens = meas.edge_density[occ]
    assert dens[tex == 0].mean() < dens[tex > 0].mean()
    assert meas.silhouettes.shape == (len(scenes), 4, 20, 20)
    assert 0 <= meas.silhouettes.min() and meas.silhouettes.max() <= 1
    part = meas.subset(slice(2, 5))
    assert len(part) == 3 and np.array_equal(part.silhouettes, meas.silhouettes[2:5])
    assert np.array_equal(meas.subset([4, 0]).colour, meas.colour[[4, 0]])


def test_dominant_colour_ignores_dark_texture():
    crop = np.zeros((8, 8, 3), np.uint8)
    crop[:4] = (235, 215, 45)                       # yellow
    crop[4:] = (94, 86, 18)                          # the same yellow at 40 % brightness
    c, share = P.dominant_colour(crop, np.ones((8, 8), bool))
    assert list(cl.data.COLOURS)[c] == "yellow" and share == 1.0
    assert P.dominant_colour(crop, np.zeros((8, 8), bool)) == (-1, 0.0)


def test_texture_statistics_tell_stripes_from_plain():
    yy = np.arange(16)[:, None] * np.ones((1, 16))
    striped = np.where((yy // 2) % 2 == 0, 200, 80).astype(np.uint8)[..., None] * np.array([1, 0, 0], np.uint8)
    plain = np.full((16, 16, 3), (200, 0, 0), np.uint8)
    m = np.ones((16, 16), bool)
    s, p = P.texture_statistics(striped, m), P.texture_statistics(plain, m)
    assert s[0] > 0.2 and s[1] == 0.0            # rows change, columns do not
    assert p[0] == 0.0 and p[1] == 0.0
    assert (P.texture_statistics(plain, ~m) == 0).all()


def test_silhouette_is_centred_and_scaled():
    m = np.zeros((32, 32), bool)
    m[5:15, 20:30] = True
    s = P.silhouette(m)
    assert s.shape == (20, 20) and s.dtype == np.float32
    assert s.min() >= 0 and s.max() <= 1 and s.mean() > 0.9  # a full square fills the frame


# --------------------------------------------------------------------------- perception and reports


def test_perception_classifiers_learn(scenes, meas, perception):
    cls = perception.classify(meas)
    occ = meas.occupied & (scenes.slots["object"] >= 0)
    assert np.mean(cls["texture"][occ] == scenes.slots["texture"][occ]) > 0.8
    assert np.mean(cls["object"][occ] == scenes.slots["object"][occ]) > 0.3  # 10 classes: chance is 0.1
    assert (cls["object"][~meas.occupied] == -1).all()
    assert ((cls["object_p"] >= 0) & (cls["object_p"] <= 1)).all()


def test_reports_keep_every_measured_item(scenes, meas, perception):
    reports = perception.describe(meas, scenes.captions)
    r = reports[0]
    assert r.count == int(meas.count[0]) and len(r.items) == r.count
    assert all(it.position in cl.data.POSITIONS and it.label in cl.data.OBJECT_WORDS for it in r.items)
    assert r.caption == scenes.captions[0] and "p=" in r.pretty()
    with pytest.raises(CourseError):
        perception.describe(meas, scenes.captions[:3])


def test_fit_perception_needs_items(scenes, meas):
    with pytest.raises(CourseError):
        P.fit_perception(scenes.subset([0]), P.measure(scenes.images[:1]))
    with pytest.raises(CourseError):
        P.fit_perception(scenes, P.measure(scenes.images[:5]))


# --------------------------------------------------------------------------- questions and rules


def test_questions_have_answers_from_the_graph():
    rng = np.random.default_rng(0)
    qs = [q for _ in range(50) for q in P.make_questions(GRAPH, rng, n=4)]
    assert {q.kind for q in qs} == set(P.QUESTION_TYPES)
    for q in qs:
        assert q.answer in P.answer_vocabulary(q.kind)
        parsed = P.parse_question(q.text)
        assert parsed["kind"] == q.kind
        if q.text == "how many items are there ?":
            assert q.answer == "two"
        if q.text == "where is the bag ?":
            assert q.answer == "top left"
        if q.text == "what texture is the boot ?":
            assert q.answer == "plain"
        if q.text == "what colour is the item at the top right ?":
            assert q.answer == P.NONE
    assert any(q.answer == P.NONE for q in qs)  # absent objects and empty quadrants are asked about


def test_parse_question_rejects_free_text():
    assert P.parse_question("how many red items are there ?") == {"kind": "count", "colour": "red"}
    assert P.parse_question("what colour is the t-shirt ?") == {"kind": "colour", "object": "t-shirt"}
    with pytest.raises(CourseError):
        P.parse_question("is the bag pretty ?")
    with pytest.raises(CourseError):
        P.make_questions(GRAPH, np.random.default_rng(0), kinds=("size",))
    with pytest.raises(CourseError):
        P.make_questions([], np.random.default_rng(0))
