"""course_lib.scene_qa: rephrased questions, the rule baseline, retrieval, the faithfulness split."""
from __future__ import annotations

import numpy as np
import pytest

import course_lib as cl
from course_lib import CourseError
from course_lib import pipeline as P
from course_lib import scene_qa as sq

from test_pipeline import GRAPH  # the two-item scene graph the pipeline tests use


def _report(caption=None, **changes):
    items = [P.ItemReport("top left", "bag", 0.9, "red", "striped", 0.95, "small", 0.3),
             P.ItemReport("bottom right", "boot", 0.8, "blue", "plain", 0.99, "large", 0.05)]
    for k, v in changes.items():
        setattr(items[0], k, v)
    return P.SceneReport(2, cl.data.scene_caption(GRAPH) if caption is None else caption, items)


def test_rules_read_the_report():
    r = _report()
    assert sq.rules_answer(r, "how many items are there ?") == "two"
    assert sq.rules_answer(r, "how many blue items are there ?") == "one"
    assert sq.rules_answer(r, "where is the boot ?") == "bottom right"
    assert sq.rules_answer(r, "where is the coat ?") == P.NONE
    assert sq.rules_answer(r, "what colour is the bag ?") == "red"
    assert sq.rules_answer(r, "what texture is the item at the top right ?") == P.NONE
    # default trust: the measurement wins for colour; the caption finds the object
    assert sq.rules_answer(_report(colour="green"), "what colour is the bag ?") == "green"
    assert sq.rules_answer(_report(colour="green"), "what colour is the bag ?", {"colour": "caption"}) == "red"
    # an object the caption misses is found among the classifier's labels
    assert sq.rules_answer(_report(caption="a large blue plain boot at the bottom right"), "where is the bag ?") == "top left"
    # trusting the classifier first: its label decides where the object is
    moved = _report(label="coat")
    assert sq.rules_answer(moved, "where is the bag ?") == "top left"  # the caption still says bag
    assert sq.rules_answer(moved, "where is the coat ?", {"object": "classifier"}) == "top left"
    assert len(sq.trust_options()) == 8


def test_rules_say_cannot_parse_instead_of_crashing():
    r = _report()
    for q in ("is anything purple?", "what's the pattern on the upper-left thing?", "", "explain the object at the top left ?"):
        assert sq.rules_answer(r, q) == sq.CANNOT_PARSE


def test_paraphrases_use_their_own_words_and_true_answers():
    rng = np.random.default_rng(0)
    qs = [q for _ in range(60) for q in sq.make_paraphrases(GRAPH, rng, n=3)]
    assert {q.kind for q in qs} == set(sq.KINDS)
    for q in qs:
        assert q.answer in sq.OPTIONS
        with pytest.raises(CourseError):
            P.parse_question(q.text)  # never a template
        if q.text == "is there a handbag in the picture?":
            assert q.answer == sq.YES
        if q.text == "in which corner is the ankle boot?":
            assert q.answer == "bottom right"
        if q.kind == "colour" and q.about.get("position") == "top left":
            assert q.answer == "red"
    with pytest.raises(CourseError):
        sq.make_paraphrases([], rng)


def test_fact_lines_and_retrieval():
    r = _report()
    lines = sq.fact_lines(r)
    assert lines[0] == "count: two items measured"
    assert lines[1] == "top left: bag (classifier 0.90), red, striped, small"
    assert lines[-1].startswith("caption: ") and len(lines) == 5
    kw = sq.retrieve_keywords(r, "what colour is the bag ?")
    assert kw[0] == lines[0] and lines[1] in kw and lines[2] not in kw
    assert sq.retrieve_keywords(r, "what colour is the handbag?") == [lines[0]]  # no shared word

    def fake_embed(texts):  # one-hot on "bag" vs the rest: the handbag question lands on bag lines
        return np.array([[1.0, 0.0] if "bag" in t else [0.0, 1.0] for t in texts])

    got = sq.retrieve_embeddings(r, "where is the handbag?", k=1, embed=fake_embed)
    assert got == [lines[0], lines[1]]
    # keywords give both boot lines; the embedding adds the handbag lines for "handbag"
    assert sq.retrieve_hybrid(r, "what colour is the boot ?", k=1, embed=fake_embed) == [lines[0], lines[2], lines[4]]
    assert sq.retrieve_hybrid(r, "is the handbag red?", k=1, embed=fake_embed) == [lines[0], lines[1], lines[3]]
    assert sq.qa_chat(["a"], "q?", system=None)[0]["role"] == "user"
    with pytest.raises(CourseError):
        sq.retrieve_embeddings(r, "x", k=0)


def test_parse_answer_maps_text_to_options():
    assert sq.parse_answer("The bag is at the top left.") == "top left"
    assert sq.parse_answer("Red") == "red"
    assert sq.parse_answer("two items, both red") == "two"
    assert sq.parse_answer("I do not know") == sq.CANNOT_PARSE


def test_verdict_splits_hallucinations_from_perception_errors():
    wrong_caption = _report(caption="a small green striped bag at the top left and a large blue plain boot at the bottom right",
                            colour="green")
    q = P.Question("what colour is the bag ?", "colour", "red", {"object": "bag"})
    assert sq.verdict(q, "red", wrong_caption) == "correct"
    assert sq.verdict(q, "green", wrong_caption) == "perception"      # the report says green: faithful
    assert sq.verdict(q, "purple", wrong_caption) == "hallucination"  # nobody said purple
    assert sq.verdict(q, "cannot parse", wrong_caption) == "unanswered"
    e = P.Question("is anything purple?", "exists", "no", {"colour": "purple"})
    assert sq.report_supports(_report(), e) == {"no"}
    s = sq.scores([q, q, q, e], ["red", "green", "purple", "yes"], [wrong_caption] * 3 + [_report()])
    assert s["accuracy"] == 0.25 and s["perception_error_rate"] == 0.25 and s["hallucination_rate"] == 0.5
    assert s["accuracy_exists"] == 0.0
    with pytest.raises(CourseError):
        sq.scores([q], [], [])


def test_explanation_faithfulness_rejects_unseen_features():
    it = _report().items[0]
    drops = np.array([0.5, 0.1, 0.2, 0.2], np.float32)
    ok = sq.explanation_faithfulness("The silhouette has the outline of a bag.", it, drops)
    assert ok["faithful"] and ok["names_label"] and ok["cites_shape"] and not ok["cites_unseen"]
    bad = sq.explanation_faithfulness("It is a bag because it is red and striped.", it, drops)
    assert not bad["faithful"] and bad["cites_unseen"]
    half = sq.explanation_faithfulness("The outline of a bag; the left half of the shape matters most.", it, drops)
    assert half["wrong_half"] and not half["faithful"]  # the top half mattered most here
    assert sq.explanation_faithfulness("A bag: the top half of the shape matters most.", it, drops)["faithful"]
    lines = sq.evidence_lines(it, drops)
    assert "silhouette only" in lines[0] and "top half" in lines[2] and "bottom half" in lines[2]


def test_occlusion_drops_shape_and_errors():
    scenes = cl.data.make_scenes(120, "train", seed=3)
    meas = P.measure(scenes.images)
    perception = P.fit_perception(scenes, meas, num_epochs=2, seed=0)
    sil = meas.silhouettes[meas.occupied][:5]
    d = sq.occlusion_drops(perception, sil)
    assert d.shape == (5, 4) and d.dtype == np.float32 and np.all(np.abs(d) <= 1)
    with pytest.raises(CourseError):
        sq.occlusion_drops(perception, np.zeros((2, 10, 10)))
