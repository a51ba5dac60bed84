"""Tests of course_lib.explain on tiny randomly initialised ViTs (no assets needed) and on
hand-made attention maps and tokens whose answers are known."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from course_lib import explain as ex
from course_lib.config import CourseError


def _tiny_vit(num_channels=1, image_size=28, patch_size=7, attn="sdpa", seed=0):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    cfg = ViTConfig(image_size=image_size, patch_size=patch_size, num_channels=num_channels,
                    hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                    intermediate_size=64, num_labels=10, attn_implementation=attn)
    return ViTForImageClassification(cfg)


def _tiny_dinov2(registers=0, seed=0):
    from transformers import (Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig,
                              Dinov2WithRegistersModel)

    torch.manual_seed(seed)
    kw = dict(image_size=28, patch_size=7, hidden_size=32, num_hidden_layers=2,
              num_attention_heads=4, mlp_ratio=2, layerscale_value=1.0)
    if registers:
        return Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=registers, **kw))
    return Dinov2Model(Dinov2Config(**kw))


def _softmax(z, axis=-1):
    z = z - z.max(axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis, keepdims=True)


def _random_attn(layers=3, n=2, heads=4, tokens=17, seed=0):
    rng = np.random.default_rng(seed)
    return _softmax(rng.normal(size=(layers, n, heads, tokens, tokens)) * 2).astype(np.float32)


# ------------------------------------------------------------------------ run_vit


def test_run_vit_grey_vit_classifier_shapes_and_values():
    model = _tiny_vit()
    x = torch.randn(5, 1, 28, 28)
    toks = ex.run_vit(model, x, batch_size=2)  # several batches, concatenated in order
    assert toks.grid == (4, 4) and toks.prefix == 1
    assert toks.final.shape == (5, 17, 32) and toks.final.dtype == np.float32
    assert toks.hidden.shape == (4, 5, 17, 32)  # embeddings + 3 blocks
    assert toks.attentions.shape == (3, 5, 4, 17, 17)
    np.testing.assert_allclose(toks.attentions.sum(-1), 1.0, atol=1e-5)
    with torch.no_grad():
        ref = model.vit(pixel_values=x).last_hidden_state.numpy()
    np.testing.assert_allclose(toks.final, ref, atol=1e-5)
    assert toks.cls.shape == (5, 32)
    np.testing.assert_array_equal(toks.patches[:, 1, 2], toks.final[:, 1 + 1 * 4 + 2])
    np.testing.assert_array_equal(toks.patches_at(0)[:, 3, 0], toks.hidden[0][:, 1 + 3 * 4])
    np.testing.assert_array_equal(toks.patches_at(-1), toks.patches_at(3))


def test_run_vit_first_layer_attention_matches_a_manual_softmax():
    model = _tiny_vit()
    x = torch.randn(2, 1, 28, 28)
    toks = ex.run_vit(model, x)
    block = model.vit.layers[0]
    with torch.no_grad():
        h = block.layernorm_before(torch.from_numpy(toks.hidden[0]))
        q = block.attention.q_proj(h).view(2, 17, 4, 8).transpose(1, 2)
        k = block.attention.k_proj(h).view(2, 17, 4, 8).transpose(1, 2)
        manual = torch.softmax(q @ k.transpose(-1, -2) / np.sqrt(8), dim=-1).numpy()
    np.testing.assert_allclose(toks.attentions[0], manual, atol=1e-5)


def test_run_vit_restores_mode_and_attention_implementation():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=28, patch_size=7, num_channels=1, hidden_size=32,
                    num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                    hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5,
                    attn_implementation="sdpa")
    model = ViTForImageClassification(cfg).train()
    x = torch.randn(2, 1, 28, 28)
    first, second = ex.run_vit(model, x), ex.run_vit(model, x)
    np.testing.assert_array_equal(first.final, second.final)  # dropout was off during the call
    assert model.training and model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        a, b = model.vit(pixel_values=x).last_hidden_state, model.vit(pixel_values=x).last_hidden_state
    assert not torch.equal(a, b)  # ... and is on again afterwards


def test_run_vit_without_attentions_or_hidden_states():
    toks = ex.run_vit(_tiny_vit(), torch.randn(1, 1, 28, 28), attentions=False, hidden_states=False)
    assert toks.attentions is None and toks.hidden is None
    with pytest.raises(CourseError, match="hidden_states=True"):
        toks.patches_at(2)


def test_run_vit_dinov2_and_register_tokens_prefix():
    x = torch.randn(2, 3, 28, 28)
    plain = ex.run_vit(_tiny_dinov2(), x)
    assert plain.prefix == 1 and plain.grid == (4, 4)
    reg = ex.run_vit(_tiny_dinov2(registers=4), x)
    assert reg.prefix == 5 and reg.final.shape[1] == 21
    maps = ex.cls_attention(reg.attentions, reg.grid, reg.prefix)
    assert maps.shape == (2, 4, 4, 4)
    with pytest.raises(CourseError, match="prefix 1"):
        ex.cls_attention(reg.attentions, reg.grid, 1)


def test_run_vit_accepts_a_non_square_grid_and_numpy_input():
    model = _tiny_dinov2()
    toks = ex.run_vit(model, np.random.default_rng(0).normal(size=(1, 3, 14, 28)).astype(np.float32))
    assert toks.grid == (2, 4) and toks.patches.shape == (1, 2, 4, 32)


@pytest.mark.parametrize("x, match", [
    (torch.randn(1, 28, 28), r"pixel_values\[None\]"),
    (torch.randn(2, 3, 28, 28), r"\(N, 1, H, W\)"),
    (torch.randn(2, 28, 28, 1), "permute"),
    (torch.randn(2, 1, 30, 28), "multiple of the patch size"),
    (torch.zeros(2, 1, 28, 28, dtype=torch.uint8), "float tensor"),
])
def test_run_vit_bad_pixel_values(x, match):
    with pytest.raises(CourseError, match=match):
        ex.run_vit(_tiny_vit(), x)


def test_run_vit_rejects_a_non_vit_model():
    with pytest.raises(CourseError, match="ViT-like"):
        ex.run_vit(torch.nn.Linear(3, 3), torch.randn(1, 1, 28, 28))


# ----------------------------------------------------------------- attention maps


def test_cls_attention_takes_the_cls_row_and_renormalises():
    a = _random_attn(layers=2, n=1, heads=2, tokens=1 + 6)
    maps = ex.cls_attention(a, (2, 3), prefix=1, layer=0)
    row = a[0, 0, 1, 0, 1:]
    np.testing.assert_allclose(maps[0, 1], (row / row.sum()).reshape(2, 3), rtol=1e-5)
    np.testing.assert_allclose(maps.sum((-1, -2)), 1.0, atol=1e-5)
    # default = the last layer; a tuple of per-layer arrays works like the stacked array
    np.testing.assert_allclose(ex.cls_attention(tuple(a), (2, 3)), ex.cls_attention(a, (2, 3), layer=1))


def test_rollout_of_identity_attention_is_identity():
    eye = np.broadcast_to(np.eye(5, dtype=np.float32), (3, 2, 4, 5, 5))
    np.testing.assert_allclose(ex.rollout_matrix(eye), np.broadcast_to(np.eye(5), (2, 5, 5)), atol=1e-6)


def test_rollout_chains_layers_last_on_the_left():
    a = _random_attn(layers=2, n=1, heads=3, tokens=5)
    fused = a.mean(2)[:, 0].astype(np.float64)
    eye = np.eye(5)
    steps = [0.5 * eye + 0.5 * f for f in fused]
    expected = steps[1] @ steps[0]
    got = ex.rollout_matrix(a)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    # residual 0 and one layer: the head-fused attention itself; max fusion renormalised
    np.testing.assert_allclose(ex.rollout_matrix(a[:1], residual=0.0)[0], fused[0], rtol=1e-5)
    mx = a[0, 0].max(0)
    np.testing.assert_allclose(ex.rollout_matrix(a[:1], head_fusion="max", residual=0.0)[0],
                               mx / mx.sum(-1, keepdims=True), rtol=1e-5)
    # start_layer skips the first block
    np.testing.assert_allclose(ex.rollout_matrix(a, start_layer=1)[0], steps[1], rtol=1e-5)


def test_attention_rollout_finds_the_patch_everything_attends_to():
    tokens = 1 + 9
    a = np.full((4, 1, 2, tokens, tokens), 0.02, np.float32)
    a[..., 1 + 7] = 1.0  # every query looks at patch 7 = grid cell (2, 1)
    a /= a.sum(-1, keepdims=True)
    roll = ex.attention_rollout(a, (3, 3))
    assert roll.shape == (1, 3, 3)
    assert np.unravel_index(roll[0].argmax(), (3, 3)) == (2, 1)
    np.testing.assert_allclose(roll.sum(), 1.0, atol=1e-5)


@pytest.mark.parametrize("bad, match", [
    (np.ones((2, 1, 2, 5, 5), np.float32), "probabilities"),
    (np.full((2, 1, 2, 5, 4), 0.25, np.float32), r"\(layers, N, heads, T, T\)"),
    ((), "empty tuple"),
])
def test_bad_attentions_are_explained(bad, match):
    with pytest.raises(CourseError, match=match):
        ex.rollout_matrix(bad)


def test_grid_prefix_and_options_are_checked():
    a = _random_attn(tokens=17)
    with pytest.raises(CourseError, match="grid 3x3"):
        ex.attention_rollout(a, (3, 3))
    with pytest.raises(CourseError, match="head_fusion"):
        ex.rollout_matrix(a, head_fusion="median")
    with pytest.raises(CourseError, match="residual"):
        ex.rollout_matrix(a, residual=1.0)
    with pytest.raises(CourseError, match="layer must be"):
        ex.cls_attention(a, (4, 4), layer=3)
    with pytest.raises(CourseError, match="grid must be"):
        ex.cls_attention(a, 16)


# -------------------------------------------------------------------- patch PCA


def _two_part_patches(n=3, g=8, d=16, seed=0):
    """Centre 4x4 block = 'object' direction, the rest = 'background' direction, + noise."""
    rng = np.random.default_rng(seed)
    obj, bg = rng.normal(size=d), rng.normal(size=d)
    inside = np.zeros((g, g), bool)
    inside[2:6, 2:6] = True
    p = np.where(inside[None, :, :, None], obj, bg) * 3 + rng.normal(0, 0.1, size=(n, g, g, d))
    return p.astype(np.float32), np.broadcast_to(inside, (n, g, g))


def test_patch_pca_matches_sklearn_up_to_sign_and_fixes_the_sign():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(1)
    p = rng.normal(size=(2, 4, 5, 6)) * np.array([5, 3, 2, 1, 0.5, 0.1])
    proj, ratio = ex.patch_pca(p, n_components=3)
    ref = PCA(3).fit(p.reshape(-1, 6))
    np.testing.assert_allclose(ratio, ref.explained_variance_ratio_, rtol=1e-4)
    np.testing.assert_allclose(np.abs(proj.reshape(-1, 3)), np.abs(ref.transform(p.reshape(-1, 6))),
                               rtol=1e-3, atol=1e-4)
    # the sign of each component is fixed by the data, not by the order of the images
    order = [1, 0]
    proj_swapped, _ = ex.patch_pca(p[order], n_components=3)
    np.testing.assert_allclose(proj_swapped, proj[order], rtol=1e-4, atol=1e-4)


def test_foreground_mask_and_pca_rgb_on_a_two_part_image():
    p, inside = _two_part_patches()
    fg = ex.foreground_mask(p)
    np.testing.assert_array_equal(fg, inside)
    fg_flipped = ex.foreground_mask(-p)  # the sign of the first component must not matter
    np.testing.assert_array_equal(fg_flipped, inside)
    rgb = ex.pca_rgb(p, mask=fg)
    assert rgb.shape == (3, 8, 8, 3) and rgb.dtype == np.float32
    assert rgb.min() >= 0 and rgb.max() <= 1
    assert np.all(rgb[~fg] == 0) and rgb[fg].max() > 0.5
    plain = ex.pca_rgb(p)
    # without a mask the first component alone separates the two parts (red channel)
    assert abs(plain[..., 0][inside].mean() - plain[..., 0][~inside].mean()) > 0.9


def test_pca_input_checks():
    with pytest.raises(CourseError, match=r"\(N, gh, gw, D\)"):
        ex.patch_pca(np.zeros((5, 7)))
    with pytest.raises(CourseError, match="n_components"):
        ex.patch_pca(np.random.rand(1, 2, 2, 3), n_components=4)
    with pytest.raises(CourseError, match="bool array"):
        ex.pca_rgb(np.random.rand(1, 4, 4, 3), mask=np.ones((1, 4, 4)))
    with pytest.raises(CourseError, match="too few"):
        ex.patch_pca(np.random.rand(1, 4, 4, 8), mask=np.zeros((1, 4, 4), bool))
    with pytest.raises(CourseError, match="NaN"):
        ex.token_norms(np.full((1, 2, 2, 3), np.nan))


# ------------------------------------------------------------------ token norms


def test_high_norm_tokens_flags_only_the_planted_token():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(2, 6, 6, 32)).astype(np.float32)
    p[1, 4, 2] *= 8
    flags = ex.high_norm_tokens(p)
    assert flags.sum() == 1 and flags[1, 4, 2]
    norms = ex.token_norms(p)
    np.testing.assert_allclose(norms, np.linalg.norm(p, axis=-1), rtol=1e-5)
    assert ex.high_norm_tokens(p, ratio=20).sum() == 0
    with pytest.raises(CourseError, match="ratio"):
        ex.high_norm_tokens(p, ratio=0.5)


# --------------------------------------------------------------------- overlays


def test_upsample_nearest_keeps_patch_blocks():
    m = np.arange(6, dtype=np.float32).reshape(2, 3)
    up = ex.upsample(m, (4, 6), smooth=False)
    np.testing.assert_array_equal(up, np.kron(m, np.ones((2, 2))))
    smooth = ex.upsample(m, (20, 30))
    assert smooth.shape == (20, 30) and smooth.min() >= 0 and smooth.max() <= 5
    assert ex.upsample(np.random.rand(2, 3, 3), (8, 12)).shape == (8, 12, 3)


def test_overlay_blends_image_and_map():
    img = np.full((8, 8, 3), 200, np.uint8)
    heat = np.array([[0.0, 1.0], [2.0, 3.0]])
    assert ex.overlay(img, heat, alpha=0.0).tolist() == img.tolist()
    out = ex.overlay(img, heat, alpha=0.6, smooth=False)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert not np.array_equal(out[0, 0], out[-1, -1])  # low and high patches differ
    rgb = np.zeros((2, 2, 3), np.float32)
    rgb[0, 0] = [1, 0, 0]
    full = ex.overlay(img, rgb, alpha=1.0, smooth=False)
    assert full[0, 0].tolist() == [255, 0, 0] and full[-1, -1].tolist() == [0, 0, 0]
    grey = ex.overlay(np.zeros((28, 28), np.uint8), heat, alpha=0.5)  # a Fashion-MNIST image
    assert grey.shape == (28, 28, 3)
    float_img = ex.overlay(np.full((4, 4, 3), 0.5, np.float32), heat, alpha=0.0)
    assert float_img[0, 0].tolist() == [128, 128, 128]


@pytest.mark.parametrize("image, grid_map, kw, match", [
    (np.zeros((3, 8, 8), np.uint8), np.zeros((2, 2)), {}, "channels-first"),
    (np.full((8, 8, 3), 2.0, np.float32), np.zeros((2, 2)), {}, "float in"),
    (np.zeros((8, 8, 3), np.uint8), np.zeros((2, 2, 2)), {}, r"\(gh, gw, 3\)"),
    (np.zeros((8, 8, 3), np.uint8), np.full((2, 2, 3), 2.0), {}, r"\[0, 1\]"),
    (np.zeros((8, 8, 3), np.uint8), np.zeros((2, 2)), {"alpha": 1.5}, "alpha"),
    (np.zeros((8, 8, 3), np.uint8), np.zeros((2, 2)), {"cmap": "nope"}, "colormap"),
])
def test_overlay_bad_input(image, grid_map, kw, match):
    with pytest.raises(CourseError, match=match):
        ex.overlay(image, grid_map, **kw)


def test_explain_on_a_trained_like_vit_end_to_end():
    """The whole chain on the tiny grey ViT: maps come out with the patch grid's shape."""
    model = _tiny_vit(seed=3)
    toks = ex.run_vit(model, torch.randn(3, 1, 28, 28))
    roll = ex.attention_rollout(toks.attentions, toks.grid, toks.prefix)
    rgb = ex.pca_rgb(toks.patches)
    img = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    assert roll.shape == (3, 4, 4) and rgb.shape == (3, 4, 4, 3)
    assert ex.overlay(img, roll[0]).shape == (28, 28, 3)
    assert ex.overlay(img, rgb[0]).shape == (28, 28, 3)
