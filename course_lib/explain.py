"""Looking inside a Vision Transformer: attention maps, attention rollout, patch-token PCA,
token norms, and overlays of any of them on the image.

Introduced in notebook 07 (DINOv2-S on real photos); works on any Hugging Face ViT-like
model whose base model returns ``last_hidden_state`` and can record ``attentions`` and
``hidden_states``: ``Dinov2Model``, ``ViTModel``, ``ViTForImageClassification`` (also a
small one trained from scratch on 28 x 28 grey images, notebook 06), ... Usage::

    toks = cl.explain.run_vit(model, x)                  # one forward pass, everything kept
    attn = cl.explain.cls_attention(toks.attentions, toks.grid, toks.prefix)   # (N, heads, gh, gw)
    roll = cl.explain.attention_rollout(toks.attentions, toks.grid, toks.prefix)  # (N, gh, gw)
    rgb = cl.explain.pca_rgb(toks.patches)               # (N, gh, gw, 3) in [0, 1]
    cl.explain.overlay(image, roll[0])                    # (H, W, 3) uint8

Token layout: a ViT's sequence is ``prefix`` tokens (the CLS token, plus register tokens
in models that have them) followed by ``gh * gw`` patch tokens in row-major order, so
``tokens[:, prefix:].reshape(N, gh, gw, D)`` puts every patch back where it came from.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import CourseError


# ------------------------------------------------------------------------ helpers


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """A torch tensor or array-like -> float32 NumPy array (detached, on the CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError):
        raise CourseError(f"{name}: expected a NumPy array or torch tensor of numbers, "
                          f"got {type(x).__name__}") from None
    if not np.all(np.isfinite(arr)):
        raise CourseError(f"{name}: contains NaN or inf; check the model's input")
    return arr


def _patch_size(config: Any) -> tuple[int, int]:
    p = getattr(config, "patch_size", None)
    if p is None:
        raise CourseError(f"the model's config ({type(config).__name__}) has no patch_size: "
                          "course_lib.explain works with ViT-like models (ViT, DINOv2, ...)")
    return (int(p[0]), int(p[1])) if isinstance(p, (tuple, list)) else (int(p), int(p))


def _check_grid(grid: Any) -> tuple[int, int]:
    try:
        gh, gw = (int(g) for g in grid)
    except (TypeError, ValueError):
        raise CourseError(f"grid must be (rows, cols) of patches, e.g. (16, 16); got {grid!r}") from None
    if gh < 1 or gw < 1:
        raise CourseError(f"grid must have positive sides, got {grid!r}")
    return gh, gw


def _check_attentions(attentions: Any, name: str = "attentions") -> np.ndarray:
    """Return attentions as float32 (L, N, heads, T, T), checking the layout."""
    if isinstance(attentions, (list, tuple)):
        if len(attentions) == 0:
            raise CourseError(f"{name}: got an empty tuple. The model recorded no attention "
                              "maps: run it through cl.explain.run_vit (which switches to eager "
                              "attention), or load it with attn_implementation='eager'.")
        attentions = np.stack([_to_numpy(a, name) for a in attentions])
    a = _to_numpy(attentions, name)
    if a.ndim == 4:  # a single layer (N, heads, T, T)
        a = a[None]
    if a.ndim != 5 or a.shape[-1] != a.shape[-2]:
        raise CourseError(f"{name}: expected shape (layers, N, heads, T, T) (or one layer "
                          f"(N, heads, T, T)) of attention probabilities, got {a.shape}")
    rows = a.sum(-1)
    if a.min() < -1e-4 or not np.allclose(rows, 1.0, atol=1e-3):
        raise CourseError(f"{name}: rows should be probabilities (>= 0, each row summing to 1), "
                          f"but row sums range {rows.min():.3g}..{rows.max():.3g}. Pass the "
                          "softmax-ed attention maps (outputs.attentions), not scores or logits.")
    return a


def _check_patches(patches: Any, name: str = "patches") -> np.ndarray:
    p = _to_numpy(patches, name)
    if p.ndim == 3:  # one image (gh, gw, D)
        p = p[None]
    if p.ndim != 4:
        raise CourseError(f"{name}: expected patch tokens of shape (N, gh, gw, D) (e.g. "
                          f"ViTTokens.patches), got {p.shape}. From (N, T, D) tokens use "
                          "tokens[:, prefix:].reshape(N, gh, gw, D).")
    return p


def _check_mask(mask: Any, shape: tuple[int, ...], name: str = "mask") -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim == len(shape) - 1:
        m = m[None]
    if m.shape != shape or m.dtype != bool:
        raise CourseError(f"{name}: expected a bool array of shape {shape} (one flag per patch), "
                          f"got {m.dtype} {m.shape}")
    return m


# ------------------------------------------------------------------ running a ViT


@dataclass
class ViTTokens:
    """What one forward pass of a ViT produced, as float32 NumPy arrays.

    ``final``: (N, T, D) tokens after the model's final LayerNorm (``last_hidden_state``).
    ``hidden``: (L + 1, N, T, D) residual stream: index 0 is the embedding output (patches
    + position embeddings), index k the output of block k (before the final LayerNorm);
    ``None`` when not asked for. ``attentions``: (L, N, heads, T, T) attention
    probabilities of each block (rows sum to 1), ``None`` when not asked for.
    ``grid``: (gh, gw) patches per column and row. ``prefix``: tokens before the patch
    tokens (1 = the CLS token).
    """

    final: np.ndarray
    hidden: np.ndarray | None
    attentions: np.ndarray | None
    grid: tuple[int, int]
    prefix: int

    @property
    def cls(self) -> np.ndarray:
        """(N, D) the final CLS token (the first token)."""
        return self.final[:, 0]

    @property
    def patches(self) -> np.ndarray:
        """(N, gh, gw, D) the final patch tokens, laid out as the image's patch grid."""
        return self.patches_at(None)

    def patches_at(self, layer: int | None) -> np.ndarray:
        """(N, gh, gw, D) patch tokens of the residual stream after block ``layer``
        (0 = embeddings, L = last block, negative counts from the end), or the final
        normalised ones when ``layer`` is None."""
        if layer is None:
            tokens = self.final
        else:
            if self.hidden is None:
                raise CourseError("this ViTTokens has no hidden states: call "
                                  "run_vit(..., hidden_states=True)")
            n_layers = len(self.hidden)
            if not -n_layers <= layer < n_layers:
                raise CourseError(f"layer must be in -{n_layers}..{n_layers - 1} "
                                  f"(0 = embeddings), got {layer}")
            tokens = self.hidden[layer]
        n, _, d = tokens.shape
        return tokens[:, self.prefix:].reshape(n, self.grid[0], self.grid[1], d)


def run_vit(model: Any, pixel_values: Any, *, attentions: bool = True,
            hidden_states: bool = True, batch_size: int = 8) -> ViTTokens:
    """Run a ViT-like Hugging Face model once and keep its tokens and attention maps.

    ``model``: e.g. ``Dinov2Model``, ``ViTModel`` or ``ViTForImageClassification`` (its
    base model is used, so the classifier head is skipped). ``pixel_values``: float
    tensor or array (N, C, H, W) already preprocessed for the model, with H and W
    multiples of the patch size; C must match the model (3 for DINOv2, 1 for a grey
    Fashion-MNIST ViT). Runs in eval mode without gradients, in batches of
    ``batch_size``, on the model's device; the model's mode and attention
    implementation are restored afterwards (attention maps need the "eager"
    implementation, switched on for the call). Memory: the attention maps take
    L * heads * T^2 * 4 bytes per image (19 MB for DINOv2-S at 224 x 224).
    Returns a :class:`ViTTokens`. Introduced in notebook 07.
    """
    import torch

    base = getattr(model, "base_model", model)
    if not isinstance(base, torch.nn.Module) or not hasattr(base, "config"):
        raise CourseError(f"run_vit expects a Hugging Face ViT-like model (e.g. Dinov2Model, "
                          f"ViTForImageClassification), got {type(model).__name__}")
    ph, pw = _patch_size(base.config)
    if isinstance(pixel_values, np.ndarray):
        pixel_values = torch.from_numpy(np.ascontiguousarray(pixel_values, dtype=np.float32))
    if not isinstance(pixel_values, torch.Tensor) or not pixel_values.is_floating_point():
        raise CourseError(f"pixel_values: expected a float tensor (N, C, H, W), got "
                          f"{getattr(pixel_values, 'dtype', type(pixel_values).__name__)}; "
                          "preprocess the images first (e.g. cl.models.dinov2_preprocess)")
    if pixel_values.ndim == 3:
        raise CourseError(f"pixel_values: got one image {tuple(pixel_values.shape)}; expected a "
                          "batch (N, C, H, W). Fix: pixel_values[None]")
    channels = getattr(base.config, "num_channels", pixel_values.shape[1] if pixel_values.ndim == 4 else 3)
    if pixel_values.ndim != 4 or pixel_values.shape[1] != channels:
        raise CourseError(f"pixel_values: expected (N, {channels}, H, W) for this model, got "
                          f"{tuple(pixel_values.shape)}" +
                          (". Channels last? Fix: x.permute(0, 3, 1, 2)"
                           if pixel_values.ndim == 4 and pixel_values.shape[-1] == channels else ""))
    h, w = pixel_values.shape[-2:]
    if h % ph or w % pw:
        raise CourseError(f"pixel_values: image size {h}x{w} is not a multiple of the patch size "
                          f"{ph}x{pw}; resize to e.g. {h // ph * ph}x{w // pw * pw}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise CourseError(f"batch_size must be a positive int, got {batch_size!r}")
    grid = (h // ph, w // pw)

    device = next(base.parameters()).device
    was_training = base.training
    old_impl = getattr(base.config, "_attn_implementation", None)
    switch = attentions and old_impl not in (None, "eager")
    finals, hiddens, attns = [], [], []
    try:
        if switch:
            base.set_attn_implementation("eager")
        base.eval()
        with torch.no_grad():
            for start in range(0, len(pixel_values), batch_size):
                x = pixel_values[start:start + batch_size].to(device)
                out = base(pixel_values=x, output_attentions=attentions,
                           output_hidden_states=hidden_states)
                if getattr(out, "last_hidden_state", None) is None:
                    raise CourseError(f"{type(base).__name__} returned no last_hidden_state; "
                                      "run_vit needs a ViT-like base model")
                finals.append(out.last_hidden_state.float().cpu().numpy())
                if hidden_states:
                    hiddens.append(np.stack([t.float().cpu().numpy() for t in out.hidden_states]))
                if attentions:
                    if not out.attentions or any(a is None for a in out.attentions):
                        raise CourseError(f"{type(base).__name__} recorded no attention maps "
                                          f"(attention implementation {old_impl!r}); load it "
                                          "with attn_implementation='eager'")
                    attns.append(np.stack([a.float().cpu().numpy() for a in out.attentions]))
    finally:
        if switch:
            base.set_attn_implementation(old_impl)
        base.train(was_training)
    final = np.concatenate(finals)
    prefix = final.shape[1] - grid[0] * grid[1]
    if prefix < 0:
        raise CourseError(f"the model returned {final.shape[1]} tokens, fewer than the "
                          f"{grid[0] * grid[1]} patches of a {grid} grid")
    return ViTTokens(
        final=final,
        hidden=np.concatenate(hiddens, axis=1) if hidden_states else None,
        attentions=np.concatenate(attns, axis=1) if attentions else None,
        grid=grid, prefix=int(prefix),
    )


# --------------------------------------------------------------- attention maps


def cls_attention(attentions: Any, grid: tuple[int, int], prefix: int = 1,
                  layer: int = -1) -> np.ndarray:
    """Where the CLS token looks: its attention over the patches, per head, as maps.

    ``attentions``: (L, N, heads, T, T) probabilities (e.g. ``ViTTokens.attentions``, or
    the tuple ``outputs.attentions``). Takes block ``layer`` (default the last), the CLS
    row (query token 0), the patch columns, and renormalises them to sum to 1 per head
    (the CLS token also attends to itself and to any register tokens).
    Returns float32 (N, heads, gh, gw), each map summing to 1. Introduced in notebook 07.
    """
    a = _check_attentions(attentions)
    gh, gw = _check_grid(grid)
    _check_prefix(a.shape[-1], (gh, gw), prefix)
    if not -len(a) <= layer < len(a):
        raise CourseError(f"layer must be in -{len(a)}..{len(a) - 1}, got {layer}")
    row = a[layer][:, :, 0, prefix:]  # (N, heads, P)
    row = row / np.maximum(row.sum(-1, keepdims=True), 1e-12)
    n, heads = row.shape[:2]
    return row.reshape(n, heads, gh, gw).astype(np.float32)


def _check_prefix(tokens: int, grid: tuple[int, int], prefix: int) -> None:
    if not isinstance(prefix, (int, np.integer)) or prefix < 1:
        raise CourseError(f"prefix must be the number (>= 1) of tokens before the patches "
                          f"(1 = just the CLS token), got {prefix!r}")
    if tokens != prefix + grid[0] * grid[1]:
        raise CourseError(f"the attention maps have {tokens} tokens, but prefix {prefix} + "
                          f"grid {grid[0]}x{grid[1]} = {prefix + grid[0] * grid[1]}. Pass the grid "
                          "and prefix of the same run (ViTTokens.grid, ViTTokens.prefix).")


def rollout_matrix(attentions: Any, head_fusion: str = "mean", residual: float = 0.5,
                   start_layer: int = 0) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema, 2020): how much each output token draws on
    each input token, through all the blocks.

    Per block, the heads are fused (``"mean"``, ``"max"`` or ``"min"``), the residual
    connection is modelled as ``residual * I + (1 - residual) * A`` (rows renormalised),
    and the blocks from ``start_layer`` on are chained by matrix products (the last block
    on the left). ``attentions``: (L, N, heads, T, T) probabilities. Returns float32
    (N, T, T) whose rows sum to 1. Introduced in notebook 07.
    """
    a = _check_attentions(attentions)
    if head_fusion not in ("mean", "max", "min"):
        raise CourseError(f"head_fusion must be 'mean', 'max' or 'min', got {head_fusion!r}")
    if not 0.0 <= residual < 1.0:
        raise CourseError(f"residual must be in [0, 1) (the weight of the skip connection), got {residual}")
    if not 0 <= start_layer < len(a):
        raise CourseError(f"start_layer must be in 0..{len(a) - 1}, got {start_layer}")
    fused = getattr(a, head_fusion)(axis=2).astype(np.float64)  # (L, N, T, T)
    eye = np.eye(a.shape[-1])
    out = np.broadcast_to(eye, fused.shape[1:]).copy()
    for layer in range(start_layer, len(a)):
        step = residual * eye + (1.0 - residual) * fused[layer]
        step /= step.sum(-1, keepdims=True)
        out = step @ out
    return out.astype(np.float32)


def attention_rollout(attentions: Any, grid: tuple[int, int], prefix: int = 1,
                      head_fusion: str = "mean", residual: float = 0.5,
                      start_layer: int = 0) -> np.ndarray:
    """The CLS token's row of :func:`rollout_matrix`, over the patches, as one map per image.

    Returns float32 (N, gh, gw), each map renormalised to sum to 1 (higher = the final
    CLS token draws more on that patch, through all the blocks). Arguments as in
    :func:`rollout_matrix` and :func:`cls_attention`. Introduced in notebook 07.
    """
    a = _check_attentions(attentions)
    gh, gw = _check_grid(grid)
    _check_prefix(a.shape[-1], (gh, gw), prefix)
    roll = rollout_matrix(a, head_fusion=head_fusion, residual=residual, start_layer=start_layer)
    row = roll[:, 0, prefix:]
    row = row / np.maximum(row.sum(-1, keepdims=True), 1e-12)
    return row.reshape(len(row), gh, gw).astype(np.float32)


# ------------------------------------------------------------------ patch-token PCA


def patch_pca(patches: Any, n_components: int = 3, mask: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Principal components of patch tokens, fitted jointly over all images.

    ``patches``: (N, gh, gw, D) (or one image (gh, gw, D)). ``mask``: optional bool
    (N, gh, gw): fit on the flagged patches only (all patches are still projected).
    Fitting on all images at once gives the same colour to the same kind of part in
    every image. Each component's sign is fixed (its largest loading is positive), so
    results are reproducible. Returns ``(proj, ratio)``: float32 (N, gh, gw, k)
    projections and float32 (k,) explained-variance ratios (fractions of the total, in
    [0, 1], descending). Introduced in notebook 07.
    """
    p = _check_patches(patches)
    n, gh, gw, d = p.shape
    if not isinstance(n_components, (int, np.integer)) or not 1 <= n_components <= d:
        raise CourseError(f"n_components must be an int in 1..{d}, got {n_components!r}")
    X = p.reshape(-1, d).astype(np.float64)
    fit = X if mask is None else X[_check_mask(mask, (n, gh, gw)).ravel()]
    if len(fit) <= n_components:
        raise CourseError(f"PCA needs more than {n_components} patches to fit on, got {len(fit)}"
                          + (" (the mask flags too few patches)" if mask is not None else ""))
    mean = fit.mean(0)
    _, s, vt = np.linalg.svd(fit - mean, full_matrices=False)
    comps = vt[:n_components]
    signs = np.sign(comps[np.arange(n_components), np.abs(comps).argmax(1)])
    comps = comps * signs[:, None]
    var = s ** 2
    ratio = var[:n_components] / max(var.sum(), 1e-12)
    proj = (X - mean) @ comps.T
    return proj.reshape(n, gh, gw, n_components).astype(np.float32), ratio.astype(np.float32)


def foreground_mask(patches: Any, threshold: float = 0.0) -> np.ndarray:
    """Split patches into foreground and background by their first principal component.

    The DINOv2 recipe: the first component of the patch tokens mostly separates the
    main object(s) from the background. Which sign is "foreground" is not known, so the
    side holding fewer of the image-border patches is taken as foreground (objects
    rarely fill the border). ``patches``: (N, gh, gw, D). ``threshold``: cut on the
    first component (0 = its mean). Returns bool (N, gh, gw), True = foreground.
    Introduced in notebook 07.
    """
    proj, _ = patch_pca(patches, n_components=1)
    first = proj[..., 0]
    border = np.zeros(first.shape[1:], dtype=bool)
    border[[0, -1], :] = True
    border[:, [0, -1]] = True
    fg = first > threshold
    if fg[:, border].mean() > 0.5:
        fg = first < -threshold
    return fg


def pca_rgb(patches: Any, mask: Any = None, quantile: float = 0.01) -> np.ndarray:
    """Colour each patch by its first three principal components (red, green, blue).

    ``patches``: (N, gh, gw, D). ``mask``: optional bool (N, gh, gw), e.g. from
    :func:`foreground_mask`: the PCA is fitted on the flagged patches and the others are
    painted black. Each component is scaled to [0, 1] between its ``quantile`` and
    ``1 - quantile`` values over all (flagged) patches, then clipped. Returns float32
    (N, gh, gw, 3) in [0, 1]. Introduced in notebook 07.
    """
    p = _check_patches(patches)
    if not 0.0 <= quantile < 0.5:
        raise CourseError(f"quantile must be in [0, 0.5), got {quantile}")
    m = None if mask is None else _check_mask(mask, p.shape[:3])
    proj, _ = patch_pca(p, n_components=3, mask=m)
    ref = proj if m is None else proj[m]
    lo = np.quantile(ref.reshape(-1, 3), quantile, axis=0)
    hi = np.quantile(ref.reshape(-1, 3), 1.0 - quantile, axis=0)
    rgb = np.clip((proj - lo) / np.maximum(hi - lo, 1e-12), 0.0, 1.0)
    if m is not None:
        rgb[~m] = 0.0
    return rgb.astype(np.float32)


# ------------------------------------------------------------------- token norms


def token_norms(patches: Any) -> np.ndarray:
    """L2 norm of every patch token: (N, gh, gw, D) -> float32 (N, gh, gw), >= 0.

    Introduced in notebook 07.
    """
    p = _check_patches(patches)
    return np.linalg.norm(p.astype(np.float64), axis=-1).astype(np.float32)


def high_norm_tokens(patches: Any, ratio: float = 2.0) -> np.ndarray:
    """Flag "high-norm" patch tokens: norm above ``ratio`` x the median patch norm of
    their own image.

    Large ViTs trained long (DINOv2 ViT-L/g, supervised and CLIP ViTs) recycle a few
    uninformative background patches as scratch space for global information; those
    tokens get norms several times the others and stand out in attention maps
    (Darcet et al., "Vision Transformers Need Registers", 2024). ``patches``:
    (N, gh, gw, D), best taken from the residual stream (``ViTTokens.patches_at(k)``).
    Returns bool (N, gh, gw). Introduced in notebook 07.
    """
    if not ratio > 1.0:
        raise CourseError(f"ratio must be > 1 (how many times the median norm), got {ratio}")
    norms = token_norms(patches)
    median = np.median(norms.reshape(len(norms), -1), axis=1)[:, None, None]
    return norms > ratio * median


# ---------------------------------------------------------------------- overlays


def upsample(grid_map: Any, size: tuple[int, int], smooth: bool = True) -> np.ndarray:
    """Resize a patch-grid map to pixels: (gh, gw) or (gh, gw, C) -> float32 (H, W[, C]).

    ``smooth=True``: bilinear (pixel centres aligned); ``False``: each patch becomes a
    flat block (nearest), which shows the patch grid honestly. Introduced in notebook 07.
    """
    m = _to_numpy(grid_map, "grid_map")
    if m.ndim not in (2, 3):
        raise CourseError(f"grid_map: expected (gh, gw) or (gh, gw, C), got {m.shape}")
    try:
        H, W = (int(s) for s in size)
    except (TypeError, ValueError):
        raise CourseError(f"size must be (H, W), got {size!r}") from None
    if H < 1 or W < 1:
        raise CourseError(f"size must be positive, got {size!r}")
    from skimage.transform import resize

    out_shape = (H, W) + m.shape[2:]
    return resize(m, out_shape, order=1 if smooth else 0, mode="edge",
                  anti_aliasing=False, preserve_range=True).astype(np.float32)


def _image_rgb01(image: Any) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        raise CourseError(f"image looks channels-first {img.shape}; expected (H, W, 3) or "
                          "(H, W). Fix: np.transpose(img, (1, 2, 0))")
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] != 3):
        raise CourseError(f"image: expected (H, W) grey or (H, W, 3) RGB, got {img.shape}")
    if img.dtype == np.uint8:
        out = img.astype(np.float32) / 255.0
    elif img.dtype.kind == "f" and img.size and img.min() >= 0.0 and img.max() <= 1.0:
        out = img.astype(np.float32)
    else:
        raise CourseError(f"image: expected uint8 in 0..255 or float in [0, 1], got {img.dtype} "
                          f"with range {img.min():.3g}..{img.max():.3g}; rescale it first")
    return np.repeat(out[..., None], 3, axis=2) if out.ndim == 2 else out


def overlay(image: Any, grid_map: Any, alpha: float = 0.5, cmap: str = "inferno",
            smooth: bool = True) -> np.ndarray:
    """Blend a patch-grid map over an image: returns uint8 (H, W, 3).

    ``image``: (H, W, 3) RGB or (H, W) grey, uint8 or float in [0, 1] (the picture the
    model saw, un-normalised). ``grid_map``: (gh, gw) scalar map (attention, rollout,
    norms; min-max scaled, then coloured with ``cmap``) or (gh, gw, 3) RGB in [0, 1]
    (e.g. :func:`pca_rgb`). ``alpha`` in [0, 1] is the map's weight. Introduced in
    notebook 07.
    """
    img = _image_rgb01(image)
    if not 0.0 <= alpha <= 1.0:
        raise CourseError(f"alpha must be in [0, 1], got {alpha}")
    m = _to_numpy(grid_map, "grid_map")
    if m.ndim == 2:
        import matplotlib

        m = (m - m.min()) / max(float(m.max() - m.min()), 1e-12)
        try:
            colours = matplotlib.colormaps[cmap]
        except KeyError:
            raise CourseError(f"unknown matplotlib colormap {cmap!r}, e.g. 'inferno', 'viridis'") from None
        layer = upsample(m, img.shape[:2], smooth=smooth)
        layer = colours(np.clip(layer, 0, 1))[..., :3]
    elif m.ndim == 3 and m.shape[-1] == 3:
        if m.min() < -1e-6 or m.max() > 1 + 1e-6:
            raise CourseError("grid_map: an RGB map must lie in [0, 1] (e.g. cl.explain.pca_rgb)")
        layer = np.clip(upsample(m, img.shape[:2], smooth=smooth), 0, 1)
    else:
        raise CourseError(f"grid_map: expected (gh, gw) or (gh, gw, 3), got {m.shape}")
    out = (1.0 - alpha) * img + alpha * layer
    return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)
