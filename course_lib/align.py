"""Image-text alignment, LiT style: a frozen text encoder, a trainable image tower, InfoNCE.

Introduced in notebook 09. The text side is all-MiniLM-L6-v2 (:func:`course_lib.models.encode_text`),
frozen: each caption becomes a fixed unit vector (384-d), computed once and cached. The
image side is a small MLP (:class:`ImageTower`) on frozen, cached image features (DINOv2-S,
see :func:`course_lib.fusion.vit_features`), trained so that an image lands next to its
own caption and away from the other captions of the batch (:func:`info_nce`). Then:

* retrieval (:func:`retrieval_recall`): image -> text and text -> image recall@k, where a
  hit is any retrieved item whose caption is *the same text* as the query's (FashionScenes
  repeats captions, and an identical caption is a correct answer);
* zero-shot classification (:func:`class_embeddings`, :func:`zero_shot_predict`): embed one
  prompt per class (averaged over templates) and pick the nearest.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from . import config
from .config import CourseError

TEXT_DIM = 384  #: width of the MiniLM sentence embeddings
#: generic prompt templates for zero-shot classification; ``{}`` is replaced by the class word
TEMPLATES: dict[str, tuple[str, ...]] = {
    "word": ("{}",),
    "photo": ("a photo of a {}.",),
}


# --------------------------------------------------------------------------- text side


def _check_texts(texts: Any, where: str) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not all(isinstance(t, str) for t in texts):
        raise CourseError(f"{where}: expected a list of strings, got {type(texts).__name__}. "
                          "Fix: pass e.g. scenes.captions (a list), not one string")
    if not texts:
        raise CourseError(f"{where}: got an empty list of texts")
    return list(texts)


def caption_ids(captions: Sequence[str]) -> np.ndarray:
    """int64 (N,) ids, equal exactly when the caption texts are identical (first seen = 0, 1, ...).

    Introduced in notebook 09.
    """
    captions = _check_texts(captions, "caption_ids")
    index: dict[str, int] = {}
    return np.array([index.setdefault(c, len(index)) for c in captions], dtype=np.int64)


def text_embeddings(texts: Sequence[str], key: str | None = None) -> np.ndarray:
    """Frozen MiniLM embeddings of texts: float32 (N, 384), unit rows; identical texts encoded once.

    With ``key`` the result is kept by :func:`course_lib.cache.cached` (a hash of the texts
    is appended to the key, so a changed list never reads a stale entry).
    Introduced in notebook 09.
    """
    from . import cache, models

    texts = _check_texts(texts, "text_embeddings")
    ids = caption_ids(texts)
    unique = list(dict.fromkeys(texts))

    def compute() -> np.ndarray:
        order = np.argsort([len(t) for t in unique], kind="stable")   # similar lengths share a batch:
        emb = models.encode_text([unique[i] for i in order])           # less padding, faster
        out = np.empty_like(emb)
        out[order] = emb
        return out

    if key is None:
        emb = compute()
    else:
        digest = hashlib.sha256("\n".join(unique).encode()).hexdigest()[:12]
        emb = cache.cached(f"{key}-{digest}", compute)
    return np.ascontiguousarray(emb[ids], dtype=np.float32)


def class_embeddings(class_names: Sequence[str], templates: Sequence[str] = TEMPLATES["photo"]) -> np.ndarray:
    """One text embedding per class: each template filled with the class word, encoded,
    averaged over templates, re-normalised. Returns float32 (K, 384) unit rows.

    ``templates``: strings with one ``{}``, e.g. ``("a photo of a {}.",)``.
    Introduced in notebook 09.
    """
    from . import models

    names = _check_texts(class_names, "class_embeddings")
    templates = _check_texts(templates, "class_embeddings(templates)")
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise CourseError(f"class_embeddings: every template needs exactly one '{{}}' for the class word; got {bad}")
    E = text_embeddings([t.format(n) for n in names for t in templates]).reshape(len(names), len(templates), -1)
    E = E.mean(1)
    return (E / np.linalg.norm(E, axis=1, keepdims=True)).astype(np.float32)


# --------------------------------------------------------------------------- image tower


class ImageTower(nn.Module):
    """MLP from frozen image features to the text space: (B, in_dim) -> (B, out_dim) unit rows.

    ``Linear -> GELU -> Dropout -> Linear`` (or one ``Linear`` with ``hidden_size=0``), then
    L2 normalisation. The input should be standardised features (:class:`FeatureScaler`).
    Introduced in notebook 09.
    """

    def __init__(self, in_dim: int, out_dim: int = TEXT_DIM, hidden_size: int = 512, dropout: float = 0.1):
        super().__init__()
        if hidden_size:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden_size), nn.GELU(), nn.Dropout(dropout),
                                     nn.Linear(hidden_size, out_dim))
        else:
            self.net = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.net(x), dim=-1)


class LiT(nn.Module):
    """An image tower plus the softmax temperature of the contrastive loss.

    ``logit_scale = 1 / temperature``, stored as its log; learned when
    ``learn_temperature`` (clamped to at most 100, as in CLIP), else fixed (no clamp: a
    fixed temperature below 0.01 is used as given).
    ``forward(x)`` returns the unit image embeddings. Introduced in notebook 09.
    """

    def __init__(self, in_dim: int, out_dim: int = TEXT_DIM, hidden_size: int = 512, temperature: float = 0.07,
                 learn_temperature: bool = True, dropout: float = 0.1):
        super().__init__()
        self.tower = ImageTower(in_dim, out_dim, hidden_size, dropout)
        self.learn_temperature = bool(learn_temperature)
        log_scale = torch.tensor(math.log(1.0 / temperature), dtype=torch.float32)
        if learn_temperature:
            self.log_logit_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_logit_scale", log_scale)

    @property
    def temperature(self) -> float:
        return float(1.0 / self.logit_scale().detach())

    def logit_scale(self) -> torch.Tensor:
        if not self.learn_temperature:
            return self.log_logit_scale.exp()
        return self.log_logit_scale.clamp(max=math.log(100.0)).exp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tower(x)


def make_model(in_dim: int, *, hidden_size: int = 512, temperature: float = 0.07, learn_temperature: bool = True,
               dropout: float = 0.1):
    """A LiT model: :class:`ImageTower` ``in_dim -> hidden_size -> 384`` and a (learnable)
    temperature starting at ``temperature``. Introduced in notebook 09."""
    if not isinstance(in_dim, (int, np.integer)) or in_dim < 1:
        raise CourseError(f"make_model: in_dim must be a positive int (the image feature width), got {in_dim!r}")
    if not 0.0 < temperature <= 10.0:
        raise CourseError(f"make_model: temperature must be in (0, 10], got {temperature}")
    return LiT(int(in_dim), TEXT_DIM, int(hidden_size), float(temperature), bool(learn_temperature), float(dropout))


class FeatureScaler:
    """Column standardisation with training statistics: ``(x - mean) / std``, float32.

    Introduced in notebook 09.
    """

    def __init__(self, eps: float = 1e-6):
        self.eps = float(eps)
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    def fit(self, X: np.ndarray) -> "FeatureScaler":
        X = _check_features(X, "FeatureScaler.fit")
        self.mean = X.mean(0, dtype=np.float64).astype(np.float32)
        self.std = np.maximum(X.std(0, dtype=np.float64), self.eps).astype(np.float32)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        if self.mean is None:
            raise CourseError("FeatureScaler.transform: call .fit(X_train) first")
        X = _check_features(X, "FeatureScaler.transform")
        if X.shape[1] != self.mean.shape[0]:
            raise CourseError(f"FeatureScaler: got {X.shape[1]} columns, fit saw {self.mean.shape[0]}")
        return ((X - self.mean) / self.std).astype(np.float32)


def _check_features(X: Any, where: str, n: int | None = None) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] == 0 or X.dtype.kind not in "fiu":
        raise CourseError(f"{where}: expected a float array (N, D) with N >= 1, got {X.dtype} {X.shape}")
    if n is not None and X.shape[0] != n:
        raise CourseError(f"{where}: expected {n} rows (one per caption), got {X.shape[0]}")
    X = np.ascontiguousarray(X, dtype=np.float32)
    if not np.isfinite(X).all():
        raise CourseError(f"{where}: contains NaN or inf")
    return X


# --------------------------------------------------------------------------- loss and training


def info_nce(img, txt, logit_scale, ids=None):
    """Symmetric InfoNCE (CLIP) loss of a batch of matched pairs.

    ``img``, ``txt``: float tensors (B, D), unit rows, row i of each is a matching pair.
    ``logit_scale``: 1 / temperature (a scalar tensor or float). ``ids`` (B,) int: caption
    ids; pairs with the same id count as positives for each other (duplicates are not
    pushed apart). Returns a scalar: the mean of the image->text and text->image
    cross-entropies, each ``-log(sum of softmax over the positives)``. Introduced in notebook 09.
    """
    if img.ndim != 2 or img.shape != txt.shape:
        raise CourseError(f"info_nce: expected img and txt of the same shape (B, D), got "
                          f"{tuple(img.shape)} and {tuple(txt.shape)}")
    logits = logit_scale * img @ txt.T                                     # (B, B)
    if ids is None:
        pos = torch.eye(len(img), dtype=torch.bool, device=img.device)
    else:
        ids = ids.to(img.device)
        pos = ids[:, None] == ids[None, :]

    def one_side(lg: torch.Tensor) -> torch.Tensor:
        return -(torch.logsumexp(lg.masked_fill(~pos, float("-inf")), 1) - torch.logsumexp(lg, 1)).mean()

    return 0.5 * (one_side(logits) + one_side(logits.T))


def pair_loader(X: np.ndarray, T: np.ndarray, ids: np.ndarray, batch_size: int = 256, shuffle: bool = False,
                seed: int = 0):
    """A DataLoader of matched (image features, caption embedding, caption id) triples.

    ``X`` float (N, D_img) image features, ``T`` float (N, 384) caption embeddings (row i
    describes image i), ``ids`` int (N,) from :func:`caption_ids`. Yields
    ``(X_b float32 (B, D_img), T_b float32 (B, 384), ids_b int64 (B,))``. Introduced in notebook 09.
    """
    from .train import BatchIndexSampler

    X = _check_features(X, "pair_loader(X)")
    T = _check_features(T, "pair_loader(T)", len(X))
    ids = np.asarray(ids)
    if ids.shape != (len(X),) or ids.dtype.kind not in "iu":
        raise CourseError(f"pair_loader: ids must be int (N,) = ({len(X)},), got {ids.dtype} {ids.shape}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 2:
        raise CourseError(f"pair_loader: batch_size must be an int >= 2 (a contrastive batch needs negatives), got {batch_size!r}")
    # a TensorDataset indexed with a whole batch of indices at once (the sampler yields index tensors)
    pairs = TensorDataset(torch.from_numpy(X), torch.from_numpy(T), torch.from_numpy(ids.astype(np.int64)))
    sampler = BatchIndexSampler(len(X), int(batch_size), bool(shuffle), int(seed))
    return DataLoader(pairs, sampler=sampler, batch_size=None, num_workers=0)


def contrastive_step(model, batch, device):
    """``step_fn`` for :func:`course_lib.train.fit`: InfoNCE of a :func:`pair_loader` batch.

    Introduced in notebook 09.
    """
    x, t, ids = (b.to(device) for b in batch)
    return info_nce(model(x), t, model.logit_scale(), ids)


def embed_images(model, X: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Image embeddings of a trained model: float32 (N, 384), unit rows. Introduced in notebook 09."""
    X = _check_features(X, "embed_images")
    dev = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        out = [model(torch.from_numpy(X[s:s + batch_size]).to(dev)).float().cpu().numpy()
               for s in range(0, len(X), batch_size)]
    return np.concatenate(out).astype(np.float32)


def retrieval_recall(img_emb: np.ndarray, txt_emb: np.ndarray, ids: Any, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k in both directions over N matched pairs (row i of each belongs to scene i).

    ``img_emb`` (N, D), ``txt_emb`` (N, D) unit rows; ``ids`` (N,) caption ids
    (:func:`caption_ids`) or the caption strings. Image -> text: the N captions are ranked
    by cosine similarity; a query is a hit at k when one of the top k captions is the same
    text as its own. Text -> image: the N images are ranked for each caption; a hit when one
    of the top k images has that caption (ties count in the query's favour: identical
    captions have identical embeddings). Returns ``{"i2t_r1": ..., "t2i_r1": ..., ...}``,
    fractions in [0, 1]. Introduced in notebook 09.
    """
    img = _check_features(img_emb, "retrieval_recall(img_emb)")
    txt = _check_features(txt_emb, "retrieval_recall(txt_emb)", len(img))
    ids = caption_ids(list(ids)) if len(ids) and isinstance(ids[0], str) else np.asarray(ids)
    if ids.shape != (len(img),):
        raise CourseError(f"retrieval_recall: ids must have shape ({len(img)},), got {ids.shape}")
    ks = sorted(int(k) for k in ks)
    if not ks or ks[0] < 1:
        raise CourseError(f"retrieval_recall: ks must be positive ints, got {ks}")
    out: dict[str, float] = {}
    for name, rank in _ranks(img, txt, ids).items():
        for k in ks:
            out[f"{name}_r{k}"] = float((rank < k).mean())
    return out


def _ranks(img: np.ndarray, txt: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
    S = img @ txt.T                                                        # (N images, N captions)
    same = ids[:, None] == ids[None, :]
    out = {}
    for name, sim in (("i2t", S), ("t2i", S.T)):
        # rank of the best correct item = number of items that score higher than it
        best_pos = np.where(same, sim, -np.inf).max(1)
        out[name] = (sim > best_pos[:, None]).sum(1)
    return out


def retrieval_hits(img_emb: np.ndarray, txt_emb: np.ndarray, ids: Any, k: int = 5) -> dict[str, np.ndarray]:
    """Per-query hits behind :func:`retrieval_recall`: ``{"i2t": bool (N,), "t2i": bool (N,)}``,
    True where the query's correct item is in the top ``k`` (for paired bootstrap intervals,
    :func:`course_lib.checks.paired_bootstrap`). Introduced in notebook 09.
    """
    img = _check_features(img_emb, "retrieval_hits(img_emb)")
    txt = _check_features(txt_emb, "retrieval_hits(txt_emb)", len(img))
    ids = caption_ids(list(ids)) if len(ids) and isinstance(ids[0], str) else np.asarray(ids)
    if ids.shape != (len(img),) or int(k) < 1:
        raise CourseError(f"retrieval_hits: ids must have shape ({len(img)},) and k >= 1, got {ids.shape}, k={k}")
    return {name: rank < int(k) for name, rank in _ranks(img, txt, ids).items()}


def retrieval_eval(k: int = 5):
    """An ``eval_fn`` for :func:`course_lib.train.fit` over a :func:`pair_loader` of validation pairs.

    The returned function gives ``{"val_loss": InfoNCE over the whole validation set,
    "val_acc_r{k}": (image->text + text->image recall@k) / 2}``, so ``fit`` keeps the epoch
    with the best validation recall. Introduced in notebook 09.
    """
    def eval_fn(model, loader, device) -> dict[str, float]:
        xs, ts, ids = zip(*[(x, t, i) for x, t, i in loader])
        X, T, I = torch.cat(xs).numpy(), torch.cat(ts).numpy(), torch.cat(ids).numpy()
        img = embed_images(model, X)
        with torch.no_grad():
            loss = float(info_nce(torch.from_numpy(img), torch.from_numpy(T),
                                  model.logit_scale().detach().cpu(), torch.from_numpy(I)))
        r = retrieval_recall(img, T, I, ks=(k,))
        return {"val_loss": loss, f"val_acc_r{k}": 0.5 * (r[f"i2t_r{k}"] + r[f"t2i_r{k}"])}

    return eval_fn


def train_lit(X_train: np.ndarray, T_train: np.ndarray, ids_train: np.ndarray, X_val: np.ndarray,
              T_val: np.ndarray, ids_val: np.ndarray, *, num_epochs: int = 30, lr: float = 2e-3,
              batch_size: int = 256, temperature: float = 0.07, learn_temperature: bool = True,
              hidden_size: int = 512, weight_decay: float = 0.05, patience: int | None = 6, seed: int = 0,
              progress: bool = True):
    """Train a LiT image tower with InfoNCE through :func:`course_lib.train.fit`.

    ``X_*`` standardised image features (N, D), ``T_*`` frozen caption embeddings (N, 384),
    ``ids_*`` caption ids. Returns ``(model, history)``; the model keeps the epoch with the
    best validation recall@5. ``seed`` fixes the initialisation and batch order.
    Introduced in notebook 09.
    """
    from . import train

    config.seed_everything(seed)
    model = make_model(np.asarray(X_train).shape[1], hidden_size=hidden_size, temperature=temperature,
                       learn_temperature=learn_temperature)
    loader = pair_loader(X_train, T_train, ids_train, batch_size, shuffle=True, seed=seed)
    val_loader = pair_loader(X_val, T_val, ids_val, batch_size=1024)
    history = train.fit(model, loader, val_loader, num_epochs=num_epochs, lr=lr, weight_decay=weight_decay,
                        patience=patience, step_fn=contrastive_step, eval_fn=retrieval_eval(5),
                        progress=progress)
    return model, history


# --------------------------------------------------------------------------- zero-shot


def zero_shot_predict(img_emb: np.ndarray, class_emb: np.ndarray) -> np.ndarray:
    """Zero-shot labels: the index of the most similar class embedding, int64 (N,).

    ``img_emb`` (N, D) and ``class_emb`` (K, D) unit rows (from :func:`embed_images` and
    :func:`class_embeddings`). Introduced in notebook 09.
    """
    img = _check_features(img_emb, "zero_shot_predict(img_emb)")
    cls = _check_features(class_emb, "zero_shot_predict(class_emb)")
    if img.shape[1] != cls.shape[1]:
        raise CourseError(f"zero_shot_predict: image embeddings have {img.shape[1]} dims, "
                          f"class embeddings {cls.shape[1]}: they must live in the same space")
    return (img @ cls.T).argmax(1).astype(np.int64)


def paste_items(X: np.ndarray, size: int = 30, seed: int = 0) -> np.ndarray:
    """Show grey Fashion-MNIST items the way FashionScenes shows garments: each (28, 28)
    uint8 item is resized to ``size`` pixels and alpha-blended (alpha = 2.5 x intensity,
    clipped to 1, as in the scene generator) into a random quadrant of a dark, slightly
    noisy 64 x 64 canvas. Returns uint8 (N, 64, 64, 3) grey scenes. Deterministic in
    ``seed``. Introduced in notebook 09.
    """
    import cv2

    X = np.asarray(X)
    if X.ndim != 3 or X.dtype != np.uint8 or X.shape[0] == 0:
        raise CourseError(f"paste_items: expected uint8 grey items (N, H, W), got {X.dtype} {X.shape}")
    if not isinstance(size, (int, np.integer)) or not 4 <= size <= 32:
        raise CourseError(f"paste_items: size must be an int in 4..32 (a quadrant is 32 px), got {size!r}")
    rng = np.random.default_rng(seed)
    n = len(X)
    canvas = rng.uniform(15, 55, (n, 1, 1)) + rng.normal(0, 4, (n, 64, 64))
    quadrant = rng.integers(0, 4, n)
    offset = rng.integers(0, 32 - size + 1, (n, 2))
    for i in range(n):
        item = cv2.resize(X[i], (int(size), int(size)), interpolation=cv2.INTER_AREA).astype(np.float64)
        alpha = np.clip(item / 255.0 * 2.5, 0, 1)
        r = 32 * (quadrant[i] // 2) + offset[i, 0]
        c = 32 * (quadrant[i] % 2) + offset[i, 1]
        patch = canvas[i, r:r + size, c:c + size]
        canvas[i, r:r + size, c:c + size] = patch * (1 - alpha) + item * alpha
    grey = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)

