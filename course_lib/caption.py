"""Image captioning on FashionScenes: tokenizer, model assembly, training hooks, decoding.

Introduced in notebook 10 (and reused in notebooks 11 and 12, which load its captioner).
The pieces, in the order the notebook uses them::

    tok = build_tokenizer()                                   # word level, from the grammar
    ids = encode_captions(tok, scenes.captions)               # (N, L) int64, [BOS] ... [EOS] [PAD]
    model = build_captioner(tok)                              # ViT encoder + GPT-2 decoder
    history = cl.train.fit(model, loader, val_loader, step_fn=caption_step,
                           eval_fn=caption_eval, ...)         # teacher forcing
    caps = generate(model, tok, images, method="beam", num_beams=4)

The scores of generated captions (BLEU, CIDEr-D, CHAIR, attribute accuracy) live in
``cl.caption_metrics``, which reads only strings and scene graphs.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np

from . import config
from .config import CourseError

if TYPE_CHECKING:  # torch and transformers load lazily: importing course_lib stays cheap
    import torch

PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
#: longest token sequence the captioner handles: 4 items of 9 words, 3 "and", [BOS], [EOS]
MAX_LEN = 42
DECODING_METHODS = ("greedy", "beam", "sample")
TOKENIZER_INFO = "captioner.json"
ENCODERS = ("hybrid", "pixels")
STEM_BLOCKS = 5      # EfficientNet-Lite0 blocks 0-4: stride 8, 40 channels
STEM_CHANNELS = 40
STEM_GRID = 8        # a 64x64 scene -> an 8x8 feature map


# --------------------------------------------------------------------------- tokenizer


def grammar_words() -> list[str]:
    """Every word the FashionScenes caption grammar can produce, in a fixed order (30 words).

    Introduced in notebook 10.
    """
    from . import data

    words = ["a", "and", "at", "the"]
    words += list(data.SIZES) + list(data.COLOURS) + list(data.TEXTURES) + list(data.OBJECT_WORDS)
    for pos in data.POSITIONS:
        for w in pos.split():
            if w not in words:
                words.append(w)
    return words


def word_tokenizer(words: Iterable[str]) -> Any:
    """A word-level tokenizer (the ``tokenizers`` library) over ``words``, wrapped for transformers.

    Ids: ``[PAD]`` 0, ``[BOS]`` 1, ``[EOS]`` 2, ``[UNK]`` 3, then ``words`` in order (duplicates
    dropped). Text is split on whitespace only (``"t-shirt"`` stays one word); encoding adds
    ``[BOS]`` ... ``[EOS]``; ``decode(..., skip_special_tokens=True)`` joins words with spaces.
    Returns a ``PreTrainedTokenizerFast`` (``save_pretrained`` / ``from_pretrained`` work).
    Introduced in notebook 10; notebook 11 builds its question-answering vocabulary with it.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for w in words:
        if not isinstance(w, str) or not w or any(c.isspace() for c in w):
            raise CourseError(f"word_tokenizer: every word must be a non-empty string without spaces, got {w!r}")
        vocab.setdefault(w, len(vocab))
    if len(vocab) == len(SPECIAL_TOKENS):
        raise CourseError("word_tokenizer: got no words; pass the vocabulary, e.g. grammar_words()")
    tk = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])])
    tk.decoder = decoders.WordPiece(prefix="##")  # no word carries the prefix: words joined by spaces
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=UNK, model_max_length=4096)


def build_tokenizer(captions: Sequence[str] | None = None) -> Any:
    """The captioner's word-level tokenizer: the grammar's words (see :func:`grammar_words`).

    With ``captions``, words found there that the grammar lacks are appended too (sorted),
    so a changed grammar cannot silently map words to ``[UNK]``. 34 tokens for the course
    grammar. Introduced in notebook 10.
    """
    words = grammar_words()
    if captions is not None:
        if isinstance(captions, str):
            raise CourseError("build_tokenizer: captions must be a list of strings, not one string")
        extra = sorted({w for c in captions for w in str(c).lower().split()} - set(words))
        words += extra
    return word_tokenizer(words)


def _check_tokenizer(tokenizer: Any, where: str) -> None:
    if tokenizer is None or not hasattr(tokenizer, "convert_tokens_to_ids"):
        raise CourseError(f"{where}: expected the tokenizer from cl.caption.build_tokenizer(), "
                          f"got {type(tokenizer).__name__}")


def encode_captions(tokenizer: Any, captions: Sequence[str], max_len: int | None = None) -> np.ndarray:
    """Token ids of captions: int64 array (N, L), each row ``[BOS] w1 ... wk [EOS] [PAD]...``.

    ``L`` is the longest encoded caption (or ``max_len``; longer captions raise). Words
    outside the vocabulary raise a CourseError (a captioner trained on ``[UNK]`` learns
    nothing useful). Captions are lower-cased. Introduced in notebook 10.
    """
    _check_tokenizer(tokenizer, "encode_captions")
    if isinstance(captions, str) or not len(captions):
        raise CourseError("encode_captions: expected a non-empty list of caption strings")
    enc = tokenizer([str(c).lower() for c in captions])["input_ids"]
    unk = tokenizer.unk_token_id
    for c, row in zip(captions, enc):
        if unk in row:
            raise CourseError(f"encode_captions: caption {c!r} has words outside the vocabulary; "
                              "build the tokenizer with build_tokenizer(captions) to include them")
    longest = max(len(r) for r in enc)
    L = longest if max_len is None else int(max_len)
    if longest > L:
        raise CourseError(f"encode_captions: a caption has {longest} tokens, more than max_len={L}")
    out = np.full((len(enc), L), tokenizer.pad_token_id, dtype=np.int64)
    for i, row in enumerate(enc):
        out[i, : len(row)] = row
    return out


def decode_ids(tokenizer: Any, ids: Any) -> list[str]:
    """Captions from token ids (N, L) (array, tensor or list of lists): the words between
    ``[BOS]`` and the first ``[EOS]``, joined by spaces. Introduced in notebook 10."""
    _check_tokenizer(tokenizer, "decode_ids")
    rows = ids.tolist() if hasattr(ids, "tolist") else list(ids)
    if rows and isinstance(rows[0], int):
        rows = [rows]
    eos = tokenizer.eos_token_id
    out = []
    for row in rows:
        row = list(row)
        if eos in row:
            row = row[: row.index(eos)]
        out.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return out


# --------------------------------------------------------------------------- model


def scene_vit_config(encoder: str = "hybrid", hidden_size: int = 128, num_layers: int = 3, num_heads: int = 4,
                     mlp_ratio: float = 2.0, patch_size: int | None = None) -> Any:
    """A small ViT encoder (``ViTConfig``) for FashionScenes, in one of two variants.

    ``encoder="hybrid"`` (the course's captioner): the input is the frozen CNN feature map of
    :func:`stem_features`, (40, 8, 8), cut into ``patch_size`` x ``patch_size`` cells per
    token (default 2: a 4x4 grid of 16 tokens, one per 16x16-pixel region, four per
    quadrant) -- the *hybrid* ViT of Dosovitskiy et al. (2021). ``encoder="pixels"``: the ViT
    reads the 64x64 RGB pixels in ``patch_size`` patches (default 8: 64 tokens; 16 gives the
    hybrid's 4x4 grid), trained from scratch like notebook 06's. Introduced in notebook 10.
    """
    from transformers import ViTConfig

    if encoder not in ENCODERS:
        raise CourseError(f"encoder must be one of {ENCODERS}, got {encoder!r}")
    if hidden_size % num_heads:
        raise CourseError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
    size, channels = (STEM_GRID, STEM_CHANNELS) if encoder == "hybrid" else (64, 3)
    patch = int(patch_size or (2 if encoder == "hybrid" else 8))
    if patch < 1 or size % patch:
        raise CourseError(f"patch_size {patch} must divide the encoder input's {size} x {size} grid")
    return ViTConfig(image_size=size, patch_size=patch, num_channels=channels, hidden_size=hidden_size,
                     num_hidden_layers=num_layers, num_attention_heads=num_heads,
                     intermediate_size=int(round(mlp_ratio * hidden_size)), hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, layer_norm_eps=1e-6)


def build_captioner(tokenizer: Any, *, encoder: str = "hybrid", hidden_size: int = 128, encoder_layers: int = 3,
                    decoder_layers: int = 2, num_heads: int = 4, patch_size: int | None = None, mlp_ratio: float = 2.0,
                    dropout: float = 0.0, max_len: int = MAX_LEN) -> Any:
    """A ``VisionEncoderDecoderModel``: a small ViT encoder + a GPT-2 decoder with cross-attention.

    The encoder is :func:`scene_vit_config` (``encoder="hybrid"``: reads :func:`stem_features`;
    ``"pixels"``: reads :func:`pixel_values`). The decoder (``GPT2Config(add_cross_attention=True)``)
    has ``decoder_layers`` blocks of width ``hidden_size``; each attends causally to the
    caption so far, then to the encoder tokens (class token + a 4x4 grid by default). Input
    (B, C, H, W) float32 as :func:`encoder_inputs` makes it; output logits (B, T, vocab).
    Generation settings ([BOS] starts, [EOS] ends, ``max_len`` tokens at most) are stored in
    ``model.generation_config``. Introduced in notebook 10.
    """
    from transformers import GPT2Config, GPT2LMHeadModel, GenerationConfig, VisionEncoderDecoderModel, ViTModel

    _check_tokenizer(tokenizer, "build_captioner")
    enc_cfg = scene_vit_config(encoder, hidden_size, encoder_layers, num_heads, mlp_ratio, patch_size)
    dec_cfg = GPT2Config(
        vocab_size=len(tokenizer), n_positions=max_len, n_embd=hidden_size, n_layer=decoder_layers,
        n_head=num_heads, n_inner=int(round(mlp_ratio * hidden_size)), add_cross_attention=True,
        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, is_decoder=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    # the encoder's pooler is unused (cross-attention reads every token); it is kept so that
    # from_pretrained rebuilds exactly this module
    model = VisionEncoderDecoderModel(encoder=ViTModel(enc_cfg), decoder=GPT2LMHeadModel(dec_cfg))
    model.config.decoder_start_token_id = tokenizer.bos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.generation_config = GenerationConfig(
        decoder_start_token_id=tokenizer.bos_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, max_length=max_len)
    return model


def _check_scenes(images: Any, where: str) -> np.ndarray:
    X = np.asarray(images)
    if X.ndim == 3:
        X = X[None]
    if X.ndim != 4 or X.shape[1:] != (64, 64, 3):
        raise CourseError(f"{where}: expected FashionScenes images (N, 64, 64, 3), got shape {X.shape}. "
                          "Fix: pass scenes.images (RGB, channels last).")
    if X.dtype != np.uint8:
        raise CourseError(f"{where}: expected uint8 images in [0, 255], got {X.dtype}. "
                          "Fix: (img * 255).round().astype(np.uint8) for float images in [0, 1].")
    return X


def pixel_values(images: np.ndarray) -> "torch.Tensor":
    """FashionScenes images -> the pixel ViT's input, normalised like ``cl.train.make_loader``.

    ``images``: (N, 64, 64, 3) uint8 RGB in [0, 255] (one image (64, 64, 3) is also taken).
    Returns float32 (N, 3, 64, 64) in [-1, 1]. Introduced in notebook 10.
    """
    import torch

    from . import train

    X = _check_scenes(images, "pixel_values")
    t = torch.from_numpy(np.ascontiguousarray(X)).permute(0, 3, 1, 2).float().div_(255.0)
    return (t - train.MEAN) / train.STD


def _stem() -> Any:
    from . import models

    return models.memo("efficientnet-lite0-frozen", lambda: models.load_imagenet_cnn()[0].requires_grad_(False).eval())


def stem_features(images: np.ndarray, batch_size: int = 256, progress: bool = False) -> "torch.Tensor":
    """The hybrid captioner's input: a frozen ImageNet CNN's feature map of each scene.

    EfficientNet-Lite0 (``cl.models.load_imagenet_cnn``, weights frozen) runs on the 64x64
    scene at its own resolution, normalised ``(x - 127) / 128`` as in its training, and stops
    after block 4 (stride 8): ``images`` (N, 64, 64, 3) uint8 -> float32 (N, 40, 8, 8) on the
    CPU. Each of the 8x8 cells sees the same 8x8-pixel patch a pixel ViT would, through
    early ImageNet filters (edges, colour blobs, stripes) with a wider receptive field. About
    as much compute as one forward pass of the captioner. Introduced in notebook 10.
    """
    import torch

    X = _check_scenes(images, "stem_features")
    cnn = _stem()
    dev = next(cnn.parameters()).device
    out = []
    starts = range(0, len(X), batch_size)
    if progress:
        from .viz import progress as bar

        starts = bar(starts, desc="CNN stem features", unit="batch")
    with torch.no_grad():
        for s in starts:
            x = torch.from_numpy(np.ascontiguousarray(X[s: s + batch_size])).permute(0, 3, 1, 2).float()
            x = ((x - 127.0) / 128.0).to(dev)
            x = cnn._swish(cnn._bn0(cnn._conv_stem(x)))
            for block in cnn._blocks[: STEM_BLOCKS]:
                x = block(x)
            out.append(x.float().cpu())
    return torch.cat(out)


def encoder_inputs(model: Any, images: Any) -> "torch.Tensor":
    """What ``model``'s encoder reads for these scenes: :func:`stem_features` for a hybrid
    captioner, :func:`pixel_values` for a pixel one. Inputs already in that form (a float
    array or tensor (N, C, H, W) matching the encoder) are passed through, so features can be
    computed once and reused. Introduced in notebook 10.
    """
    import torch

    cfg = model.config.encoder
    shape = (cfg.num_channels, cfg.image_size, cfg.image_size)
    if isinstance(images, torch.Tensor) or (isinstance(images, np.ndarray) and images.dtype.kind == "f"):
        t = torch.as_tensor(images, dtype=torch.float32)
        if t.ndim != 4 or tuple(t.shape[1:]) != shape:
            raise CourseError(f"encoder_inputs: float inputs must be (N, {shape[0]}, {shape[1]}, {shape[2]}) "
                              f"for this captioner, got {tuple(t.shape)}. Fix: pass the uint8 scenes instead.")
        return t
    return stem_features(images) if cfg.num_channels == STEM_CHANNELS else pixel_values(images)


class LengthBuckets:
    """A batch sampler that puts sequences of similar length together (less padding).

    Each epoch, the indices are sorted by length plus a random jitter of up to ``jitter``
    tokens, cut into batches of ``batch_size``, and the batches are shuffled; with
    ``shuffle=False`` the batches are the plain order. ``lengths``: (N,) ints. Seeded with
    ``seed``, so runs repeat. Introduced in notebook 10 (also used by notebook 11's QA model).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool = True, seed: int = 0,
                 jitter: float = 3.0):
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise CourseError(f"batch_size must be a positive int, got {batch_size!r}")
        self.lengths = np.asarray(lengths, dtype=np.float64)
        self.batch_size, self.shuffle, self.jitter = int(batch_size), bool(shuffle), float(jitter)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        n = len(self.lengths)
        if not self.shuffle:
            yield from (list(range(s, min(n, s + self.batch_size))) for s in range(0, n, self.batch_size))
            return
        order = np.argsort(self.lengths + self.rng.uniform(0, self.jitter, n), kind="stable")
        batches = [order[s: s + self.batch_size].tolist() for s in range(0, n, self.batch_size)]
        for b in self.rng.permutation(len(batches)):
            yield batches[b]


def caption_loader(inputs: Any, ids: np.ndarray, batch_size: int = 64, shuffle: bool = False, seed: int = 0) -> Any:
    """A DataLoader of ``(X, ids)`` batches for ``cl.train.fit`` with :func:`caption_step`.

    ``inputs``: encoder inputs (N, C, H, W) float32 (:func:`encoder_inputs`); ``ids``: (N, L)
    int64 from :func:`encode_captions`. With ``shuffle``, batches group captions of similar
    length (:class:`LengthBuckets`: one-item captions are a third as long as three-item ones,
    and a batch costs as much as its longest caption) and come in a new random order each
    epoch, seeded with ``seed``. Introduced in notebook 10.
    """
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    X = torch.as_tensor(inputs, dtype=torch.float32)
    y = torch.as_tensor(np.asarray(ids), dtype=torch.long)
    if X.ndim != 4 or y.ndim != 2 or len(X) != len(y):
        raise CourseError(f"caption_loader: expected inputs (N, C, H, W) and ids (N, L) with the same N, "
                          f"got {tuple(X.shape)} and {tuple(y.shape)}")
    lengths = (y != 0).sum(1).numpy()  # [PAD] is id 0 in every course tokenizer
    return DataLoader(TensorDataset(X, y), batch_sampler=LengthBuckets(lengths, batch_size, shuffle, seed))


def _trim(ids: "torch.Tensor", pad_id: int) -> "torch.Tensor":
    """Drop the columns that are padding in every row (saves decoder time on short captions)."""
    keep = int((ids != pad_id).sum(1).max())
    return ids[:, : max(keep, 2)]


def _teacher_forced(model: Any, X: "torch.Tensor", ids: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
    """The one teacher-forced pass: logits (B, T, V) float32 for inputs ``ids[:, :-1]`` and the
    targets ``ids[:, 1:]`` (B, T), padding columns trimmed."""
    pad = model.config.pad_token_id
    ids = _trim(ids, pad)
    inp = ids[:, :-1]
    logits = model(pixel_values=X, decoder_input_ids=inp, decoder_attention_mask=(inp != pad).long()).logits
    return logits.float(), ids[:, 1:]


def caption_loss(model: Any, X: "torch.Tensor", ids: "torch.Tensor", label_smoothing: float = 0.0,
                 reduction: str = "mean") -> "torch.Tensor":
    """Teacher-forced cross-entropy of captions ``ids`` (B, L) int64 given encoder inputs ``X``.

    The decoder reads ``ids[:, :-1]`` (starting at [BOS]) and is scored on predicting
    ``ids[:, 1:]`` (ending at [EOS]); padding is ignored. ``reduction="sum"`` returns the
    summed loss (for averaging over a whole set). Introduced in notebook 10.
    """
    from torch.nn import functional as F

    logits, target = _teacher_forced(model, X, ids)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                           ignore_index=model.config.pad_token_id, label_smoothing=label_smoothing,
                           reduction=reduction)


def caption_step(model: Any, batch: tuple, device: Any) -> "torch.Tensor":
    """``step_fn`` for ``cl.train.fit``: batch ``(X, ids)`` -> mean teacher-forced loss (scalar).

    ``X`` float (B, C, H, W) encoder inputs and ``ids`` int64 (B, L), as
    :func:`caption_loader` yields them. Introduced in notebook 10.
    """
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise CourseError("caption_step: expected batches (X, ids); build the loader with "
                          "cl.caption.caption_loader(encoder_inputs(model, images), encode_captions(tok, captions))")
    return caption_loss(model, batch[0].to(device), batch[1].to(device))


def caption_eval(model: Any, loader: Any, device: Any) -> dict[str, float]:
    """``eval_fn`` for ``cl.train.fit``: ``val_loss`` (per token) and ``val_token_acc`` in [0, 1].

    Token accuracy is teacher-forced: the fraction of caption tokens (incl. [EOS]) whose
    most likely prediction, given the true words before it, is right. Introduced in notebook 10.
    """
    import torch
    from torch.nn import functional as F

    model.eval()
    pad = model.config.pad_token_id
    loss_sum, correct, total = 0.0, 0, 0
    with torch.no_grad():
        for X, ids in loader:
            logits, target = _teacher_forced(model, X.to(device), ids.to(device))
            mask = target != pad
            loss_sum += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                              ignore_index=pad, reduction="sum"))
            correct += int(((logits.argmax(-1) == target) & mask).sum())
            total += int(mask.sum())
    if total == 0:
        raise CourseError("caption_eval: the loader yielded no caption tokens")
    return {"val_loss": loss_sum / total, "val_token_acc": correct / total}


# --------------------------------------------------------------------------- saving


@contextlib.contextmanager
def _errors_only() -> Iterator[None]:
    """transformers' log at error level inside the block (``generate`` warns about the padding
    of finished rows, ``from_pretrained`` reports unused keys); progress bars are
    ``cl.models.quiet_loading``'s job."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


#: the name notebook 10 gives ``cl.train.load_or_train`` for its captioner
CHECKPOINT_NAME = "captioner"


def captioner_checkpoint(scale: str | None = None) -> Path:
    """Where notebook 10 saves its captioner: ``cl.train.checkpoint_dir("captioner")``, i.e.
    ``cache_dir()/"checkpoints"/f"captioner-{scale}"`` (``scale``: another profile's folder).

    Introduced in notebook 10; notebooks 11 and 12 load it from there when present.
    """
    from . import train

    if scale is None:
        return train.checkpoint_dir(CHECKPOINT_NAME)
    if scale not in config.SCALES:
        raise CourseError(f"scale must be one of {config.SCALES}, got {scale!r}")
    return config.cache_dir() / "checkpoints" / f"{CHECKPOINT_NAME}-{scale}"


def save_captioner(model: Any, tokenizer: Any, directory: str | os.PathLike, history: Any = None,
                   extra: dict[str, Any] | None = None) -> Path:
    """Save the model, its tokenizer and its training history together, atomically.

    Everything is written into a temporary folder beside ``directory`` (model and history
    through ``cl.train.save_checkpoint``, then ``tokenizer.json``) and renamed into place
    only when complete, so a crash never leaves a model without its tokenizer. ``extra`` (a
    JSON-ready dict, e.g. ``{"recipe": {...}}``) is merged into ``training.json``, as
    ``cl.train.save_checkpoint`` does; ``cl.train.saved_recipe`` reads the recipe back. With
    the tokenizer bound, this is the ``save`` of ``cl.train.load_or_train``:
    ``save=lambda m, d, h, extra: save_captioner(m, tok, d, h, extra)``. Returns the path.
    Introduced in notebook 10.
    """
    from . import models, train

    _check_tokenizer(tokenizer, "save_captioner")
    from .cache import write_dir_atomically

    def write(folder: Path) -> None:
        with models.quiet_loading(), _errors_only():
            train.save_checkpoint(model, folder, history, dict(extra or {}))
            tokenizer.save_pretrained(folder)
        (folder / TOKENIZER_INFO).write_text(json.dumps({"vocab_size": len(tokenizer)}) + "\n")

    return write_dir_atomically(directory, write)


def load_captioner(directory: str | os.PathLike, device: Any = None) -> tuple[Any, Any, Any]:
    """Load what :func:`save_captioner` wrote: ``(model, tokenizer, history_or_None)``.

    The model is in eval mode on ``device`` (default ``cl.config.device()``). A folder
    without the model or its tokenizer raises a CourseError. Introduced in notebook 10.
    """
    from transformers import PreTrainedTokenizerFast, VisionEncoderDecoderModel

    from . import models, train

    path = Path(directory)
    missing = [f for f in ("config.json", "model.safetensors", "tokenizer.json", TOKENIZER_INFO)
               if not (path / f).exists()]
    if missing:
        raise CourseError(f"no complete captioner in {config.display_path(path)} (missing {missing}). "
                          "Fix: run notebook 10 (it saves one there), or train one with "
                          "cl.caption.train_captioner(...).")
    with models.quiet_loading(), _errors_only():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
        model = VisionEncoderDecoderModel.from_pretrained(path)
    if model.config.decoder.vocab_size != len(tokenizer):
        raise CourseError(f"captioner in {config.display_path(path)}: decoder vocabulary "
                          f"{model.config.decoder.vocab_size} != tokenizer size {len(tokenizer)}")
    model.to(device or config.device()).eval()
    return model, tokenizer, train.load_history(path)


def train_captioner(n_train: int, num_epochs: int, *, n_val: int = 500, batch_size: int = 64, lr: float = 2e-3,
                    seed: int = 0, directory: str | os.PathLike | None = None, progress: bool = True,
                    **model_kwargs: Any) -> tuple[Any, Any, Any]:
    """Train a captioner on ``n_train`` fresh training scenes in one call; returns ``(model, tokenizer, history)``.

    The same recipe notebook 10 writes out step by step (tokenizer, model, teacher forcing
    with ``cl.train.fit``); saved with :func:`save_captioner` when ``directory`` is given.
    Notebook 11 uses it when notebook 10's checkpoint is missing. Introduced in notebook 11.
    """
    from . import data, train

    if n_train < 1 or num_epochs < 1:
        raise CourseError(f"train_captioner: need n_train >= 1 and num_epochs >= 1, got {n_train}, {num_epochs}")
    scenes = data.make_scenes(int(n_train), "train", seed=seed)
    val = data.make_scenes(int(n_val), "val", seed=seed)
    tokenizer = build_tokenizer()
    config.seed_everything(seed)
    model = build_captioner(tokenizer, **model_kwargs)
    loader = caption_loader(encoder_inputs(model, scenes.images), encode_captions(tokenizer, scenes.captions, MAX_LEN),
                            batch_size=batch_size, shuffle=True, seed=seed)
    val_loader = caption_loader(encoder_inputs(model, val.images), encode_captions(tokenizer, val.captions, MAX_LEN),
                                batch_size=256)
    history = train.fit(model, loader, val_loader, num_epochs=num_epochs, lr=lr, step_fn=caption_step,
                        eval_fn=caption_eval, progress=progress)
    model.eval()
    if directory is not None:
        save_captioner(model, tokenizer, directory, history, {"recipe": {
            "n_train": int(n_train), "num_epochs": int(num_epochs), "seed": int(seed), **model_kwargs}})
    return model, tokenizer, history


# --------------------------------------------------------------------------- decoding


def generate_ids(model: Any, images: np.ndarray, *, method: str = "greedy", num_beams: int = 4,
                 length_penalty: float = 1.0, temperature: float = 1.0, top_k: int = 0,
                 max_len: int | None = None, batch_size: int = 256, seed: int = 0,
                 progress: bool = False) -> list[list[int]]:
    """Token ids of generated captions, one list per image, from [BOS] up to and including [EOS].

    ``images``: (N, 64, 64, 3) uint8 scenes, or their :func:`encoder_inputs` computed
    beforehand. ``method``: ``"greedy"`` (most likely next word each
    step), ``"beam"`` (``num_beams`` partial captions kept; finished ones ranked by
    ``sum log p / length ** length_penalty``: 0 favours short captions, larger values
    longer ones), ``"sample"`` (draw each word from softmax(logits / ``temperature``),
    restricted to the ``top_k`` most likely when ``top_k`` > 0; reproducible via ``seed``,
    without touching the global random state). Runs transformers' ``generate``.
    Introduced in notebook 10.
    """
    import torch

    if method not in DECODING_METHODS:
        raise CourseError(f"method must be one of {DECODING_METHODS}, got {method!r}")
    if method == "beam" and (not isinstance(num_beams, int) or num_beams < 1):
        raise CourseError(f"num_beams must be a positive int, got {num_beams!r}")
    if method == "sample" and not temperature > 0:
        raise CourseError(f"temperature must be > 0, got {temperature}")
    X = encoder_inputs(model, images)
    dev = next(model.parameters()).device
    model.eval()
    kw: dict[str, Any] = dict(max_length=int(max_len or model.generation_config.max_length))
    if method == "greedy":
        kw.update(do_sample=False, num_beams=1)
    elif method == "beam":
        kw.update(do_sample=False, num_beams=num_beams, length_penalty=float(length_penalty),
                  early_stopping=True)
    else:
        kw.update(do_sample=True, num_beams=1, temperature=float(temperature), top_k=int(top_k), top_p=1.0)
    eos = model.generation_config.eos_token_id
    out: list[list[int]] = []
    starts = range(0, len(X), batch_size)
    if progress:
        from .viz import progress as bar

        starts = bar(starts, desc=f"{method} decoding", unit="batch")
    with torch.no_grad(), torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        for s in starts:
            with _errors_only():  # finished rows are padded; transformers warns about that
                seqs = model.generate(X[s: s + batch_size].to(dev), **kw).cpu().tolist()
            for row in seqs:
                if eos in row[1:]:  # finished: cut the padding after [EOS]
                    row = row[: row.index(eos, 1) + 1]
                out.append(row)
    return out


def generate(model: Any, tokenizer: Any, images: np.ndarray, **kwargs: Any) -> list[str]:
    """Generated captions (one string per image); takes :func:`generate_ids`'s options
    (``method="greedy" | "beam" | "sample"``, ``num_beams``, ``length_penalty``, ...).
    Introduced in notebook 10."""
    return decode_ids(tokenizer, generate_ids(model, images, **kwargs))


def sequence_logprob(model: Any, images: np.ndarray, ids: Sequence[Sequence[int]], batch_size: int = 256) -> np.ndarray:
    """The model's log-probability of each caption given its image: float64 (N,), <= 0.

    ``images``: scenes or their :func:`encoder_inputs`. ``ids``: one token list per image, starting with [BOS] and ending with [EOS] (as
    :func:`generate_ids` returns them); the sum of ``log p(word | image, words before)``
    over every token after [BOS], [EOS] included. Introduced in notebook 10.
    """
    import torch

    X = encoder_inputs(model, images)
    if len(ids) != len(X):
        raise CourseError(f"sequence_logprob: {len(X)} images but {len(ids)} captions")
    pad = model.config.pad_token_id
    dev = next(model.parameters()).device
    out = np.zeros(len(ids))
    model.eval()
    with torch.no_grad():
        for s in range(0, len(ids), batch_size):
            rows = [list(r) for r in ids[s: s + batch_size]]
            L = max(len(r) for r in rows)
            t = torch.full((len(rows), L), pad, dtype=torch.long)
            for i, r in enumerate(rows):
                t[i, : len(r)] = torch.tensor(r)
            t = t.to(dev)
            inp = t[:, :-1]
            lengths = torch.tensor([len(r) - 1 for r in rows], device=dev)
            mask = torch.arange(L - 1, device=dev)[None] < lengths[:, None]  # real (non-padding) steps
            logits = model(pixel_values=X[s: s + len(rows)].to(dev), decoder_input_ids=inp,
                           decoder_attention_mask=mask.long()).logits.float()
            lp = torch.log_softmax(logits, -1).gather(-1, t[:, 1:, None])[..., 0]
            out[s: s + len(rows)] = (lp * mask).sum(1).double().cpu().numpy()
    return out


def cross_attention_maps(model: Any, image: np.ndarray, ids: Sequence[int], layer: int = -1) -> np.ndarray:
    """Where the decoder looks while writing each word: float32 (T, gh, gw), heads averaged.

    ``image``: one scene (64, 64, 3) uint8; ``ids``: its caption's tokens from [BOS] to
    [EOS] (T + 1 of them). Row t is the cross-attention of decoder ``layer`` at the step that
    *predicts* token t + 1, over the grid of encoder tokens (4x4 for the default hybrid
    captioner, each token a 16x16-pixel region; the class token's share is dropped, so
    a row sums to at most 1). Computed by one teacher-forced pass over the generated
    tokens, which gives the same attention as during generation (the decoder is causal).
    Introduced in notebook 10.
    """
    import torch

    ids = list(ids)
    if len(ids) < 2:
        raise CourseError("cross_attention_maps: need at least [BOS] and one more token")
    img = np.asarray(image)
    if img.shape != (64, 64, 3):
        raise CourseError(f"cross_attention_maps: expected one scene (64, 64, 3), got {img.shape}")
    dev = next(model.parameters()).device
    previous = model.decoder.config._attn_implementation
    model.decoder.set_attn_implementation("eager")  # sdpa kernels do not return attention weights
    try:
        with torch.no_grad():
            encoded = model.encoder(pixel_values=encoder_inputs(model, img).to(dev))
            out = model(encoder_outputs=encoded, decoder_input_ids=torch.tensor([ids[:-1]], device=dev),
                        output_attentions=True)
    finally:
        model.decoder.set_attn_implementation(previous)
    att = out.cross_attentions[layer][0].float().mean(0)  # (T, 1 + gh*gw)
    g = int(round(math.sqrt(att.shape[-1] - 1)))
    return att[:, 1:].reshape(-1, g, g).cpu().numpy().astype(np.float32)
