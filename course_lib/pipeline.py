"""Perception for FashionScenes (notebook 11): pixels -> measurements -> a report -> questions.

perception (classical measures + a classifier + a caption) -> a structured report, and
the template questions asked about it, with the answers the true scene graph gives::

    meas = measure(scenes.images)                          # classical measurements per quadrant
    perc = fit_perception(train_scenes, train_meas)        # texture + silhouette classifiers
    reports = perc.describe(meas, captions)                # SceneReport per scene
    qs = [make_questions(g, rng) for g in scenes.graphs]   # count / colour / position / texture

Answering them (rules, a language model, scoring) is :mod:`course_lib.scene_qa`; the
language-model mechanics are :mod:`course_lib.llm`. Every number in a report is measured
on the image; the answer a question expects is read from the true scene graph, so a wrong
answer is a checkable contradiction.
"""
from __future__ import annotations

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
    :class:`ItemReport` per occupied quadrant; ``scene_qa.fact_lines`` writes it as the
    English lines a language model reads."""

    count: int
    caption: str
    items: list[ItemReport] = field(default_factory=list)

    def item_at(self, position: str) -> ItemReport | None:
        return next((it for it in self.items if it.position == position), None)

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
