"""Scoring generated captions: BLEU, CIDEr-D, and checks against the true scene graph.

Introduced in notebook 10 (``cl.caption`` builds, trains and decodes the captioner; this
module only reads strings and scene graphs, so it imports neither torch nor transformers).
The metrics are written out here on purpose (no evaluation package), each checked against
hand-worked examples in ``tests/test_caption_metrics.py`` and in notebook 10:

* :func:`bleu`: corpus BLEU-1..4 with clipped n-gram precisions and the brevity penalty
  (Papineni et al., 2002, "BLEU: a method for automatic evaluation of machine translation");
* :func:`cider_d`: TF-IDF n-gram agreement with a length penalty (Vedantam et al., 2015,
  "CIDEr: consensus-based image description evaluation");
* :func:`chair`: object hallucination, CHAIR_i and CHAIR_s (Rohrbach et al., 2018,
  "Object hallucination in image captioning"), against the scene graph;
* :func:`attribute_scores` / :func:`caption_errors`: each caption parsed back into a scene
  graph (``cl.data.parse_caption``) and matched item by item, by position;
* :func:`caption_report`: all of them in one dict.

    refs, caps = scenes.captions, cl.caption.generate(model, tok, scenes.images)
    cl.caption_metrics.caption_report(scenes.graphs, refs, caps)   # bleu1..4, cider_d, chair_i, ...
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any, Callable, Sequence

import numpy as np

from .config import CourseError

#: the four attributes a FashionScenes item has, in caption order after the size
ATTRIBUTES = ("object", "colour", "texture", "size")

def _text(text: Any) -> str:
    if not isinstance(text, str):
        raise CourseError(f"expected a caption string, got {type(text).__name__}")
    return text


def _words(text: str) -> list[str]:
    return _text(text).lower().replace(".", " ").split()


def ngram_counts(words: Sequence[str], n: int) -> Counter:
    """Counter of the ``n``-grams (tuples) of a word list. Introduced in notebook 10."""
    if n < 1:
        raise CourseError(f"n must be >= 1, got {n}")
    return Counter(tuple(words[i: i + n]) for i in range(len(words) - n + 1))


def _refs_hyps(references: Sequence[Any], hypotheses: Sequence[str], where: str) -> tuple[list[list[list[str]]], list[list[str]]]:
    if isinstance(hypotheses, str) or isinstance(references, str):
        raise CourseError(f"{where}: pass lists (one hypothesis string and one reference or list of "
                          "references per image), not single strings")
    if len(references) != len(hypotheses):
        raise CourseError(f"{where}: {len(hypotheses)} hypotheses but {len(references)} reference sets")
    if not len(hypotheses):
        raise CourseError(f"{where}: got no captions to score")
    refs = [[_words(r)] if isinstance(r, str) else [_words(x) for x in r] for r in references]
    if any(not r for r in refs):
        raise CourseError(f"{where}: every image needs at least one reference caption")
    return refs, [_words(h) for h in hypotheses]


def bleu(references: Sequence[Any], hypotheses: Sequence[str], max_n: int = 4) -> dict[str, float]:
    """Corpus BLEU-1..``max_n`` (Papineni et al., 2002), each in [0, 1].

    ``references``: per image one reference string or a list of them; ``hypotheses``: one
    generated caption per image. Clipped n-gram counts are pooled over the corpus:
    ``p_n = sum min(count_hyp, max count in a reference) / sum count_hyp``; brevity penalty
    ``BP = 1`` if the total hypothesis length ``c`` exceeds the reference length ``r`` (the
    closest reference length per image, ties to the shorter) else ``exp(1 - r / c)``;
    ``BLEU-N = BP * exp(mean_{n<=N} log p_n)`` (0 when some ``p_n`` is 0). Returns
    ``bleu1..bleuN``, ``p1..pN``, ``brevity_penalty``, ``length_ratio`` (c / r).
    Introduced in notebook 10.
    """
    refs, hyps = _refs_hyps(references, hypotheses, "bleu")
    if max_n < 1:
        raise CourseError(f"max_n must be >= 1, got {max_n}")
    matches = np.zeros(max_n)
    totals = np.zeros(max_n)
    c = r = 0
    for rs, h in zip(refs, hyps):
        c += len(h)
        r += min((abs(len(x) - len(h)), len(x)) for x in rs)[1]
        for n in range(1, max_n + 1):
            hc = ngram_counts(h, n)
            best: Counter = Counter()
            for x in rs:
                best |= ngram_counts(x, n)  # element-wise max over references
            matches[n - 1] += sum(min(k, best[g]) for g, k in hc.items())
            totals[n - 1] += sum(hc.values())
    bp = 1.0 if c > r else (math.exp(1 - r / c) if c > 0 else 0.0)
    p = np.divide(matches, totals, out=np.zeros(max_n), where=totals > 0)
    out: dict[str, float] = {}
    for n in range(1, max_n + 1):
        out[f"bleu{n}"] = 0.0 if np.any(p[:n] == 0) else float(bp * math.exp(np.mean(np.log(p[:n]))))
    out.update({f"p{n}": float(p[n - 1]) for n in range(1, max_n + 1)})
    out["brevity_penalty"] = float(bp)
    out["length_ratio"] = float(c / r) if r else 0.0
    return out


def cider_d(references: Sequence[Any], hypotheses: Sequence[str], *, max_n: int = 4, sigma: float = 6.0,
            return_scores: bool = False) -> float | tuple[float, np.ndarray]:
    """CIDEr-D (Vedantam et al., 2015): TF-IDF n-gram agreement with the references, x 10.

    For n = 1..``max_n`` each sentence becomes a vector ``g_n`` of n-gram counts times
    ``idf = log(N_images / df)``, where ``df`` counts the images whose references contain the
    n-gram (so n-grams every caption has, like "at the", weigh nothing). Per image and
    reference: ``sim_n = sum_k min(g_n(hyp)_k, g_n(ref)_k) * g_n(ref)_k / (|g_n(hyp)| |g_n(ref)|)``
    (the min clips repeated n-grams), times the length penalty ``exp(-(l_hyp - l_ref)^2 /
    (2 sigma^2))``. CIDEr-D of an image = 10 x mean over n and over its references; the corpus
    score is the mean over images. ``return_scores=True`` also returns the per-image scores
    (float64 (N,)). Range [0, 10] (10: every caption equals its reference, with more than one
    image). Introduced in notebook 10.
    """
    refs, hyps = _refs_hyps(references, hypotheses, "cider_d")
    if sigma <= 0 or max_n < 1:
        raise CourseError(f"cider_d: need sigma > 0 and max_n >= 1, got sigma={sigma}, max_n={max_n}")
    N = len(hyps)
    df: list[Counter] = [Counter() for _ in range(max_n)]
    for rs in refs:
        for n in range(1, max_n + 1):
            df[n - 1].update(set().union(*(ngram_counts(x, n) for x in rs)))
    log_n = math.log(N)

    def vec(words: list[str]) -> list[tuple[dict, float]]:
        out = []
        for n in range(1, max_n + 1):
            v = {g: k * (log_n - math.log(max(1.0, df[n - 1][g]))) for g, k in ngram_counts(words, n).items()}
            out.append((v, math.sqrt(sum(x * x for x in v.values()))))
        return out

    scores = np.zeros(N)
    for i, (rs, h) in enumerate(zip(refs, hyps)):
        vh = vec(h)
        total = 0.0
        for x in rs:
            vr = vec(x)
            penalty = math.exp(-((len(h) - len(x)) ** 2) / (2 * sigma ** 2))
            for (gh, nh), (gr, nr) in zip(vh, vr):
                if nh > 0 and nr > 0:
                    dot = sum(min(k, gr[g]) * gr[g] for g, k in gh.items() if g in gr)
                    total += penalty * dot / (nh * nr)
        scores[i] = 10.0 * total / (max_n * len(rs))
    mean = float(scores.mean())
    return (mean, scores) if return_scores else mean


def _by_position(graph: Sequence[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for item in graph:
        pos = item.get("position")
        if pos is not None and pos not in out:
            out[pos] = item
    return out


def caption_errors(graph: Sequence[dict], caption: str) -> list[str]:
    """What a generated caption gets wrong about a scene, as short phrases.

    ``graph``: the true scene graph (``scenes.graphs[i]``); the caption is parsed with
    ``cl.data.parse_caption`` and matched item by position. Phrases: ``"top left: colour
    blue (true red)"``, ``"hallucinated: a boot at the bottom left"``, ``"missed: the bag
    at the top right"``, ``"no position: coat"``. Empty list: the caption is right.
    Introduced in notebook 10.
    """
    from . import data

    pred = data.parse_caption(caption)
    true = _by_position(graph)
    got = _by_position(pred)
    errors = [f"no position: {p['object']}" for p in pred if "position" not in p]
    for pos, t in true.items():
        if pos not in got:
            errors.append(f"missed: the {t['object']} at the {pos}")
            continue
        for a in ATTRIBUTES:
            if got[pos].get(a) != t[a]:
                errors.append(f"{pos}: {a} {got[pos].get(a, '(none)')} (true {t[a]})")
    for pos, p in got.items():
        if pos not in true:
            errors.append(f"hallucinated: a {p['object']} at the {pos}")
    return errors


def chair(graphs: Sequence[Sequence[dict]], captions: Sequence[str]) -> dict[str, float]:
    """CHAIR object hallucination (Rohrbach et al., 2018), against the true scene graphs.

    Each caption is parsed with ``cl.data.parse_caption``; every item it names is one
    *mentioned object*. A mention is *hallucinated* when its object class appears nowhere in
    the scene (position is ignored, as in the paper, which asks only whether the object is
    in the image):

    * ``chair_i`` = hallucinated mentions / all mentions, in [0, 1];
    * ``chair_s`` = captions with at least one hallucinated mention / all captions, in [0, 1];
    * ``mentions``: the number of mentioned objects (float, for one dict of floats).

    Unlike the paper, which has to read the true objects off segmentations and human
    captions through a synonym list, FashionScenes knows every object of every scene, so the
    rate is exact. A caption that puts a *right* object at a wrong position is not a CHAIR
    hallucination (``attribute_scores`` counts that). Introduced in notebook 10.
    """
    from . import data

    if isinstance(captions, str) or len(graphs) != len(captions):
        raise CourseError(f"chair: expected one caption per scene graph, got {len(graphs)} graphs and "
                          f"{'a string' if isinstance(captions, str) else len(captions)}")
    if not len(graphs):
        raise CourseError("chair: got no scenes")
    mentions = hallucinated = bad_captions = 0
    for graph, caption in zip(graphs, captions):
        present = {item["object"] for item in graph}
        said = [item["object"] for item in data.parse_caption(_text(caption))]
        wrong = sum(obj not in present for obj in said)
        mentions += len(said)
        hallucinated += wrong
        bad_captions += wrong > 0
    return {"chair_i": hallucinated / mentions if mentions else 0.0, "chair_s": bad_captions / len(graphs),
            "mentions": float(mentions)}


def fact_correct(graphs: Sequence[Sequence[dict]], captions: Sequence[str], *,
                 attributes: Sequence[str] = ATTRIBUTES, keep: Callable[[dict], bool] | None = None) -> np.ndarray:
    """Per fact, whether the caption states it: bool (n_facts,), one entry per (scene, true
    item, attribute) in scene order, the item's order in its graph, then ``attributes``.

    Items are matched by position, as in :func:`attribute_scores`, whose
    ``attribute_accuracy`` is the mean of this array. ``keep(item) -> bool`` scores only some
    true items (e.g. ``lambda it: it["size"] == "small"``); ``attributes=("object",)`` gives
    one entry per item. Two decoders' arrays on the same scenes pair up fact by fact, for
    ``cl.checks.paired_bootstrap``. Introduced in notebook 10.
    """
    from . import data

    if isinstance(captions, str) or len(graphs) != len(captions):
        raise CourseError(f"fact_correct: expected one caption per scene graph, got {len(graphs)} graphs")
    bad = [a for a in attributes if a not in ATTRIBUTES]
    if bad or not attributes:
        raise CourseError(f"fact_correct: attributes must be some of {ATTRIBUTES}, got {list(attributes)}")
    out = []
    for graph, caption in zip(graphs, captions):
        got = _by_position(data.parse_caption(_text(caption)))
        for pos, t in _by_position(graph).items():
            if keep is None or keep(t):
                g = got.get(pos)
                out.extend(g is not None and g.get(a) == t[a] for a in attributes)
    return np.asarray(out, dtype=bool)


def attribute_scores(graphs: Sequence[Sequence[dict]], captions: Sequence[str],
                     heldout_pairs: Sequence[tuple[str, str]] | None = None) -> dict[str, float]:
    """How many facts of the true scene graphs the generated captions state correctly.

    Each caption is parsed back into a scene graph (``cl.data.parse_caption``) and its items
    are matched to the true items by position. A *fact* is one (position, attribute) pair of
    a true item, attribute in object / colour / texture / size.

    * ``attribute_accuracy``: correct facts / all true facts, in [0, 1] (a missed item loses
      its 4 facts; an extra item costs nothing here but counts as a hallucination);
    * ``object_accuracy``, ``colour_accuracy``, ``texture_accuracy``, ``size_accuracy``;
    * ``hallucination_rate``: generated items at a position where the scene has nothing
      (or with no position) / all generated items -- *positional* invention only: an item
      at an occupied position with the wrong object counts as an object error, not here
      (:func:`chair` measures object hallucination);
    * ``missed_rate``: true items no generated item describes at their position / true items;
    * ``count_accuracy``: scenes whose caption names exactly as many items as there are;
    * ``exact_match``: scenes whose parsed caption equals the true scene graph;
    * ``heldout_pair_accuracy`` (only when some true item has a pair of ``heldout_pairs``,
      default ``cl.data.HELDOUT_PAIRS``): of those items, the fraction whose colour *and*
      object are both right.

    Introduced in notebook 10.
    """
    from . import data

    if isinstance(captions, str) or len(graphs) != len(captions):
        raise CourseError(f"attribute_scores: expected one caption per scene graph, got "
                          f"{len(graphs)} graphs and {'a string' if isinstance(captions, str) else len(captions)}")
    if not len(graphs):
        raise CourseError("attribute_scores: got no scenes")
    pairs = set(map(tuple, data.HELDOUT_PAIRS if heldout_pairs is None else heldout_pairs))
    correct = Counter()
    n_true = n_pred = n_hall = n_missed = n_count = n_exact = 0
    pair_total = pair_right = 0
    for graph, caption in zip(graphs, captions):
        pred = data.parse_caption(caption)
        true, got = _by_position(graph), _by_position(pred)
        n_true += len(true)
        n_pred += len(pred)
        n_hall += sum(1 for p in pred if p.get("position") not in true)
        n_count += len(pred) == len(graph)
        n_exact += len(pred) == len(graph) and all(
            p.get("position") in true and all(p.get(a) == true[p["position"]][a] for a in ATTRIBUTES)
            for p in pred)
        for pos, t in true.items():
            g = got.get(pos)
            if g is None:
                n_missed += 1
            for a in ATTRIBUTES:
                correct[a] += g is not None and g.get(a) == t[a]
            if (t["colour"], t["object"]) in pairs:
                pair_total += 1
                pair_right += g is not None and g.get("colour") == t["colour"] and g.get("object") == t["object"]
    if n_true == 0:
        raise CourseError("attribute_scores: the scene graphs hold no items")
    out = {"attribute_accuracy": sum(correct.values()) / (len(ATTRIBUTES) * n_true)}
    out.update({f"{a}_accuracy": correct[a] / n_true for a in ATTRIBUTES})
    out.update(hallucination_rate=n_hall / n_pred if n_pred else 0.0, missed_rate=n_missed / n_true,
               count_accuracy=n_count / len(graphs), exact_match=n_exact / len(graphs))
    if pair_total:
        out["heldout_pair_accuracy"] = pair_right / pair_total
    return out


def caption_report(graphs: Sequence[Sequence[dict]], references: Sequence[Any], captions: Sequence[str]) -> dict[str, float]:
    """All caption metrics in one dict: BLEU-1..4, CIDEr-D, :func:`chair` (``chair_i``,
    ``chair_s``) and :func:`attribute_scores`. Introduced in notebook 10.
    """
    out = {k: v for k, v in bleu(references, captions).items() if k.startswith("bleu")}
    out["cider_d"] = float(cider_d(references, captions))
    out.update({k: v for k, v in chair(graphs, captions).items() if k != "mentions"})
    out.update(attribute_scores(graphs, captions))
    return out
