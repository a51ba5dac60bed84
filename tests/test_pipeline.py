"""course_lib.pipeline: measurements, reports, questions, rules, QA model, scoring."""
from __future__ import annotations

import numpy as np
import pytest
import torch

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


def _report(caption=None, **changes):
    items = [P.ItemReport("top left", "bag", 0.9, "red", "striped", 0.95, "small", 0.3),
             P.ItemReport("bottom right", "boot", 0.8, "blue", "plain", 0.99, "large", 0.05)]
    for k, v in changes.items():
        setattr(items[0], k, v)
    return P.SceneReport(2, cl.data.scene_caption(GRAPH) if caption is None else caption, items)


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


def test_reports_text_and_vocabulary(scenes, meas, perception):
    reports = perception.describe(meas, scenes.captions)
    r = reports[0]
    assert r.count == int(meas.count[0]) and len(r.items) == r.count
    text = r.text()
    assert text.startswith(f"count {r.count} . top left : ") and text.endswith(f"caption {scenes.captions[0]} .")
    # the fixed layout: every report has the same words before its caption, in the same places
    heads = [rep.text().split(" caption ")[0].split() for rep in reports]
    assert {len(h) for h in heads} == {3 + 4 * (3 + len(P.REPORT_FIELDS) + 1)}
    assert all(h[3:6] == ["top", "left", ":"] for h in heads)
    vocab = set(P.qa_vocabulary())
    assert all(w in vocab for rep in reports for w in rep.text().split())
    assert "p=" in r.pretty()
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


def test_rules_read_the_report():
    r = _report()
    assert P.rules_answer(r, "how many items are there ?") == "two"
    assert P.rules_answer(r, "how many blue items are there ?") == "one"
    assert P.rules_answer(r, "where is the boot ?") == "bottom right"
    assert P.rules_answer(r, "where is the coat ?") == P.NONE
    assert P.rules_answer(r, "what colour is the bag ?") == "red"
    assert P.rules_answer(r, "what texture is the item at the top right ?") == P.NONE
    # the measurement wins over the caption for colour; the caption finds the object
    assert P.rules_answer(_report(colour="green"), "what colour is the bag ?") == "green"
    # an object the caption misses is found among the classifier's labels
    assert P.rules_answer(_report(caption="a large blue plain boot at the bottom right"), "where is the bag ?") == "top left"


def test_judge_and_scores():
    q = P.Question("what colour is the bag ?", "colour", "red", {"object": "bag"})
    assert P.judge(q, "red") == "correct"
    assert P.judge(q, " Red ") == "correct"
    assert P.judge(q, "blue") == "hallucination"
    assert P.judge(q, "none") == "omission"
    assert P.judge(q, "top left") == "invalid"
    qs = [q, q, q, P.Question("how many items are there ?", "count", "two")]
    s = P.qa_scores(qs, ["red", "blue", "none", "three"])
    assert s["accuracy"] == 0.25 and s["accuracy_colour"] == pytest.approx(1 / 3) and s["accuracy_count"] == 0.0
    assert s["hallucination_rate"] == 0.5 and s["omission_rate"] == 0.25 and s["invalid_rate"] == 0.0
    with pytest.raises(CourseError):
        P.qa_scores(qs, ["red"])


# --------------------------------------------------------------------------- explanations


def test_explanations_are_grounded_in_the_report():
    r = _report()
    text = P.explanation(r, "top left")
    assert "bag with confidence 0.90" in text and "the caption agrees" in text and "small red striped" in text
    assert P.explanation_facts(text) == {"label": "bag", "confidence": "0.90", "caption": "agrees", "size": "small",
                                          "colour": "red", "texture": "striped", "edges": "0.30"}
    assert "the caption says coat" in P.explanation(_report(caption="a small red striped coat at the top left"), "top left")
    assert P.explanation(r, "top right") == "nothing was measured there"
    wrong = text.replace(" red ", " green ")  # ("measured" contains "red" too)
    s = P.explanation_scores([r, r], ["top left", "top left"], [text, wrong], [GRAPH, GRAPH])
    assert s["grounded_rate"] == 0.5
    assert s["fact_faithfulness"] == pytest.approx(13 / 14)
    assert s["true_colour_texture_rate"] == pytest.approx(3 / 4)
    with pytest.raises(CourseError):
        P.explain_question("middle")


# --------------------------------------------------------------------------- the QA model


def _tiny_qa_and_questions():
    """An untrained one-layer QA model, the two-item report and two questions about it."""
    qa = P.build_qa_model(hidden_size=32, num_layers=1, num_heads=2)
    qs = [[P.Question("where is the bag ?", "position", "top left"), P.Question("how many items are there ?", "count", "two")]]
    return qa, _report(), qs


def test_qa_examples_mask_everything_but_answers():
    qa, r, qs = _tiny_qa_and_questions()
    ids, labels = P.qa_examples(qa, [r], qs)
    assert ids.shape == labels.shape and ids.dtype == np.int64
    assert ids.shape[0] == 1  # one row per report, both questions in it
    learned = qa.tokenizer.convert_ids_to_tokens(ids[0][labels[0] != -100].tolist())
    assert learned == ["top", "left", "[EOS]", "two", "[EOS]"]
    words = qa.tokenizer.convert_ids_to_tokens(ids[0][ids[0] != qa.tokenizer.pad_token_id].tolist())
    assert words[:4] == ["[BOS]", "count", "2", "."]  # the report comes first
    n = len(P.qa_prompt(r, "where is the bag ?").split())
    assert " ".join(words[1:n + 1]) == P.qa_prompt(r, "where is the bag ?")  # a one-question prompt starts the row
    with pytest.raises(CourseError, match="vocabulary"):
        P.qa_examples(qa, [P.SceneReport(1, "a shiny bag", [])], [[qs[0][0]]])


def test_report_lines_and_keyword_retrieval():
    r = _report()
    lines = P.report_lines(r)
    assert lines[0] == "count 2 ." and lines[1:5] == [r.quadrant_line(p) for p in cl.data.POSITIONS]
    assert len(lines) == 5 + len(GRAPH)  # one caption line per clause
    assert " ".join(lines[:5]) + " caption" == r.text().split(" caption ")[0] + " caption"
    assert P.retrieval_keys("what colour is the item at the top left ?") == ["top left"]
    assert P.retrieval_keys("how many red items are there ?") == ["red"]
    assert P.retrieval_keys("how many items are there ?") == []
    got = P.retrieve(r, "where is the bag ?")
    assert got.startswith("count 2 . top left : bag ") and "caption" in got and "boot" not in got
    assert P.retrieve(r, "what texture is the coat ?") == "count 2 . " + P.NOTHING_FOUND
    assert P.retrieve(r, "how many items are there ?") == "count 2 ."
    # a quadrant key matches its own quadrant line only, not the other "top"/"left" lines
    tr = P.retrieve(r, "what colour is the item at the top right ?")
    assert tr.split(" . ")[1].startswith("top right : none") and "top left" not in tr
    # "shirt" is a whole word: it must not match "t-shirt"
    ts = P.SceneReport(1, "a small red plain t-shirt at the top left", [P.ItemReport("top left", "t-shirt", 0.9, "red", "plain", 0.9, "small", 0.1)])
    assert P.retrieve(ts, "where is the shirt ?").endswith(P.NOTHING_FOUND)
    with pytest.raises(CourseError):
        P.retrieve(r.text(), "where is the bag ?")
    with pytest.raises(CourseError):
        r.quadrant_line("middle")


def test_qa_examples_with_retrieval_one_row_per_question():
    qa, r, qs = _tiny_qa_and_questions()
    ids, labels = P.qa_examples(qa, [r], qs, retrieval=True)
    assert ids.shape[0] == 2
    tok = qa.tokenizer
    for row, lab, q in zip(ids, labels, qs[0]):
        words = tok.convert_ids_to_tokens(row[row != tok.pad_token_id].tolist())
        prompt = P.qa_prompt(r, q.text, retrieval=True)
        assert " ".join(words[1:len(prompt.split()) + 1]) == prompt and words[1] == "context"
        assert tok.convert_ids_to_tokens(row[lab != -100].tolist()) == q.answer.split() + ["[EOS]"]
    with pytest.raises(CourseError):
        P.qa_prompt(r.text(), "where is the bag ?", retrieval=True)


def test_reader_with_retrieval_learns_to_say_none():
    """A lookup by content the whole-report reader finds hard becomes easy on retrieved lines:
    where is <object> ?, with the object present in some scenes and absent in others."""
    torch.manual_seed(0)
    qa = P.build_qa_model(hidden_size=64, num_layers=2, num_heads=4)
    rng = np.random.default_rng(0)
    objects = ["bag", "boot", "coat", "dress"]
    reports, questions = [], []
    for _ in range(400):
        pos = cl.data.POSITIONS[int(rng.integers(4))]
        obj, asked = objects[int(rng.integers(4))], objects[int(rng.integers(4))]
        item = P.ItemReport(pos, obj, 0.9, "red", "plain", 0.9, "small", 0.2)
        reports.append(P.SceneReport(1, f"a small red plain {obj} at the {pos}", [item]))
        questions.append([P.Question(f"where is the {asked} ?", "position", pos if asked == obj else P.NONE)])
    ids, labels = P.qa_examples(qa, reports, questions, retrieval=True)
    cl.train.fit(qa.model, P.qa_loader(ids, labels, batch_size=32, shuffle=True), num_epochs=10, lr=3e-3,
                 step_fn=P.qa_step, progress=False, device="cpu")
    answers = P.ask(qa, reports[:100], [q[0].text for q in questions[:100]], retrieval=True, max_new_tokens=3)
    truth = [q[0].answer for q in questions[:100]]
    assert np.mean([a == t for a, t in zip(answers, truth)]) > 0.9
    assert any(t == P.NONE for t in truth) and all(a == P.NONE for a, t in zip(answers, truth) if t == P.NONE)


def test_qa_model_learns_a_lookup_and_ask_dispatches():
    torch.manual_seed(0)
    qa = P.build_qa_model(hidden_size=64, num_layers=2, num_heads=4)
    rng = np.random.default_rng(0)
    colours = list(cl.data.COLOURS)
    reports, questions = [], []
    for _ in range(300):
        c = colours[int(rng.integers(6))]
        graph = [dict(GRAPH[0], colour=c)]
        item = P.ItemReport("top left", "bag", 0.9, c, "striped", 0.9, "small", 0.2)
        reports.append(P.SceneReport(1, cl.data.scene_caption(graph), [item]))
        questions.append([P.Question("what colour is the bag ?", "colour", c)])
    ids, labels = P.qa_examples(qa, reports, questions)
    loader = P.qa_loader(ids, labels, batch_size=32, shuffle=True)
    cl.train.fit(qa.model, loader, num_epochs=12, lr=3e-3, step_fn=P.qa_step, progress=False, device="cpu")
    answers = P.ask(qa, reports[:60], [q[0].text for q in questions[:60]])
    assert np.mean([a == q[0].answer for a, q in zip(answers, questions[:60])]) > 0.9
    ev = P.qa_eval(qa.model, P.qa_loader(ids[:60], labels[:60]), torch.device("cpu"))
    assert ev["val_acc_token"] > 0.9
    with pytest.raises(CourseError):
        P.ask("not a model", reports[:1], ["what colour is the bag ?"])
    with pytest.raises(CourseError):
        P.ask(qa, reports[:2], ["what colour is the bag ?"])


def test_explain_questions_pick_measured_items():
    r = _report()
    qs = P.explain_questions(r, np.random.default_rng(0), n=5)
    assert len(qs) == 2 and {q.about["position"] for q in qs} == {"top left", "bottom right"}
    assert all(q.kind == "explain" and q.answer == P.explanation(r, q.about["position"]) for q in qs)
    assert P.parse_question(qs[0].text) == {"kind": "explain", "position": qs[0].about["position"]}
    assert P.explain_questions(P.SceneReport(0, "", []), np.random.default_rng(0)) == []
