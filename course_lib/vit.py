"""The course's small Vision Transformer recipe for Fashion-MNIST (notebook 06, reused in 12).

``fmnist_vit_config`` builds the ``ViTConfig``; ``input_transform`` gives what such a model
expects done to its [0, 1] images (shifted patches, edge channels); ``fmnist_vit_checkpoint``
is where notebook 06 keeps it. The training loop itself is :mod:`course_lib.train`, which has
nothing to do with ViTs specifically.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from . import config
from .config import CourseError
from .train import Transform, check_batch

#: The diagonal directions (dy, dx) of the four shifted copies made by :func:`shift_patches`.
SHIFT_DIRECTIONS = ((-1, -1), (-1, 1), (1, -1), (1, 1))
_SHIFTED_COPIES = 1 + len(SHIFT_DIRECTIONS)     # the image and its shifted copies: 5 channels per input channel


def shift_patches(X: torch.Tensor, shift: int) -> torch.Tensor:
    """Shifted patch tokenisation (Lee, Lee & Song, 2021): the image plus four shifted copies.

    ``X``: float (B, C, H, W) in [0, 1]. Returns float (B, 5 * C, H, W): the images, then the
    same images moved ``shift`` pixels along each diagonal of :data:`SHIFT_DIRECTIONS`
    (content moves by (dy, dx) * shift; uncovered pixels are 0, black, so apply it before
    normalisation, as :func:`make_loader` does with a ``transform``). A ViT whose patches are
    ``p`` pixels wide, fed these 5 * C channels with ``shift = p // 2``, gives every patch token
    the pixels half a patch beyond its own border too: the patch embedding, a linear map of
    the token's pixels, now also sees the edges and strokes that cross into the neighbouring
    patches. ``shift=0`` returns ``X`` unchanged. Introduced in notebook 06.
    """
    check_batch(X, "shift_patches")
    if not isinstance(shift, (int, np.integer)) or shift < 0:
        raise CourseError(f"shift_patches: shift must be an int >= 0, got {shift!r}")
    if shift == 0:
        return X
    H, W = X.shape[-2:]
    if shift >= min(H, W):
        raise CourseError(f"shift_patches: shift {shift} must be smaller than the image ({H}x{W})")
    s = int(shift)
    padded = F.pad(X, (s, s, s, s))
    copies = [padded[..., s - dy * s:s - dy * s + H, s - dx * s:s - dx * s + W] for dy, dx in SHIFT_DIRECTIONS]
    return torch.cat([X, *copies], dim=1)


def abs_gradients(X: torch.Tensor) -> torch.Tensor:
    """Edge strength across and down: float (B, C, H, W) in [0, 1] -> float (B, 2 * C, H, W) >= 0.

    ``|gx|`` for every channel, then ``|gy|``, with the central differences ``gx = X[x+1] -
    X[x-1]`` along each row and ``gy`` down each column (the kernel ``[-1, 0, 1]``, twice notebook
    02's ``[-1/2, 0, 1/2]``, so a sharp black-to-white step reads 1, on the scale of the pixels).
    ``|gx|`` lights up vertical edges, ``|gy|`` horizontal ones: together a two-bin, unsigned
    version of the orientation histograms of HOG (notebook 03), whose gradients
    (:func:`course_lib.features.hog_cells`) are these same differences, on uint8 NumPy stacks. Where a neighbour falls outside
    the image its derivative is taken as 0 (``gx`` in the first and last columns, ``gy`` in the
    first and last rows). A patch embedding is a linear map of its pixels, so it cannot compute
    an absolute value itself: fed as extra channels, these hand every patch token the edges of
    Part I. Apply it to [0, 1] images, before normalisation, as :func:`input_transform` does.
    Introduced in notebook 06.
    """
    check_batch(X, "abs_gradients")
    gx = F.pad(X[..., :, 2:] - X[..., :, :-2], (1, 1, 0, 0))
    gy = F.pad(X[..., 2:, :] - X[..., :-2, :], (0, 0, 1, 1))
    return torch.cat([gx.abs(), gy.abs()], dim=1)


def input_transform(cfg: Any) -> Transform | None:
    """What a ViT built by :func:`fmnist_vit_config` expects done to its [0, 1] images.

    ``cfg``: a ``ViTConfig`` (or a model with ``.config``). Returns ``None`` for a plain model
    (1 input channel); for one trained with shifted patches (``cfg.patch_shift > 0``) and/or
    edge channels (``cfg.edge_channels``) a function (B, 1, H, W) -> (B, C, H, W): the images,
    or their :func:`shift_patches` (5 channels) when shifted, then, with edge channels, their
    :func:`abs_gradients` (2 more). Pass it as ``transform`` to :func:`make_loader` (composed
    after any augmentation) for training, validation, test and every later use of the
    checkpoint; both settings are saved in the checkpoint's ``config.json``.
    Introduced in notebook 06 (used again in 12).
    """
    cfg = getattr(cfg, "config", cfg)
    shift = int(getattr(cfg, "patch_shift", 0) or 0)
    edges = bool(getattr(cfg, "edge_channels", False))
    channels = int(getattr(cfg, "num_channels", 1))
    expected = _input_channels(shift, edges)
    if channels != expected:
        raise CourseError(f"input_transform: a config with patch_shift={shift} and edge_channels={edges} should "
                          f"have {expected} input channel(s), got num_channels={channels}. "
                          "Fix: build it with cl.vit.fmnist_vit_config(shifted_patches=..., edge_channels=...).")
    if not shift and not edges:
        return None

    def transform(X: torch.Tensor) -> torch.Tensor:
        out = shift_patches(X, shift)
        return torch.cat([out, abs_gradients(X)], dim=1) if edges else out

    return transform


def _input_channels(shift: int, edges: bool) -> int:
    """Input channels of a grey-image ViT: 1, times 5 with shifted patches, plus 2 edge channels."""
    return (_SHIFTED_COPIES if shift else 1) + 2 * int(edges)


def fmnist_vit_config(patch_size: int = 7, hidden_size: int = 96, num_layers: int = 4, num_heads: int = 4,
                      mlp_ratio: float = 2.0, dropout: float = 0.0, init_std: float = 0.1,
                      shifted_patches: bool = False, edge_channels: bool = False,
                      attn_implementation: str = "eager"):
    """The course's small ViT recipe for Fashion-MNIST (28x28 grey, 10 classes) as a ``ViTConfig``.

    The defaults (patch 7: 16 patch tokens + the class token, width 96, 4 layers, 4 heads, MLP
    192, about 310k parameters), with ``shifted_patches=True, edge_channels=True`` (7 input
    channels, about 335k), are what notebook 06 trains from scratch in a few minutes on a
    2-core CPU; smaller patches see finer detail but cost about 3x more per image at patch 4.

    ``patch_size`` must divide 28 (1, 2, 4, 7, 14, 28): ``(28 / patch_size)**2`` patch tokens
    plus the class token. ``hidden_size`` (width, divisible by ``num_heads``), ``num_layers``,
    ``mlp_ratio`` (MLP width / token width), ``dropout`` (hidden dropout). ``init_std``: the
    standard deviation of the random initial weights (``initializer_range``); transformers'
    default 0.02 suits widths near 768, while for a width of about 100 a value near
    ``1 / sqrt(width)`` keeps the signal from vanishing and trains faster. Build the model with
    ``ViTForImageClassification(cfg)``; its labels are :data:`course_lib.data.FASHION_CLASSES`.
    Inputs: float (B, 1, 28, 28) as :func:`make_loader` makes them.

    ``shifted_patches``: feed the model :func:`shift_patches` of its images with a shift of
    ``patch_size // 2`` (5 input channels; the shift is kept as ``cfg.patch_shift`` and
    :func:`input_transform` returns the transform to use). ``edge_channels``: append the
    images' :func:`abs_gradients`, ``|gx|`` and ``|gy|``, as two more channels (kept as
    ``cfg.edge_channels``; 7 channels with shifted patches). ``attn_implementation``:
    ``"eager"`` (attention as plain matrix products) trains these 17-token models faster on a
    CPU than the fused ``"sdpa"`` kernel (notebook 06 times both); the choice is not saved in
    the checkpoint, and ``from_pretrained`` uses transformers' default. Introduced in
    notebook 06 (reloaded in 12 from :func:`fmnist_vit_checkpoint`).
    """
    from transformers import ViTConfig

    if not isinstance(patch_size, (int, np.integer)) or patch_size < 1 or 28 % patch_size:
        raise CourseError(f"patch_size must divide 28 (1, 2, 4, 7, 14 or 28), got {patch_size!r}")
    if hidden_size % num_heads:
        raise CourseError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
    if not init_std > 0:
        raise CourseError(f"init_std must be positive, got {init_std}")
    from .data import FASHION_CLASSES

    if attn_implementation not in ("eager", "sdpa"):
        raise CourseError(f"attn_implementation must be 'eager' or 'sdpa', got {attn_implementation!r}")
    shift = int(patch_size) // 2 if shifted_patches else 0
    if shifted_patches and shift == 0:
        raise CourseError("shifted_patches needs patch_size >= 2 (the shift is patch_size // 2)")
    return ViTConfig(
        image_size=28, patch_size=int(patch_size), num_channels=_input_channels(shift, edge_channels),
        hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
        intermediate_size=int(round(mlp_ratio * hidden_size)), hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=0.0, layer_norm_eps=1e-6, initializer_range=init_std,
        num_labels=len(FASHION_CLASSES),
        id2label={i: c for i, c in enumerate(FASHION_CLASSES)},
        label2id={c: i for i, c in enumerate(FASHION_CLASSES)},
        patch_shift=shift, edge_channels=bool(edge_channels), attn_implementation=attn_implementation,
    )


def fmnist_vit_checkpoint() -> Path:
    """Where notebook 06 saves its trained ViT: ``cache_dir()/"checkpoints"/f"vit-fmnist-{scale}"``.

    Load it with ``ViTForImageClassification.from_pretrained(path)`` when ``path.exists()``.
    Introduced in notebook 06.
    """
    return config.cache_dir() / "checkpoints" / f"vit-fmnist-{config.scale()}"
