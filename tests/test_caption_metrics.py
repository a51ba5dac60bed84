"""course_lib.caption_metrics: BLEU, CIDEr-D, CHAIR, attribute scores, against hand-worked examples."""
from __future__ import annotations

import math

import pytest

import course_lib as cl
from course_lib import CourseError
from course_lib import caption_metrics as C


# --------------------------------------------------------------------------- BLEU


REF = "a small red bag at the top left"


def test_bleu_hand_worked_example():
    # hypothesis differs from the reference in one word (8 words each):
    # p1 = 7/8, p2 = 5/7, p3 = 4/6, p4 = 3/5, brevity penalty 1
    # BLEU-4 = (7/8 * 5/7 * 4/6 * 3/5) ** (1/4) = (1/4) ** (1/4)
    b = C.bleu([REF], ["a large red bag at the top left"])
    assert b["p1"] == pytest.approx(7 / 8) and b["p4"] == pytest.approx(3 / 5)
    assert b["brevity_penalty"] == 1.0
    assert b["bleu1"] == pytest.approx(7 / 8)
    assert b["bleu2"] == pytest.approx(math.sqrt(5 / 8))
    assert b["bleu3"] == pytest.approx((5 / 12) ** (1 / 3))
    assert b["bleu4"] == pytest.approx(0.25 ** 0.25)


def test_bleu_brevity_penalty_and_clipping():
    # 7 words against 8: BP = exp(1 - 8/7); p = 1, 5/6, 4/5, 3/4
    b = C.bleu([REF], ["a red bag at the top left"])
    assert b["brevity_penalty"] == pytest.approx(math.exp(-1 / 7))
    assert b["bleu4"] == pytest.approx(math.exp(-1 / 7) * (5 / 6 * 4 / 5 * 3 / 4) ** 0.25)
    # clipping: "the" counts at most as often as in the reference
    assert C.bleu(["the cat"], ["the the the the"], max_n=1)["p1"] == pytest.approx(1 / 4)
    assert C.bleu([REF], [REF])["bleu4"] == pytest.approx(1.0)
    assert C.bleu([REF], ["bag red"])["bleu4"] == 0.0


def test_bleu_pools_counts_over_the_corpus():
    refs, hyps = [REF, "a blue boot"], ["a large red bag at the top left", "a blue boot"]
    b = C.bleu(refs, hyps)
    assert b["p1"] == pytest.approx((7 + 3) / (8 + 3))  # pooled, not averaged per sentence
    assert b["p4"] == pytest.approx(3 / 5)  # the 3-word sentence has no 4-grams
    # several references: the closest length sets r, counts clip at the max over references
    multi = C.bleu([["a red bag", "a red bag at the top left"]], ["a red bag at the top"])
    assert multi["brevity_penalty"] == pytest.approx(math.exp(1 - 7 / 6))
    assert multi["p1"] == 1.0


def test_bleu_bad_inputs():
    with pytest.raises(CourseError, match="lists"):
        C.bleu(REF, "a red bag")
    with pytest.raises(CourseError, match="reference sets"):
        C.bleu([REF], ["a", "b"])
    with pytest.raises(CourseError):
        C.bleu([[]], ["a"])


# --------------------------------------------------------------------------- CIDEr-D


def test_cider_d_hand_worked_example():
    # two images; idf = log(2 / df): "a" is in both references, so it weighs 0, the rest log 2.
    # image 1 is exact: cosine 1 for 1-, 2- and 3-grams, 0 for 4-grams (none) -> 10 * 3/4
    # image 2 shares only "boot" among the weighted unigrams: cosine 1/2 -> 10 * 0.5/4
    score, per = C.cider_d(["a red bag", "a blue boot"], ["a red bag", "a red boot"], return_scores=True)
    assert per == pytest.approx([7.5, 1.25])
    assert score == pytest.approx(4.375)


def test_cider_d_length_penalty():
    # hypothesis 2 words, reference 4: unigram cosine 2/(sqrt 2 * 2), bigram 1/sqrt 3,
    # length penalty exp(-(2 - 4)^2 / (2 * 6^2))
    per = C.cider_d(["red bag at home", "blue boot"], ["red bag", "blue boot"], return_scores=True)[1]
    expected = 10 * math.exp(-4 / 72) * (1 / math.sqrt(2) + 1 / math.sqrt(3)) / 4
    assert per[0] == pytest.approx(expected)
    assert per[1] == pytest.approx(5.0)
    wider = C.cider_d(["red bag at home", "blue boot"], ["red bag", "blue boot"], sigma=60.0, return_scores=True)[1]
    assert wider[0] > per[0]


def test_cider_d_clips_repeated_ngrams():
    refs = ["a red bag", "a blue boot", "a green coat"]
    once = C.cider_d(refs, ["red bag", "blue boot", "green coat"], return_scores=True)[1][0]
    repeated = C.cider_d(refs, ["red bag red bag", "blue boot", "green coat"], return_scores=True)[1][0]
    assert repeated < once


def test_cider_d_bad_inputs():
    with pytest.raises(CourseError):
        C.cider_d(["a"], ["a"], sigma=0)
    with pytest.raises(CourseError):
        C.cider_d(["a", "b"], ["a"])


# --------------------------------------------------------------------------- scene-graph scores


GRAPH = [
    {"object": "bag", "colour": "red", "texture": "striped", "size": "small", "position": "top left"},
    {"object": "boot", "colour": "blue", "texture": "plain", "size": "large", "position": "bottom right"},
]
TRUE_CAPTION = "a small red striped bag at the top left and a large blue plain boot at the bottom right"


def test_attribute_scores_perfect_and_partial():
    assert cl.data.scene_caption(GRAPH) == TRUE_CAPTION
    perfect = C.attribute_scores([GRAPH], [TRUE_CAPTION])
    assert perfect["attribute_accuracy"] == 1.0 and perfect["exact_match"] == 1.0
    assert perfect["hallucination_rate"] == 0.0 and perfect["heldout_pair_accuracy"] == 1.0  # red bag
    wrong = ("a small green striped bag at the top left and a large blue plain boot at the bottom right"
             " and a small red plain coat at the top right")
    s = C.attribute_scores([GRAPH], [wrong])
    assert s["attribute_accuracy"] == pytest.approx(7 / 8)
    assert s["colour_accuracy"] == 0.5 and s["object_accuracy"] == 1.0
    assert s["hallucination_rate"] == pytest.approx(1 / 3)
    assert s["count_accuracy"] == 0.0 and s["exact_match"] == 0.0
    assert s["heldout_pair_accuracy"] == 0.0
    missed = C.attribute_scores([GRAPH], ["a small red striped bag at the top left"])
    assert missed["attribute_accuracy"] == 0.5 and missed["missed_rate"] == 0.5
    assert "heldout_pair_accuracy" not in C.attribute_scores([GRAPH], [TRUE_CAPTION], heldout_pairs=[])


def test_caption_errors_names_each_mistake():
    assert C.caption_errors(GRAPH, TRUE_CAPTION) == []
    errs = C.caption_errors(GRAPH, "a small green striped bag at the top left and a small red plain coat at the top right")
    assert "top left: colour green (true red)" in errs
    assert "missed: the boot at the bottom right" in errs
    assert "hallucinated: a coat at the top right" in errs


def test_caption_report_combines_metrics():
    r = C.caption_report([GRAPH], [TRUE_CAPTION], [TRUE_CAPTION])
    assert r["bleu4"] == 1.0 and r["attribute_accuracy"] == 1.0 and "cider_d" in r


def test_attribute_scores_bad_inputs():
    with pytest.raises(CourseError):
        C.attribute_scores([GRAPH], TRUE_CAPTION)
    with pytest.raises(CourseError):
        C.attribute_scores([GRAPH, GRAPH], [TRUE_CAPTION])


def test_caption_report_includes_chair():
    r = C.caption_report([GRAPH], [TRUE_CAPTION], ["a small red striped coat at the top left"])
    assert r["chair_i"] == 1.0 and r["chair_s"] == 1.0


# --------------------------------------------------------------------------- CHAIR


def test_chair_hand_worked_example():
    # scene 1 (bag, boot): "coat" is nowhere in it -> 1 hallucinated of 2 mentions;
    # scene 1 again: boot written at the bag's place -> wrong position, but the scene has a boot: no CHAIR
    # hallucination; scene 2 (a dress): right -> 0 of 1
    dress = [{"object": "dress", "colour": "green", "texture": "plain", "size": "small", "position": "top right"}]
    caps = ["a small red striped bag at the top left and a small red plain coat at the top right",
            "a small red striped boot at the top left and a large blue plain boot at the bottom right",
            cl.data.scene_caption(dress)]
    c = C.chair([GRAPH, GRAPH, dress], caps)
    assert c["mentions"] == 5.0
    assert c["chair_i"] == pytest.approx(1 / 5)   # CHAIR_i: hallucinated mentions / all mentions
    assert c["chair_s"] == pytest.approx(1 / 3)   # CHAIR_s: captions with one or more / all captions
    # the positional rate does not see a wrong object at an occupied position
    assert C.attribute_scores([GRAPH], [caps[1]])["hallucination_rate"] == 0.0
    assert C.chair([GRAPH], [TRUE_CAPTION]) == {"chair_i": 0.0, "chair_s": 0.0, "mentions": 2.0}
    assert C.chair([GRAPH], ["nothing here"])["chair_i"] == 0.0   # no mentions: nothing hallucinated


def test_chair_bad_inputs():
    with pytest.raises(CourseError):
        C.chair([GRAPH], TRUE_CAPTION)
    with pytest.raises(CourseError):
        C.chair([], [])
    with pytest.raises(CourseError, match="caption string"):
        C.chair([GRAPH], [3])


def test_fact_correct_pairs_up_with_attribute_accuracy():
    caps = ["a small green striped bag at the top left", TRUE_CAPTION]
    facts = C.fact_correct([GRAPH, GRAPH], caps)
    assert facts.dtype == bool and facts.shape == (16,)
    assert facts[:8].tolist() == [True, False, True, True] + [False] * 4   # green for red, boot missed
    assert facts.mean() == pytest.approx(C.attribute_scores([GRAPH, GRAPH], caps)["attribute_accuracy"])
    objects = C.fact_correct([GRAPH, GRAPH], caps, attributes=("object",))
    assert objects.tolist() == [True, False, True, True]              # one entry per true item
    small = C.fact_correct([GRAPH, GRAPH], caps, attributes=("colour",), keep=lambda it: it["size"] == "small")
    assert small.tolist() == [False, True]                            # only the small red bag, twice
    with pytest.raises(CourseError):
        C.fact_correct([GRAPH], [TRUE_CAPTION], attributes=("shape",))


def test_metrics_module_stays_light():
    # scoring strings needs neither torch nor transformers
    import subprocess
    import sys

    code = ("import sys, course_lib.caption_metrics as m; "
            "m.bleu(['a b'], ['a b']); print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
