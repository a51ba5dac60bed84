"""A small vision-to-language pipeline for FashionScenes (notebook 11).

perception (classical measures + a classifier + a caption) -> a structured text report ->
a language model that answers questions about the scene and explains a classifier decision::

    meas = measure(scenes.images)                          # classical measurements per quadrant
    perc = fit_perception(train_scenes, train_meas)        # texture + silhouette classifiers
    reports = perc.describe(meas, captions)                # SceneReport per scene; .text()
    qs = [make_questions(g, rng) for g in scenes.graphs]   # count / colour / position / texture
    lm = build_qa_model()                                  # a small decoder, trained here with
    fit(lm.model, qa_loader(*qa_examples(lm, reports, qs)), step_fn=qa_step, ...)  # cl.train.fit
    answers = ask(lm, reports, questions)                  # same helper for a hub chat model
    qa_scores(questions, answers)                          # accuracy per type, hallucinations
    retrieve(report, question)                             # keyword retrieval: the lines to read
    qa_examples(lm, reports, qs, retrieval=True)           # ... and a reader trained on them

Every number in a report is measured on the image; the answer a question expects is read
from the true scene graph, so a wrong answer is a checkable contradiction.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from . import config, data
from .config import CourseError

if TYPE_CHECKING:
    import torch

QUESTION_TYPES = ("count", "colour", "position", "texture")
NONE = "none"
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
QUADRANT = 32
FOREGROUND_CHROMA = 25  # max - min channel above this (0..255) is an item pixel, not grey background
LARGE_EXTENT = 25       # items are drawn 20 (small) or 30 (large) pixels wide
EDGE_THRESHOLDS = (50.0, 100.0)
TEXTURE_STAT_NAMES = ("row_change", "col_change", "row_change_2", "col_change_2", "bright_fraction")
SILHOUETTE = 20
QA_MAX_LEN = 512
REPORT_FIELDS = ("object", "confidence", "colour", "texture", "texture_confidence", "size", "edge_density")


# --------------------------------------------------------------------------- measurements


def quadrant_crops(images: np.ndarray) -> np.ndarray:
    """Cut FashionScenes into their four 32x32 quadrants: (N, 64, 64, 3) uint8 -> (N, 4, 32, 32, 3).

    Quadrant order is :data:`course_lib.data.POSITIONS` (top left, top right, bottom left,
    bottom right). Introduced in notebook 11.
    """
    X = np.asarray(images)
    if X.ndim == 3:
        X = X[None]
    if X.ndim != 4 or X.shape[1:] != (64, 64, 3) or X.dtype != np.uint8:
        raise CourseError(f"expected FashionScenes images (N, 64, 64, 3) uint8, got {X.shape} {X.dtype}. "
                          "Fix: pass scenes.images from cl.data.make_scenes.")
    q = X.reshape(len(X), 2, QUADRANT, 2, QUADRANT, 3).transpose(0, 1, 3, 2, 4, 5)
    return np.ascontiguousarray(q.reshape(len(X), 4, QUADRANT, QUADRANT, 3))


def foreground(crops: np.ndarray, threshold: float = FOREGROUND_CHROMA) -> np.ndarray:
    """Item pixels: chroma (max minus min channel, 0..255) above ``threshold``.

    The background is grey (chroma near 0) and every item is coloured, so this separates
    them. ``crops``: (..., H, W, 3) uint8 -> bool (..., H, W). Introduced in notebook 11.
    """
    c = np.asarray(crops)
    if c.shape[-1] != 3 or c.dtype != np.uint8:
        raise CourseError(f"foreground: expected uint8 RGB (..., H, W, 3), got {c.shape} {c.dtype}")
    return (c.max(-1).astype(np.int16) - c.min(-1)) > threshold


def _palette() -> np.ndarray:
    pal = np.array(list(data.COLOURS.values()), dtype=np.float32)
    return pal / pal.max(1, keepdims=True)


def dominant_colour(crop: np.ndarray, mask: np.ndarray) -> tuple[int, float]:
    """The course colour most item pixels are closest to, and that colour's share of them.

    Each masked pixel is divided by its brightest channel (so dark texture stripes and
    bright ones have the same colour), then assigned to the nearest colour of
    :data:`course_lib.data.COLOURS`. ``crop``: (H, W, 3) uint8, ``mask``: (H, W) bool.
    Returns (colour index, share in [0, 1]); (-1, 0.0) for an empty mask. Introduced in notebook 11.
    """
    px = np.asarray(crop)[np.asarray(mask)].astype(np.float32)
    if len(px) == 0:
        return -1, 0.0
    px /= np.maximum(px.max(1, keepdims=True), 1.0)
    nearest = ((px[:, None, :] - _palette()[None]) ** 2).sum(-1).argmin(1)
    counts = np.bincount(nearest, minlength=len(data.COLOURS))
    return int(counts.argmax()), float(counts.max() / len(px))


def texture_statistics(crop: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Five texture statistics of an item: float32 (5,), named :data:`TEXTURE_STAT_NAMES`.

    On the brightness (max channel, divided by the item's 95th percentile): the mean absolute
    change between neighbouring rows and columns (1 and 2 pixels apart) inside the item, and
    the fraction of bright pixels. Stripes change along rows only; dots and checks along
    both; dots are mostly dark, checks half bright; plain items barely change.
    Introduced in notebook 11.
    """
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return np.zeros(len(TEXTURE_STAT_NAMES), dtype=np.float32)
    v = np.asarray(crop).max(-1).astype(np.float32)
    v /= max(float(np.percentile(v[m], 95)), 1.0)

    def change(a: np.ndarray, b: np.ndarray, ma: np.ndarray, mb: np.ndarray) -> float:
        both = ma & mb
        return float(np.abs(a - b)[both].mean()) if both.any() else 0.0

    out = [change(v[1:], v[:-1], m[1:], m[:-1]), change(v[:, 1:], v[:, :-1], m[:, 1:], m[:, :-1]),
           change(v[2:], v[:-2], m[2:], m[:-2]), change(v[:, 2:], v[:, :-2], m[:, 2:], m[:, :-2]),
           float((v[m] > 0.75).mean())]
    return np.array(out, dtype=np.float32)


def silhouette(mask: np.ndarray, size: int = SILHOUETTE) -> np.ndarray:
    """An item's shape without colour or texture: its mask cropped to the bounding box, padded to
    a square, resized to (size, size) float32 in [0, 1]. Zeros for an empty mask.
    Introduced in notebook 11.
    """
    from skimage.transform import resize

    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return np.zeros((size, size), dtype=np.float32)
    rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
    box = m[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]
    h, w = box.shape
    s = max(h, w)
    sq = np.zeros((s, s), dtype=np.float32)
    sq[(s - h) // 2: (s - h) // 2 + h, (s - w) // 2: (s - w) // 2 + w] = box
    return np.clip(resize(sq, (size, size), order=1, anti_aliasing=True), 0, 1).astype(np.float32)


@dataclass
class Measurements:
    """Classical measurements of N scenes, per quadrant (order :data:`course_lib.data.POSITIONS`).

    ``occupied`` (N, 4) bool: at least 1% of the quadrant is item pixels; ``area`` (N, 4)
    item pixels; ``extent`` (N, 4) bounding-box side in pixels (0 when empty); ``colour``
    (N, 4) int64 index into ``COLOURS`` (-1 empty) and ``colour_share`` (N, 4) in [0, 1];
    ``edge_density`` (N, 4): Canny edge pixels / item pixels (0 when empty), in [0, 1];
    ``texture_stats`` (N, 4, 5) float32; ``silhouettes`` (N, 4, 20, 20) float32 in [0, 1];
    ``image_edge_density`` (N,): edge pixels / all pixels of the image.
    """

    occupied: np.ndarray
    area: np.ndarray
    extent: np.ndarray
    colour: np.ndarray
    colour_share: np.ndarray
    edge_density: np.ndarray
    texture_stats: np.ndarray
    silhouettes: np.ndarray
    image_edge_density: np.ndarray

    def __len__(self) -> int:
        return len(self.occupied)

    @property
    def count(self) -> np.ndarray:
        """(N,) int64 number of occupied quadrants."""
        return self.occupied.sum(1).astype(np.int64)

    def subset(self, idx: Sequence[int] | np.ndarray | slice) -> "Measurements":
        """The measurements of some scenes only (indices, a boolean mask or a slice), as
        ``Scenes.subset`` does for the scenes themselves. Introduced in notebook 11."""
        from dataclasses import fields

        return Measurements(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})


def measure(images: np.ndarray, progress: bool = False) -> Measurements:
    """Measure every quadrant of FashionScenes: occupancy, size, dominant colour, Canny edge
    density, texture statistics and the silhouette.

    ``images``: (N, 64, 64, 3) uint8. Edges: ``cl.edges.cv2_canny`` on the grey image
    (thresholds :data:`EDGE_THRESHOLDS`, the same pixels as the course's own Canny of notebook
    02, faster). About a millisecond per scene. Introduced in notebook 11.
    """
    from . import edges, imaging

    crops = quadrant_crops(images)
    N = len(crops)
    masks = foreground(crops)
    area = masks.sum((2, 3))
    occupied = area >= 0.01 * QUADRANT * QUADRANT
    out = Measurements(
        occupied=occupied, area=area.astype(np.int64), extent=np.zeros((N, 4), np.int64),
        colour=np.full((N, 4), -1, np.int64), colour_share=np.zeros((N, 4), np.float32),
        edge_density=np.zeros((N, 4), np.float32),
        texture_stats=np.zeros((N, 4, len(TEXTURE_STAT_NAMES)), np.float32),
        silhouettes=np.zeros((N, 4, SILHOUETTE, SILHOUETTE), np.float32),
        image_edge_density=np.zeros(N, np.float32))
    rows = range(N)
    if progress:
        from .viz import progress as bar

        rows = bar(rows, desc="measuring scenes", unit="scene")
    low, high = EDGE_THRESHOLDS
    for i in rows:
        e = edges.cv2_canny(imaging.to_gray(np.asarray(images[i])), low, high)
        out.image_edge_density[i] = e.mean()
        eq = e.reshape(2, QUADRANT, 2, QUADRANT).transpose(0, 2, 1, 3).reshape(4, QUADRANT, QUADRANT)
        for k in range(4):
            if not occupied[i, k]:
                continue
            m = masks[i, k]
            r, c = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
            out.extent[i, k] = max(r[-1] - r[0] + 1, c[-1] - c[0] + 1)
            out.colour[i, k], out.colour_share[i, k] = dominant_colour(crops[i, k], m)
            out.edge_density[i, k] = (eq[k] & m).sum() / m.sum()
            out.texture_stats[i, k] = texture_statistics(crops[i, k], m)
            out.silhouettes[i, k] = silhouette(m)
    return out


# --------------------------------------------------------------------------- perception


@dataclass
class ItemReport:
    """What perception says about one occupied quadrant (all strings are course words)."""

    position: str
    label: str            # the silhouette classifier's object word
    confidence: float     # its softmax probability, in [0, 1]
    colour: str
    texture: str
    texture_confidence: float
    size: str
    edge_density: float


@dataclass
class SceneReport:
    """A perception report: measured ``count``, the captioner's ``caption``, one
    :class:`ItemReport` per occupied quadrant. ``text()`` is what a language model reads."""

    count: int
    caption: str
    items: list[ItemReport] = field(default_factory=list)

    def item_at(self, position: str) -> ItemReport | None:
        return next((it for it in self.items if it.position == position), None)

    def text(self) -> str:
        """The report as one line of words and two-decimal numbers, in a **fixed layout**:

        ``count 2 . top left : bag 0.93 red striped 0.97 small 0.21 . top right : none 0.00
        none none 0.00 none 0.00 . bottom left : ... . bottom right : ... . caption a small red
        ... .`` -- the count, then all four quadrants in :data:`course_lib.data.POSITIONS`
        order, each with the same seven fields (:data:`REPORT_FIELDS`: object, its confidence,
        colour, texture, its confidence, size, edge density; ``none`` / ``0.00`` where nothing
        was measured), then the caption. Every fact about a quadrant therefore sits at the same
        word position in every report. Introduced in notebook 11."""
        parts = [f"count {self.count} ."] + [self.quadrant_line(pos) for pos in data.POSITIONS]
        parts.append(f"caption {self.caption} .")
        return " ".join(parts)

    def quadrant_line(self, position: str) -> str:
        """The part of :meth:`text` about one quadrant, e.g. ``top left : bag 0.93 red striped
        0.97 small 0.21 .`` (``none`` / ``0.00`` fields if nothing was measured there)."""
        if position not in data.POSITIONS:
            raise CourseError(f"position must be one of {data.POSITIONS}, got {position!r}")
        it = self.item_at(position)
        if it is None:
            return f"{position} : {NONE} 0.00 {NONE} {NONE} 0.00 {NONE} 0.00 ."
        return (f"{position} : {it.label} {it.confidence:.2f} {it.colour} {it.texture} "
                f"{it.texture_confidence:.2f} {it.size} {it.edge_density:.2f} .")

    def pretty(self) -> str:
        """The same report on several lines, for people."""
        lines = [f"items counted: {self.count}", f"caption: {self.caption}"]
        for it in self.items:
            lines.append(f"{it.position:>12}: {it.label} (p={it.confidence:.2f}), colour {it.colour}, texture "
                         f"{it.texture} (p={it.texture_confidence:.2f}), {it.size}, edge density {it.edge_density:.2f}")
        return "\n".join(lines)


class SilhouetteMLP:
    """Factory for the object classifier on silhouettes (a function, so no torch at import)."""

    @staticmethod
    def build(hidden: int = 256) -> "torch.nn.Module":
        from torch import nn

        return nn.Sequential(nn.Flatten(), nn.Linear(SILHOUETTE * SILHOUETTE, hidden), nn.ReLU(),
                             nn.Linear(hidden, len(data.OBJECT_WORDS)))


@dataclass
class Perception:
    """The trained parts of perception: a texture classifier (logistic regression on
    :data:`TEXTURE_STAT_NAMES`) and an object classifier (an MLP on silhouettes)."""

    texture_model: Any
    object_model: Any

    def classify(self, meas: Measurements) -> dict[str, np.ndarray]:
        """Per quadrant: ``object`` and ``texture`` indices (N, 4) int64 and their
        probabilities ``object_p``, ``texture_p`` (N, 4) float32 (-1 / 0 where empty)."""
        import torch

        N = len(meas)
        out = {k: np.full((N, 4), -1, np.int64) for k in ("object", "texture")}
        out.update({k: np.zeros((N, 4), np.float32) for k in ("object_p", "texture_p")})
        occ = meas.occupied
        if not occ.any():
            return out
        tp = self.texture_model.predict_proba(meas.texture_stats[occ])
        out["texture"][occ], out["texture_p"][occ] = tp.argmax(1), tp.max(1)
        dev = next(self.object_model.parameters()).device
        self.object_model.eval()
        with torch.no_grad():
            x = (torch.from_numpy(meas.silhouettes[occ][:, None]) - 0.5) / 0.5  # as cl.train.make_loader
            p = torch.softmax(self.object_model(x.to(dev)).float(), -1).cpu().numpy()
        out["object"][occ], out["object_p"][occ] = p.argmax(1), p.max(1)
        return out

    def describe(self, meas: Measurements, captions: Sequence[str]) -> list[SceneReport]:
        """One :class:`SceneReport` per scene from its measurements and its caption."""
        if len(captions) != len(meas):
            raise CourseError(f"describe: {len(meas)} measured scenes but {len(captions)} captions")
        cls = self.classify(meas)
        colours, sizes = list(data.COLOURS), list(data.SIZES)
        reports = []
        for i in range(len(meas)):
            items = []
            for k in range(4):
                if not meas.occupied[i, k]:
                    continue
                items.append(ItemReport(
                    position=data.POSITIONS[k], label=data.OBJECT_WORDS[cls["object"][i, k]],
                    confidence=float(cls["object_p"][i, k]), colour=colours[meas.colour[i, k]],
                    texture=data.TEXTURES[cls["texture"][i, k]], texture_confidence=float(cls["texture_p"][i, k]),
                    size=sizes[int(meas.extent[i, k] > LARGE_EXTENT)], edge_density=float(meas.edge_density[i, k])))
            reports.append(SceneReport(int(meas.count[i]), str(captions[i]), items))
        return reports


def fit_perception(scenes: Any, meas: Measurements | None = None, *, num_epochs: int = 15, seed: int = 0,
                   progress: bool = False) -> Perception:
    """Train perception's two classifiers on training scenes (their true scene graphs as labels).

    Texture: scikit-learn logistic regression on the five texture statistics. Object: an MLP
    on 20x20 silhouettes trained with ``cl.train.fit``. Only quadrants that are truly
    occupied and measured as occupied are used. Introduced in notebook 11.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from . import train

    meas = meas if meas is not None else measure(scenes.images)
    if len(meas) != len(scenes):
        raise CourseError(f"fit_perception: {len(scenes)} scenes but {len(meas)} measurements")
    use = meas.occupied & (scenes.slots["object"] >= 0)
    if use.sum() < 20:
        raise CourseError(f"fit_perception: only {int(use.sum())} items to learn from; pass more scenes")
    texture_model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    texture_model.fit(meas.texture_stats[use], scenes.slots["texture"][use])
    config.seed_everything(seed)
    object_model = SilhouetteMLP.build()
    loader = train.make_loader(meas.silhouettes[use], scenes.slots["object"][use], batch_size=128,
                               shuffle=True, seed=seed)
    train.fit(object_model, loader, num_epochs=num_epochs, lr=2e-3, progress=progress, label_smoothing=0.05)
    return Perception(texture_model, object_model.eval())


# --------------------------------------------------------------------------- questions


@dataclass
class Question:
    """A question about a scene, its ``kind`` (one of :data:`QUESTION_TYPES` or ``explain``),
    the answer the true scene graph gives, and what it asks about (``object``, ``colour`` or
    ``position``)."""

    text: str
    kind: str
    answer: str
    about: dict[str, str] = field(default_factory=dict)


def _unique(graph: Sequence[dict], key: str) -> list[str]:
    values = [it[key] for it in graph]
    return [v for v in values if values.count(v) == 1]


def make_questions(graph: Sequence[dict], rng: np.random.Generator, n: int = 4,
                   kinds: Sequence[str] = QUESTION_TYPES, absent: float = 0.2) -> list[Question]:
    """``n`` random questions about one scene, with the answers its true ``graph`` gives.

    Templates per kind: count (*how many items are there ?*, *how many red items are there
    ?*), colour and texture (*what colour is the bag ?* — only for objects that occur once —
    or *... the item at the top left ?*), position (*where is the bag ?*). With probability
    ``absent`` the question is about an object or a quadrant the scene lacks; the right answer
    is then ``none`` (counts: ``zero``). Answers are single words except positions ("top
    left"). Introduced in notebook 11.
    """
    for k in kinds:
        if k not in QUESTION_TYPES:
            raise CourseError(f"unknown question kind {k!r}; expected some of {QUESTION_TYPES}")
    if not graph:
        raise CourseError("make_questions: the scene graph is empty")
    by_pos = {it["position"]: it for it in graph}
    unique_objects = _unique(graph, "object")
    missing_objects = [o for o in data.OBJECT_WORDS if o not in {it["object"] for it in graph}]
    empty = [p for p in data.POSITIONS if p not in by_pos]
    out = []
    for _ in range(n):
        kind = kinds[int(rng.integers(len(kinds)))]
        want_absent = rng.random() < absent
        if kind == "count":
            if rng.random() < 0.5:
                out.append(Question("how many items are there ?", kind, NUMBER_WORDS[len(graph)]))
            else:
                colours = list(data.COLOURS)
                c = colours[int(rng.integers(len(colours)))]
                n_c = sum(it["colour"] == c for it in graph)
                out.append(Question(f"how many {c} items are there ?", kind, NUMBER_WORDS[n_c], {"colour": c}))
            continue
        attr = {"colour": "colour", "texture": "texture"}.get(kind)
        by_object = kind == "position" or (unique_objects and rng.random() < 0.5)
        if by_object:
            if want_absent or not unique_objects:
                obj, item = missing_objects[int(rng.integers(len(missing_objects)))], None
            else:
                obj = unique_objects[int(rng.integers(len(unique_objects)))]
                item = next(it for it in graph if it["object"] == obj)
            if kind == "position":
                text = f"where is the {obj} ?"
            else:
                text = f"what {attr} is the {obj} ?"
            ans = NONE if item is None else item["position" if kind == "position" else attr]
            out.append(Question(text, kind, ans, {"object": obj}))
        else:
            if (want_absent and empty) or not by_pos:
                pos = empty[int(rng.integers(len(empty)))]
            else:
                keys = list(by_pos)
                pos = keys[int(rng.integers(len(keys)))]
            item = by_pos.get(pos)
            out.append(Question(f"what {attr} is the item at the {pos} ?", kind,
                                NONE if item is None else item[attr], {"position": pos}))
    return out


def parse_question(text: str) -> dict[str, str]:
    """Read a question made by :func:`make_questions`: its ``kind`` and what it is about.

    Returns e.g. ``{"kind": "colour", "object": "bag"}`` or ``{"kind": "count"}``; an
    unknown question raises a CourseError. Introduced in notebook 11 (the rules baseline).
    """
    t = " ".join(str(text).lower().replace("?", " ? ").split())
    m = re.fullmatch(r"how many (?:(\w+) )?items are there \?", t)
    if m:
        return {"kind": "count", **({"colour": m.group(1)} if m.group(1) else {})}
    m = re.fullmatch(r"where is the ([\w-]+) \?", t)
    if m:
        return {"kind": "position", "object": m.group(1)}
    m = re.fullmatch(r"what (colour|texture) is the item at the (top left|top right|bottom left|bottom right) \?", t)
    if m:
        return {"kind": m.group(1), "position": m.group(2)}
    m = re.fullmatch(r"what (colour|texture) is the ([\w-]+) \?", t)
    if m:
        return {"kind": m.group(1), "object": m.group(2)}
    m = re.fullmatch(r"explain the object at the (top left|top right|bottom left|bottom right) \?", t)
    if m:
        return {"kind": "explain", "position": m.group(1)}
    raise CourseError(f"parse_question: {text!r} is not one of the course's question templates")


def answer_vocabulary(kind: str) -> tuple[str, ...]:
    """The well-formed answers to a question kind (``none`` included where it can apply)."""
    if kind == "count":
        return NUMBER_WORDS
    if kind == "colour":
        return (*data.COLOURS, NONE)
    if kind == "texture":
        return (*data.TEXTURES, NONE)
    if kind == "position":
        return (*data.POSITIONS, NONE)
    raise CourseError(f"unknown question kind {kind!r}; expected one of {QUESTION_TYPES}")


# --------------------------------------------------------------------------- rules baseline


def rules_answer(report: SceneReport, question: str) -> str:
    """Answer a question from a report with fixed rules (the baseline of notebook 11).

    The rules: *count* = the measured count (or the number of measured items of that colour);
    an object is found in the caption (parsed with ``cl.data.parse_caption``), else among the
    classifier's labels; *position* = where it was found; *colour* and *texture* = the
    measurements at that position (the caption's words if nothing was measured there);
    nothing found -> ``none``. Introduced in notebook 11.
    """
    q = parse_question(question)
    kind = q["kind"]
    if kind == "count":
        if "colour" in q:
            return NUMBER_WORDS[min(4, sum(it.colour == q["colour"] for it in report.items))]
        return NUMBER_WORDS[min(4, report.count)]
    if kind == "explain":
        return explanation(report, q["position"])
    caption_items = data.parse_caption(report.caption)
    if "object" in q:
        hit = next((it for it in caption_items if it["object"] == q["object"] and "position" in it), None)
        if hit is None:
            found = next((it for it in report.items if it.label == q["object"]), None)
            if found is None:
                return NONE
            pos, said = found.position, {}
        else:
            pos, said = hit["position"], hit
    else:
        pos = q["position"]
        said = next((it for it in caption_items if it.get("position") == pos), {})
    if kind == "position":
        return pos
    measured = report.item_at(pos)
    if measured is not None:
        return getattr(measured, kind)
    return said.get(kind, NONE)


# --------------------------------------------------------------------------- explanations


def explain_question(position: str) -> str:
    """The question that asks for an explanation of the object classifier at ``position``."""
    if position not in data.POSITIONS:
        raise CourseError(f"position must be one of {data.POSITIONS}, got {position!r}")
    return f"explain the object at the {position} ?"


def explain_questions(report: SceneReport, rng: np.random.Generator, n: int = 1) -> list[Question]:
    """Up to ``n`` explanation questions about randomly chosen measured items of ``report``,
    each with its reference :func:`explanation` as the answer (kind ``explain``).
    Introduced in notebook 11."""
    if not report.items:
        return []
    picks = rng.choice(len(report.items), size=min(n, len(report.items)), replace=False)
    return [Question(explain_question(report.items[k].position), "explain",
                     explanation(report, report.items[k].position), {"position": report.items[k].position})
            for k in picks]


def explanation(report: SceneReport, position: str) -> str:
    """A short explanation of the classifier's decision at ``position``, grounded in the report.

    Template: ``the classifier says bag with confidence 0.93 from the silhouette ; the caption
    agrees ; measured large red striped , edges 0.21`` (the caption part: *agrees*, *says
    coat*, or *does not mention it*). ``nothing was measured there`` when the quadrant is
    empty. The offline language model learns to write these. Introduced in notebook 11.
    """
    it = report.item_at(position)
    if it is None:
        return "nothing was measured there"
    said = next((c for c in data.parse_caption(report.caption) if c.get("position") == position), None)
    if said is None:
        cap = "the caption does not mention it"
    elif said["object"] == it.label:
        cap = "the caption agrees"
    else:
        cap = f"the caption says {said['object']}"
    return (f"the classifier says {it.label} with confidence {it.confidence:.2f} from the silhouette ; {cap} ; "
            f"measured {it.size} {it.colour} {it.texture} , edges {it.edge_density:.2f}")


def explanation_facts(text: str) -> dict[str, str]:
    """The checkable facts an explanation states: ``label``, ``confidence``, ``caption``
    (``agrees`` / an object word / ``none``), ``size``, ``colour``, ``texture``, ``edges``.
    Missing facts are absent from the dict. Introduced in notebook 11."""
    t = " ".join(str(text).split())
    facts: dict[str, str] = {}
    m = re.search(r"classifier says ([\w-]+) with confidence (\d\.\d\d)", t)
    if m:
        facts["label"], facts["confidence"] = m.group(1), m.group(2)
    if "the caption agrees" in t:
        facts["caption"] = "agrees"
    elif "does not mention" in t:
        facts["caption"] = NONE
    else:
        m = re.search(r"the caption says ([\w-]+)", t)
        if m:
            facts["caption"] = m.group(1)
    m = re.search(r"measured (\w+) (\w+) (\w+) , edges (\d\.\d\d)", t)
    if m:
        facts.update(size=m.group(1), colour=m.group(2), texture=m.group(3), edges=m.group(4))
    return facts


def explanation_scores(reports: Sequence[SceneReport], positions: Sequence[str], texts: Sequence[str],
                       graphs: Sequence[Sequence[dict]]) -> dict[str, float]:
    """How faithful generated explanations are to the report, and how true to the scene.

    * ``grounded_rate``: explanations whose every fact equals the report's (the reference
      :func:`explanation`), in [0, 1];
    * ``fact_faithfulness``: stated facts that equal the report's / facts the reference states;
    * ``true_colour_texture_rate``: stated colour and texture that match the true scene graph
      / those stated (wrong ones are hallucinations about the image, whoever made them).

    Introduced in notebook 11.
    """
    if not (len(reports) == len(positions) == len(texts) == len(graphs)):
        raise CourseError("explanation_scores: reports, positions, texts and graphs must have the same length")
    grounded = faithful = total = true_stated = stated = 0
    for rep, pos, txt, graph in zip(reports, positions, texts, graphs):
        ref = explanation_facts(explanation(rep, pos))
        got = explanation_facts(txt)
        total += len(ref)
        faithful += sum(got.get(k) == v for k, v in ref.items())
        grounded += bool(ref) and got == ref
        truth = next((it for it in graph if it["position"] == pos), None)
        for k in ("colour", "texture"):
            if k in got:
                stated += 1
                true_stated += truth is not None and truth[k] == got[k]
    n = max(len(texts), 1)
    return {"grounded_rate": grounded / n, "fact_faithfulness": faithful / max(total, 1),
            "true_colour_texture_rate": true_stated / max(stated, 1)}


# --------------------------------------------------------------------------- the course's QA model


def qa_prompt(report: SceneReport | str, question: str, retrieval: bool = False) -> str:
    """The text the course's QA model reads: ``<report> question : <question> answer :``.

    The report comes first, so with its fixed layout (:meth:`SceneReport.text`) every fact
    sits at the same position in every prompt; the question follows, and the answer is the
    next words. With ``retrieval`` the whole report is replaced by the lines
    :func:`retrieve` picks for this question: ``context : <lines> question : ... answer :``
    (``report`` must then be a :class:`SceneReport`). Introduced in notebook 11.
    """
    if retrieval:
        if not isinstance(report, SceneReport):
            raise CourseError("qa_prompt(retrieval=True) needs a SceneReport to retrieve from, got a string")
        return f"context : {retrieve(report, question)} {_qa_turn(question)}"
    rep = report.text() if isinstance(report, SceneReport) else str(report)
    return f"{rep} {_qa_turn(question)}"


#: question words that say what is asked, not what about; :func:`retrieval_keys` drops them
RETRIEVAL_STOPWORDS = frozenset({"what", "is", "the", "?", "how", "many", "items", "are", "there", "where",
                                 "item", "at", "colour", "texture", "explain", "object", "a"})
NOTHING_FOUND = "nothing found ."


def report_lines(report: SceneReport) -> list[str]:
    """The report cut into the lines a retriever chooses from: the count line (``count 2 .``),
    the four quadrant lines (:meth:`SceneReport.quadrant_line`, reading order), then one line
    per clause of the caption (``caption a small red striped bag at the top left .``).
    Introduced in notebook 11."""
    clauses = [c.strip() for c in report.caption.replace(" .", "").split(" and ") if c.strip()]
    return ([f"count {report.count} ."] + [report.quadrant_line(p) for p in data.POSITIONS]
            + [f"caption {c} ." for c in clauses])


def retrieval_keys(question: str) -> list[str]:
    """The keywords of a question: a quadrant named in it (``top left`` stays one key), then
    its other words except :data:`RETRIEVAL_STOPWORDS`. ``what colour is the bag ?`` ->
    ``["bag"]``; ``how many red items are there ?`` -> ``["red"]``. Introduced in notebook 11."""
    q = " ".join(str(question).lower().replace("?", " ? ").split())
    keys = []
    for pos in data.POSITIONS:
        if f" {pos} " in f" {q} ":
            keys.append(pos)
            q = f" {q} ".replace(f" {pos} ", " ")
    return keys + [w for w in q.split() if w not in RETRIEVAL_STOPWORDS]


def retrieve(report: SceneReport, question: str) -> str:
    """Keyword retrieval: the count line of the report, then every other line of
    :func:`report_lines` that contains one of the question's :func:`retrieval_keys` as whole
    words, in report order; :data:`NOTHING_FOUND` if no line does. ``where is the bag ?``
    gets the quadrant line whose label is *bag* and the caption clause about a bag, or
    ``nothing found .`` when neither the classifier nor the captioner saw one. The retriever
    does not answer anything: it only chooses what the reader sees. Introduced in notebook 11.
    """
    if not isinstance(report, SceneReport):
        raise CourseError(f"retrieve: expected a SceneReport, got {type(report).__name__}")
    lines = report_lines(report)
    keys = retrieval_keys(question)
    if not keys:                      # "how many items are there ?": the count line is all there is to read
        return lines[0]
    hits = [ln for ln in lines[1:] if any(f" {k} " in f" {ln} " for k in keys)]
    return " ".join([lines[0]] + (hits or [NOTHING_FOUND]))


def _qa_turn(question: str) -> str:
    """One question turn of a QA prompt; :func:`qa_examples` appends one per further question."""
    return f"question : {question} answer :"


def qa_vocabulary() -> list[str]:
    """Every word a report, a question or an answer can contain (closed, so no [UNK]):
    the caption grammar, report and question words, numbers 0.00..1.00 and 0..4."""
    from .caption import grammar_words

    words = grammar_words()
    words += ["count", "caption", ".", ":", ",", ";", "object", "colour", "texture", "size", "edges",
              "question", "report", "answer", "?", "how", "many", "items", "are", "there", "what", "is", "where",
              "item", "explain", *NUMBER_WORDS, NONE, "classifier", "says", "with", "confidence", "from",
              "silhouette", "caption", "agrees", "does", "not", "mention", "it", "measured", "nothing", "was",
              "context", "found"]
    words += [str(i) for i in range(5)] + [f"{i / 100:.2f}" for i in range(101)]
    return list(dict.fromkeys(words))


@dataclass
class QAModel:
    """The course's question-answering language model: a small GPT-2-style decoder and its word tokenizer."""

    model: Any
    tokenizer: Any


def build_qa_model(hidden_size: int = 96, num_layers: int = 2, num_heads: int = 4, max_len: int = QA_MAX_LEN,
                   init_std: float | None = None) -> QAModel:
    """A small decoder-only language model over :func:`qa_vocabulary`: ``GPT2LMHeadModel``.

    The architecture of notebook 10's caption decoder without the cross-attention (and of
    GPT-2 itself, some thousand times smaller): ``num_layers`` blocks of width
    ``hidden_size``, and a table of *learned absolute position embeddings*. With the report's
    fixed layout, "the colour of the item at the top left" is always at position 9 of the
    input ([BOS] is 0), so answering a question about a quadrant is a lookup at a fixed
    position, which such a table makes easy to learn. ``init_std``: the spread of the random initial weights; the
    transformers default (0.02) suits GPT-2's width of 768, while at a width near 100 it makes
    every attention score start near zero, and the model sits for thousands of steps before
    it learns to look anywhere in particular; the default, ``1 / sqrt(hidden_size)``, avoids
    that. It reads ``[BOS] <report> question : ... answer :`` (:func:`qa_prompt`) and writes
    the answer, then ``[EOS]``. Introduced in notebook 11.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    from .caption import word_tokenizer

    if hidden_size % num_heads:
        raise CourseError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
    init_std = 1 / math.sqrt(hidden_size) if init_std is None else init_std
    if not init_std > 0:
        raise CourseError(f"init_std must be positive, got {init_std}")
    tok = word_tokenizer(qa_vocabulary())
    cfg = GPT2Config(vocab_size=len(tok), n_positions=max_len, n_embd=hidden_size, n_layer=num_layers,
                     n_head=num_heads, n_inner=4 * hidden_size, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     initializer_range=init_std, tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return QAModel(GPT2LMHeadModel(cfg), tok)


def _encode_words(tok: Any, text: str) -> list[int]:
    ids = tok.convert_tokens_to_ids(text.split())
    if tok.unk_token_id in ids:
        bad = [w for w, i in zip(text.split(), ids) if i == tok.unk_token_id]
        raise CourseError(f"words outside the QA vocabulary: {bad[:5]}; extend qa_vocabulary()")
    return ids


def qa_examples(qa: QAModel, reports: Sequence[SceneReport], questions: Sequence[Sequence[Question]],
                retrieval: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Training sequences for the QA model: (ids, labels), both int64 (S, L), one row per report.

    Row ``i`` is ``[BOS]`` + :func:`qa_prompt` of ``reports[i]`` and its first question + the
    answer words + ``[EOS]``, then ``question : ... answer : ...`` ``[EOS]`` for each further
    question in ``questions[i]``: a conversation about one picture, so the report is read once
    for several answers. ``labels`` is -100 except on the answer words and their [EOS]: the
    loss teaches answering, not reading. A prompt with a single question, as :func:`ask`
    writes it, is the start of such a row. With ``retrieval``, every question gets a row of
    its own (``[BOS]`` + ``qa_prompt(report, question, retrieval=True)`` + answer + ``[EOS]``),
    since each question retrieves its own lines. Introduced in notebook 11.
    """
    tok = qa.tokenizer
    if len(reports) != len(questions):
        raise CourseError(f"qa_examples: {len(reports)} reports but {len(questions)} question lists")
    seqs, labs = [], []

    def add_turn(seq: list[int], lab: list[int], prompt: str, answer: str) -> None:
        p, a = _encode_words(tok, prompt), _encode_words(tok, answer) + [tok.eos_token_id]
        seq += p + a
        lab += [-100] * len(p) + a

    for rep, qs in zip(reports, questions):
        if not len(qs):
            continue
        if retrieval:                 # one row per question: [BOS] context ... answer [EOS]
            for q in qs:
                seq, lab = [tok.bos_token_id], [-100]
                add_turn(seq, lab, qa_prompt(rep, q.text, retrieval=True), q.answer)
                seqs.append(seq)
                labs.append(lab)
            continue
        seq = [tok.bos_token_id] + _encode_words(tok, rep.text())   # one row per report, a turn per question
        lab = [-100] * len(seq)
        for q in qs:
            add_turn(seq, lab, _qa_turn(q.text), q.answer)
        seqs.append(seq)
        labs.append(lab)
    if not seqs:
        raise CourseError("qa_examples: no questions given")
    L = max(len(s) for s in seqs)
    if L > qa.model.config.max_position_embeddings:
        raise CourseError(f"a training sequence has {L} tokens, more than the model's "
                          f"{qa.model.config.max_position_embeddings}; ask fewer questions per report")
    ids = np.full((len(seqs), L), tok.pad_token_id, np.int64)
    labels = np.full((len(seqs), L), -100, np.int64)
    for i, (s, lab) in enumerate(zip(seqs, labs)):
        ids[i, : len(s)], labels[i, : len(lab)] = s, lab
    return ids, labels


def qa_loader(ids: np.ndarray, labels: np.ndarray, batch_size: int = 32, shuffle: bool = False, seed: int = 0) -> Any:
    """A DataLoader of ``(ids, labels)`` batches for ``cl.train.fit`` with :func:`qa_step`;
    with ``shuffle``, batches group sequences of similar length (``cl.caption.LengthBuckets``)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from .caption import LengthBuckets

    ids, labels = np.asarray(ids), np.asarray(labels)
    if ids.shape != labels.shape or ids.ndim != 2:
        raise CourseError(f"qa_loader: ids and labels must be (S, L) arrays of one shape, got {ids.shape}, {labels.shape}")
    ds = TensorDataset(torch.as_tensor(ids), torch.as_tensor(labels))
    return DataLoader(ds, batch_sampler=LengthBuckets((ids != 0).sum(1), batch_size, shuffle, seed))


def qa_step(model: Any, batch: tuple, device: Any, report_weight: float = 0.0) -> "torch.Tensor":
    """``step_fn`` for ``cl.train.fit``: cross-entropy on the answer tokens (labels != -100).

    With ``report_weight`` > 0, plus that weight times the ordinary next-word loss on the
    words *before* the answer (question and report): the model also learns to predict the
    report itself, which teaches it how a report is built -- for instance that the colour in a
    quadrant's line is the colour the caption gives the item at that position -- far sooner
    than the few answer words alone would. Use it as ``step_fn=functools.partial(qa_step,
    report_weight=0.5)``. Padding columns shared by the whole batch are dropped first.
    Introduced in notebook 11.
    """
    from torch.nn import functional as F

    ids, labels = batch[0].to(device), batch[1].to(device)
    pad = model.config.pad_token_id
    keep = int((ids != pad).sum(1).max())
    ids, labels = ids[:, :keep], labels[:, :keep]
    logits = model(input_ids=ids, attention_mask=(ids != pad).long()).logits.float()[:, :-1]
    flat = logits.reshape(-1, logits.shape[-1])
    loss = F.cross_entropy(flat, labels[:, 1:].reshape(-1), ignore_index=-100)
    if report_weight > 0:
        context = ids[:, 1:].masked_fill((labels[:, 1:] != -100) | (ids[:, 1:] == pad), -100)
        loss = loss + report_weight * F.cross_entropy(flat, context.reshape(-1), ignore_index=-100)
    return loss


def qa_eval(model: Any, loader: Any, device: Any) -> dict[str, float]:
    """``eval_fn``: ``val_loss`` and ``val_acc_token`` (teacher-forced answer-token accuracy)."""
    import torch

    model.eval()
    pad = model.config.pad_token_id
    loss_sum = correct = total = 0.0
    with torch.no_grad():
        for ids, labels in loader:
            ids, labels = ids.to(device), labels.to(device)
            keep = int((ids != pad).sum(1).max())
            ids, labels = ids[:, :keep], labels[:, :keep]
            logits = model(input_ids=ids, attention_mask=(ids != pad).long()).logits.float()[:, :-1]
            target = labels[:, 1:]
            mask = target != -100
            loss_sum += float(torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="sum"))
            correct += float(((logits.argmax(-1) == target) & mask).sum())
            total += float(mask.sum())
    if total == 0:
        raise CourseError("qa_eval: no answer tokens in the loader")
    return {"val_acc_token": correct / total, "val_loss": loss_sum / total}


def _course_answers(qa: QAModel, prompts: Sequence[str], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy answers of the course's QA model, batched with left padding."""
    import torch

    tok, model = qa.tokenizer, qa.model
    dev = next(model.parameters()).device
    model.eval()
    out: list[str] = []
    for s in range(0, len(prompts), batch_size):
        rows = [[tok.bos_token_id] + _encode_words(tok, p) for p in prompts[s: s + batch_size]]
        L = max(len(r) for r in rows)
        ids = torch.full((len(rows), L), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), L), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, L - len(r):] = torch.tensor(r)
            mask[i, L - len(r):] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        done = torch.zeros(len(rows), dtype=torch.bool, device=dev)
        new: list[list[int]] = [[] for _ in rows]
        with torch.no_grad():
            for _ in range(max_new_tokens):
                pos = (mask.cumsum(1) - 1).clamp(min=0)
                logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
                nxt = logits.argmax(-1)
                for i, t in enumerate(nxt.tolist()):
                    if not done[i]:
                        if t == tok.eos_token_id:
                            done[i] = True
                        else:
                            new[i].append(t)
                if bool(done.all()):
                    break
                ids = torch.cat([ids, nxt[:, None]], 1)
                mask = torch.cat([mask, torch.ones_like(nxt)[:, None]], 1)
        out += [" ".join(tok.convert_ids_to_tokens(r)) for r in new]
    return out


CHAT_SYSTEM = ("You answer questions about a picture using only the perception report you are given. "
               "Reply with the answer only: one or two words (a number word such as 'two', a colour, "
               "a texture, a position such as 'top left', or 'none').")


def _chat_answers(model: Any, tokenizer: Any, reports: Sequence[SceneReport], questions: Sequence[str],
                  max_new_tokens: int, retrieval: bool = False) -> list[str]:
    """Answers of a hub chat model (online only): one chat per question, greedy decoding."""
    import torch

    out = []
    dev = next(model.parameters()).device
    for rep, q in zip(reports, questions):
        long = "explain" in q
        messages = [{"role": "system", "content": CHAT_SYSTEM if not long else
                     "You explain an object classifier's decision using only the perception report. One sentence."},
                    {"role": "user", "content": f"Perception report:\n{retrieve(rep, q) if retrieval else rep.pretty()}"
                                                f"\n\nQuestion: {q.rstrip(' ?')}?"}]
        enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)
        enc = {k: v.to(dev) for k, v in enc.items()}
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens if long else 8, do_sample=False)
        text = tokenizer.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        out.append(" ".join(text.lower().replace(".", " ").replace(",", " ").split()) if not long else text.strip())
    return out


def ask(lm: Any, reports: Sequence[SceneReport], questions: Sequence[str], *, max_new_tokens: int = 40,
        batch_size: int = 128, retrieval: bool = False) -> list[str]:
    """Answer ``questions[i]`` about ``reports[i]`` with a language model; one string each.

    ``lm`` is the course's :class:`QAModel` (offline) or a ``(model, tokenizer)`` pair from
    ``cl.models.load_hub_model("small-instruct-lm")`` (online), prompted with the report and
    a short instruction through the tokenizer's chat template. Greedy decoding either way.
    ``retrieval``: show the model only the lines :func:`retrieve` picks (a course model must
    have been trained that way, with ``qa_examples(..., retrieval=True)``); a chat model then
    reads those lines instead of the whole ``pretty()`` report. Introduced in notebook 11.
    """
    if isinstance(questions, str) or len(reports) != len(questions):
        raise CourseError(f"ask: expected one question per report, got {len(reports)} reports and "
                          f"{'a string' if isinstance(questions, str) else len(questions)} questions")
    if isinstance(lm, QAModel):
        prompts = [qa_prompt(r, q, retrieval=retrieval) for r, q in zip(reports, questions)]
        return _course_answers(lm, prompts, max_new_tokens, batch_size)
    if isinstance(lm, tuple) and len(lm) == 2:
        return _chat_answers(lm[0], lm[1], reports, questions, max_new_tokens, retrieval)
    raise CourseError(f"ask: lm must be a cl.pipeline.QAModel or a (model, tokenizer) pair, got {type(lm).__name__}")


# --------------------------------------------------------------------------- scoring


def judge(question: Question, answer: str) -> str:
    """One answer against the true scene graph: ``correct``, ``hallucination`` (a well-formed
    answer that contradicts the graph: a wrong colour, position, texture or count, or
    an attribute for something that is not there), ``omission`` (``none`` although the graph
    has the answer) or ``invalid`` (not an answer of the asked kind). Introduced in notebook 11."""
    a = " ".join(str(answer).lower().split())
    if a == question.answer:
        return "correct"
    if a not in answer_vocabulary(question.kind):
        return "invalid"
    if a == NONE:
        return "omission"
    return "hallucination"


def qa_scores(questions: Sequence[Question], answers: Sequence[str]) -> dict[str, float]:
    """Accuracy overall and per question kind, and the rates of each :func:`judge` verdict.

    Returns ``accuracy``, ``accuracy_<kind>`` for each kind present, ``hallucination_rate``,
    ``omission_rate``, ``invalid_rate`` (all fractions of the questions, in [0, 1]).
    Introduced in notebook 11.
    """
    if isinstance(answers, str) or len(questions) != len(answers):
        raise CourseError("qa_scores: expected one answer per question")
    if not len(questions):
        raise CourseError("qa_scores: no questions")
    verdicts = [judge(q, a) for q, a in zip(questions, answers)]
    out = {"accuracy": float(np.mean([v == "correct" for v in verdicts]))}
    for kind in QUESTION_TYPES:
        sel = [v for q, v in zip(questions, verdicts) if q.kind == kind]
        if sel:
            out[f"accuracy_{kind}"] = float(np.mean([v == "correct" for v in sel]))
    for v in ("hallucination", "omission", "invalid"):
        out[f"{v}_rate"] = float(np.mean([x == v for x in verdicts]))
    return out
