"""Questions about FashionScenes answered from a perception report (notebook 11).

What is specific to FashionScenes lives here; the language-model mechanics (chat prompts,
option scoring, LoRA) live in :mod:`course_lib.llm`, the perception report in
:mod:`course_lib.pipeline`::

    qs = make_paraphrases(graph, rng, n=2)          # a second phrasing family, held out
    rules_answer(report, q.text, trust)             # the rule baseline ("cannot parse" if it can't)
    facts = fact_lines(report)                      # the report as short English lines
    retrieve_keywords(report, q.text)               # lines sharing a word with the question
    retrieve_embeddings(report, q.text, k=2)        # the k lines nearest in MiniLM space
    chat = qa_chat(context, q.text)                 # -> cl.llm.choose(model, tok, [chat], [OPTIONS])
    verdict(q, answer, report)                      # correct / hallucination / perception / unanswered

A *hallucination* here is an answer that contradicts the report: no source in it (the
measurements, the classifier, the caption) supports it. A wrong answer that some source
supports is *faithful to a wrong report*: perception's fault, not the language model's.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import data
from .config import CourseError
from .pipeline import NONE, NUMBER_WORDS, Question, SceneReport, parse_question

YES, NO = "yes", "no"
CANNOT_PARSE = "cannot parse"
KINDS = ("count", "colour", "position", "texture", "exists")
#: every answer the pipeline may give, whatever the question: the option set for scoring
OPTIONS: tuple[str, ...] = (*NUMBER_WORDS, *data.COLOURS, *data.TEXTURES, *data.POSITIONS,
                            NONE, YES, NO)

# ------------------------------------------------------------------ a second phrasing family

#: other words for the objects, corners and items: never used by a template, a rule, a
#: prompt or a training row
SYNONYMS = {"t-shirt": "tee", "trouser": "pair of trousers", "pullover": "sweater",
            "dress": "frock", "coat": "jacket", "sandal": "sandal", "shirt": "blouse",
            "sneaker": "trainer", "bag": "handbag", "boot": "ankle boot"}
CORNERS = {"top left": "upper-left", "top right": "upper-right",
           "bottom left": "lower-left", "bottom right": "lower-right"}


def _pick(rng: np.random.Generator, seq: Sequence[Any]) -> Any:
    return seq[int(rng.integers(len(seq)))]


def make_paraphrases(graph: Sequence[dict], rng: np.random.Generator, n: int = 2,
                     absent: float = 0.2) -> list[Question]:
    """``n`` free-form questions about one scene, in a phrasing family of their own.

    Same facts as :func:`course_lib.pipeline.make_questions` (count, colour, position,
    texture) plus yes/no questions (kind ``exists``: *is anything purple?*, *is there a
    handbag in the picture?*), asked with other words: synonyms for the objects
    (:data:`SYNONYMS`), *upper-left* for *top left*, *pattern* for *texture*, *garments* for
    *items*. The answer comes from the true ``graph``. Introduced in notebook 11.
    """
    if not graph:
        raise CourseError("make_paraphrases: the scene graph is empty")
    by_pos = {it["position"]: it for it in graph}
    objects = [it["object"] for it in graph]
    unique = [o for o in objects if objects.count(o) == 1]
    missing = [o for o in data.OBJECT_WORDS if o not in objects]
    empty = [p for p in data.POSITIONS if p not in by_pos]
    out = []
    for _ in range(n):
        kind = _pick(rng, KINDS)
        want_absent = rng.random() < absent
        if kind == "count":
            if rng.random() < 0.5:
                text = _pick(rng, ("how many garments can you see?", "count the things in the picture.",
                                   "how many pieces of clothing are shown?"))
                out.append(Question(text, kind, NUMBER_WORDS[len(graph)]))
            else:
                c = _pick(rng, list(data.COLOURS))
                text = _pick(rng, (f"how many {c} things do you see?", f"how many of the garments are {c}?"))
                out.append(Question(text, kind, NUMBER_WORDS[sum(it["colour"] == c for it in graph)],
                                    {"colour": c}))
        elif kind == "exists":
            if rng.random() < 0.5:
                c = _pick(rng, list(data.COLOURS))
                present = any(it["colour"] == c for it in graph)
                out.append(Question(f"is anything {c}?", kind, YES if present else NO, {"colour": c}))
            else:
                obj = _pick(rng, missing) if (want_absent and missing) else _pick(rng, objects)
                out.append(Question(f"is there a {SYNONYMS[obj]} in the picture?", kind,
                                    YES if obj in objects else NO, {"object": obj}))
        elif kind == "position" or (unique and rng.random() < 0.5):
            obj = _pick(rng, missing) if (want_absent or not unique) else _pick(rng, unique)
            item = by_pos.get(next((it["position"] for it in graph if it["object"] == obj), ""), None)
            name = SYNONYMS[obj]
            if kind == "position":
                text = _pick(rng, (f"in which corner is the {name}?", f"where can I find the {name}?"))
                ans = NONE if item is None else item["position"]
            elif kind == "colour":
                text = _pick(rng, (f"what's the colour of the {name}?", f"which colour does the {name} have?"))
                ans = NONE if item is None else item["colour"]
            else:
                text = f"what pattern does the {name} have?"
                ans = NONE if item is None else item["texture"]
            out.append(Question(text, kind, ans, {"object": obj}))
        else:
            pos = _pick(rng, empty) if (want_absent and empty) or not by_pos else _pick(rng, list(by_pos))
            item, corner = by_pos.get(pos), CORNERS[pos]
            if kind == "colour":
                text = _pick(rng, (f"what colour is the thing in the {corner} corner?",
                                   f"which colour is the {corner} garment?"))
            else:
                text = _pick(rng, (f"what's the pattern on the {corner} thing?",
                                   f"is the {corner} garment plain, striped, dotted or checked?"))
            ans = NONE if item is None else item[kind]
            out.append(Question(text, kind, ans, {"position": pos}))
    return out


# ------------------------------------------------------------------------ rule baseline

#: which source a rule believes for each fact: the caption or the measurements/classifier
TRUST_DEFAULT = {"object": "caption", "colour": "measured", "texture": "measured"}


def _caption_items(report: SceneReport) -> list[dict]:
    return [it for it in data.parse_caption(report.caption) if "position" in it]


def _find(report: SceneReport, obj: str, trust: str) -> str | None:
    """Where the report puts ``obj``: by the caption or by the classifier first."""
    by_caption = next((it["position"] for it in _caption_items(report) if it["object"] == obj), None)
    by_label = next((it.position for it in report.items if it.label == obj), None)
    first, second = (by_caption, by_label) if trust == "caption" else (by_label, by_caption)
    return first if first is not None else second


def _attribute(report: SceneReport, pos: str, attr: str, trust: str) -> str:
    said = next((it.get(attr) for it in _caption_items(report) if it["position"] == pos), None)
    measured = report.item_at(pos)
    got = getattr(measured, attr) if measured is not None else None
    first, second = (said, got) if trust == "caption" else (got, said)
    return first or second or NONE


def rules_answer(report: SceneReport, question: str, trust: dict[str, str] | None = None) -> str:
    """The rule baseline: parse a *template* question, then look the answer up in the report.

    ``trust`` says which source wins for each fact (``{"object": "caption" | "classifier",
    "colour": "caption" | "measured", "texture": ...}``, default :data:`TRUST_DEFAULT`):
    notebook 11 picks it on validation questions. Counts come from the measured items.
    A question the templates do not cover gets :data:`CANNOT_PARSE`, never an exception.
    Introduced in notebook 11.
    """
    trust = {**TRUST_DEFAULT, **(trust or {})}
    try:
        q = parse_question(question)
    except CourseError:
        return CANNOT_PARSE
    if q["kind"] == "count":
        if "colour" in q:
            return NUMBER_WORDS[min(4, sum(it.colour == q["colour"] for it in report.items))]
        return NUMBER_WORDS[min(4, report.count)]
    if q["kind"] not in ("colour", "texture", "position"):
        return CANNOT_PARSE
    pos = _find(report, q["object"], trust["object"]) if "object" in q else q["position"]
    if pos is None:
        return NONE
    if q["kind"] == "position":
        return pos
    return _attribute(report, pos, q["kind"], trust[q["kind"]])


def trust_options() -> list[dict[str, str]]:
    """Every :func:`rules_answer` trust setting (2 x 2 x 2 = 8), for choosing on validation."""
    return [{"object": o, "colour": c, "texture": t} for o in ("caption", "classifier")
            for c in ("caption", "measured") for t in ("caption", "measured")]


# --------------------------------------------------------------- the report as English lines


def fact_lines(report: SceneReport) -> list[str]:
    """The report as short English lines a chat model reads: the count, one line per measured
    item (``top left: bag (classifier 0.93), red, striped, large``), one per caption clause
    (``caption: a small red striped bag at the top left``). Introduced in notebook 11."""
    if not isinstance(report, SceneReport):
        raise CourseError(f"fact_lines: expected a SceneReport, got {type(report).__name__}")
    n = report.count
    lines = [f"count: {NUMBER_WORDS[min(n, 4)]} item{'s' if n != 1 else ''} measured"]
    for it in report.items:
        lines.append(f"{it.position}: {it.label} (classifier {it.confidence:.2f}), {it.colour}, "
                     f"{it.texture}, {it.size}")
    clauses = [c.strip() for c in report.caption.replace(" .", "").replace(".", "").split(" and ")]
    lines += [f"caption: {c}" for c in clauses if c]
    return lines


_WORD = re.compile(r"[a-z]+(?:-[a-z]+)?")
_STOP = frozenset("what is the are how many there where item items at colour texture a of in "
                  "which does do you see".split())


def retrieve_keywords(report: SceneReport, question: str) -> list[str]:
    """Keyword retrieval: the count line, then every line sharing a content word with the
    question (corner names count as one word, as in the templates). Nothing shared: the
    count line alone. Introduced in notebook 11."""
    lines = fact_lines(report)
    q = f" {' '.join(_WORD.findall(str(question).lower()))} "
    keys = [p for p in data.POSITIONS if f" {p} " in q]
    for p in keys:
        q = q.replace(f" {p} ", " ")
    keys += [w for w in q.split() if w not in _STOP]
    hits = [ln for ln in lines[1:] if any(re.search(rf"\b{re.escape(k)}\b", ln) for k in keys)]
    return [lines[0]] + hits


def retrieve_embeddings(report: SceneReport, question: str, k: int = 2,
                        embed: Any = None) -> list[str]:
    """Embedding retrieval: the count line, then the ``k`` lines whose MiniLM embeddings
    (``cl.models.encode_text``, cosine similarity) are nearest the question's, in report
    order. ``embed`` (texts -> unit rows) may be passed to reuse a cache. Introduced in
    notebook 11."""
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise CourseError(f"k must be a positive int, got {k!r}")
    from . import models

    embed = embed or models.encode_text
    lines = fact_lines(report)
    rest = lines[1:]
    if not rest:
        return lines
    sims = embed(rest) @ embed([question])[0]
    keep = sorted(np.argsort(-sims)[:k])
    return [lines[0]] + [rest[i] for i in keep]


def retrieve_hybrid(report: SceneReport, question: str, k: int = 1, embed: Any = None) -> list[str]:
    """Keyword and embedding retrieval together: the lines either one picks, in report order
    (the usual remedy when exact words matter and so do paraphrases). Introduced in notebook 11."""
    picked = set(retrieve_keywords(report, question)) | set(retrieve_embeddings(report, question, k, embed))
    return [ln for ln in fact_lines(report) if ln in picked]


class EmbeddingCache:
    """``texts -> (N, 384)`` unit MiniLM rows, each distinct text encoded once (a dict)."""

    def __init__(self) -> None:
        self.rows: dict[str, np.ndarray] = {}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        from . import models

        new = sorted({t for t in texts if t not in self.rows})
        if new:
            for t, row in zip(new, models.encode_text(new, batch_size=128)):
                self.rows[t] = row
        return np.stack([self.rows[t] for t in texts])


SYSTEM = ("Answer the question from the report of a picture of garments in four corners, "
          "in one or two words: a number word, colour, pattern, corner, yes, no, or none.")


def qa_chat(context: Sequence[str] | str, question: str,
            examples: Sequence[tuple[Sequence[str] | str, str, str]] = (),
            system: str | None = SYSTEM) -> list[dict[str, str]]:
    """The chat for one question: ``system`` (:data:`SYSTEM`; None for a fine-tuned reader that
    no longer needs the instruction), optional few-shot ``(context, question, answer)``
    examples, then ``Report: ... / Question: ...``. Introduced in notebook 11."""
    from .llm import messages

    def turn(ctx: Sequence[str] | str, q: str) -> str:
        body = ctx if isinstance(ctx, str) else "\n".join(ctx)
        return f"Report:\n{body}\nQuestion: {q}"

    return messages(system, turn(context, question), [(turn(c, q), a) for c, q, a in examples])


def parse_answer(text: str) -> str:
    """A generated answer mapped to :data:`OPTIONS`: the option named first in ``text`` (two-word
    corners before one-word ones), else :data:`CANNOT_PARSE`. Introduced in notebook 11."""
    t = " ".join(_WORD.findall(str(text).lower().replace("-", " ")))
    best, where = CANNOT_PARSE, len(t) + 1
    for opt in sorted(OPTIONS, key=len, reverse=True):
        m = re.search(rf"\b{re.escape(opt)}\b", t)
        if m and m.start() < where:
            best, where = opt, m.start()
    return best


# --------------------------------------------------------------------- faithfulness split


def report_supports(report: SceneReport, question: Question) -> set[str]:
    """Every answer to ``question`` that some source in ``report`` supports.

    Sources: the measured count and items (classifier label, measured colour and texture)
    and the caption's items. An answer outside this set contradicts the report.
    Introduced in notebook 11.
    """
    about, kind = question.about, question.kind
    cap = _caption_items(report)
    if kind == "count":
        if "colour" in about:
            c = about["colour"]
            vals = {sum(it.colour == c for it in report.items), sum(it.get("colour") == c for it in cap)}
        else:
            vals = {report.count, len(cap)}
        return {NUMBER_WORDS[min(v, 4)] for v in vals}
    if kind == "exists":  # each source says yes or no on its own
        if "colour" in about:
            said = (any(it.colour == about["colour"] for it in report.items),
                    any(it.get("colour") == about["colour"] for it in cap))
        else:
            said = (any(it.label == about["object"] for it in report.items),
                    any(it["object"] == about["object"] for it in cap))
        return {YES if s else NO for s in said}
    if "object" in about:
        positions = {it.position for it in report.items if it.label == about["object"]}
        positions |= {it["position"] for it in cap if it["object"] == about["object"]}
    else:
        positions = {about["position"]}
    if kind == "position":
        return positions or {NONE}
    vals = set()
    for pos in positions:
        m = report.item_at(pos)
        if m is not None:
            vals.add(getattr(m, kind))
        vals |= {it[kind] for it in cap if it["position"] == pos and kind in it}
    return vals or {NONE}


VERDICTS = ("correct", "perception", "hallucination", "unanswered")


def verdict(question: Question, answer: str, report: SceneReport) -> str:
    """``correct``; ``perception`` (wrong, but faithful to what the report says: perception's
    fault); ``hallucination`` (an answer the report does not support: the reader's fault);
    or ``unanswered`` (:data:`CANNOT_PARSE` or no option at all). Introduced in notebook 11."""
    a = " ".join(str(answer).lower().split())
    if a == question.answer:
        return "correct"
    if a not in OPTIONS:
        return "unanswered"
    return "perception" if a in report_supports(report, question) else "hallucination"


def scores(questions: Sequence[Question], answers: Sequence[str],
           reports: Sequence[SceneReport]) -> dict[str, float]:
    """``accuracy``, ``accuracy_<kind>`` per kind present, and the rate of each
    :data:`VERDICTS` entry (``hallucination_rate``, ``perception_error_rate``,
    ``unanswered_rate``): fractions of all questions, in [0, 1]. Introduced in notebook 11."""
    if not (len(questions) == len(answers) == len(reports)) or not len(questions):
        raise CourseError("scores: expected one answer and one report per question (and some questions)")
    v = [verdict(q, a, r) for q, a, r in zip(questions, answers, reports)]
    out = {"accuracy": float(np.mean([x == "correct" for x in v]))}
    for kind in KINDS:
        sel = [x for q, x in zip(questions, v) if q.kind == kind]
        if sel:
            out[f"accuracy_{kind}"] = float(np.mean([x == "correct" for x in sel]))
    out["hallucination_rate"] = float(np.mean([x == "hallucination" for x in v]))
    out["perception_error_rate"] = float(np.mean([x == "perception" for x in v]))
    out["unanswered_rate"] = float(np.mean([x == "unanswered" for x in v]))
    return out


def correct(questions: Sequence[Question], answers: Sequence[str]) -> np.ndarray:
    """Bool (N,): which answers equal the true answer (for paired bootstrap intervals)."""
    return np.array([" ".join(str(a).lower().split()) == q.answer for q, a in zip(questions, answers)])


# ------------------------------------------------------------- faithful explanations

#: halves of the 20x20 silhouette hidden one at a time to see what the classifier uses
HALVES = ("top", "bottom", "left", "right")


def occlusion_drops(perception: Any, silhouettes: np.ndarray) -> np.ndarray:
    """How much the object classifier's confidence in its own label falls when each half of
    its input is hidden: float32 (N, 4) in [-1, 1], columns :data:`HALVES`.

    ``silhouettes``: float32 (N, 20, 20) in [0, 1], the only input the classifier sees
    (no colour, no texture). Hiding sets the half to 0 (background). Introduced in
    notebook 11.
    """
    import torch

    x = np.asarray(silhouettes, np.float32)
    if x.ndim != 3 or x.shape[1:] != (20, 20):
        raise CourseError(f"occlusion_drops: expected silhouettes (N, 20, 20), got {x.shape}")
    model = perception.object_model.eval()
    dev = next(model.parameters()).device

    def probs(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            t = (torch.from_numpy(batch[:, None]) - 0.5) / 0.5  # the classifier's normalisation
            return torch.softmax(model(t.to(dev)).float(), -1).cpu().numpy()

    base = probs(x)
    label = base.argmax(1)
    drops = np.zeros((len(x), 4), np.float32)
    for j, (rows, cols) in enumerate(((slice(0, 10), slice(None)), (slice(10, 20), slice(None)),
                                      (slice(None), slice(0, 10)), (slice(None), slice(10, 20)))):
        hidden = x.copy()
        hidden[:, rows, cols] = 0.0
        drops[:, j] = base[np.arange(len(x)), label] - probs(hidden)[np.arange(len(x)), label]
    return drops


def evidence_lines(item: Any, drops: np.ndarray) -> list[str]:
    """What the object decision rests on, as lines for a language model: the classifier's
    input and label, and the occlusion drops of :func:`occlusion_drops` (one item)."""
    order = np.argsort(-drops)
    return [f"classifier input: the item's silhouette only (no colour, no pattern)",
            f"classifier label: {item.label}, confidence {item.confidence:.2f}",
            f"hiding the {HALVES[order[0]]} half of the silhouette lowers the confidence by "
            f"{drops[order[0]]:.2f}; hiding the {HALVES[order[-1]]} half by {drops[order[-1]]:.2f}"]


def explanation_faithfulness(text: str, item: Any, drops: np.ndarray) -> dict[str, bool]:
    """Check one generated explanation of an object decision against its evidence.

    ``names_label``: it names the classifier's label; ``cites_shape``: it cites the
    silhouette / shape or the half that mattered most; ``cites_unseen``: it gives colour or
    pattern words as a reason (features the classifier never saw: unfaithful);
    ``wrong_half``: it names a half of the silhouette as the one that matters, but not the
    half whose occlusion lowered the confidence most; ``faithful`` = names_label and neither
    cites_unseen nor wrong_half. Introduced in notebook 11.
    """
    t = str(text).lower()
    unseen = [*data.COLOURS, *data.TEXTURES, "colour", "color", "pattern"]
    top = HALVES[int(np.argmax(drops))]
    out = {"names_label": re.search(rf"\b{re.escape(item.label)}", t) is not None,
           "cites_shape": any(w in t for w in ("silhouette", "shape", "outline", f"{top} half")),
           "cites_unseen": any(re.search(rf"\b{w}\b", t) for w in unseen)}
    named = [h for h in HALVES if re.search(rf"\b{h} half", t)]
    out["wrong_half"] = bool(named) and named[0] != top
    out["faithful"] = out["names_label"] and not out["cites_unseen"] and not out["wrong_half"]
    return out
